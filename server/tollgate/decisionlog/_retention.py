"""Decision-log retention: delete records older than a window, never ones an exporter still owes a receiver.

Records go from the oldest in seq order, in small BEGIN IMMEDIATE transactions so the writer thread (whose
busy_timeout is 5 s) waits at most one short batch. Only a contiguous prefix is deleted, never past the
lowest cursor of the configured exporters, and never the newest record (the writer continues the hash chain
from it after a restart). Each deletion writes, in the same transaction, an anchor in `decisions_pruned`:
the seq and hash of the last record deleted, from which `tollgate logs verify` checks the chain that remains.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

from tollgate.clock import Clock, SystemClock
from tollgate.decisionlog._checkpoint import CheckpointKey, anchor_statement
from tollgate.decisionlog._sqlite_store import SqliteDecisionStore
from tollgate.decisionlog._store import Anchor, DecisionStore, LogReadError
from tollgate.encoding import format_time

log = logging.getLogger(__name__)

#: Records deleted per transaction: small enough that the writer never waits long for the lock.
PRUNE_BATCH = 500


class LogRetention:
    """Deletes records older than `window` (as of `clock`); a thread runs `prune()` every `every` seconds once
    started."""

    def __init__(self, path: Path, *, window: timedelta, exporters: Sequence[str] = (), every: float = 60.0,
                 batch: int = PRUNE_BATCH, clock: Clock = SystemClock(), key: CheckpointKey | None = None) -> None:
        self._path = path
        self._key = key  # signs each anchor, so that a prefix deleted behind a forged one shows
        self._clock = clock
        self._window = window
        self._exporters = tuple(exporters)
        self._every = every
        self._batch = batch
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store: DecisionStore | None = None
        #: Records deleted since start.
        self.pruned = 0

    def _opened(self) -> DecisionStore:
        if self._store is None:
            self._store = SqliteDecisionStore.open(self._path, clock=self._clock)
        return self._store

    def start(self) -> None:
        self._opened()  # fail at start when the database cannot be opened
        self._thread = threading.Thread(target=self._run, name="decision-log-retention", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._store is not None:
            self._store.close()
            self._store = None

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.prune()
            except LogReadError as exc:  # the next sweep tries again; the log itself is unaffected
                log.error("decision log retention: %s; trying again in %gs", exc, self._every)
            self._stop.wait(self._every)

    def _sign(self, anchor: Anchor) -> str:
        return self._key.sign(anchor_statement(anchor)) if self._key is not None else ""

    def prune(self, now: datetime | None = None) -> int:
        """Delete what the window, the exporters' cursors and the newest record allow; returns how many."""
        store = self._opened()
        moment = now or self._clock.now()
        cutoff = format_time(moment - self._window)
        swept_at = format_time(moment)
        bounds = store.bounds()
        if bounds is None:
            return 0
        # Cursors only move forward and new records only get higher seqs, so limits read now stay safe.
        limit = bounds[1] - 1
        for name in self._exporters:
            limit = min(limit, store.cursor(name))
        deleted = 0
        more = True
        while more and not self._stop.is_set():
            n, more = store.prune(upto=limit, before=cutoff, swept_at=swept_at, batch=self._batch, sign=self._sign)
            deleted += n
        if deleted:
            self.pruned += deleted
            log.info("decision log retention: deleted %d records older than %s (kept everything newer, and "
                     "everything not yet exported)", deleted, cutoff)
        return deleted
