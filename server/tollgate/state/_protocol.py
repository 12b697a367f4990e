"""The state-store protocols: what the decision path and the servicers call on kill switches, approvals, budgets
and the fleet registry.

They are the seam between Tollgate and where its run-time state lives: SQLite in the data dir (one sidecar) or
PostgreSQL (a fleet). Each component has two: what one decision needs (a `...View` or `...Ledger`, all the
authorizer is given) and the whole store (the servicers, `tollgate serve`, the timeline). Every method that may
touch the store is a coroutine, so no database call runs on the event loop's thread: the SQLite implementations
run their calls in worker threads, the PostgreSQL ones on an async connection pool. Times are the store's own:
each implementation reads the clock it was built with, so no method takes a `now`.

The null implementations are for an authorizer built without a component: no kill switch is ever engaged, no
approval is ever there. They keep the decision path free of `if store is not None`.
"""

from __future__ import annotations

import builtins
from collections.abc import Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tollgate.clock import Clock
from tollgate.state._killswitch import HistoryEntry, KillSwitch, KillSwitchSnapshot

if TYPE_CHECKING:
    from tollgate.state._outbox import OutboxBacklog, OutboxEvent
    from tollgate.state.approvals import Approval
    from tollgate.state.budgets import Reservation, ScopeSpend, SpendSnapshot


class KillSwitchView(Protocol):
    """The kill switches as one decision reads them: from memory, never from the store."""

    def snapshot(self) -> KillSwitchSnapshot:
        """The active kill switches as of now, never changed afterwards: one decision reads one snapshot."""
        ...

    def staleness(self) -> str:
        """Why the snapshot cannot be trusted to hold every kill switch engaged ("" when it can): a shared store
        not confirmed for longer than kill_switch_max_staleness. Every request is then DENY state_stale."""
        ...


class KillSwitchStore(KillSwitchView, Protocol):
    """Durable kill switches: engaged and lifted by people (AdminService), read by every decision."""

    async def kill(self, scope: str, value: str, *, reason: str, by: str) -> KillSwitch:
        """Stop every request scope=value names (InvalidKillSwitch when the target is not one); once this
        returns, this process's next snapshot() holds it (other replicas' within the propagation bound)."""
        ...

    async def revive(self, scope: str, value: str, *, by: str, reason: str = "") -> KillSwitch:
        """Lift the kill switch on scope=value and return it (KillSwitchNotFound when there is none)."""
        ...

    async def list(self) -> builtins.list[KillSwitch]:
        """The active kill switches, oldest first, as the store holds them now."""
        ...

    async def history(self) -> builtins.list[HistoryEntry]:
        """Every kill and revive, oldest first."""
        ...


class ApprovalLedger(Protocol):
    """Approvals as one decision uses them: read the one presented, use it once, open one."""

    async def get(self, approval_id: str) -> Approval | None:
        """The approval with this id, its status as of now (None when there is none)."""
        ...

    async def consume(self, approval_id: str, *, request_digest: str, decision_id: str) -> bool:
        """Use an approved approval for the ALLOW decision_id: True for exactly one caller, ever, across every
        replica on the store (an atomic change: of two concurrent re-asks, one wins)."""
        ...

    async def open(self, *, request_digest: str, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any],
                   approvers: Sequence[str], ttl_seconds: int, opened_by: str, masked: Sequence[str] = (),
                   required: int = 1, allow_requester: bool = False) -> Approval | None:
        """A new pending approval bound to request_digest, or the pending one already open for it in the
        principal's session; None from a ledger that keeps no approvals (the answer has none to wait on).
        principal and action are given as masked for the log; masked names the pointers the mask changed;
        required distinct approvers must approve it; allow_requester lets principal.user be one of them."""
        ...


class ApprovalStore(ApprovalLedger, Protocol):
    """Durable approvals: opened by decisions, decided by people (ApprovalService), used once."""

    #: The clock approvals expire by (watchers compare expiry against it).
    clock: Clock

    @property
    def generation(self) -> int:
        """A counter that moves after every change this process sees committed, its own or (on a shared store)
        another replica's: watchers re-read only after it moved."""
        ...

    def may_decide(self, approval: Approval, identity: str, *, groups: Sequence[str] = ()) -> str:
        """Why identity may not decide this approval ("" when it may): named by its approvers, or a member of a
        group:NAME they name (by the approver_groups configuration, or by groups, the person's sign-in's)."""
        ...

    async def decide(self, approval_id: str, *, approve: bool, by: str, reason: str,
                     groups: Sequence[str] = ()) -> Approval:
        """Record `by`'s approve or deny on a pending approval and return it as it now is (NotAnApprover,
        ApprovalNotFound, ApprovalError if not): one deny denies it; it is approved once `required` distinct
        people approved (the same person twice counts once), across every process on the store."""
        ...

    async def list(self, *, approver: str = "", agent: str = "", session: str = "",
                   status: str = "") -> builtins.list[Approval]:
        """Approvals, newest first, filtered; approver: those the identity may decide."""
        ...


class SpendHold(Protocol):
    """The budget step of one spending request, held on every scope it is counted under: read spend →
    (the policy evaluates) → reserve, with no other request of those scopes in between, on any replica."""

    async def spend(self) -> SpendSnapshot:
        """Current spend (committed and live reservations) of each scope held, over its default window and,
        for the monthly scopes, over the current month (StateError when it cannot be read; LedgerInvalid when
        a row holds a value the ledger never writes)."""
        ...

    async def reserve(self, amounts: Mapping[str, float], *, limits: Mapping[str, Any],
                      monthly_limits: Mapping[str, Any] | None = None, decision_id: str = "",
                      requested_by: str = "") -> str:
        """Hold each unit's amount against every scope under one new id, re-checking every limit in the same
        atomic step: BudgetExceeded (nothing reserved) when one would be passed; only requested_by (the caller
        identity of the decision) may report its usage. At most once per hold."""
        ...


class SpendLedger(Protocol):
    """Budgets as one spending decision uses them."""

    def hold(self, scopes: Mapping[str, str]) -> AbstractAsyncContextManager[SpendHold]:
        """Take the budget step on these scopes (scope → value): waits only for requests of the same scopes
        (StateError when the store cannot give it within its timeout). What reserve() made stands once the
        block ends without an exception; an exception undoes it."""
        ...


class BudgetStore(SpendLedger, Protocol):
    """The spend ledger: reservations made by decisions, usage reported by harnesses, spend read by people."""

    async def report(self, reservation_id: str, *, amount: float, unit: str = "",
                     reported_by: str | None = None) -> Reservation:
        """Commit the actual amount and release the rest (ReservationNotFound, ReservationNotYours when
        reported_by is not the caller the reservation was made for, ReservationClosed, ValueError)."""
        ...

    async def expire(self) -> int:
        """Mark reservations past their expiry as expired; returns how many."""
        ...

    async def get(self, reservation_id: str) -> builtins.list[Reservation]:
        """The reservation's rows, one per unit (ReservationNotFound when there are none)."""
        ...

    async def usage(self, scopes: Mapping[str, str]) -> builtins.list[ScopeSpend]:
        """Committed and reserved spend of each scope named, over its default window (and the month)."""
        ...


@dataclass(frozen=True)
class SidecarInfo:
    """One sidecar as the fleet registry holds it (its last heartbeat)."""

    id: str
    host: str
    version: str
    listen: str
    bundle_revision: str
    bundle_digest: str
    #: "serving", "not_serving" (no bundle, or the store stale), or "stopped" (said goodbye).
    health: str
    #: Seconds the slowest decision-log exporter is behind (0 when none is configured or all caught up).
    export_lag_seconds: float
    started_at: str  # RFC 3339, UTC
    last_seen: str  # RFC 3339, UTC, stamped by the store's clock
    #: Seconds between this sidecar's heartbeats: it is stale once last_seen is older than three of them (each
    #: entry carries its own, so a reader needs no setting to tell a stale sidecar from a slow-beating one).
    heartbeat_seconds: float = 5.0


class FleetRegistry(Protocol):
    """Which sidecars serve, where, on which revision: each one heartbeats its own entry."""

    async def heartbeat(self, info: SidecarInfo) -> None:
        """Create or replace this sidecar's entry (last_seen is set by the registry)."""
        ...

    async def sidecars(self) -> builtins.list[SidecarInfo]:
        """Every sidecar that ever registered (and was not pruned), most recently seen first."""
        ...


class OutboxStore(Protocol):
    """The notification outbox (state/_outbox.py): events written with the approval changes, claimed by senders."""

    async def claim(self, *, owner: str, limit: int, lease_seconds: float) -> builtins.list[OutboxEvent]:
        """Up to limit pending events due now that no live lease holds, oldest first, now held by owner for
        lease_seconds: of two senders on one store, never both."""
        ...

    async def settle(self, event_id: str, *, owner: str, delivered: Sequence[str], error: str = "",
                     retry_in: float | None = None) -> bool:
        """Record one attempt of owner's claim: delivered (error ""), due again in retry_in seconds, or dead (an
        error and no retry_in); the claim is given back. False when owner no longer held it."""
        ...

    async def release(self, owner: str) -> int:
        """Give back every claim owner holds (a sender stopping); returns how many."""
        ...

    async def sweep_expired(self) -> int:
        """Record an approval.expired event for each approval that expired undecided and has none yet."""
        ...

    async def events(self, *, status: str = "", limit: int = 100) -> builtins.list[OutboxEvent]:
        """Events, oldest first, of one status when given."""
        ...

    async def backlog(self) -> OutboxBacklog:
        """How many are pending and dead, and since when the oldest pending one waits."""
        ...


class NoKillSwitches:
    """A kill-switch view with none engaged."""

    _EMPTY = KillSwitchSnapshot({}, [])

    def snapshot(self) -> KillSwitchSnapshot:
        return self._EMPTY

    def staleness(self) -> str:
        return ""


class NoApprovals:
    """An approval ledger that holds none: a presented approval is never one granted here, none is opened."""

    async def get(self, approval_id: str) -> Approval | None:
        return None

    async def consume(self, approval_id: str, *, request_digest: str, decision_id: str) -> bool:
        return False

    async def open(self, *, request_digest: str, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any],
                   approvers: Sequence[str], ttl_seconds: int, opened_by: str, masked: Sequence[str] = (),
                   required: int = 1, allow_requester: bool = False) -> Approval | None:
        return None


NO_KILL_SWITCHES = NoKillSwitches()
NO_APPROVALS = NoApprovals()

# The SQLite implementations (state/_local.py: the sync classes run in worker threads) and the PostgreSQL ones
# (state/postgres/) are held to these protocols by mypy in tests/state/test_contract.py.
