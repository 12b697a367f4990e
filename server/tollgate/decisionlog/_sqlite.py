"""SQLite decision log in WAL mode with group commit and a hash chain.

Requests append records from the event loop; one writer thread takes everything queued since its last
commit, inserts it in one transaction, commits (an fsync of the WAL with synchronous=FULL), and only
then resolves the requests' futures. Concurrent requests therefore share one fsync, so durability costs
latency (one commit) but not throughput. The writer commits as soon as it has anything (an idle log adds no
wait) and takes whatever queued meanwhile into the next commit (a busy one batches by itself); per commit it
makes one executemany and wakes the loop once, which resolves every future of the group.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import logging
import queue
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from tollgate.decisionlog._record import DecisionRecord
from tollgate.decisionlog._sqlite_store import SqliteDecisionStore
from tollgate.encoding import canonical_json, canonical_json_with
from tollgate.state import private_file

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    seq INTEGER PRIMARY KEY,              -- append order; the hash chain follows it
    decision_id TEXT NOT NULL UNIQUE,
    timestamp TEXT NOT NULL,              -- RFC 3339, UTC, microseconds
    agent_id TEXT NOT NULL,
    session_id TEXT NOT NULL,
    kind TEXT NOT NULL,                   -- tool | model | budget
    decision TEXT NOT NULL,               -- allow | deny | require_approval
    request_id TEXT NOT NULL,
    bundle_revision TEXT NOT NULL,
    record TEXT NOT NULL,                 -- the whole record as canonical JSON
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS decisions_request_id ON decisions(request_id) WHERE request_id != '';
-- `tollgate logs query|timeline` filters; IF NOT EXISTS adds them to logs written before they existed.
CREATE INDEX IF NOT EXISTS decisions_agent_id ON decisions(agent_id);
CREATE INDEX IF NOT EXISTS decisions_session_id ON decisions(session_id);
CREATE INDEX IF NOT EXISTS decisions_timestamp ON decisions(timestamp);
"""
GENESIS = "0" * 64
_INSERT = (
    "INSERT INTO decisions (decision_id, timestamp, agent_id, session_id, kind, decision, request_id,"
    " bundle_revision, record, prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?)"
)


_Entry = tuple[DecisionRecord, str | None, "asyncio.Future[None]"]


class CommitObserver(Protocol):
    """Told of each group commit, on the writer thread (metrics: commit time and batch size)."""

    def committed(self, *, seconds: float, records: int) -> None: ...


class _NoCommitObserver:
    def committed(self, *, seconds: float, records: int) -> None:
        pass


NO_COMMIT_OBSERVER: CommitObserver = _NoCommitObserver()


class DecisionLogError(Exception):
    """The log could not durably record a decision; the decision must not be answered."""


@dataclass(frozen=True)
class LogConfig:
    """Where and how durably decisions are written."""

    #: SQLite database file.
    path: Path
    #: "full" fsyncs the WAL on every commit (survives power loss); "normal" survives a process crash only.
    synchronous: str = "full"
    #: Most records one commit takes; more waits for the next commit.
    max_batch: int = 512
    #: Requests waiting for a commit at once; Authorize waits for room rather than queueing without bound.
    max_pending: int = 8192


def record_hash(prev_hash: str, record_json: str) -> str:
    """sha256 of prev_hash, a newline, and the record's canonical JSON (UTF-8): one link of the chain."""
    return hashlib.sha256(f"{prev_hash}\n{record_json}".encode()).hexdigest()


class DecisionLog:
    """Append-only decision log. `append` resolves once the record is committed to disk."""

    def __init__(self, config: LogConfig, *, observer: CommitObserver = NO_COMMIT_OBSERVER) -> None:
        if config.synchronous not in ("full", "normal"):
            raise ValueError(f"log synchronous must be 'full' or 'normal', not {config.synchronous!r}")
        self._config = config
        self._observer = observer
        self._queue: queue.SimpleQueue[_Entry | None] = queue.SimpleQueue()
        # Records appended and not yet resolved, and the appends waiting for room: both kept on the loop's thread
        # only (append and _committed run there), so bounding the queue costs the writer nothing.
        self._pending = 0
        self._room_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._readers = threading.local()
        config.path.parent.mkdir(parents=True, exist_ok=True)
        private_file(config.path)  # 0600 before the first record goes in (its WAL files take its mode)
        self._db = self._connect()
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT hash FROM decisions ORDER BY seq DESC LIMIT 1").fetchone()
        self._last_hash: str = row[0] if row else GENESIS
        #: Commits and records written since start: records / commits is the group-commit factor.
        self.commits = 0
        self.records = 0

    @property
    def path(self) -> Path:
        return self._config.path

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self._config.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self._config.synchronous.upper()}")
        db.execute("PRAGMA busy_timeout=5000")
        return db

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name="decision-log-writer", daemon=True)
        self._thread.start()

    async def append(self, record: DecisionRecord, *, input_json: str | None = None) -> None:
        """Queue a record and wait until it is committed. Raises DecisionLogError if it cannot be.

        input_json, when given, is canonical_json(record.input) already made for the engine; the
        writer reuses it instead of serialising the input a second time.
        """
        loop = self._loop
        if self._thread is None or loop is None:
            raise DecisionLogError("decision log is not running")
        while self._pending >= self._config.max_pending:
            waiter: asyncio.Future[None] = loop.create_future()
            self._room_waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                self._let_in()  # had it been let in, the room it was given goes to the next one waiting
                raise
        self._pending += 1
        future: asyncio.Future[None] = loop.create_future()
        self._queue.put((record, input_json, future))
        await future

    def _run(self) -> None:
        assert self._loop is not None
        q, max_batch = self._queue, self._config.max_batch
        stopping = False
        while not stopping:
            item = q.get()
            if item is None:
                break
            batch = [item]
            while len(batch) < max_batch:
                try:
                    nxt = q.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stopping = True
                    break
                batch.append(nxt)
            error: BaseException | None = None
            try:
                self._write(batch)
            except BaseException as exc:  # a disk error must reach every waiting request
                log.exception("decision log: commit failed")
                error = exc
            self._loop.call_soon_threadsafe(self._committed, [f for _, _, f in batch], error)

    def _committed(self, futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
        """On the loop: a group is written (or failed); answer its appends and let as many waiting ones in."""
        self._pending -= len(futures)
        _resolve(futures, error)
        self._let_in()

    def _let_in(self) -> None:
        """Wake as many appends waiting for room as there is room (each checks again when it runs)."""
        room = self._config.max_pending - self._pending
        while room > 0 and self._room_waiters:
            waiter = self._room_waiters.popleft()
            if not waiter.done():  # an append cancelled while it waited takes no room
                waiter.set_result(None)
                room -= 1

    def _write(self, batch: list[_Entry]) -> None:
        rows = []
        prev = self._last_hash
        for record, input_json, _ in batch:
            doc = record.as_dict()
            doc["prev_hash"] = prev
            if input_json is None:
                body = canonical_json(doc)
            else:
                del doc["input"]
                body = canonical_json_with(doc, "input", input_json)
            digest = record_hash(prev, body)
            principal = record.input["principal"]
            rows.append((
                record.decision_id, record.timestamp, principal["agent_id"], principal["session_id"],
                record.input["kind"], record.decision, record.request_id, record.bundle_revision, body, prev, digest,
            ))
            prev = digest
        db = self._db
        started = time.perf_counter()
        db.execute("BEGIN")
        try:
            db.executemany(_INSERT, rows)
            db.execute("COMMIT")
        except BaseException as exc:
            # SQLite rolls back by itself on some errors (a full disk among them); a ROLLBACK then fails with "no
            # transaction is active" and would hide why the commit failed.
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            if _disk_full(exc):
                raise DecisionLogError(
                    f"decision log DISK is full: {self._config.path}: the commit could not be written ({exc}); free "
                    "space on that disk (or move the data directory to a larger one): until a commit succeeds every "
                    "decision fails closed, unanswered") from exc
            raise
        self._last_hash = prev
        self.commits += 1
        self.records += len(rows)
        try:
            self._observer.committed(seconds=time.perf_counter() - started, records=len(rows))
        except Exception:  # a metrics bug must not turn a durable commit into failed answers
            log.exception("decision log: commit observer failed")

    def close(self) -> None:
        """Commit everything queued, checkpoint the WAL into the database, and stop the writer."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None
        try:
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            self._db.close()

    # -- reads (any thread; one connection per thread) --------------------------------------------

    def _reader(self) -> SqliteDecisionStore:
        store: SqliteDecisionStore | None = getattr(self._readers, "store", None)
        if store is None:
            db = sqlite3.connect(self._config.path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA busy_timeout=5000")
            store = self._readers.store = SqliteDecisionStore(db, path=self._config.path)
        return store

    def get(self, decision_id: str) -> DecisionRecord | None:
        """The committed record with this ID, with its seq and hash, or None (LogReadError if it cannot be read)."""
        return self._reader().get(decision_id)

    def latest_for_request(self, request_id: str) -> DecisionRecord | None:
        """The most recent committed record answering this caller request_id, or None."""
        return self._reader().latest_for_request(request_id)


def _disk_full(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None) if isinstance(exc, sqlite3.Error) else None
    return code is not None and code & 0xFF == sqlite3.SQLITE_FULL


def _resolve(futures: list[asyncio.Future[None]], error: BaseException | None) -> None:
    for f in futures:
        if f.done():
            continue
        if error is None:
            f.set_result(None)
        elif isinstance(error, DecisionLogError):  # already says what happened and what to do
            f.set_exception(DecisionLogError(str(error)))
        else:
            f.set_exception(DecisionLogError(f"decision log is unavailable: {error}"))
