"""BudgetGuard: one spending step at a time, ended by settle(); server DENYs when the ledger refuses."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from tollgate.contract import ALLOW, PolicyResult, ReservePlan
from tollgate.decision import BUDGET_EXCEEDED, BudgetGuard, SpendView
from tollgate.state import StateStore
from tollgate.state.budgets import Budgets, SpendSnapshot

NOTHING = SpendSnapshot({}, {})  # no spend read yet

PRINCIPAL = {"agent_id": "a", "session_id": "s"}
ALLOWED = PolicyResult(ALLOW, reserve=ReservePlan({"usd": 0.6}, {"session": {"usd": 1.0}}))


@pytest.fixture
def guard(tmp_path: Path) -> BudgetGuard:
    return BudgetGuard(Budgets(StateStore(tmp_path / "state.db")))


def test_settle_ends_the_step_so_the_next_request_need_not_wait_for_the_log(guard: BudgetGuard) -> None:
    async def run() -> list[str]:
        order: list[str] = []
        settled, second_decided = asyncio.Event(), asyncio.Event()

        async def first() -> None:
            async with guard.step():
                await guard.settle("budget", PRINCIPAL, {}, ALLOWED, SpendView(NOTHING), decision_id="d1")
                settled.set()
                await second_decided.wait()  # the log append, after the reservation, outlasts the next decision
                order.append("first logged")

        async def second() -> None:
            await settled.wait()
            async with guard.step():
                order.append("second decided")
            second_decided.set()

        # A step that settle() did not end would leave both waiting: the bound turns that into a failure.
        await asyncio.wait_for(asyncio.gather(first(), second()), timeout=10)
        return order

    assert asyncio.run(run()) == ["second decided", "first logged"]
    assert not guard.lock.locked()


def test_a_step_that_fails_before_settle_is_released(guard: BudgetGuard) -> None:
    async def run() -> None:
        with pytest.raises(RuntimeError):
            async with guard.step():
                raise RuntimeError("engine went away")
        assert not guard.lock.locked()

    asyncio.run(run())


def test_an_allow_the_ledger_cannot_fit_becomes_a_server_deny(guard: BudgetGuard) -> None:
    first = asyncio.run(guard.settle("budget", PRINCIPAL, {}, ALLOWED, SpendView(NOTHING), decision_id="d1"))
    second = asyncio.run(guard.settle("budget", PRINCIPAL, {}, ALLOWED, SpendView(NOTHING), decision_id="d2"))
    assert first.reservation_id and first.result is ALLOWED
    assert second.reservation_id == ""
    assert [r.code for r in second.result.reasons] == [BUDGET_EXCEEDED]
    assert "re-check" in second.error


def test_an_unreadable_ledger_denies_spending_and_spares_other_kinds(guard: BudgetGuard) -> None:
    broken = SpendView(NOTHING, error="state store: disk I/O error")
    denied = asyncio.run(guard.settle("model", PRINCIPAL, {}, ALLOWED, broken, decision_id="d"))
    assert [r.code for r in denied.result.reasons] == ["budget_unavailable"]
    assert "disk I/O error" not in denied.result.reasons[0].message  # the details go to the record and the log
    assert asyncio.run(guard.settle("tool", PRINCIPAL, {}, ALLOWED, broken, decision_id="d")).result is ALLOWED


def test_a_budget_allow_without_a_plan_still_reserves_its_amount(guard: BudgetGuard) -> None:
    settled = asyncio.run(guard.settle("budget", PRINCIPAL, {"amount": 2.5, "unit": "usd"}, PolicyResult(ALLOW),
                                       SpendView(NOTHING), decision_id="d"))
    assert isinstance(guard.budgets, Budgets)
    assert [(r.unit, r.amount) for r in guard.budgets.get(settled.reservation_id)] == [("usd", 2.5)]


def test_the_ledger_is_read_and_written_off_the_event_loop(guard: BudgetGuard) -> None:
    threads: list[str] = []
    ledger = guard.budgets
    assert isinstance(ledger, Budgets)
    spend, reserve = ledger.spend, ledger.reserve

    def spend_noting(*args: Any, **kwargs: Any) -> SpendSnapshot:
        threads.append(threading.current_thread().name)
        return spend(*args, **kwargs)

    def reserve_noting(*args: Any, **kwargs: Any) -> str:
        threads.append(threading.current_thread().name)
        return reserve(*args, **kwargs)

    async def run() -> str:
        async with guard.step():
            view = await guard.view("budget", PRINCIPAL)
            await guard.settle("budget", PRINCIPAL, {}, ALLOWED, view, decision_id="d1")
        return threading.current_thread().name

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ledger, "spend", spend_noting)
        patch.setattr(ledger, "reserve", reserve_noting)
        loop_thread = asyncio.run(run())
    assert len(threads) == 2 and loop_thread not in threads
    assert not guard.lock.locked()
