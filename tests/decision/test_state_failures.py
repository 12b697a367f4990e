"""The decision path when the state store fails it, and how budget steps share the store: every failure is a
logged DENY (state_unavailable, state_stale), never an exception; spending requests of unrelated scopes are
evaluated at once, two of one session never together."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import pytest

from tests.decision.inprocess import DecisionPath, InProcessEngine, codes, spend, tool
from tollgate.contract import ALLOW, DENY, REQUIRE_APPROVAL, DecisionRequest
from tollgate.decision import Authorizer, BudgetGuard
from tollgate.engine import EngineSlot, Evaluation
from tollgate.state import KillSwitchSnapshot, LocalApprovals, LocalBudgets, LocalHold, StateError
from tollgate.state.approvals import Approval

DOWN = "state store postgresql://db/tollgate: cannot read approvals (connection refused)"


def model(*, session: str = "s-1") -> DecisionRequest:
    return DecisionRequest(kind="model", principal={"agent_id": "agent-a", "session_id": session},
                           action={"provider": "openai", "model": "gpt-4o", "input_tokens": 10})


def budget(agent: str, session: str, amount: float = 0.1) -> DecisionRequest:
    return DecisionRequest(kind="budget", principal={"agent_id": agent, "session_id": session},
                           action={"amount": amount, "unit": "usd", "category": "model"})


# -- approvals the store cannot give ------------------------------------------------------------------


class DownApprovals:
    """An approval ledger on a store that does not answer."""

    async def get(self, approval_id: str) -> Approval | None:
        raise StateError(DOWN)

    async def consume(self, approval_id: str, *, request_digest: str, decision_id: str) -> bool:
        raise StateError(DOWN)

    async def open(self, *, request_digest: str, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any],
                   approvers: Sequence[str], ttl_seconds: int, opened_by: str, masked: Sequence[str] = (),
                   required: int = 1, allow_requester: bool = False) -> Approval | None:
        raise StateError(DOWN)


class ConsumeFails(LocalApprovals):
    """Approvals that read fine but cannot be used: the store went away between the read and the use."""

    async def consume(self, approval_id: str, *, request_digest: str, decision_id: str) -> bool:
        raise StateError(DOWN)


def _authorizer(path: DecisionPath, **parts: Any) -> Authorizer:
    return Authorizer(path.slot, path.log, observer=path.seen, clock=path.clock, **parts)


def test_an_approval_the_store_cannot_read_is_a_logged_deny_state_unavailable(decision_path: DecisionPath) -> None:
    answer = decision_path.ask(tool("delete", approval_id="apr_x"),
                               authorizer=_authorizer(decision_path, approvals=DownApprovals()))
    assert (answer.decision, codes(answer)) == (DENY, ["state_unavailable"])
    assert answer.reasons[0].message == "state the request needs cannot be read or written: the approval presented"
    record = decision_path.record(answer)
    assert record["decision"] == DENY and record["approval_status"] == "unavailable"
    assert record["input"]["state"]["approval"]["status"] == "unavailable"  # what the policy was shown
    assert "state unavailable, enforced by the server" in record["error"]
    assert decision_path.seen.calls[-1]["reasons"] == ("state_unavailable",)


def test_an_approval_the_store_cannot_open_is_a_logged_deny_state_unavailable(decision_path: DecisionPath) -> None:
    answer = decision_path.ask(tool("delete"), authorizer=_authorizer(decision_path, approvals=DownApprovals()))
    assert (answer.decision, codes(answer), answer.approval_id) == (DENY, ["state_unavailable"], "")
    record = decision_path.record(answer)
    assert record["result"]["decision"] == REQUIRE_APPROVAL  # the policy's answer stays in the record
    assert "connection refused" in record["error"] and "connection refused" not in answer.reasons[0].message


def test_an_approval_the_store_cannot_use_is_a_deny_and_stays_approved(decision_path: DecisionPath) -> None:
    opened = decision_path.ask(tool("delete"))
    decision_path.approvals.decide(opened.approval_id, approve=True, by="alice", reason="planned")
    failing = _authorizer(decision_path, approvals=ConsumeFails(decision_path.approvals))
    answer = decision_path.ask(tool("delete", approval_id=opened.approval_id), authorizer=failing)
    assert (answer.decision, codes(answer)) == (DENY, ["state_unavailable"])
    assert decision_path.approvals.get(opened.approval_id).status == "approved"  # type: ignore[union-attr]
    # Once the store answers, the same re-ask is allowed, once.
    assert decision_path.ask(tool("delete", approval_id=opened.approval_id)).decision == ALLOW


# -- a budget step the store cannot give -----------------------------------------------------------------


class Unreachable:
    def hold(self, scopes: Mapping[str, str]) -> contextlib.AbstractAsyncContextManager[LocalHold]:
        @contextlib.asynccontextmanager
        async def refused() -> AsyncIterator[LocalHold]:
            raise StateError("state store postgresql://db/tollgate: cannot take the budget step (timeout)")
            yield

        return refused()


@pytest.mark.parametrize("request_", [spend(0.1), model()], ids=["budget", "model"])
def test_spending_on_a_store_that_cannot_give_the_step_is_a_logged_deny_and_tools_go_on(
        decision_path: DecisionPath, request_: DecisionRequest) -> None:
    authorizer = _authorizer(decision_path, budgets=BudgetGuard(Unreachable()))
    denied = decision_path.ask(request_, authorizer=authorizer)
    assert (denied.decision, codes(denied), denied.reservation_id) == (DENY, ["state_unavailable"], "")
    assert "timeout" in decision_path.record(denied)["error"]
    tool_answer = decision_path.ask(tool(), authorizer=authorizer)
    assert tool_answer.decision == ALLOW, tool_answer  # needs no state


# -- kill switches that cannot be confirmed ----------------------------------------------------------------


class Stale:
    """A kill-switch view on a shared store not heard from for longer than the staleness bound."""

    message = "kill switches not confirmed since 2026-12-31T23:59:50Z (more than kill_switch_max_staleness, 5s)"

    def snapshot(self) -> KillSwitchSnapshot:
        return KillSwitchSnapshot({}, [])

    def staleness(self) -> str:
        return self.message


@pytest.mark.parametrize("request_", [tool(), tool("drop"), model(), spend(0.1)],
                         ids=["tool", "tool-denied", "model", "budget"])
def test_every_request_is_denied_state_stale_while_the_kill_switches_cannot_be_confirmed(
        decision_path: DecisionPath, request_: DecisionRequest) -> None:
    authorizer = _authorizer(decision_path, kill_switches=Stale(),
                             budgets=BudgetGuard(LocalBudgets(decision_path.budgets)))
    answer = decision_path.ask(request_, authorizer=authorizer)
    assert answer.decision == DENY and codes(answer)[0] == "state_stale"
    assert answer.reasons[0].message == Stale.message
    assert answer.reservation_id == ""
    assert "kill switches unconfirmed" in decision_path.record(answer)["error"]
    if request_.action.get("name") == "drop":  # the policy's own deny reason stays, after state_stale
        assert codes(answer) == ["state_stale", "not_allowed"]


def test_a_retry_is_decided_anew_while_the_kill_switches_cannot_be_confirmed(decision_path: DecisionPath) -> None:
    first = decision_path.ask(tool(request_id="call-1"))
    retried = decision_path.ask(tool(request_id="call-1"), authorizer=_authorizer(decision_path, kill_switches=Stale()))
    assert first.decision == ALLOW
    assert (retried.decision, codes(retried)) == (DENY, ["state_stale"])
    assert decision_path.record(retried)["previous_decision_id"] == first.decision_id


# -- budget steps per scope ---------------------------------------------------------------------------------


class GatedEngine:
    """The in-process engine, whose budget evaluations wait at a gate the test opens: how many were in the
    engine at once shows which budget steps ran together."""

    def __init__(self, inner: InProcessEngine, gate: Any) -> None:
        self.inner, self.gate = inner, gate
        self.revision = inner.revision
        self.inside = self.peak = 0

    async def evaluate(self, input_json: bytes) -> Any:
        return await self.inner.evaluate(input_json)

    async def evaluate_with_mask(self, input_json: bytes) -> Evaluation:
        self.inside += 1
        self.peak = max(self.peak, self.inside)
        try:
            await self.gate(self)
            return await self.inner.evaluate_with_mask(input_json)
        finally:
            self.inside -= 1

    async def close(self, *, drain: float = 0.0) -> None:
        pass


def _gated(decision_path: DecisionPath, gate: Any) -> tuple[Authorizer, GatedEngine, LocalBudgets]:
    engine = GatedEngine(decision_path.engine, gate)
    budgets = LocalBudgets(decision_path.budgets)
    return (Authorizer(EngineSlot(engine), decision_path.log, budgets=BudgetGuard(budgets), clock=decision_path.clock),
            engine, budgets)


def test_budget_requests_of_unrelated_scopes_are_evaluated_at_once(decision_path: DecisionPath) -> None:
    both = asyncio.Event()

    async def gate(engine: GatedEngine) -> None:
        if engine.inside == 2:
            both.set()
        await both.wait()  # each evaluation waits for the other: only steps that run together get past it

    authorizer, engine, _ = _gated(decision_path, gate)

    async def run() -> list[str]:
        answers = await asyncio.wait_for(asyncio.gather(
            authorizer.authorize(budget("agent-x", "s-x")), authorizer.authorize(budget("agent-y", "s-y"))), 10)
        return [a.decision for a in answers]

    assert decision_path.loop.run_until_complete(run()) == [ALLOW, ALLOW]
    assert engine.peak == 2


def test_budget_requests_of_one_session_are_never_evaluated_together(decision_path: DecisionPath) -> None:
    budgets_ref: list[LocalBudgets] = []
    gated: list[bool] = []

    async def gate(engine: GatedEngine) -> None:
        if gated:
            return
        gated.append(True)
        # The first evaluation waits until the second request is queued on the step (its first scope, the agent's,
        # sorts before the session's), then goes on: had the second not queued, it would be in the engine too.
        entry = budgets_ref[0].locks._locks[("agent", "agent-a")]
        while entry.users < 2:
            await asyncio.sleep(0.001)

    authorizer, engine, budgets = _gated(decision_path, gate)
    budgets_ref.append(budgets)

    async def run() -> list[str]:
        answers = await asyncio.wait_for(asyncio.gather(
            authorizer.authorize(spend(0.6)), authorizer.authorize(spend(0.6))), 10)
        return sorted(a.decision for a in answers)

    assert decision_path.loop.run_until_complete(run()) == [ALLOW, DENY]  # the second saw the first's 0.6
    assert engine.peak == 1
    assert len(budgets.locks) == 0
