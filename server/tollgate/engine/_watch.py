"""The engine pool's deadline watch: one periodic sweep, and the CPU time a worker process has used.

An evaluation's deadline is CPU time, not wall time: a worker that is runnable but not running (the machine is
busy) or stopped is not running past its deadline. Each answer frame carries the worker's process CPU time when
it finished (tollgate.engine._frames' marked frames), so the pool knows the mark the next evaluation started
from; only an evaluation still running at its wall-clock deadline costs a read of the worker's CPU clock here.

No timer per request or per evaluation: one sweep, every few ms while any evaluation is in flight, looks at each
worker's head and at the requests still queued (the pool's _sweep).
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, TypeVar

from tollgate.engine._base import EvaluationTimeout

#: The sweep's period is a quarter of the deadline, within these bounds (seconds): fine enough that a deadline
#: answer is late by a fraction of it, coarse enough to cost nothing against the requests it watches.
SWEEP_MIN, SWEEP_MAX = 0.002, 0.025
#: Shortest wait before looking again at an evaluation under its CPU deadline (never a busy poll).
LOOK_AGAIN_FLOOR = 0.005


def sweep_period(eval_timeout: float) -> float:
    """Seconds between sweeps for this deadline."""
    return min(max(eval_timeout / 4, SWEEP_MIN), SWEEP_MAX)


class Sweep:
    """One timer for a whole pool: calls tick every period while tick says there is still work to watch.

    arm() costs a comparison when the sweep already runs, so every request may call it.
    """

    __slots__ = ("_handle", "_loop", "_period", "_tick")

    def __init__(self, loop: asyncio.AbstractEventLoop, period: float, tick: Callable[[float], bool]) -> None:
        self._loop = loop
        self._period = period
        self._tick = tick
        self._handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        if self._handle is None:
            self._handle = self._loop.call_later(self._period, self._run)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _run(self) -> None:
        self._handle = None
        if self._tick(self._loop.time()):
            self.arm()


def process_cpu_ns(pid: int) -> int | None:
    """CPU time every thread of a process has used, in ns (the clock the worker's time.process_time_ns reads),
    or None if unknown (the process is gone)."""
    try:
        return time.clock_gettime_ns(((~pid) << 3) | 2)  # the process's CPU clock (Linux's clock_getcpuclockid)
    except (OSError, OverflowError):
        pass
    try:  # the same figure from /proc, less its exited threads'
        return sum(int((task / "schedstat").read_text().split()[0])
                   for task in Path(f"/proc/{pid}/task").iterdir())
    except (OSError, ValueError, IndexError):
        return None


class HeadWatch:
    """The deadline watch on the evaluation a worker is running (the head of its queue)."""

    __slots__ = ("cpu", "deadline", "look_at", "running", "slow", "started")

    def __init__(self) -> None:
        self.running = False  # an evaluation is running: the sweep watches it
        self.slow = False  # it has run past half its deadline (wall time): the pool sends new work elsewhere
        self.started = 0.0  # loop time it started
        self.cpu: int | None = None  # the worker's CPU ns it started from
        self.deadline = 0.0  # seconds of CPU it may use
        self.look_at = 0.0  # seconds after it started at which the sweep looks at it next

    def start(self, now: float, cpu: int | None, deadline: float) -> None:
        self.running, self.slow, self.started, self.cpu, self.deadline = True, False, now, cpu, deadline
        self.look_at = deadline / 2

    def stop(self) -> None:
        self.running = self.slow = False

    def due(self, now: float) -> bool:
        return self.running and now - self.started >= self.look_at

    def look(self, now: float, pid: int, kill_after: float) -> str | None:
        """A look when due: None while it may run on (the pool may hedge what waits behind it), or, overdue, the
        message of its EvaluationTimeout. Overdue is the deadline's CPU used, or kill_after past the deadline in
        wall time whatever it used (stopped or wedged); until then it is looked at again once it could have
        used the rest of its CPU."""
        deadline, elapsed = self.deadline, now - self.started
        if not self.slow:
            self.slow, self.look_at = True, deadline
            if elapsed < deadline:
                return None
        cpu = process_cpu_ns(pid)
        used = None if cpu is None or self.cpu is None else (cpu - self.cpu) / 1e9
        if used is None or used >= deadline:
            spent = "an unknown amount" if used is None else f"{used * 1000:.4g} ms"
            return (f"policy evaluation did not finish within {deadline * 1000:.4g} ms of CPU time (the engine "
                    f"worker used {spent} on it)")
        if elapsed >= deadline + kill_after:
            return (f"the engine worker gave no answer {elapsed * 1000:.4g} ms into an evaluation, having used "
                    f"{used * 1000:.4g} ms of CPU on it (stopped or wedged)")
        self.look_at = min(elapsed + max(deadline - used, LOOK_AGAIN_FLOOR), deadline + kill_after)
        return None


class Waiter(Protocol):
    """A request as the sweep sees it: when it was asked, by when its evaluation must start, whether it did."""

    queued_at: float
    wait_until: float
    started: bool
    future: asyncio.Future[bytes]


_W = TypeVar("_W", bound=Waiter)


def expire_waiting(waiting: collections.deque[_W], now: float, *, in_order: bool = True) -> None:
    """Answer EvaluationTimeout (overloaded) to the requests in waiting whose evaluation has not started by their
    wait_until. In order, waiting is a queue in the order asked: answered (and dropped) from its front up to the
    first that may wait on (one re-queued from a retired worker, older, is answered once those ahead of it are).
    Otherwise every one is looked at, and left where it is (a worker answers its queue in order)."""
    if in_order:
        while waiting and (waiting[0].future.done() or waiting[0].wait_until <= now):
            _overloaded(waiting.popleft())
        return
    for pending in waiting:
        if pending.wait_until <= now:
            _overloaded(pending)


def _overloaded(pending: Waiter) -> None:
    if not pending.started and not pending.future.done():  # a started one is a hedged copy's twin: it runs
        waited = (pending.wait_until - pending.queued_at) * 1000
        pending.future.set_exception(EvaluationTimeout(
            f"no engine worker started the request's evaluation within {waited:.4g} ms (overloaded)"))
