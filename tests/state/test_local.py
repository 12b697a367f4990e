"""The SQLite store behind the async protocols: calls leave the event loop, and a budget step holds its scopes
only: two sessions proceed at once, two requests of one session take turns, and the lock table does not grow."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from tollgate.clock import ManualClock
from tollgate.state import LocalBudgets, LocalState, StateError, open_local_state
from tollgate.state.budgets import BudgetExceeded, SpendSnapshot

ALICE = {"session": "alice-1", "agent": "a"}
BOB = {"session": "bob-1", "agent": "b"}
LIMIT = {"session": {"usd": 1.0}}


@pytest.fixture
def state(tmp_path: Path) -> LocalState:
    return open_local_state(tmp_path, clock=ManualClock(), reservation_ttl=60)


def test_holds_on_different_sessions_proceed_at_once(state: LocalState) -> None:
    budgets = state.budgets

    async def run() -> None:
        alice_in, bob_in = asyncio.Event(), asyncio.Event()

        async def step(scopes: dict[str, str], mine: asyncio.Event, other: asyncio.Event) -> None:
            async with budgets.hold(scopes) as hold:
                await hold.spend()
                mine.set()
                await other.wait()  # only possible while the other holds its step at the same time
                await hold.reserve({"usd": 0.5}, limits=LIMIT)

        await asyncio.wait_for(asyncio.gather(step(ALICE, alice_in, bob_in), step(BOB, bob_in, alice_in)), 10)

    asyncio.run(run())


def test_holds_on_one_session_take_turns_and_the_second_sees_the_first_reservation(state: LocalState) -> None:
    budgets = state.budgets

    async def run() -> list[str]:
        order: list[str] = []
        first_in, second_waiting = asyncio.Event(), asyncio.Event()

        async def first() -> None:
            async with budgets.hold(ALICE) as hold:
                first_in.set()
                await second_waiting.wait()
                order.append("first reads")
                await hold.spend()
                await hold.reserve({"usd": 0.6}, limits=LIMIT)
                order.append("first reserved")

        async def second() -> None:
            await first_in.wait()
            entered = budgets.hold({"session": "alice-1", "agent": "other"})  # shares the session only
            waiting = asyncio.ensure_future(entered.__aenter__())
            await asyncio.sleep(0)  # let it queue on the session's lock
            assert not waiting.done()
            second_waiting.set()
            hold = await waiting
            try:
                order.append("second reads")
                spent = await hold.spend()
                order.append(f"second sees {spent.by_scope['session']['usd']}")
            finally:
                await entered.__aexit__(None, None, None)

        await asyncio.wait_for(asyncio.gather(first(), second()), 10)
        return order

    assert asyncio.run(run()) == ["first reads", "first reserved", "second reads", "second sees 0.6"]


def test_the_lock_table_does_not_grow_after_holds_end(state: LocalState) -> None:
    budgets = state.budgets

    async def run() -> None:
        async def step(n: int) -> None:
            async with budgets.hold({"session": f"s-{n}", "agent": "a"}) as hold:
                await hold.spend()

        await asyncio.gather(*(step(n) for n in range(200)))
        assert len(budgets.locks) == 0
        # A hold cancelled while it waits for a lock leaves nothing behind either.
        async with budgets.hold(ALICE):
            waiting = asyncio.ensure_future(budgets.hold(ALICE).__aenter__())
            await asyncio.sleep(0)
            assert len(budgets.locks) == 2
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
        assert len(budgets.locks) == 0

    asyncio.run(run())


def test_a_hold_reads_and_reserves_off_the_loop_at_one_moment(tmp_path: Path) -> None:
    clock = ManualClock()
    budgets = open_local_state(tmp_path, clock=clock).budgets
    ledger = budgets.budgets
    seen: list[tuple[str, float | None]] = []
    spend, reserve = ledger.spend, ledger.reserve

    def spend_noting(*args: Any, now: float | None = None, **kwargs: Any) -> SpendSnapshot:
        seen.append((threading.current_thread().name, now))
        return spend(*args, now=now, **kwargs)

    def reserve_noting(*args: Any, now: float | None = None, **kwargs: Any) -> str:
        seen.append((threading.current_thread().name, now))
        return reserve(*args, now=now, **kwargs)

    async def run() -> str:
        async with budgets.hold(ALICE) as hold:
            await hold.spend()
            clock.advance(30)
            await hold.reserve({"usd": 0.1}, limits=LIMIT)
        return threading.current_thread().name

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ledger, "spend", spend_noting)
        patch.setattr(ledger, "reserve", reserve_noting)
        loop_thread = asyncio.run(run())
    assert len(seen) == 2 and loop_thread not in [name for name, _ in seen]
    assert seen[0][1] == seen[1][1] is not None


def test_a_hold_reserves_once_and_refuses_past_the_limit(state: LocalState) -> None:
    budgets = state.budgets

    async def run() -> None:
        async with budgets.hold(ALICE) as hold:
            await hold.reserve({"usd": 0.6}, limits=LIMIT)
            with pytest.raises(RuntimeError, match="at most once"):
                await hold.reserve({"usd": 0.1}, limits=LIMIT)
        async with budgets.hold(ALICE) as hold:
            with pytest.raises(BudgetExceeded):
                await hold.reserve({"usd": 0.6}, limits=LIMIT)

    asyncio.run(run())


def test_a_step_that_fails_after_reserving_withdraws_the_reservation(state: LocalState) -> None:
    budgets = state.budgets

    async def run() -> SpendSnapshot:
        with pytest.raises(RuntimeError, match="log went away"):
            async with budgets.hold(ALICE) as hold:
                reservation_id = await hold.reserve({"usd": 0.6}, limits=LIMIT)
                assert await budgets.get(reservation_id)
                raise RuntimeError("log went away")
        async with budgets.hold(ALICE) as hold:
            return await hold.spend()

    assert asyncio.run(run()).by_scope["session"] == {"usd": 0.0}  # the unit shows, at nothing


def test_a_step_cancelled_while_reserving_lets_go_only_once_the_reservation_is_written(state: LocalState) -> None:
    budgets = state.budgets
    ledger = budgets.budgets
    writing, may_finish = threading.Event(), threading.Event()
    reserve = ledger.reserve

    def slow_reserve(*args: Any, **kwargs: Any) -> str:
        writing.set()
        may_finish.wait(10)
        return reserve(*args, **kwargs)

    async def run() -> tuple[bool, SpendSnapshot]:
        async def step() -> None:
            async with budgets.hold(ALICE) as hold:
                await hold.reserve({"usd": 0.6}, limits=LIMIT)

        async def next_step() -> SpendSnapshot:
            async with budgets.hold(ALICE) as hold:
                return await hold.spend()

        task = asyncio.ensure_future(step())
        await asyncio.to_thread(writing.wait, 10)
        task.cancel()
        follower = asyncio.ensure_future(next_step())
        for _ in range(20):  # every turn the loop needs to deliver the cancel and let a free lock go
            await asyncio.sleep(0)
        entered_early = follower.done()
        may_finish.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        return entered_early, await follower

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ledger, "reserve", slow_reserve)
        entered_early, spent = asyncio.run(run())
    assert not entered_early
    # The cancelled step's reservation is withdrawn before the next one reads: its decision was never answered.
    assert spent.by_scope["session"] == {"usd": 0.0}


def test_the_adapters_answer_like_the_sync_classes(state: LocalState) -> None:
    async def run() -> None:
        switch = await state.kill_switches.kill("agent", "a", reason="INC-1", by="sre")
        assert state.kill_switches.snapshot().active[("agent", "a")] == switch
        assert state.kill_switches.staleness() == ""
        assert [s.value for s in await state.kill_switches.list()] == ["a"]
        await state.kill_switches.revive("agent", "a", by="sre")
        assert [h.action for h in await state.kill_switches.history()] == ["kill", "revive"]
        approvals = state.approvals
        generation = approvals.generation
        opened = await approvals.open(request_digest="d", kind="tool", principal={"agent_id": "a"}, action={},
                                      approvers=["pat"], ttl_seconds=60, opened_by="dec-1")
        assert opened is not None and approvals.generation > generation
        assert approvals.may_decide(opened, "a") and not approvals.may_decide(opened, "pat")
        await approvals.decide(opened.id, approve=True, by="pat", reason="ok")
        assert [a.id for a in await approvals.list(status="approved")] == [opened.id]
        assert await approvals.consume(opened.id, request_digest="d", decision_id="dec-2")
        assert not await approvals.consume(opened.id, request_digest="d", decision_id="dec-3")
        assert (await approvals.get(opened.id)).status == "used"  # type: ignore[union-attr]
        assert await approvals.get("apr_none") is None

    asyncio.run(run())


def test_a_newer_schema_is_refused_and_the_file_closed(tmp_path: Path) -> None:
    open_local_state(tmp_path).close()
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute("UPDATE schema_versions SET version = 99 WHERE component = 'budgets'")
    with pytest.raises(StateError, match="newer"):
        open_local_state(tmp_path)


def test_usage_report_and_expiry_through_the_adapter(tmp_path: Path) -> None:
    clock = ManualClock()
    budgets: LocalBudgets = open_local_state(tmp_path, clock=clock, reservation_ttl=60).budgets

    async def run() -> None:
        async with budgets.hold(ALICE) as hold:
            kept = await hold.reserve({"usd": 0.25}, limits=LIMIT)
        async with budgets.hold(ALICE) as hold:
            await hold.reserve({"usd": 0.25}, limits=LIMIT)
        reported = await budgets.report(kept, amount=0.2)
        assert (reported.committed, reported.status) == (0.2, "committed")
        clock.advance(61)
        assert await budgets.expire() == 1
        [session] = await budgets.usage({"session": "alice-1"})
        assert session.units == {"usd": (0.2, 0.0)}

    asyncio.run(run())


def test_the_change_watch_hears_another_connections_commits_and_not_its_own(tmp_path: Path) -> None:
    clock = ManualClock()
    sidecar, console = open_local_state(tmp_path, clock=clock), open_local_state(tmp_path, clock=clock)
    try:
        async def run() -> None:
            assert not sidecar.changes.check()  # nothing since it opened
            generation = sidecar.approvals.generation
            await sidecar.kill_switches.kill("agent", "own", reason="r", by="ops")
            assert not sidecar.changes.check()  # its own commit: published in the call that made it
            await console.kill_switches.kill("session", "s-1", reason="incident", by="ops")
            assert ("session", "s-1") not in sidecar.kill_switches.snapshot().active  # not heard yet
            assert sidecar.changes.check()
            assert set(sidecar.kill_switches.snapshot().active) == {("agent", "own"), ("session", "s-1")}
            assert sidecar.approvals.generation == generation + 1  # watchers re-read approvals too
            assert not sidecar.changes.check()
            # Listing and lifting read the file, not the copy: no watch needed in between.
            await console.kill_switches.revive("agent", "own", by="ops")
            assert {(k.scope, k.value) for k in await sidecar.kill_switches.list()} == {("session", "s-1")}
            await console.kill_switches.kill("team", "t", reason="r", by="ops")
            assert (await sidecar.kill_switches.revive("team", "t", by="ops")).reason == "r"
            assert ("team", "t") not in sidecar.kill_switches.snapshot().active

        asyncio.run(run())
    finally:
        sidecar.close()
        console.close()
