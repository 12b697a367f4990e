"""The decision log's checkpoints in the sidecar: check the log at start-up, then publish signed heads at an interval.

At start-up (before the writer continues the chain) the log is proved from its last checkpoint, or its last
STARTUP_TAIL records when no key is configured: a log edited, re-hashed or cut behind the server's back stops
the server with the break named, unless the operator accepts it (`--accept-log-tamper`, logged loudly). While
serving, a plugin signs the head every interval (and once more on stop, after the last commit) into the log's
checkpoint table and, when configured, a JSON Lines file meant to live somewhere the data directory is not.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from tollgate.clock import Clock, SystemClock
from tollgate.decisionlog import LogReadError, SqliteDecisionStore, verify
from tollgate.decisionlog._checkpoint import Checkpoint, CheckpointKey, checkpoint_problems, read_checkpoints
from tollgate.encoding import canonical_json, format_time
from tollgate.sidecar._plugins import NOT_STARTED, RUNNING, PluginState, PluginStatus, cancel

log = logging.getLogger(__name__)

#: Without a checkpoint to start from, how many of the newest records start-up proves.
STARTUP_TAIL = 10_000


def startup_problems(path: Path, key: CheckpointKey | None, *, file: Path | None = None,
                     tail: int = STARTUP_TAIL) -> list[str]:
    """What is wrong with decisions.db at start-up ([]: the tail holds): with a key, the anchors and the last
    checkpoint must be signed, its head must still be in the log, and the chain must hold from it to the end;
    without one, the newest `tail` records must chain. The last checkpoint of `file` (the checkpoint file, outside
    the data directory) counts too: wiping the log's own checkpoint table does not hide a rewrite from it.
    LogReadError when the log cannot be read (CheckpointError: the file)."""
    if not path.is_file():
        return []
    # No writer runs yet, so these reads see one log without a snapshot of their own (verify takes its own).
    with SqliteDecisionStore.open(path) as store:
        bounds = store.bounds()
        if bounds is None:
            return []
        latest = store.checkpoints()[-1:] if key is not None else []
        if key is not None and file is not None and file.exists():
            latest += read_checkpoints(file)[-1:]
        problems = checkpoint_problems(store, latest, key=key) if key is not None else []
        since = min((c.seq for c in latest), default=bounds[1] - tail + 1)
        first = max(bounds[0], min(since, bounds[1]))
        result = verify(store, first=first)
    if result.broken is not None:
        problems.append(f"chain broken at {result.broken.describe()}")
    return problems


class CheckpointPublisher:
    """Signs the chain head of decisions.db with `key` into its checkpoint table (and `file`, when given)."""

    def __init__(self, path: Path, key: CheckpointKey, *, file: Path | None = None,
                 clock: Clock = SystemClock()) -> None:
        self._path = path
        self._key = key
        self._file = file
        self._clock = clock
        self._store: SqliteDecisionStore | None = None
        self._last: tuple[int, str] | None = None
        #: Checkpoints published since start.
        self.published = 0

    def publish(self) -> Checkpoint | None:
        """Sign and keep the head if it moved since the last checkpoint; returns it (None: nothing new)."""
        if self._store is None:
            self._store = SqliteDecisionStore.open(self._path, clock=self._clock)
        store = self._store
        with store.snapshot():
            bounds = store.bounds()
            head = None if bounds is None else store.hash_at(bounds[1])
            kept = store.checkpoints() if self._last is None else []  # once: where the last run left off
        if bounds is None or head is None:
            return None
        if kept:
            self._last = (kept[-1].seq, kept[-1].hash)
        if self._last == (bounds[1], head):
            return None
        checkpoint = Checkpoint(bounds[1], head, format_time(self._clock.now())).signed(self._key)
        if self._file is not None:  # the copy outside the data directory first: the table is the attacker's too
            self._append(checkpoint)
        store.save_checkpoint(checkpoint)
        self._last = (checkpoint.seq, checkpoint.hash)
        self.published += 1
        return checkpoint

    def _append(self, checkpoint: Checkpoint) -> None:
        assert self._file is not None
        line = (canonical_json(checkpoint.as_dict()) + "\n").encode()
        try:
            fd = os.open(self._file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            raise LogReadError(f"cannot append a checkpoint to {self._file} ({exc.strerror or exc}); check "
                               "decision_log_checkpoint_file's directory") from exc

    def close(self) -> None:
        if self._store is not None:
            self._store.close()
            self._store = None


class CheckpointPlugin:
    """Publishes a checkpoint every `every` seconds and once more on stop; its last failure is its status."""

    name = "decision log checkpoints"
    required = False

    def __init__(self, publisher: CheckpointPublisher, *, every: float) -> None:
        self._publisher = publisher
        self._every = every
        self._task: asyncio.Task[None] | None = None
        self._status = NOT_STARTED

    async def start(self) -> None:
        await self._round()  # a first checkpoint of the head the server starts from
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        await self._round()  # the head after the last answer (the gRPC server has drained by now)
        self._publisher.close()
        self._status = NOT_STARTED

    def status(self) -> PluginStatus:
        return self._status

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            await self._round()

    async def _round(self) -> None:
        try:
            # Off the event loop: saving waits for the writer's lock (up to SQLite's busy timeout) and fsyncs the file.
            await asyncio.to_thread(self._publisher.publish)
        except LogReadError as exc:
            log.error("%s: %s", self.name, exc)
            self._status = PluginStatus(PluginState.WARN, str(exc))
        else:
            self._status = RUNNING
