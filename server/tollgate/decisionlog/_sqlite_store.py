"""The SQLite DecisionStore: a server's decisions.db read (and kept by its exporters and retention) through SQL.

Every query against the `decisions` table outside the writer's INSERT is here. Readers beside a live server
open the file read-only (`open_read_only`): SQLite's read-only mode still reads the WAL, so committed records
are seen as soon as they are committed, and nothing is ever written. The server's exporters and retention
open it read-write (`SqliteDecisionStore.open`) on connections of their own, never the writer's.
"""

from __future__ import annotations

import contextlib
import functools
import sqlite3
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from tollgate.clock import Clock, SystemClock
from tollgate.decisionlog._checkpoint import Checkpoint
from tollgate.decisionlog._query import SESSION_SCAN, ActiveSession, ActiveSessions, Query
from tollgate.decisionlog._record import DecisionRecord
from tollgate.decisionlog._store import PAGE, Anchor, LogReadError, StoredRecord, matching
from tollgate.encoding import canonical_json, format_time

#: The decision log's file name inside a server's data directory.
LOG_FILE = "decisions.db"
#: The columns a StoredRecord is made from, in its field order.
RECORD_COLUMNS = ("seq, decision_id, timestamp, agent_id, session_id, kind, decision, record, prev_hash, hash,"
                  " request_id, bundle_revision")
#: The exporters' cursors: each named exporter's last acknowledged seq (created by a read-write open).
EXPORT_SCHEMA = """
CREATE TABLE IF NOT EXISTS export_cursors (
    name TEXT PRIMARY KEY,                -- the exporter: "opa" or "otlp"
    seq INTEGER NOT NULL,                 -- the last decisions.seq its receiver acknowledged
    updated_at TEXT NOT NULL,
    checkpoints INTEGER NOT NULL DEFAULT 0  -- how many of decisions_checkpoints it acknowledged (otlp)
);
"""
#: Retention's anchors: each row says "records up to upto_seq were pruned; the last one hashed last_hash".
PRUNED_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions_pruned (
    upto_seq INTEGER PRIMARY KEY,         -- every record with seq <= upto_seq has been deleted
    last_hash TEXT NOT NULL,              -- the hash of record upto_seq: the next record's prev_hash
    pruned_at TEXT NOT NULL,
    signature TEXT NOT NULL DEFAULT ''    -- the checkpoint key's signature of the anchor ('' without a key)
);
"""
#: The sidecar's signed checkpoints of the chain head (decisionlog/_checkpoint.py).
CHECKPOINT_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions_checkpoints (
    id INTEGER PRIMARY KEY,
    seq INTEGER NOT NULL,                 -- the head record when the checkpoint was taken
    hash TEXT NOT NULL,                   -- its hash
    time TEXT NOT NULL,                   -- when (RFC 3339, the sidecar's clock)
    key_id TEXT NOT NULL,
    signature TEXT NOT NULL
);
"""

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _failing_as(doing: str) -> Callable[[Callable[_P, _T]], Callable[_P, _T]]:
    """SQLite's errors leave the store as LogReadError naming the file, so callers need not know the backend."""

    def decorate(method: Callable[_P, _T]) -> Callable[_P, _T]:
        @functools.wraps(method)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _T:
            try:
                return method(*args, **kwargs)
            except sqlite3.Error as exc:
                store = args[0]
                assert isinstance(store, SqliteDecisionStore)
                raise LogReadError(f"cannot {doing} decision log {store.path}: {exc}") from exc

        return wrapper

    return decorate


_reading = _failing_as("read")
_keeping = _failing_as("update")


def query_sql(query: Query) -> tuple[str, tuple[Any, ...]]:
    """SQL conditions on the decisions table for query, and their parameters ("" when there are none).

    decision_id, agent_id, session_id and timestamp have indexes; instance, tool and reason are read from the
    JSON of the rows the indexed conditions leave (a reason first by a substring test of the canonical text, which
    is cheap, then exactly: its needle may appear inside an argument too).
    """
    parts: list[str] = []
    params: list[Any] = []
    for column, value in (("decision_id", query.decision_id), ("agent_id", query.agent),
                          ("session_id", query.session), ("decision", query.decision), ("kind", query.kind)):
        if value:
            parts.append(f"{column} = ?")
            params.append(value)
    if query.since is not None and query.until is None and not (query.decision_id or query.agent or query.session):
        # A window up to now with no indexed equality to narrow it: since becomes an exact seq bound too (the lowest
        # seq of the window bounds every record in it; read from the window's entries of the timestamp index) and the
        # time test is kept off the index (+timestamp), so a newest-first page walks the window from its newest row
        # and stops at its limit (a rare reason stops at the window's start, not the log's) instead of reading the
        # whole window through the index and sorting it: 100k records, the newest 1000 budget decisions of a day
        # 29 ms instead of 200 ms.
        parts.append("seq >= coalesce((SELECT min(seq) FROM decisions INDEXED BY decisions_timestamp "
                     "WHERE timestamp >= ?), 1 << 62) AND +timestamp >= ?")
        params += [format_time(query.since)] * 2
    elif query.since is not None:
        parts.append("timestamp >= ?")
        params.append(format_time(query.since))
    if query.until is not None:
        parts.append("timestamp < ?")
        params.append(format_time(query.until))
    if query.instance:
        parts.append("json_extract(record, '$.input.principal.instance_id') = ?")
        params.append(query.instance)
    if query.tool:
        server, slash, name = query.tool.rpartition("/")
        parts.append("kind = 'tool' AND json_extract(record, '$.input.tool.name') = ?")
        params.append(name)
        if slash:
            parts.append("json_extract(record, '$.input.tool.server') = ?")
            params.append(server)
    if query.reason:
        parts.append("instr(record, ?) > 0 AND EXISTS (SELECT 1 FROM json_each(record, '$.reasons') "
                     "WHERE json_extract(value, '$.code') = ?)")
        params += ['"code":' + canonical_json(query.reason), query.reason]
    return " AND ".join(parts), tuple(params)


class SqliteDecisionStore:
    """A DecisionStore on one SQLite connection (use it from one thread at a time)."""

    def __init__(self, db: sqlite3.Connection, *, path: Path, clock: Clock = SystemClock()) -> None:
        self._db = db
        self.path = path
        self._clock = clock

    @classmethod
    def open(cls, path: Path, *, clock: Clock = SystemClock()) -> SqliteDecisionStore:
        """A read-write store of its own on decisions.db, for the server's exporters and retention."""
        try:
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            # A lost cursor update re-sends a batch (at least once) and a lost prune is redone; neither needs an
            # fsync of its own, and the writer's next FULL commit syncs these frames anyway.
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(EXPORT_SCHEMA + PRUNED_SCHEMA + CHECKPOINT_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(decisions_pruned)")}
            if "signature" not in columns:  # a log pruned before anchors were signed
                db.execute("ALTER TABLE decisions_pruned ADD COLUMN signature TEXT NOT NULL DEFAULT ''")
            columns = {row[1] for row in db.execute("PRAGMA table_info(export_cursors)")}
            if "checkpoints" not in columns:  # cursors kept before an exporter sent checkpoints
                db.execute("ALTER TABLE export_cursors ADD COLUMN checkpoints INTEGER NOT NULL DEFAULT 0")
        except sqlite3.Error as exc:
            raise LogReadError(f"cannot open decision log {path}: {exc}") from exc
        return cls(db, path=path, clock=clock)

    @property
    def connection(self) -> sqlite3.Connection:
        """The SQLite connection itself, for SQLite's own tools (EXPLAIN, a test's tampering)."""
        return self._db

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> SqliteDecisionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- records ---------------------------------------------------------------------------------

    @_reading
    def get(self, decision_id: str) -> DecisionRecord | None:
        return self._one("decision_id = ?", (decision_id,))

    @_reading
    def latest_for_request(self, request_id: str) -> DecisionRecord | None:
        return self._one("request_id = ? ORDER BY seq DESC", (request_id,))

    def _one(self, condition: str, params: tuple[Any, ...]) -> DecisionRecord | None:
        row = self._db.execute(f"SELECT {RECORD_COLUMNS} FROM decisions WHERE {condition} LIMIT 1",
                               params).fetchone()
        return None if row is None else StoredRecord(*row).decision_record()

    @_reading
    def page(self, query: Query, *, after: int = 0, upto: int | None = None,
             limit: int = PAGE) -> list[StoredRecord]:
        where, params = query_sql(query)
        condition = "seq > ?" + ("" if upto is None else " AND seq <= ?") + (f" AND ({where})" if where else "")
        bounds = (after,) if upto is None else (after, upto)
        found = self._db.execute(f"SELECT {RECORD_COLUMNS} FROM decisions WHERE {condition} ORDER BY seq LIMIT ?",
                                 (*bounds, *params, limit)).fetchall()
        return [StoredRecord(*row) for row in found]

    @_reading
    def find(self, query: Query) -> list[StoredRecord]:
        if query.limit is None:
            return list(matching(self, query))
        where, params = query_sql(query)
        found = self._db.execute(f"SELECT {RECORD_COLUMNS} FROM decisions {'WHERE ' + where if where else ''} "
                                 "ORDER BY seq DESC LIMIT ?", (*params, query.limit)).fetchall()
        return [StoredRecord(*row) for row in reversed(found)]

    @_reading
    def span(self, query: Query) -> tuple[int, int]:
        last = int(self._db.execute("SELECT coalesce(max(seq), 0) FROM decisions").fetchone()[0])
        if query.limit is None:
            return 0, last
        where, params = query_sql(query)
        row = self._db.execute(
            "SELECT min(seq) FROM (SELECT seq FROM decisions WHERE seq <= ?"
            f"{' AND ' + where if where else ''} ORDER BY seq DESC LIMIT ?)", (last, *params, query.limit)).fetchone()
        return (row[0] or last + 1) - 1, last

    @_reading
    def position(self, text: str) -> int:
        if text.isdigit():
            return int(text)
        row = self._db.execute("SELECT seq FROM decisions WHERE decision_id = ?", (text,)).fetchone()
        if row is None:
            raise LogReadError(f"no record with decision ID {text!r} (give a decision ID in the log, or a seq number)")
        return int(row[0])

    @_reading
    def sessions(self, since: datetime, *, limit: int = 50, scan: int = SESSION_SCAN) -> ActiveSessions:
        """The sessions with records at or after since, most recently active first, at most limit of them, from the
        newest `scan` records of the window (the timestamp index bounds the read)."""
        with self.snapshot():
            rows = self._db.execute(
                "SELECT session_id, count(*), sum(decision = 'deny'), sum(decision = 'require_approval'), "
                "min(timestamp), max(timestamp), max(seq) FROM (SELECT seq, session_id, decision, timestamp "
                "FROM decisions WHERE timestamp >= ? ORDER BY timestamp DESC LIMIT ?) "
                "GROUP BY session_id ORDER BY max(seq) DESC LIMIT ?", (format_time(since), scan, limit)).fetchall()
            scanned = int(self._db.execute(
                "SELECT count(*) FROM (SELECT 1 FROM decisions WHERE timestamp >= ? LIMIT ?)",
                (format_time(since), scan)).fetchone()[0])
            names = {int(seq): (agent, user, team, workflow) for seq, agent, user, team, workflow in self._db.execute(
                "SELECT seq, agent_id, json_extract(record, '$.input.principal.user'), "
                "json_extract(record, '$.input.principal.team'), json_extract(record, '$.input.principal.workflow') "
                f"FROM decisions WHERE seq IN ({', '.join('?' * len(rows))})", [r[6] for r in rows])}
        found = []
        for session, count, denials, asked, first, last, seq in rows:
            agent, user, team, workflow = names.get(int(seq), ("", "", "", ""))
            found.append(ActiveSession(str(session), str(agent), _text(user), _text(team), _text(workflow),
                                       int(count), int(denials or 0), int(asked or 0), str(first), str(last)))
        return ActiveSessions(tuple(found), scanned, scanned >= scan)

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[None]:
        # One read transaction: SQLite's WAL keeps the snapshot, holding back checkpoints until the block ends.
        try:
            self._db.execute("BEGIN")
        except sqlite3.Error as exc:
            raise LogReadError(f"cannot read decision log {self.path}: {exc}") from exc
        try:
            yield
        finally:
            self._db.execute("COMMIT")

    # -- the chain -------------------------------------------------------------------------------

    @_reading
    def bounds(self) -> tuple[int, int] | None:
        low, high = self._db.execute("SELECT min(seq), max(seq) FROM decisions").fetchone()
        return None if low is None else (int(low), int(high))

    @_reading
    def link_before(self, seq: int) -> tuple[int, str] | None:
        row = self._db.execute("SELECT seq, hash FROM decisions WHERE seq < ? ORDER BY seq DESC LIMIT 1",
                               (seq,)).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    @_reading
    def hash_at(self, seq: int) -> str | None:
        row = self._db.execute("SELECT hash FROM decisions WHERE seq = ?", (seq,)).fetchone()
        return None if row is None else str(row[0])

    @_reading
    def anchors(self) -> list[Anchor]:
        if not self._has_table("decisions_pruned"):
            return []
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(decisions_pruned)")}
        signature = "signature" if "signature" in columns else "''"
        return [Anchor(*row) for row in self._db.execute(
            f"SELECT upto_seq, last_hash, pruned_at, {signature} FROM decisions_pruned ORDER BY upto_seq").fetchall()]

    @_reading
    def pruned_upto(self) -> int:
        if not self._has_table("decisions_pruned"):
            return 0
        return int(self._db.execute("SELECT coalesce(max(upto_seq), 0) FROM decisions_pruned").fetchone()[0])

    @_reading
    def checkpoints(self, *, skip: int = 0) -> list[Checkpoint]:
        if not self._has_table("decisions_checkpoints"):
            return []
        return [Checkpoint(*row) for row in self._db.execute(
            "SELECT seq, hash, time, key_id, signature FROM decisions_checkpoints ORDER BY id LIMIT -1 OFFSET ?",
            (skip,)).fetchall()]

    @_keeping
    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        with self._immediate():
            self._db.execute("INSERT INTO decisions_checkpoints (seq, hash, time, key_id, signature) "
                             "VALUES (?, ?, ?, ?, ?)", (checkpoint.seq, checkpoint.hash, checkpoint.time,
                                                        checkpoint.key_id, checkpoint.signature))

    def _has_table(self, name: str) -> bool:
        return self._db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?",
                                (name,)).fetchone() is not None

    # -- exporters and retention -----------------------------------------------------------------

    @_reading
    def cursors(self) -> Mapping[str, int]:
        if not self._has_table("export_cursors"):
            return {}
        return {str(name): int(seq) for name, seq in self._db.execute("SELECT name, seq FROM export_cursors")}

    @_reading
    def cursor(self, name: str) -> int:
        if not self._has_table("export_cursors"):
            return 0
        row = self._db.execute("SELECT seq FROM export_cursors WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    @_reading
    def cursor_checkpoints(self, name: str) -> int:
        if not self._has_table("export_cursors"):
            return 0
        row = self._db.execute("SELECT checkpoints FROM export_cursors WHERE name = ?", (name,)).fetchone()
        return int(row[0]) if row else 0

    @_keeping
    def save_cursor(self, name: str, seq: int, *, checkpoints: int | None = None) -> None:
        # One short transaction: the writer's busy_timeout covers the moment it holds the lock. The seq and the
        # checkpoint count move together, so an upload is acknowledged whole or re-sent whole.
        with self._immediate():
            if checkpoints is None:
                self._db.execute("INSERT INTO export_cursors (name, seq, updated_at) VALUES (?, ?, ?) ON "
                                 "CONFLICT(name) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at",
                                 (name, seq, format_time(self._clock.now())))
                return
            self._db.execute("INSERT INTO export_cursors (name, seq, updated_at, checkpoints) VALUES (?, ?, ?, ?) "
                             "ON CONFLICT(name) DO UPDATE SET seq = excluded.seq, updated_at = excluded.updated_at, "
                             "checkpoints = excluded.checkpoints",
                             (name, seq, format_time(self._clock.now()), checkpoints))

    @_keeping
    def prune(self, *, upto: int, before: str, swept_at: str, batch: int,
              sign: Callable[[Anchor], str] | None = None) -> tuple[int, bool]:
        with self._immediate():
            rows = self._db.execute("SELECT seq, timestamp, hash FROM decisions WHERE seq <= ? ORDER BY seq LIMIT ?",
                                    (upto, batch)).fetchall()
            old = 0
            for _, timestamp, _ in rows:
                if timestamp >= before:  # the prefix ends at the first record inside the window
                    break
                old += 1
            if old:
                last, _, last_hash = rows[old - 1]
                self._db.execute("DELETE FROM decisions WHERE seq <= ?", (last,))
                # One anchor per sweep: a later batch of the same sweep replaces the one before it.
                self._db.execute("DELETE FROM decisions_pruned WHERE pruned_at = ? AND upto_seq < ?",
                                 (swept_at, last))
                signature = sign(Anchor(last, last_hash, swept_at)) if sign is not None else ""
                self._db.execute("INSERT INTO decisions_pruned (upto_seq, last_hash, pruned_at, signature) "
                                 "VALUES (?, ?, ?, ?)", (last, last_hash, swept_at, signature))
        # A batch cut short by the window (or by upto) ends the sweep.
        return old, old == len(rows) == batch

    @contextlib.contextmanager
    def _immediate(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""


def log_path(data_dir: str | Path) -> Path:
    """DATA_DIR/decisions.db; LogReadError (with a hint) when there is none."""
    path = Path(data_dir) / LOG_FILE
    if not path.is_file():
        raise LogReadError(f"no decision log at {path} (hint: --data-dir is the directory `tollgate serve` used)")
    return path


def open_read_only(data_dir: str | Path) -> SqliteDecisionStore:
    """The store of DATA_DIR/decisions.db, read-only: it never writes to the file, even while a server appends.

    Autocommit: reads that must agree with each other go in `store.snapshot()`. Close it (or use it as a
    context manager) when done.
    """
    path = log_path(data_dir)
    db: sqlite3.Connection | None = None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("SELECT seq FROM decisions LIMIT 0")
    except sqlite3.Error as exc:
        if db is not None:
            db.close()
        raise LogReadError(f"cannot read decision log {path}: {exc} (hint: is it a Tollgate decisions.db?)") from exc
    return SqliteDecisionStore(db, path=path)
