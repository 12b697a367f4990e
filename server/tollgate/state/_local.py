"""The SQLite state store behind the async protocols: each store call runs in a worker thread, never on the event
loop, and a budget step holds one asyncio lock per scope it is counted under, never one for the whole process.

The sync classes (KillSwitches, Approvals, Budgets) do the work; these adapters only move it off the loop. Budget
steps are the sidecar's alone, so what a lock in this process orders is ordered for them. Kill switches and
approvals are also written by people from another process on the same file (`tollgate console`, the CLI on the
data dir): each of those changes is one IMMEDIATE transaction, which SQLite orders against this process's, and
the ChangeWatch hears them within CHANGE_POLL_SECONDS.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import functools
import logging
import sqlite3
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tollgate.clock import Clock, SystemClock
from tollgate.state._fleet import LocalFleet
from tollgate.state._killswitch import HistoryEntry, KillSwitch, KillSwitches, KillSwitchSnapshot
from tollgate.state._store import StateError, StateStore
from tollgate.state.approvals import Approval, Approvals
from tollgate.state.budgets import DEFAULT_TTL, Budgets, Reservation, ScopeSpend, SpendSnapshot

log = logging.getLogger(__name__)

_T = TypeVar("_T")

#: How often the change watch asks SQLite whether another connection committed (one PRAGMA, no I/O): a kill
#: switch engaged or an approval decided from a console beside the sidecar is heard within about this long.
CHANGE_POLL_SECONDS = 0.1


class LocalKillSwitches:
    """KillSwitches behind KillSwitchStore. The snapshot is replaced in the call that commits a change here, and
    within CHANGE_POLL_SECONDS of another process's (the ChangeWatch); listing reads the file."""

    def __init__(self, switches: KillSwitches) -> None:
        self.switches = switches

    def snapshot(self) -> KillSwitchSnapshot:
        return self.switches.snapshot()

    def staleness(self) -> str:
        return ""

    async def kill(self, scope: str, value: str, *, reason: str, by: str) -> KillSwitch:
        return await asyncio.to_thread(self.switches.kill, scope, value, reason=reason, by=by)

    async def revive(self, scope: str, value: str, *, by: str, reason: str = "") -> KillSwitch:
        return await asyncio.to_thread(self.switches.revive, scope, value, by=by, reason=reason)

    async def list(self) -> builtins.list[KillSwitch]:
        # Read again first: another process (a console, this sidecar seen from the console) may have changed them.
        await asyncio.to_thread(self.switches.reload)
        return self.switches.list()

    async def history(self) -> builtins.list[HistoryEntry]:
        return await asyncio.to_thread(self.switches.history)


class LocalApprovals:
    """Approvals behind ApprovalStore: every read and write in a worker thread; generation, clock and the approver
    check (memory only) pass through."""

    def __init__(self, approvals: Approvals) -> None:
        self.approvals = approvals
        self.clock = approvals.clock

    @property
    def generation(self) -> int:
        return self.approvals.generation

    def may_decide(self, approval: Approval, identity: str, *, groups: Sequence[str] = ()) -> str:
        return self.approvals.may_decide(approval, identity, groups=groups)

    async def get(self, approval_id: str) -> Approval | None:
        return await asyncio.to_thread(self.approvals.get, approval_id)

    async def consume(self, approval_id: str, *, request_digest: str, decision_id: str) -> bool:
        return await asyncio.to_thread(self.approvals.consume, approval_id, request_digest=request_digest,
                                       decision_id=decision_id)

    async def open(self, *, request_digest: str, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any],
                   approvers: Sequence[str], ttl_seconds: int, opened_by: str, masked: Sequence[str] = (),
                   required: int = 1, allow_requester: bool = False) -> Approval | None:
        return await asyncio.to_thread(functools.partial(
            self.approvals.open, request_digest=request_digest, kind=kind, principal=principal, action=action,
            approvers=approvers, ttl_seconds=ttl_seconds, opened_by=opened_by, masked=masked, required=required,
            allow_requester=allow_requester))

    async def decide(self, approval_id: str, *, approve: bool, by: str, reason: str,
                     groups: Sequence[str] = ()) -> Approval:
        return await asyncio.to_thread(functools.partial(self.approvals.decide, approval_id, approve=approve, by=by,
                                                         reason=reason, groups=groups))

    async def list(self, *, approver: str = "", agent: str = "", session: str = "",
                   status: str = "") -> builtins.list[Approval]:
        return await asyncio.to_thread(functools.partial(self.approvals.list, approver=approver, agent=agent,
                                                         session=session, status=status))


class _ScopeLock:
    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        #: Holds that hold the lock or wait for it: at 0 the entry is dropped.
        self.users = 0


class ScopeOverloaded(StateError):
    """A scope's line in this process is full, or a request waited in it past the bound: the request is DENY
    scope_overloaded at once (logged like every decision), not queued without end."""


class ScopeLocks:
    """One asyncio.Lock per (scope, value), kept only while a hold holds it or waits for it: the table is as large
    as the budget steps in flight, however many session ids pass through. Locks are taken in sorted order, so two
    holds sharing several scopes never wait for each other in a cycle. Used on the event loop only.

    The sidecar bounds the line of one scope value: past max_waiting requests waiting behind its holder, or once
    a request has waited max_wait seconds for its locks (None: no bound), held() raises ScopeOverloaded. A hot
    session then costs its own requests a DENY, never every request a queue (measured before the bound: 128 in
    flight on one session, p99 2.5 s)."""

    def __init__(self, *, max_waiting: int | None = None, max_wait: float | None = None) -> None:
        self._locks: dict[tuple[str, str], _ScopeLock] = {}
        self.max_waiting = max_waiting
        self.max_wait = max_wait

    def __len__(self) -> int:
        return len(self._locks)

    @property
    def waiting(self) -> int:
        """Holds waiting for a lock now (every user of a lock but the one holding it)."""
        return sum(entry.users - entry.lock.locked() for entry in self._locks.values())

    @contextlib.asynccontextmanager
    async def held(self, scopes: Mapping[str, str]) -> AsyncIterator[None]:
        """Hold every (scope, value) lock of scopes until the block ends (ScopeOverloaded: none held)."""
        taken: list[tuple[tuple[str, str], _ScopeLock]] = []
        loop = asyncio.get_running_loop()
        deadline = None if self.max_wait is None else loop.time() + self.max_wait
        try:
            for key in sorted(scopes.items()):
                entry = self._locks.get(key)
                if entry is None:
                    entry = self._locks[key] = _ScopeLock()
                elif self.max_waiting is not None and entry.lock.locked() and entry.users - 1 >= self.max_waiting:
                    raise ScopeOverloaded(f"{entry.users - 1} requests of {key[0]} {key[1]!r} already wait for "
                                          "their budget step at this sidecar")
                entry.users += 1
                try:
                    async with asyncio.timeout_at(deadline):
                        await entry.lock.acquire()
                except TimeoutError:
                    self._leave(key, entry)
                    raise ScopeOverloaded(f"a request of {key[0]} {key[1]!r} waited {self.max_wait:g}s for its "
                                          "budget step at this sidecar") from None
                except BaseException:  # cancelled while waiting: no longer a user
                    self._leave(key, entry)
                    raise
                taken.append((key, entry))
            yield
        finally:
            for key, entry in reversed(taken):
                entry.lock.release()
                self._leave(key, entry)

    def _leave(self, key: tuple[str, str], entry: _ScopeLock) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._locks[key]


class LocalHold:
    """One budget step on SQLite: spend and reserve at the one moment `now` the step read, in worker threads.

    A call the step started in a thread is finished before the step lets go of its scopes, even when the awaiting
    task was cancelled: a reservation still being written when the next request of the scope reads spend would be
    missed by that read.
    """

    def __init__(self, budgets: Budgets, scopes: Mapping[str, str], *, now: float) -> None:
        self._budgets = budgets
        self._scopes = dict(scopes)
        self._now = now
        self._calls: list[asyncio.Future[Any]] = []
        self._reservation: asyncio.Future[str] | None = None

    async def spend(self) -> SpendSnapshot:
        return await self._run(functools.partial(self._budgets.spend, self._scopes, now=self._now))

    async def reserve(self, amounts: Mapping[str, float], *, limits: Mapping[str, Any],
                      monthly_limits: Mapping[str, Any] | None = None, decision_id: str = "",
                      requested_by: str = "") -> str:
        if self._reservation is not None:
            raise RuntimeError("a budget hold reserves at most once")
        call = functools.partial(self._budgets.reserve, self._scopes, amounts, limits=limits,
                                 monthly_limits=monthly_limits, decision_id=decision_id, requested_by=requested_by,
                                 now=self._now)
        self._reservation = self._start(call)
        return await asyncio.shield(self._reservation)

    async def _run(self, call: Callable[[], _T]) -> _T:
        return await asyncio.shield(self._start(call))

    def _start(self, call: Callable[[], _T]) -> asyncio.Future[_T]:
        future = asyncio.get_running_loop().run_in_executor(None, call)
        self._calls.append(future)
        return future

    async def finish(self, *, failed: bool) -> None:
        """Wait for every call still running in a thread; when the step failed after reserving, withdraw the
        reservation (its decision was never answered), as a PostgreSQL step's rollback does."""
        for call in self._calls:
            with contextlib.suppress(BaseException):
                await asyncio.shield(call)
        reservation = self._reservation
        if not failed or reservation is None or reservation.cancelled() or reservation.exception() is not None:
            return
        reservation_id = reservation.result()
        try:
            await asyncio.to_thread(self._budgets.withdraw, reservation_id)
        except Exception as exc:  # it still expires after its TTL
            log.error("budgets: reservation %s of a failed budget step not withdrawn (it expires after its TTL): %s",
                      reservation_id, exc)


class LocalBudgets:
    """Budgets behind BudgetStore: a budget step holds the lock of each (scope, value) it is counted under, so
    two requests of one session take turns and requests of unrelated scopes never wait for each other."""

    def __init__(self, budgets: Budgets, *, locks: ScopeLocks | None = None) -> None:
        self.budgets = budgets
        self.locks = ScopeLocks() if locks is None else locks  # (an empty one is falsy: len 0)

    @contextlib.asynccontextmanager
    async def hold(self, scopes: Mapping[str, str]) -> AsyncIterator[LocalHold]:
        async with self.locks.held(scopes):
            hold = LocalHold(self.budgets, scopes, now=self.budgets.clock.time())
            try:
                yield hold
            except BaseException:
                await hold.finish(failed=True)
                raise
            await hold.finish(failed=False)

    async def report(self, reservation_id: str, *, amount: float, unit: str = "",
                     reported_by: str | None = None) -> Reservation:
        return await asyncio.to_thread(self.budgets.report, reservation_id, amount=amount, unit=unit,
                                       reported_by=reported_by)

    async def expire(self) -> int:
        return await asyncio.to_thread(self.budgets.expire)

    async def get(self, reservation_id: str) -> builtins.list[Reservation]:
        return await asyncio.to_thread(self.budgets.get, reservation_id)

    async def usage(self, scopes: Mapping[str, str]) -> builtins.list[ScopeSpend]:
        return await asyncio.to_thread(self.budgets.usage, scopes)


class ChangeWatch:
    """Hears what other processes commit to state.db (a console beside the sidecar, `tollgate` commands): SQLite's
    `PRAGMA data_version` on this process's connection moves only when another connection committed, so one cheap
    read per poll tells. Then the kill switches are read again and published, and the approvals' generation moves
    (WaitForApproval and WatchApproval re-read). This process's own commits do not move it: they publish and
    notify in the call that makes them."""

    def __init__(self, store: StateStore, *, kill_switches: KillSwitches, approvals: Approvals) -> None:
        self._store = store
        self._kill_switches = kill_switches
        self._approvals = approvals
        self._version = self._data_version()

    def check(self) -> bool:
        """Whether another connection committed since the last check (and, if so, what it changed is heard);
        blocking: run it in a worker thread. StateError when the file cannot be read."""
        version = self._data_version()
        if version == self._version:
            return False
        # Read after the version: the reload sees at least what that version holds; a commit in between only
        # moves the version again, and the next check reads once more.
        self._version = version
        self._kill_switches.reload()
        self._approvals.changed()
        return True

    async def poll(self) -> None:
        """One check, off the event loop (the store's lock may be held by a write waiting for its fsync)."""
        await asyncio.to_thread(self.check)

    def _data_version(self) -> int:
        with self._store.lock:
            try:
                version: int = self._store.db.execute("PRAGMA data_version").fetchone()[0]
            except sqlite3.Error as exc:
                raise StateError(f"state store {self._store.path}: cannot read its data version ({exc})") from exc
        return version


@dataclass(frozen=True)
class LocalState:
    """The state of one sidecar in DATA_DIR/state.db, behind the async protocols."""

    store: StateStore
    kill_switches: LocalKillSwitches
    approvals: LocalApprovals
    budgets: LocalBudgets
    fleet: LocalFleet
    #: Poll it every CHANGE_POLL_SECONDS (`poll`) to hear other processes' changes: the sidecar runs it as a plugin.
    changes: ChangeWatch

    def close(self) -> None:
        self.store.close()


def open_local_state(data_dir: Path, *, clock: Clock = SystemClock(),
                     approver_groups: Mapping[str, Sequence[str]] | None = None,
                     reservation_ttl: float = DEFAULT_TTL, line: ScopeLocks | None = None) -> LocalState:
    """Open (creating or migrating) DATA_DIR/state.db; StateError when it cannot be opened or its schema is newer
    than this server knows. Blocking: call it at start-up, before the loop serves. line: the budget steps' bounded
    line (ScopeLocks; default: unbounded, the sidecar passes its configured one)."""
    store = StateStore(data_dir / "state.db")
    try:
        kill_switches = KillSwitches(store, clock=clock)
        approvals = Approvals(store, approver_groups=approver_groups, clock=clock)
        return LocalState(store, LocalKillSwitches(kill_switches), LocalApprovals(approvals),
                          LocalBudgets(Budgets(store, ttl=reservation_ttl, clock=clock), locks=line),
                          LocalFleet(store, clock=clock),
                          ChangeWatch(store, kill_switches=kill_switches, approvals=approvals))
    except BaseException:
        store.close()
        raise


if TYPE_CHECKING:
    # mypy holds the adapters to the protocols here.
    from tollgate.state._protocol import ApprovalStore, BudgetStore, FleetRegistry, KillSwitchStore, SpendHold

    _kill_switches: type[KillSwitchStore] = LocalKillSwitches
    _approvals: type[ApprovalStore] = LocalApprovals
    _budgets: type[BudgetStore] = LocalBudgets
    _hold: type[SpendHold] = LocalHold
    _fleet: type[FleetRegistry] = LocalFleet
