"""The bounded line of one scope's budget steps (ScopeLocks max_waiting / max_wait): past it a request is DENY
scope_overloaded at once, on a real SQLite ledger with real asyncio concurrency; other scopes never wait."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import eventually
from tollgate.contract import ALLOW, DENY, PolicyResult, ReservePlan
from tollgate.decision import SCOPE_OVERLOADED, BudgetGuard, Settlement
from tollgate.state import LocalBudgets, ScopeLocks, StateStore
from tollgate.state._local import ScopeOverloaded
from tollgate.state.budgets import Budgets

HOT = {"agent_id": "a", "session_id": "hot"}
COLD = {"agent_id": "b", "session_id": "cold"}  # shares no scope with HOT
ALLOWED = PolicyResult(ALLOW, reserve=ReservePlan({"usd": 0.01}, {}))


def _guard(tmp_path: Path, locks: ScopeLocks) -> BudgetGuard:
    return BudgetGuard(LocalBudgets(Budgets(StateStore(tmp_path / "state.db")), locks=locks))


async def _decide(guard: BudgetGuard, principal: Mapping[str, Any], *, before_settle: asyncio.Event | None = None,
                  entered: asyncio.Event | None = None) -> Settlement:
    """One spending request through the guard as the authorizer runs it: step, view, (the policy), settle."""
    async with guard.step("budget", principal):
        view = await guard.view("budget", principal)
        if entered is not None:
            entered.set()
        if before_settle is not None:
            await before_settle.wait()  # a slow evaluation: the scope's line forms behind it
        return await guard.settle("budget", principal, {}, ALLOWED, view, decision_id="d")


def _code(settled: Settlement) -> str:
    return settled.result.reasons[0].code if settled.result.reasons else ""


def test_a_full_line_denies_scope_overloaded_at_once_and_the_line_still_gets_through(tmp_path: Path) -> None:
    async def run() -> None:
        locks = ScopeLocks(max_waiting=4)
        guard = _guard(tmp_path, locks)
        release, entered = asyncio.Event(), asyncio.Event()
        first = asyncio.ensure_future(_decide(guard, HOT, before_settle=release, entered=entered))
        await entered.wait()
        waiting = [asyncio.ensure_future(_decide(guard, HOT)) for _ in range(4)]
        await eventually(lambda: locks.waiting == 4, what="the four in line")
        # Past the line: answered while the holder still holds (no wait on the release below).
        over = await asyncio.wait_for(asyncio.gather(*(_decide(guard, HOT) for _ in range(8))), timeout=10)
        assert {(s.result.decision, _code(s)) for s in over} == {(DENY, SCOPE_OVERLOADED)}
        assert "already wait for their budget step" in over[0].result.reasons[0].message
        assert over[0].error and not over[0].reservation_id  # the record's error says why; nothing reserved
        cold = await asyncio.wait_for(_decide(guard, COLD), timeout=10)  # another scope does not wait
        assert cold.result.decision == ALLOW and cold.reservation_id
        release.set()
        done = await asyncio.wait_for(asyncio.gather(first, *waiting), timeout=10)
        assert all(s.result.decision == ALLOW and s.reservation_id for s in done)
        assert len(guard.budgets.locks) == 0  # type: ignore[attr-defined]

    asyncio.run(run())


def test_a_request_waiting_past_the_bound_is_denied_scope_overloaded(tmp_path: Path) -> None:
    async def run() -> None:
        guard = _guard(tmp_path, ScopeLocks(max_waiting=64, max_wait=0.2))
        release, entered = asyncio.Event(), asyncio.Event()
        first = asyncio.ensure_future(_decide(guard, HOT, before_settle=release, entered=entered))
        await entered.wait()
        # The holder lets go only once the waiter was answered: without the bound this would never finish.
        late = await asyncio.wait_for(_decide(guard, HOT), timeout=10)
        assert (late.result.decision, _code(late)) == (DENY, SCOPE_OVERLOADED)
        assert "waited 0.2s" in late.result.reasons[0].message
        release.set()
        assert (await asyncio.wait_for(first, timeout=10)).result.decision == ALLOW
        assert (await _decide(guard, HOT)).result.decision == ALLOW  # the line is free again
        assert len(guard.budgets.locks) == 0  # type: ignore[attr-defined]

    asyncio.run(run())


def test_a_hold_refused_on_a_later_scope_lets_go_of_the_earlier_ones(tmp_path: Path) -> None:
    async def run() -> None:
        locks = ScopeLocks(max_waiting=0)
        entered, release = asyncio.Event(), asyncio.Event()

        async def holder() -> None:
            async with locks.held({"session": "s"}):
                entered.set()
                await release.wait()

        task = asyncio.ensure_future(holder())
        await entered.wait()
        with pytest.raises(ScopeOverloaded):  # agent 'a' is taken first (sorted), then session 's' is full
            async with locks.held({"agent": "a", "session": "s"}):
                pass
        async with asyncio.timeout(5), locks.held({"agent": "a"}):  # agent 'a' was let go
            pass
        release.set()
        await task
        assert len(locks) == 0

    asyncio.run(run())


def test_the_line_in_front_of_a_shared_store_is_bounded_too(pg_url: str) -> None:
    """InLine (a sidecar on PostgreSQL): the same bound before a step takes a pooled connection."""
    from tollgate.sidecar.state import InLine
    from tollgate.state.postgres import PgBudgets, PgOptions, PgStore

    async def run() -> None:
        store = PgStore(PgOptions(pg_url, timeout=5.0))
        await store.open()
        try:
            budgets = PgBudgets(store)
            await budgets.start(upgrade=True)
            locks = ScopeLocks(max_waiting=2)
            guard = BudgetGuard(InLine(budgets, locks=locks))
            release, entered = asyncio.Event(), asyncio.Event()
            first = asyncio.ensure_future(_decide(guard, HOT, before_settle=release, entered=entered))
            await entered.wait()
            waiting = [asyncio.ensure_future(_decide(guard, HOT)) for _ in range(2)]
            await eventually(lambda: locks.waiting == 2, what="the two in line")
            over = await asyncio.wait_for(_decide(guard, HOT), timeout=10)
            assert (over.result.decision, _code(over)) == (DENY, SCOPE_OVERLOADED)
            assert (await asyncio.wait_for(_decide(guard, COLD), timeout=10)).result.decision == ALLOW
            release.set()
            done = await asyncio.wait_for(asyncio.gather(first, *waiting), timeout=10)
            assert all(s.result.decision == ALLOW for s in done)
        finally:
            await store.close()

    asyncio.run(run())
