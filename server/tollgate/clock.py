"""The one clock the sidecar reads: record timestamps, budget windows, approval and reservation TTLs, kill switches.

Production reads the system clock. Tests inject a `ManualClock` (set or advanced, never slept past). Two
testing aids move a whole process's clock, both read once at start-up from the environment (which no caller of
the API can reach) and logged loudly when used: `TOLLGATE_TESTING_CLOCK_START` starts the clock at a chosen
time (seconds before a year end, say), and `TOLLGATE_TESTING_CLOCK_SHIFT_FILE` names a file holding seconds to
add, re-read whenever the file changes, so an end-to-end test moves a running server past a TTL instead of
sleeping past it. Process-wide clock shifters (faketime, patching Python's wall clock) do not serve: gRPC's C
core and Python's `time.sleep` disagree with them. Durations (deadlines, timeouts, backoff) use
`time.monotonic`, which no shift touches.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Protocol

from tollgate.encoding import parse_time

log = logging.getLogger(__name__)

#: Environment variable naming the RFC 3339 time a process's clock starts at (testing only).
START_ENV = "TOLLGATE_TESTING_CLOCK_START"
#: Environment variable naming a file of seconds (a decimal number) to add to the clock (testing only).
SHIFT_ENV = "TOLLGATE_TESTING_CLOCK_SHIFT_FILE"


class Clock(Protocol):
    """Wall-clock time as Tollgate reads it."""

    def now(self) -> datetime:
        """The current time, timezone-aware, in UTC."""
        ...

    def time(self) -> float:
        """The current time in seconds since the epoch."""
        ...


class SystemClock:
    """The system's wall clock."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    def time(self) -> float:
        return time.time()


class OffsetClock:
    """The system clock moved by a fixed offset: it runs at real speed from a chosen start."""

    def __init__(self, start: datetime) -> None:
        self.offset = start.timestamp() - time.time()

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def time(self) -> float:
        return time.time() + self.offset


class ManualClock:
    """A clock that moves only when told to (tests): `advance` past a TTL instead of sleeping past it."""

    def __init__(self, start: datetime | None = None) -> None:
        self._lock = threading.Lock()
        self._now = (start or datetime.now(UTC)).astimezone(UTC)

    def now(self) -> datetime:
        with self._lock:
            return self._now

    def time(self) -> float:
        return self.now().timestamp()

    def set(self, moment: datetime) -> None:
        with self._lock:
            self._now = moment.astimezone(UTC)

    def advance(self, seconds: float) -> datetime:
        with self._lock:
            self._now += timedelta(seconds=seconds)
            return self._now


class ShiftFileClock:
    """Another clock moved by the seconds a file holds, re-read whenever the file changes (testing only).

    A missing or empty file adds nothing. Each read costs one stat(): only a testing process pays it. A file
    that does not hold a number is logged and the last good shift kept, so a half-written file never moves
    time back; write it whole (write a temporary file, then rename it over this one).
    """

    def __init__(self, base: Clock, path: Path) -> None:
        self._base = base
        self.path = path
        # (file identity, seconds) swapped in one assignment: readers on other threads see one or the other.
        self._seen: tuple[tuple[int, int, int] | None, float] = (None, 0.0)

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.time(), UTC)

    def time(self) -> float:
        return self._base.time() + self.shift()

    def shift(self) -> float:
        """The seconds the file adds now."""
        try:
            st = os.stat(self.path)
            stamp: tuple[int, int, int] | None = (st.st_ino, st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        seen, seconds = self._seen
        if stamp == seen:
            return seconds
        try:
            text = self.path.read_text().strip() if stamp is not None else ""
            seconds = float(text) if text else 0.0
        except (OSError, ValueError) as exc:
            log.error("TESTING CLOCK: %s: not a number of seconds (%s); the clock keeps its shift of %gs",
                      self.path, exc, seconds)
        self._seen = (stamp, seconds)
        return seconds


def from_environment(environ: Mapping[str, str] | None = None) -> Clock:
    """The clock a process starts with: the system clock, unless START_ENV names a start time or SHIFT_ENV a
    shift file (testing aids: each is logged as a warning). A start that is not an RFC 3339 time, or a shift
    file in a directory that does not exist, stops the process (SystemExit)."""
    env = os.environ if environ is None else environ
    start, shift_file = env.get(START_ENV, "").strip(), env.get(SHIFT_ENV, "").strip()
    clock: Clock = SystemClock()
    if start:
        try:
            moment = parse_time(start)
        except ValueError as exc:
            raise SystemExit(f"{START_ENV}: {exc}") from None
        log.warning("TESTING CLOCK: %s=%s: this process's wall clock starts at %s, not the system time; "
                    "never set it outside tests", START_ENV, start, moment.isoformat())
        clock = OffsetClock(moment)
    if shift_file:
        path = Path(shift_file)
        if not path.parent.is_dir():
            raise SystemExit(f"{SHIFT_ENV}: {path.parent}: no such directory (the file itself may be missing)")
        log.warning("TESTING CLOCK: %s=%s: this process's wall clock moves by the seconds written there; "
                    "never set it outside tests", SHIFT_ENV, shift_file)
        clock = ShiftFileClock(clock, path)
    return clock
