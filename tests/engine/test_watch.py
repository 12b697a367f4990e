"""The deadline watch alone: when an evaluation is overdue (CPU used, or the hard wall bound), and the queue wait."""

from __future__ import annotations

import asyncio
import collections
import os
import time
from dataclasses import dataclass, field

import pytest

from tollgate.engine import EvaluationTimeout
from tollgate.engine._watch import LOOK_AGAIN_FLOOR, HeadWatch, expire_waiting, process_cpu_ns, sweep_period


def _watch_of_this_process(deadline: float, *, cpu_ago_s: float) -> HeadWatch:
    """A watch on this test's own process (its CPU clock is the one read), started at loop time 0, cpu_ago_s of
    CPU ago. (Times below are binary fractions, so that elapsed times compare exactly.)"""
    watch = HeadWatch()
    cpu = process_cpu_ns(os.getpid())
    assert cpu is not None
    watch.start(0.0, cpu - int(cpu_ago_s * 1e9), deadline)
    return watch


def test_the_process_cpu_clock_is_the_one_a_process_reads_itself() -> None:
    before = time.process_time_ns()
    theirs = process_cpu_ns(os.getpid())
    assert theirs is not None and before <= theirs <= time.process_time_ns()


def test_half_the_deadline_is_a_look_that_times_nothing_out() -> None:
    watch = _watch_of_this_process(0.125, cpu_ago_s=5.0)  # it burned: but half the deadline only hedges
    assert watch.due(0.0625) and not watch.due(0.0624)
    assert watch.look(0.0625, os.getpid(), kill_after=2.0) is None
    assert watch.slow and not watch.due(0.124) and watch.due(0.125)


def test_at_the_deadline_an_evaluation_that_used_its_cpu_is_overdue() -> None:
    watch = _watch_of_this_process(0.125, cpu_ago_s=5.0)
    overdue = watch.look(0.125, os.getpid(), kill_after=2.0)
    assert overdue is not None and "did not finish within 125 ms of CPU time" in overdue


def test_a_starved_evaluation_is_looked_at_again_once_its_cpu_could_run_out_then_at_kill_after() -> None:
    watch = _watch_of_this_process(0.125, cpu_ago_s=0.0)
    assert watch.look(0.0625, os.getpid(), kill_after=2.0) is None  # half way: slow
    assert watch.look(0.125, os.getpid(), kill_after=2.0) is None  # the deadline, its CPU unused: let it run
    assert 0.125 + LOOK_AGAIN_FLOOR <= watch.look_at <= 0.25  # after what CPU it has left
    overdue = watch.look(2.125, os.getpid(), kill_after=2.0)
    assert overdue is not None and "stopped or wedged" in overdue


def test_the_sweep_period_follows_the_deadline_within_bounds() -> None:
    assert sweep_period(0.050) == pytest.approx(0.0125)
    assert sweep_period(0.001) == 0.002 and sweep_period(5.0) == 0.025


@dataclass
class _Request:
    queued_at: float
    wait_until: float
    started: bool = False
    future: asyncio.Future[bytes] = field(default_factory=lambda: asyncio.get_running_loop().create_future())


def test_requests_not_started_by_their_bound_are_answered_overloaded_and_started_ones_are_not() -> None:
    async def main() -> None:
        late, started, early = _Request(0.0, 1.0), _Request(0.0, 1.0, started=True), _Request(0.5, 1.5)
        queue = collections.deque([late, started, early])
        expire_waiting(queue, 1.2)
        assert list(queue) == [early]  # answered or started: out of the queue
        assert isinstance(late.future.exception(), EvaluationTimeout)
        assert "within 1000 ms (overloaded)" in str(late.future.exception())
        assert not started.future.done() and not early.future.done()
        on_worker = collections.deque([late2 := _Request(0.0, 1.0), early])
        expire_waiting(on_worker, 1.2, in_order=False)
        assert len(on_worker) == 2 and late2.future.done() and not early.future.done()  # a worker's queue stays

    asyncio.run(main())
