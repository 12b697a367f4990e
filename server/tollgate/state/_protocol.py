"""The state-store protocols: what the decision path and the servicers call on kill switches, approvals and budgets.

They are the seam between Tollgate and where its run-time state lives. The SQLite classes (KillSwitches,
Approvals, Budgets, all on one `StateStore` file) are the first implementations; a fleet's PostgreSQL store is
the next. Each component has two: what one decision needs (a `...View` or `...Ledger`, all the authorizer is
given) and the whole store (the servicers, `tollgate serve`, the timeline). Times are the store's own: each
implementation reads the clock it was built with, so no method takes a `now`.

The null implementations are for an authorizer built without a component: no kill switch is ever engaged, no
approval is ever there. They keep the decision path free of `if store is not None`.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from tollgate.state._killswitch import HistoryEntry, KillSwitch, KillSwitchSnapshot

if TYPE_CHECKING:
    from tollgate.state.approvals import Approval
    from tollgate.state.budgets import Reservation, ScopeSpend, SpendSnapshot


class KillSwitchView(Protocol):
    """The kill switches as one decision reads them."""

    def snapshot(self) -> KillSwitchSnapshot:
        """The active kill switches as of now, never changed afterwards: one decision reads one snapshot."""
        ...


class KillSwitchStore(KillSwitchView, Protocol):
    """Durable kill switches: engaged and lifted by people (AdminService), read by every decision."""

    def kill(self, scope: str, value: str, *, reason: str, by: str) -> KillSwitch:
        """Stop every request scope=value names (InvalidKillSwitch when the target is not one); once this
        returns, the next snapshot() holds it."""
        ...

    def revive(self, scope: str, value: str, *, by: str, reason: str = "") -> KillSwitch:
        """Lift the kill switch on scope=value and return it (KillSwitchNotFound when there is none)."""
        ...

    def list(self) -> builtins.list[KillSwitch]:
        """The active kill switches, oldest first."""
        ...

    def history(self) -> builtins.list[HistoryEntry]:
        """Every kill and revive, oldest first."""
        ...


class ApprovalLedger(Protocol):
    """Approvals as one decision uses them: read the one presented, use it once, open one."""

    def get(self, approval_id: str) -> Approval | None:
        """The approval with this id, its status as of now (None when there is none)."""
        ...

    def consume(self, approval_id: str, *, request_digest: str, decision_id: str) -> bool:
        """Use an approved approval for the ALLOW decision_id: True for exactly one caller, ever (an atomic
        change: of two concurrent re-asks, one wins)."""
        ...

    def open(self, *, request_digest: str, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any],
             approvers: Sequence[str], ttl_seconds: int, opened_by: str, masked: Sequence[str] = ()) -> Approval | None:
        """A new pending approval bound to request_digest, or the pending one already open for it in the
        principal's session; None from a ledger that keeps no approvals (the answer has none to wait on).
        principal and action are given as masked for the log; masked names the pointers the mask changed."""
        ...


class ApprovalStore(ApprovalLedger, Protocol):
    """Durable approvals: opened by decisions, decided by people (ApprovalService), used once."""

    @property
    def generation(self) -> int:
        """A counter every committed change increments (watchers re-read only after it moved)."""
        ...

    def may_decide(self, approval: Approval, identity: str) -> str:
        """Why identity may not decide this approval; "" when it may."""
        ...

    def decide(self, approval_id: str, *, approve: bool, by: str, reason: str) -> Approval:
        """Approve or deny a pending approval as `by` (NotAnApprover, ApprovalNotFound, ApprovalError if not)."""
        ...

    def list(self, *, approver: str = "", agent: str = "", session: str = "",
             status: str = "") -> builtins.list[Approval]:
        """Approvals, newest first, filtered; approver: those the identity may decide."""
        ...


class SpendLedger(Protocol):
    """Budgets as one spending decision uses them: read the spend, reserve what an ALLOW spends."""

    def spend(self, scopes: Mapping[str, str]) -> SpendSnapshot:
        """Current spend (committed and live reservations) of each scope named, over its default window and,
        for the monthly scopes, over the current month (StateError when it cannot be read)."""
        ...

    def reserve(self, scopes: Mapping[str, str], amounts: Mapping[str, float], *, limits: Mapping[str, Any],
                monthly_limits: Mapping[str, Any] | None = None, decision_id: str = "",
                requested_by: str = "") -> str:
        """Hold each unit's amount against every scope under one new id, re-checking every limit in the same
        atomic step: BudgetExceeded (nothing reserved) when one would be passed; only requested_by (the caller
        identity of the decision) may report its usage."""
        ...


class BudgetStore(SpendLedger, Protocol):
    """The spend ledger: reservations made by decisions, usage reported by harnesses, spend read by people."""

    def report(self, reservation_id: str, *, amount: float, unit: str = "",
               reported_by: str | None = None) -> Reservation:
        """Commit the actual amount and release the rest (ReservationNotFound, ReservationNotYours when
        reported_by is not the caller the reservation was made for, ReservationClosed, ValueError)."""
        ...

    def expire(self) -> int:
        """Mark reservations past their expiry as expired; returns how many."""
        ...

    def get(self, reservation_id: str) -> builtins.list[Reservation]:
        """The reservation's rows, one per unit (ReservationNotFound when there are none)."""
        ...

    def usage(self, scopes: Mapping[str, str]) -> builtins.list[ScopeSpend]:
        """Committed and reserved spend of each scope named, over its default window (and the month)."""
        ...


class NoKillSwitches:
    """A kill-switch view with none engaged."""

    _EMPTY = KillSwitchSnapshot({}, [])

    def snapshot(self) -> KillSwitchSnapshot:
        return self._EMPTY


class NoApprovals:
    """An approval ledger that holds none: a presented approval is never one granted here, none is opened."""

    def get(self, approval_id: str) -> Approval | None:
        return None

    def consume(self, approval_id: str, *, request_digest: str, decision_id: str) -> bool:
        return False

    def open(self, *, request_digest: str, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any],
             approvers: Sequence[str], ttl_seconds: int, opened_by: str, masked: Sequence[str] = ()) -> Approval | None:
        return None


NO_KILL_SWITCHES = NoKillSwitches()
NO_APPROVALS = NoApprovals()

if TYPE_CHECKING:
    # The SQLite classes are the reference implementations: mypy holds them to the protocols here.
    from tollgate.state._killswitch import KillSwitches
    from tollgate.state.approvals import Approvals
    from tollgate.state.budgets import Budgets

    _kill_switches: type[KillSwitchStore] = KillSwitches
    _approvals: type[ApprovalStore] = Approvals
    _budgets: type[BudgetStore] = Budgets
    _no_kill_switches: type[KillSwitchView] = NoKillSwitches
    _no_approvals: type[ApprovalLedger] = NoApprovals
