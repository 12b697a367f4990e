"""BudgetGuard: one spending step per affected scope, ended by settle(); server DENYs when the ledger refuses or
the store cannot give the step."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from tollgate.contract import ALLOW, PolicyResult, ReservePlan
from tollgate.decision import BUDGET_EXCEEDED, BUDGET_UNAVAILABLE, BudgetGuard, SpendView
from tollgate.state import LocalBudgets, LocalHold, StateError, StateStore
from tollgate.state.budgets import Budgets, SpendSnapshot

NOTHING = SpendSnapshot({}, {})  # no spend read yet

PRINCIPAL = {"agent_id": "a", "session_id": "s"}
OTHER = {"agent_id": "b", "session_id": "t"}  # shares no scope with PRINCIPAL
ALLOWED = PolicyResult(ALLOW, reserve=ReservePlan({"usd": 0.6}, {"session": {"usd": 1.0}}))


@pytest.fixture
def guard(tmp_path: Path) -> BudgetGuard:
    return BudgetGuard(LocalBudgets(Budgets(StateStore(tmp_path / "state.db"))))


def _held(guard: BudgetGuard) -> int:
    """How many (scope, value) locks are held or waited for."""
    assert isinstance(guard.budgets, LocalBudgets)
    return len(guard.budgets.locks)


def test_settle_ends_the_step_so_the_next_request_need_not_wait_for_the_log(guard: BudgetGuard) -> None:
    async def run() -> list[str]:
        order: list[str] = []
        settled, second_decided = asyncio.Event(), asyncio.Event()

        async def first() -> None:
            async with guard.step("budget", PRINCIPAL):
                await guard.settle("budget", PRINCIPAL, {}, ALLOWED, SpendView(NOTHING), decision_id="d1")
                settled.set()
                await second_decided.wait()  # the log append, after the reservation, outlasts the next decision
                order.append("first logged")

        async def second() -> None:
            await settled.wait()
            async with guard.step("budget", PRINCIPAL):
                order.append("second decided")
            second_decided.set()

        # A step that settle() did not end would leave both waiting: the bound turns that into a failure.
        await asyncio.wait_for(asyncio.gather(first(), second()), timeout=10)
        return order

    assert asyncio.run(run()) == ["second decided", "first logged"]
    assert not _held(guard)


def test_a_step_that_fails_before_settle_is_released(guard: BudgetGuard) -> None:
    async def run() -> None:
        with pytest.raises(RuntimeError):
            async with guard.step("budget", PRINCIPAL):
                raise RuntimeError("engine went away")
        assert not _held(guard)

    asyncio.run(run())


def test_steps_of_unrelated_scopes_run_at_once_and_of_one_session_in_turn(guard: BudgetGuard) -> None:
    async def together(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
        """Whether a second step got in while the first was held. The locks are the event loop's own, so the
        turns of the loop the first step gives are all a free lock needs."""
        first_in, second_in = asyncio.Event(), asyncio.Event()

        async def first() -> bool:
            async with guard.step("budget", a):
                await guard.view("budget", a)
                first_in.set()
                for _ in range(20):
                    await asyncio.sleep(0)
                return second_in.is_set()

        async def second() -> None:
            await first_in.wait()
            async with guard.step("budget", b):
                second_in.set()

        overlapped, _ = await asyncio.wait_for(asyncio.gather(first(), second()), 10)
        return overlapped

    assert asyncio.run(together(PRINCIPAL, OTHER)) is True
    assert asyncio.run(together(PRINCIPAL, {"agent_id": "c", "session_id": "s"})) is False  # same session
    assert not _held(guard)


def test_an_allow_the_ledger_cannot_fit_becomes_a_server_deny(guard: BudgetGuard) -> None:
    first = asyncio.run(guard.settle("budget", PRINCIPAL, {}, ALLOWED, SpendView(NOTHING), decision_id="d1"))
    second = asyncio.run(guard.settle("budget", PRINCIPAL, {}, ALLOWED, SpendView(NOTHING), decision_id="d2"))
    assert first.reservation_id and first.result is ALLOWED
    assert second.reservation_id == ""
    assert [r.code for r in second.result.reasons] == [BUDGET_EXCEEDED]
    assert "re-check" in second.error


def test_an_unreadable_ledger_denies_spending_and_spares_other_kinds(guard: BudgetGuard) -> None:
    # A scope's rows that hold what the ledger never writes (LedgerInvalid): budget_unavailable.
    broken = SpendView(NOTHING, error="state store: disk I/O error", code=BUDGET_UNAVAILABLE)
    denied = asyncio.run(guard.settle("model", PRINCIPAL, {}, ALLOWED, broken, decision_id="d"))
    assert [r.code for r in denied.result.reasons] == ["budget_unavailable"]
    assert "disk I/O error" not in denied.result.reasons[0].message  # the details go to the record and the log
    assert asyncio.run(guard.settle("tool", PRINCIPAL, {}, ALLOWED, broken, decision_id="d")).result is ALLOWED


class Unreachable:
    """A ledger whose store cannot give a step (PostgreSQL down, or slower than its timeout)."""

    def hold(self, scopes: Mapping[str, str]) -> contextlib.AbstractAsyncContextManager[LocalHold]:
        @contextlib.asynccontextmanager
        async def refused() -> AsyncIterator[LocalHold]:
            raise StateError("state store postgresql://db/tollgate: cannot take the budget step (timeout)")
            yield  # an async generator all the same

        return refused()


def test_a_step_the_store_cannot_give_is_a_deny_state_unavailable_not_an_exception() -> None:
    guard = BudgetGuard(Unreachable())

    async def run() -> tuple[SpendView, Any]:
        async with guard.step("budget", PRINCIPAL):
            view = await guard.view("budget", PRINCIPAL)
            return view, await guard.settle("budget", PRINCIPAL, {}, ALLOWED, view, decision_id="d")

    view, settled = asyncio.run(run())
    assert "timeout" in view.error
    assert [r.code for r in settled.result.reasons] == ["state_unavailable"]
    assert settled.result.reasons[0].message.startswith("state the request needs cannot be read or written")
    assert "postgresql" not in settled.result.reasons[0].message and "timeout" in settled.error
    assert settled.reservation_id == ""


def test_a_reservation_the_ledger_does_not_keep_at_the_steps_end_is_denied(tmp_path: Path) -> None:
    class LostAtCommit(LocalBudgets):
        """The reservation is made, then the step's commit fails (PostgreSQL: the connection dropped)."""

        @contextlib.asynccontextmanager
        async def hold(self, scopes: Mapping[str, str]) -> AsyncIterator[LocalHold]:
            async with super().hold(scopes) as hold:
                yield hold
            raise StateError("state store: cannot commit the budget step (connection lost)")

    guard = BudgetGuard(LostAtCommit(Budgets(StateStore(tmp_path / "state.db"))))

    async def run() -> Any:
        async with guard.step("budget", PRINCIPAL):
            view = await guard.view("budget", PRINCIPAL)
            return await guard.settle("budget", PRINCIPAL, {}, ALLOWED, view, decision_id="d")

    settled = asyncio.run(run())
    assert ([r.code for r in settled.result.reasons], settled.reservation_id) == (["state_unavailable"], "")
    assert "connection lost" in settled.error


def test_a_budget_allow_without_a_plan_still_reserves_its_amount(guard: BudgetGuard) -> None:
    settled = asyncio.run(guard.settle("budget", PRINCIPAL, {"amount": 2.5, "unit": "usd"}, PolicyResult(ALLOW),
                                       SpendView(NOTHING), decision_id="d"))
    assert isinstance(guard.budgets, LocalBudgets)
    assert [(r.unit, r.amount) for r in guard.budgets.budgets.get(settled.reservation_id)] == [("usd", 2.5)]


def test_the_ledger_is_read_and_written_off_the_event_loop(guard: BudgetGuard) -> None:
    threads: list[str] = []
    assert isinstance(guard.budgets, LocalBudgets)
    ledger = guard.budgets.budgets
    spend, reserve = ledger.spend, ledger.reserve

    def spend_noting(*args: Any, **kwargs: Any) -> SpendSnapshot:
        threads.append(threading.current_thread().name)
        return spend(*args, **kwargs)

    def reserve_noting(*args: Any, **kwargs: Any) -> str:
        threads.append(threading.current_thread().name)
        return reserve(*args, **kwargs)

    async def run() -> str:
        async with guard.step("budget", PRINCIPAL):
            view = await guard.view("budget", PRINCIPAL)
            await guard.settle("budget", PRINCIPAL, {}, ALLOWED, view, decision_id="d1")
        return threading.current_thread().name

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ledger, "spend", spend_noting)
        patch.setattr(ledger, "reserve", reserve_noting)
        loop_thread = asyncio.run(run())
    assert len(threads) == 2 and loop_thread not in threads
    assert not _held(guard)
