"""The server's side of budgets on the decision path: the spend the policy sees, and the reservation an allow makes."""

from __future__ import annotations

import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, AsyncExitStack
from dataclasses import dataclass
from typing import Any, Protocol

from tollgate.contract import ALLOW, DENY, STATE_UNAVAILABLE, PolicyResult, Reason, state_unavailable
from tollgate.state import SpendHold, SpendLedger, StateError
from tollgate.state._local import ScopeOverloaded
from tollgate.state.budgets import BudgetExceeded, LedgerInvalid, SpendSnapshot, principal_scopes

log = logging.getLogger(__name__)

#: Request kinds that spend: a budget request its amount, a model call its priced tokens.
SPENDING_KINDS = frozenset({"budget", "model"})
#: Reason code when a spend would pass a limit (the policy's, and the server's own re-check).
BUDGET_EXCEEDED = "budget_exceeded"
#: Reason code when a scope's rows in the spend ledger hold a value the ledger never writes (LedgerInvalid): that
#: scope fails closed until an operator repairs it. A store that cannot be reached or answered in time is
#: state_unavailable instead (contract.STATE_UNAVAILABLE): the store is down, not the scope's rows wrong.
BUDGET_UNAVAILABLE = "budget_unavailable"
#: Reason code when the request's scope already has a full line of budget steps waiting at this sidecar, or it
#: waited in line past state_store_timeout (state/_local.py ScopeLocks): denied at once rather than queued.
SCOPE_OVERLOADED = "scope_overloaded"
#: What a spending request is told when the store cannot give its step, its spend or its reservation (the
#: details go to the record's error and the log, never to the caller).
LEDGER_DOWN = state_unavailable("the spend ledger (spending requests are denied until the state store answers)")


@dataclass(frozen=True)
class SpendView:
    """The spend one decision read (input.state.spend and input.state.spend_month), or why it could not be read."""

    spend: SpendSnapshot
    error: str = ""
    #: What the DENY tells the caller when the spend could not be read.
    refusal: str = ""
    #: The DENY's reason code then: state_unavailable (the store did not answer) or budget_unavailable (a scope's
    #: rows are invalid).
    code: str = STATE_UNAVAILABLE


#: The view of a request that spends nothing: the policy sees no spend.
NO_SPEND = SpendView(SpendSnapshot({}, {}))


@dataclass(frozen=True)
class Settlement:
    """The result after the reservation: the policy's, or a server DENY; with the reservation made, if any."""

    result: PolicyResult
    reservation_id: str = ""
    error: str = ""


class SpendGuard(Protocol):
    """What the authorizer asks of budgets: whether a request spends, the spend it sees, the reservation."""

    def applies(self, kind: str) -> bool:
        """Whether requests of this kind spend (and so take a step, see spend, and reserve)."""
        ...

    def step(self, kind: str, principal: Mapping[str, Any]) -> AbstractAsyncContextManager[None]:
        """Hold the spending step of one request on the scopes its principal is counted under: read spend →
        evaluate → reserve, ended by settle(). A step the store cannot give is no exception: view() then says
        why, and settle() denies."""
        ...

    async def view(self, kind: str, principal: Mapping[str, Any]) -> SpendView:
        """The spend the policy sees for this request (NO_SPEND for a kind that does not spend)."""
        ...

    async def settle(self, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any],
                     result: PolicyResult, view: SpendView, *, decision_id: str, requested_by: str = "") -> Settlement:
        """The result after reserving what it spends, and the reservation; ends the step."""
        ...


class NoBudgets:
    """A budget guard that never applies: nothing is counted, nothing reserved (a server that keeps no budgets)."""

    def applies(self, kind: str) -> bool:
        return False

    @contextlib.asynccontextmanager
    async def step(self, kind: str, principal: Mapping[str, Any]) -> AsyncIterator[None]:
        yield

    async def view(self, kind: str, principal: Mapping[str, Any]) -> SpendView:
        return NO_SPEND

    async def settle(self, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any],
                     result: PolicyResult, view: SpendView, *, decision_id: str, requested_by: str = "") -> Settlement:
        return Settlement(result)


NO_BUDGETS = NoBudgets()


class _Step:
    """The budget step one request holds: the ledger's hold (None when the store could not give it, and why)."""

    def __init__(self) -> None:
        self.stack = AsyncExitStack()
        self.hold: SpendHold | None = None
        self.error = ""
        #: The DENY's reason code and message when the step could not be taken (error says why).
        self.code, self.refusal = STATE_UNAVAILABLE, LEDGER_DOWN.message
        self.ended = False

    async def end(self) -> str:
        """Let go of the scopes, keeping what was reserved; why the ledger could not keep it ("" when it did)."""
        if self.ended:
            return ""
        self.ended = True
        try:
            await self.stack.aclose()
        except StateError as exc:
            log.error("budgets: %s", exc)
            return str(exc)
        return ""


#: The step the current request holds, so settle() can end it once the reservation is made.
_current_step: contextvars.ContextVar[_Step | None] = contextvars.ContextVar("budget_step", default=None)


class BudgetGuard:
    """Makes read-spend → evaluate → reserve one step for spending requests, per affected scope.

    `step()` takes the ledger's hold on every scope the principal is counted under (its session, agent, team and
    workflow): two requests sharing a scope cannot both see room the other is about to take, while requests of
    unrelated scopes never wait for each other, and no lock is held for the whole process. The ledger's reserve()
    re-checks every limit in its atomic step all the same, and a limit that would be passed there turns the
    policy's ALLOW into DENY budget_exceeded. The step ends as soon as settle() has reserved (or not): the
    decision-log append that follows need not wait for the next request's turn. The ledger never runs on the
    event loop's thread (state/_local.py: worker threads; PostgreSQL: an async pool).
    """

    def __init__(self, budgets: SpendLedger) -> None:
        self.budgets = budgets

    @contextlib.asynccontextmanager
    async def step(self, kind: str, principal: Mapping[str, Any]) -> AsyncIterator[None]:
        """Hold the budget step on the principal's scopes until settle() (or the block's end, whichever is first)."""
        step = _Step()
        try:
            step.hold = await step.stack.enter_async_context(self.budgets.hold(principal_scopes(principal)))
        except ScopeOverloaded as exc:  # its scope's line is full: DENY scope_overloaded, at once
            log.warning("budgets: %s", exc)
            step.error, step.code = str(exc), SCOPE_OVERLOADED
            step.refusal = f"{exc}; this request is denied, retry it later"
        except StateError as exc:  # the store cannot give the step: view() and settle() deny, nothing raises
            log.error("budgets: %s", exc)
            step.error = str(exc)
        token = _current_step.set(step)
        try:
            yield
        except BaseException as exc:
            if not step.ended:  # a failure inside the step undoes what it reserved
                step.ended = True
                await step.stack.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        finally:
            _current_step.reset(token)
        await step.end()

    @staticmethod
    def applies(kind: str) -> bool:
        return kind in SPENDING_KINDS

    async def view(self, kind: str, principal: Mapping[str, Any]) -> SpendView:
        """Current spend of every scope the principal is counted under (NO_SPEND for a kind that does not spend).
        Outside a step (a dry run) the spend is read under a hold of its own, let go at once."""
        if not self.applies(kind):
            return NO_SPEND
        step = _current_step.get()
        try:
            if step is None:
                async with self.budgets.hold(principal_scopes(principal)) as hold:
                    return SpendView(await hold.spend())
            if step.hold is None:
                return SpendView(SpendSnapshot({}, {}), error=step.error, refusal=step.refusal, code=step.code)
            return SpendView(await step.hold.spend())
        except LedgerInvalid as exc:
            log.error("budgets: %s", exc)
            return SpendView(SpendSnapshot({}, {}), error=str(exc), refusal=str(exc), code=BUDGET_UNAVAILABLE)
        except StateError as exc:
            log.error("budgets: %s", exc)
            return SpendView(SpendSnapshot({}, {}), error=str(exc), refusal=LEDGER_DOWN.message)

    async def settle(self, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any],
                     result: PolicyResult, view: SpendView, *, decision_id: str, requested_by: str = "") -> Settlement:
        """Reserve what an allowed spending request spends; any failure is a DENY (fail closed). Ends the step:
        a reservation stands once the ledger has kept it (on PostgreSQL, the step's commit), else DENY."""
        step = _current_step.get()
        plan = _plan(kind, action, result)
        if result.decision != ALLOW or not self.applies(kind):
            settled = Settlement(result)
        elif view.error:  # the policy decided on spend it could not be shown: no allow stands on that
            settled = _deny(view.code, view.refusal or LEDGER_DOWN.message, view.error)
        elif plan is None:
            settled = Settlement(result)
        elif step is None:  # outside a step: the reservation alone takes the scopes
            try:
                async with self.budgets.hold(principal_scopes(principal)) as hold:
                    return await _reserve(hold, plan, result, decision_id=decision_id, requested_by=requested_by)
            except StateError as exc:
                log.error("budgets: %s", exc)
                return _down(str(exc))
        elif step.hold is None:  # the step could not be taken; view() said so, unless the caller made the view up
            settled = _deny(step.code, step.refusal, step.error or "no budget step was taken")
        else:
            settled = await _reserve(step.hold, plan, result, decision_id=decision_id, requested_by=requested_by)
        if step is None:
            return settled
        lost = await step.end()
        if lost and settled.reservation_id:  # the ledger did not keep the reservation: no allow stands on it
            return _down(lost)
        return settled


@dataclass(frozen=True)
class _Plan:
    """What an allowed spending request reserves: unit → amount, and the limits the ledger re-checks."""

    amounts: Mapping[str, float]
    limits: Mapping[str, Any]
    monthly: Mapping[str, Any]


def _plan(kind: str, action: Mapping[str, Any], result: PolicyResult) -> _Plan | None:
    """The reservation an ALLOW makes: the policy's reserve, or a budget request's own amount; None for none."""
    if result.reserve is not None:
        plan = _Plan(dict(result.reserve.amounts), result.reserve.limits, result.reserve.monthly_limits)
    elif kind == "budget":
        # A bundle without reserve still spends what a budget request asks for (no limits to re-check).
        plan = _Plan({str(action.get("unit", "")): float(action.get("amount", 0.0))}, {}, {})
    else:
        return None
    return plan if plan.amounts else None


async def _reserve(hold: SpendHold, plan: _Plan, result: PolicyResult, *, decision_id: str,
                   requested_by: str) -> Settlement:
    try:
        reservation_id = await hold.reserve(plan.amounts, limits=plan.limits, monthly_limits=plan.monthly,
                                            decision_id=decision_id, requested_by=requested_by)
    except BudgetExceeded as exc:
        return _deny(BUDGET_EXCEEDED, str(exc),
                     "budget re-check at reservation: the policy allowed, the ledger found the limit passed")
    except LedgerInvalid as exc:
        log.error("budgets: %s", exc)
        return _deny(BUDGET_UNAVAILABLE, str(exc), str(exc))
    except StateError as exc:
        log.error("budgets: %s", exc)
        return _down(str(exc))
    except ValueError as exc:  # an amount no ledger holds (the contract bounds it): the ledger refuses it
        log.error("budgets: %s", exc)
        return _deny(BUDGET_UNAVAILABLE, "the spend ledger refuses this amount; the request is denied", str(exc))
    return Settlement(result, reservation_id)


def _deny(code: str, message: str, error: str) -> Settlement:
    return Settlement(PolicyResult(DENY, (Reason(code, message),)), error=error)


def _down(error: str) -> Settlement:
    """DENY state_unavailable: the store could not give the step, the spend or the reservation."""
    return Settlement(PolicyResult(DENY, (LEDGER_DOWN,)), error=error)
