"""The server's side of budgets on the decision path: the spend the policy sees, and the reservation an allow makes."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from tollgate.contract import ALLOW, DENY, PolicyResult, Reason
from tollgate.state import SpendLedger, StateError
from tollgate.state.budgets import BudgetExceeded, LedgerInvalid, SpendSnapshot, principal_scopes

log = logging.getLogger(__name__)

#: Request kinds that spend: a budget request its amount, a model call its priced tokens.
SPENDING_KINDS = frozenset({"budget", "model"})
#: Reason code when a spend would pass a limit (the policy's, and the server's own re-check).
BUDGET_EXCEEDED = "budget_exceeded"
#: Reason code when the spend ledger cannot be read or written: fail closed.
BUDGET_UNAVAILABLE = "budget_unavailable"


@dataclass(frozen=True)
class SpendView:
    """The spend one decision read (input.state.spend and input.state.spend_month), or why it could not be read."""

    spend: SpendSnapshot
    error: str = ""
    #: What the DENY budget_unavailable tells the caller when the spend could not be read.
    refusal: str = ""


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

    def step(self) -> AbstractAsyncContextManager[None]:
        """Hold the spending step of one request: read spend → evaluate → reserve, ended by settle()."""
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
    async def step(self) -> AsyncIterator[None]:
        yield

    async def view(self, kind: str, principal: Mapping[str, Any]) -> SpendView:
        return NO_SPEND

    async def settle(self, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any],
                     result: PolicyResult, view: SpendView, *, decision_id: str, requested_by: str = "") -> Settlement:
        return Settlement(result)


NO_BUDGETS = NoBudgets()


class _Step:
    released = False


#: The step the current request holds, so settle() can end it once the reservation is made.
_current_step: contextvars.ContextVar[_Step | None] = contextvars.ContextVar("budget_step", default=None)


class BudgetGuard:
    """Makes read-spend → evaluate → reserve one step for spending requests.

    `step()` serialises spending decisions in this process (the server is the only writer of its
    state.db), so two concurrent requests cannot both see room the other is about to take; the
    ledger's reserve() re-checks every limit inside an IMMEDIATE transaction all the same, and a
    limit that would be passed there turns the policy's ALLOW into DENY budget_exceeded. The step
    ends as soon as settle() has reserved (or not): the decision-log append that follows need not
    wait for the next request's turn. The ledger's reads and writes run in a worker thread, so the
    event loop keeps answering other requests (tool calls spend nothing and never wait for the step).
    """

    def __init__(self, budgets: SpendLedger) -> None:
        self.budgets = budgets
        self.lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def step(self) -> AsyncIterator[None]:
        """Hold this process's budget step until settle() (or the block's end, whichever comes first)."""
        await self.lock.acquire()
        step = _Step()
        token = _current_step.set(step)
        try:
            yield
        finally:
            _current_step.reset(token)
            self._end(step)

    def _end(self, step: _Step | None) -> None:
        if step is not None and not step.released:
            step.released = True
            self.lock.release()

    @staticmethod
    def applies(kind: str) -> bool:
        return kind in SPENDING_KINDS

    async def view(self, kind: str, principal: Mapping[str, Any]) -> SpendView:
        """Current spend of every scope the principal is counted under (NO_SPEND for a kind that does not spend)."""
        if not self.applies(kind):
            return NO_SPEND
        try:
            return SpendView(await asyncio.to_thread(self.budgets.spend, principal_scopes(principal)))
        except LedgerInvalid as exc:
            log.error("budgets: %s", exc)
            return SpendView(SpendSnapshot({}, {}), error=str(exc), refusal=str(exc))
        except StateError as exc:
            log.error("budgets: %s", exc)
            return SpendView(SpendSnapshot({}, {}), error=str(exc),
                             refusal="the spend ledger cannot be read; spending requests are denied")

    async def settle(self, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any],
                     result: PolicyResult, view: SpendView, *, decision_id: str, requested_by: str = "") -> Settlement:
        """Reserve what an allowed spending request spends; any failure is a DENY (fail closed). Ends the step
        (on the event loop: an asyncio.Lock is released from the loop's thread, never the worker's)."""
        try:
            return await asyncio.to_thread(self._settle, kind, principal, action, result, view,
                                           decision_id=decision_id, requested_by=requested_by)
        finally:
            self._end(_current_step.get())

    def _settle(self, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any], result: PolicyResult,
                view: SpendView, *, decision_id: str, requested_by: str = "") -> Settlement:
        if result.decision != ALLOW or not self.applies(kind):
            return Settlement(result)
        if view.error:
            return _deny(BUDGET_UNAVAILABLE, view.refusal or "the spend ledger cannot be read; spending requests are "
                         "denied", view.error)
        monthly: Mapping[str, Any] = {}
        if result.reserve is not None:
            amounts, limits = dict(result.reserve.amounts), result.reserve.limits
            monthly = result.reserve.monthly_limits
        elif kind == "budget":
            # A bundle without reserve still spends what a budget request asks for (no limits to re-check).
            amounts, limits = {str(action.get("unit", "")): float(action.get("amount", 0.0))}, {}
        else:
            return Settlement(result)
        if not amounts:
            return Settlement(result)
        try:
            reservation_id = self.budgets.reserve(principal_scopes(principal), amounts, limits=limits,
                                                  monthly_limits=monthly, decision_id=decision_id,
                                                  requested_by=requested_by)
        except BudgetExceeded as exc:
            return _deny(BUDGET_EXCEEDED, str(exc),
                         "budget re-check at reservation: the policy allowed, the ledger found the limit passed")
        except LedgerInvalid as exc:
            log.error("budgets: %s", exc)
            return _deny(BUDGET_UNAVAILABLE, str(exc), str(exc))
        except (StateError, ValueError) as exc:  # ValueError: an amount no ledger holds (the contract bounds it)
            log.error("budgets: %s", exc)
            return _deny(BUDGET_UNAVAILABLE, "the spend ledger cannot be written; spending requests are denied",
                         str(exc))
        return Settlement(result, reservation_id)


def _deny(code: str, message: str, error: str) -> Settlement:
    return Settlement(PolicyResult(DENY, (Reason(code, message),)), error=error)
