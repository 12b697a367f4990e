"""Decision-log retention: delete records older than a window, never ones an exporter still owes a receiver.

Records go from the oldest in seq order, in small BEGIN IMMEDIATE transactions so the writer thread (whose
busy_timeout is 5 s) waits at most one short batch. Only a contiguous prefix is deleted, never past the
lowest cursor of the configured exporters, and never the newest record (the writer continues the hash chain
from it after a restart). Each deletion writes, in the same transaction, an anchor in `decisions_pruned`:
the seq and hash of the last record deleted, from which `tollgate logs verify` checks the chain that remains.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from tollgate.clock import Clock, SystemClock
from tollgate.decisionlog._export import connect, read_cursor
from tollgate.encoding import format_time

log = logging.getLogger(__name__)

PRUNED_SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions_pruned (
    upto_seq INTEGER PRIMARY KEY,         -- every record with seq <= upto_seq has been deleted
    last_hash TEXT NOT NULL,              -- the hash of record upto_seq: the next record's prev_hash
    pruned_at TEXT NOT NULL
);
"""
#: Records deleted per transaction: small enough that the writer never waits long for the lock.
PRUNE_BATCH = 500


class LogRetention:
    """Deletes records older than `window` (as of `clock`); a thread runs `prune()` every `every` seconds once
    started."""

    def __init__(self, path: Path, *, window: timedelta, exporters: Sequence[str] = (), every: float = 60.0,
                 batch: int = PRUNE_BATCH, clock: Clock = SystemClock()) -> None:
        self._path = path
        self._clock = clock
        self._window = window
        self._exporters = tuple(exporters)
        self._every = every
        self._batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._db: sqlite3.Connection | None = None
        #: Records deleted since start.
        self.pruned = 0

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = connect(self._path)
            self._db.executescript(PRUNED_SCHEMA)
        return self._db

    def start(self) -> None:
        self._connection()  # fail at start when the database cannot be opened
        self._thread = threading.Thread(target=self._run, name="decision-log-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.prune()
            except sqlite3.Error as exc:  # the next sweep tries again; the log itself is unaffected
                log.error("decision log retention: %s; trying again in %gs", exc, self._every)
            self._stop.wait(self._every)

    def prune(self, now: datetime | None = None) -> int:
        """Delete what the window, the exporters' cursors and the newest record allow; returns how many."""
        db = self._connection()
        moment = now or self._clock.now()
        cutoff = format_time(moment - self._window)
        swept_at = format_time(moment)
        newest = db.execute("SELECT max(seq) FROM decisions").fetchone()[0]
        if newest is None:
            return 0
        # Cursors only move forward and new records only get higher seqs, so limits read now stay safe.
        limit = newest - 1
        for name in self._exporters:
            limit = min(limit, read_cursor(db, name))
        deleted = 0
        more = True
        while more and not self._stop.is_set():
            n, more = self._prune_batch(db, limit=limit, cutoff=cutoff, swept_at=swept_at)
            deleted += n
        if deleted:
            self.pruned += deleted
            log.info("decision log retention: deleted %d records older than %s (kept everything newer, and "
                     "everything not yet exported)", deleted, cutoff)
        return deleted

    def _prune_batch(self, db: sqlite3.Connection, *, limit: int, cutoff: str, swept_at: str) -> tuple[int, bool]:
        """Delete up to one batch of the oldest records; returns (deleted, whether more may follow)."""
        db.execute("BEGIN IMMEDIATE")
        try:
            rows = db.execute("SELECT seq, timestamp, hash FROM decisions WHERE seq <= ? ORDER BY seq LIMIT ?",
                              (limit, self._batch)).fetchall()
            old = 0
            for _, timestamp, _ in rows:
                if timestamp >= cutoff:  # the prefix ends at the first record inside the window
                    break
                old += 1
            if old:
                upto, _, last_hash = rows[old - 1]
                db.execute("DELETE FROM decisions WHERE seq <= ?", (upto,))
                # One anchor per sweep: a later batch of the same sweep replaces the one before it.
                db.execute("DELETE FROM decisions_pruned WHERE pruned_at = ? AND upto_seq < ?", (swept_at, upto))
                db.execute("INSERT INTO decisions_pruned (upto_seq, last_hash, pruned_at) VALUES (?, ?, ?)",
                           (upto, last_hash, swept_at))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        # A batch cut short by the window (or by the limit) ends the sweep.
        return old, old == len(rows) == self._batch
