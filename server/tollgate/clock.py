"""The one clock the sidecar reads: record timestamps, budget windows, approval and reservation TTLs, kill switches.

Production reads the system clock. Tests inject a `ManualClock` (set or advanced, never slept past), and a
process can be started on a shifted clock through `TOLLGATE_TESTING_CLOCK_START` — a testing aid, read once at
start-up from the environment, which no caller of the API can reach, and logged loudly when used. Process-wide
clock shifters (faketime, patching Python's wall clock) do not serve: gRPC's C core and Python's `time.sleep`
disagree with them. Durations (deadlines, timeouts, backoff) use `time.monotonic`, which no shift touches.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Protocol

from tollgate.encoding import parse_time

log = logging.getLogger(__name__)

#: Environment variable naming the RFC 3339 time a process's clock starts at (testing only).
START_ENV = "TOLLGATE_TESTING_CLOCK_START"


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


def from_environment(environ: dict[str, str] | None = None) -> Clock:
    """The clock a process starts with: the system clock, unless START_ENV names a start time (testing only)."""
    start = (os.environ if environ is None else environ).get(START_ENV, "").strip()
    if not start:
        return SystemClock()
    try:
        moment = parse_time(start)
    except ValueError as exc:
        raise SystemExit(f"{START_ENV}: {exc}") from None
    log.warning("TESTING CLOCK: %s=%s: this process's wall clock starts at %s, not the system time; "
                "never set it outside tests", START_ENV, start, moment.isoformat())
    return OffsetClock(moment)
