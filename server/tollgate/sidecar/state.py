"""The sidecar's state, opened at start-up: SQLite in the data dir, or the PostgreSQL store a fleet shares.

`open_state` gives one holder with the four components the rest of the sidecar uses through the protocols of
state/_protocol.py (kill switches, approvals, budgets, the fleet registry), and the background work that keeps
them true as plugins: on PostgreSQL the notification listener with its kill-switch refresh (push, and a
periodic read as backstop), and on both the reservation sweep. The plugins stop after every other part, so
the last request drained still finds the store open.

A PostgreSQL store that cannot be reached at start-up does not stop the start: a pod must not crash-loop
because its database restarts. The sidecar serves; requests that need state are DENY state_unavailable, and
past kill_switch_max_staleness every request is DENY state_stale, until the store answers again (recovery
needs nothing). A store that answers with a schema this tollgate cannot use (missing, older without
state_store_migrate, or newer) is a start-up error with the hint; one found so only after an outage keeps
the sidecar denying, with the hint in the log and in the state-store plugin's status.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tollgate.clock import Clock
from tollgate.sidecar._plugins import RUNNING, PeriodicPlugin, Plugin, PluginState, PluginStatus, cancel
from tollgate.state import ScopeLocks, StateError

if TYPE_CHECKING:
    from tollgate.decisionlog import DecisionLookup
    from tollgate.sidecar.config import ServeConfig
    from tollgate.state import ApprovalStore, AuditLog, BudgetStore, KillSwitchStore
    from tollgate.state._local import LocalState
    from tollgate.state._outcomes import OutcomeStore
    from tollgate.state._protocol import FleetRegistry, OutboxStore, SpendHold
    from tollgate.state._tokens import PersonTokenStore
    from tollgate.state._toolresults import ToolResultStore
    from tollgate.state._users import UserStore
    from tollgate.state.budgets import Reservation, ScopeSpend
    from tollgate.state.postgres import PgKillSwitches, PgStore

log = logging.getLogger("tollgate")

#: Seconds between tries to check the schema of a store that was unreachable at start-up.
SCHEMA_RETRY_SECONDS = 2.0
#: Seconds before the kill-switch listener is started again after it failed unforeseen.
LISTENER_RESTART_SECONDS = 1.0


@dataclass(frozen=True)
class Component:
    """One part of the shared store's schema: its name in tollgate_schema and its migration steps."""

    name: str
    steps: Sequence[str]


def schema() -> tuple[Component, ...]:
    """Every component a PostgreSQL state store holds, in the order they are migrated."""
    from tollgate.decisionlog import DECISIONS_COMPONENT, DECISIONS_STEPS
    from tollgate.state.postgres import (
        FLEET_STEPS,
        PgApprovals,
        PgAudit,
        PgBudgets,
        PgFleet,
        PgKillSwitches,
        PgOutcomes,
        PgUsers,
    )
    from tollgate.state.postgres._outbox import PgOutbox
    from tollgate.state.postgres._tokens import PgPersonTokens
    from tollgate.state.postgres._toolresults import PgToolResults

    return (Component(PgBudgets.COMPONENT, PgBudgets.STEPS), Component(PgApprovals.COMPONENT, PgApprovals.STEPS),
            Component(PgOutbox.COMPONENT, PgOutbox.STEPS),
            Component(PgKillSwitches.COMPONENT, PgKillSwitches.STEPS), Component(PgFleet.COMPONENT, FLEET_STEPS),
            Component(DECISIONS_COMPONENT, DECISIONS_STEPS), Component(PgOutcomes.COMPONENT, PgOutcomes.STEPS),
            Component(PgUsers.COMPONENT, PgUsers.STEPS), Component(PgAudit.COMPONENT, PgAudit.STEPS),
            Component(PgPersonTokens.COMPONENT, PgPersonTokens.STEPS),
            Component(PgToolResults.COMPONENT, PgToolResults.STEPS))


@dataclass(frozen=True)
class Migrated:
    """What migrating one component did."""

    component: str
    before: int
    after: int


async def migrate(store: PgStore, *, upgrade: bool) -> list[Migrated]:
    """Bring every component to the version this tollgate knows (with upgrade; else only check that it is
    there). StateError naming the component and the hint when one is newer, or older without upgrade."""
    before = await store.versions()  # StateError when the store cannot be reached
    done: list[Migrated] = []
    for component in schema():
        await store.migrate(component.name, component.steps, upgrade=upgrade)
        done.append(Migrated(component.name, before.get(component.name, 0), len(component.steps)))
    return done


@dataclass(frozen=True)
class SidecarState:
    """The state the sidecar's parts share, and the plugins that keep it (started first, stopped last)."""

    kill_switches: KillSwitchStore
    approvals: ApprovalStore
    budgets: BudgetStore
    fleet: FleetRegistry
    #: Where GetDecision looks for a record not in this sidecar's log: the records the fleet shipped.
    decisions: DecisionLookup
    #: Where it lives, for the log: the data dir's state.db, or the store's URL without its password.
    where: str
    #: Added before every other plugin (so stopped after them): the store itself, its listener.
    plugins: tuple[Plugin, ...]
    #: Added after the servers: the reservation sweep.
    sweep: Plugin
    #: Closes the store when start-up fails before the plugins run.
    close: Callable[[], Awaitable[None]]

    #: How sessions ended, as harnesses report them (ReportOutcome).
    outcomes: OutcomeStore | None = None
    #: The approval notifications' outbox, which sidecar/notify.py sends from.
    outbox: OutboxStore | None = None
    #: People's API tokens (`tollgate users token`), which ApprovalService takes the approver from.
    tokens: PersonTokenStore | None = None
    #: The audit trail every admin and approval action is written to (who, how, what, from where).
    audit: AuditLog | None = None
    #: The console's accounts: the groups of a person deciding on the API with their own token.
    users: UserStore | None = None
    #: What became of the tool calls decided (ReportToolResult).
    tool_results: ToolResultStore | None = None

async def open_state(config: ServeConfig, *, clock: Clock) -> SidecarState:
    """Open the configured store (StateError: a start-up error, its message the hint)."""
    if config.state_store:
        return await _open_postgres(config, clock)
    return _open_sqlite(config, clock)


def _open_sqlite(config: ServeConfig, clock: Clock) -> SidecarState:
    from tollgate.decisionlog import NoFleetLog
    from tollgate.state import LocalAudit, LocalOutcomes, LocalUsers, open_local_state
    from tollgate.state._outbox import LocalOutbox, Outbox
    from tollgate.state._tokens import LocalPersonTokens
    from tollgate.state._toolresults import LocalToolResults

    local = open_local_state(Path(config.data_dir), clock=clock, approver_groups=config.approver_groups,
                             reservation_ttl=config.reservation_ttl, line=_line(config))

    async def close() -> None:
        local.close()

    return SidecarState(local.kill_switches, local.approvals, local.budgets, local.fleet, NoFleetLog(),
                        where=str(local.store.path), plugins=(StorePlugin("state store", close), _watch(local)),
                        sweep=_sweep(local.budgets, config), close=close,
                        outcomes=LocalOutcomes.open(local.store, clock=clock),
                        outbox=LocalOutbox(Outbox(local.store, clock=clock)),
                        tokens=LocalPersonTokens(local.store, clock=clock),
                        audit=LocalAudit(local.store, clock=clock), users=LocalUsers(local.store, clock=clock),
                        tool_results=LocalToolResults.open(local.store, clock=clock,
                                                           approvals_changed=local.approvals.approvals.changed))


def _watch(local: LocalState) -> Plugin:
    """What other processes commit to state.db (a console beside the sidecar engages a kill switch, decides an
    approval), heard within CHANGE_POLL_SECONDS: as the listener hears a fleet's, on PostgreSQL."""
    from tollgate.state._local import CHANGE_POLL_SECONDS

    return PeriodicPlugin("state store changes", local.changes.poll, every=CHANGE_POLL_SECONDS)


async def _open_postgres(config: ServeConfig, clock: Clock) -> SidecarState:
    from tollgate.decisionlog import PgDecisionReader
    from tollgate.state.postgres import (
        PgApprovals,
        PgBudgets,
        PgFleet,
        PgKillSwitches,
        PgOptions,
        PgOutcomes,
        PgStore,
        PgUsers,
    )
    from tollgate.state.postgres._audit import PgAudit
    from tollgate.state.postgres._outbox import PgOutbox
    from tollgate.state.postgres._tokens import PgPersonTokens
    from tollgate.state.postgres._toolresults import PgToolResults

    store = PgStore(PgOptions(config.state_store, timeout=config.state_store_timeout,
                              password_file=config.state_store_password_file,
                              max_connections=config.state_store_max_connections))
    await store.open(wait=False)  # never fails: the pool connects in the background, and keeps trying
    try:
        checked = await _check_schema(store, upgrade=config.state_store_migrate)
    except StateError:  # a schema this tollgate cannot use: the start stops, nothing left connected
        await store.close()
        raise
    kill_switches = PgKillSwitches(store, clock=clock, max_staleness=config.kill_switch_max_staleness,
                                   refresh_every=config.kill_switch_refresh)
    approvals = PgApprovals(store, approver_groups=config.approver_groups, clock=clock)
    budgets = InLine(PgBudgets(store, ttl=config.reservation_ttl, clock=clock), locks=_line(config))
    store_plugin = StorePlugin("state store", store.close, schema=None if checked else
                               (lambda: _check_schema(store, upgrade=config.state_store_migrate, at_start=False)))
    listener = ListenerPlugin(kill_switches, approvals_changed=approvals.changed)
    return SidecarState(kill_switches, approvals, budgets, PgFleet(store, clock=clock), PgDecisionReader(store),
                        where=store.name,
                        plugins=(store_plugin, listener), sweep=_sweep(budgets, config), close=store.close,
                        outcomes=PgOutcomes(store, clock=clock), outbox=PgOutbox(store, clock=clock),
                        tokens=PgPersonTokens(store, clock=clock), audit=PgAudit(store, clock=clock),
                        users=PgUsers(store, clock=clock),
                        tool_results=PgToolResults(store, clock=clock, approvals_changed=approvals.changed))


async def _check_schema(store: PgStore, *, upgrade: bool, at_start: bool = True) -> bool:
    """Whether the store's schema is there at this tollgate's versions (migrated first with upgrade).

    False when the store cannot be reached (logged); a schema it cannot use raises StateError at start-up and
    is logged (and raised, for the plugin's status) after it."""
    try:
        await store.versions()
    except StateError as exc:
        if at_start:
            log.error("%s; serving anyway: requests that need state are denied (state_unavailable), and once the "
                      "kill switches go unconfirmed for kill_switch_max_staleness every request is (state_stale), "
                      "until the store answers", exc)
        return False
    for done in await migrate(store, upgrade=upgrade):
        if done.before != done.after:
            log.info("state store %s: %s schema created or upgraded from version %d to %d", store.name,
                     done.component, done.before, done.after)
    if not at_start:
        log.info("state store %s: reachable, schema checked", store.name)
    return True


class InLine:
    """A shared store's budgets with this process's steps of one scope in line before they reach the store.

    A budget step holds a pooled connection while it waits for its scopes' advisory locks: without the line,
    a burst of one hot session's requests would take every connection of the pool, and an unrelated agent's
    request would wait for one (measured: 150 concurrent requests of one session at one sidecar kept another
    agent's budget request 0.89 s, 13 ms in line; past state_store_timeout it would be DENY state_unavailable).
    In line (one asyncio lock per scope value, as on SQLite), each process holds at most one connection per hot
    scope, and the store's advisory locks order the processes."""

    def __init__(self, budgets: BudgetStore, *, locks: ScopeLocks | None = None) -> None:
        self._budgets = budgets
        #: Bounded (budget_line waiting, each at most budget_line_wait seconds): past either, DENY scope_overloaded.
        self._locks = ScopeLocks() if locks is None else locks

    @contextlib.asynccontextmanager
    async def hold(self, scopes: Mapping[str, str]) -> AsyncIterator[SpendHold]:
        async with self._locks.held(scopes), self._budgets.hold(scopes) as hold:
            yield hold

    async def report(self, reservation_id: str, *, amount: float, unit: str = "",
                     reported_by: str | None = None) -> Reservation:
        return await self._budgets.report(reservation_id, amount=amount, unit=unit, reported_by=reported_by)

    async def expire(self) -> int:
        return await self._budgets.expire()

    async def get(self, reservation_id: str) -> list[Reservation]:
        return await self._budgets.get(reservation_id)

    async def usage(self, scopes: Mapping[str, str]) -> list[ScopeSpend]:
        return await self._budgets.usage(scopes)


def _line(config: ServeConfig) -> ScopeLocks:
    """The budget steps' line per scope value in this process: at most budget_line waiting, each at most
    budget_line_wait seconds; past either the request is DENY scope_overloaded."""
    return ScopeLocks(max_waiting=config.budget_line, max_wait=config.budget_line_wait)


def _sweep(budgets: BudgetStore, config: ServeConfig) -> Plugin:
    async def sweep() -> None:
        # Spend already leaves a reservation out once past its expiry; this keeps its status true. On a shared
        # store any replica may sweep every replica's reservations (a crashed sidecar's too).
        expired = await budgets.expire()  # a StateError is logged ("budgets: ...") and the sweep tries again
        if expired:
            log.info("budgets: %d reservations expired and released their amounts", expired)

    return PeriodicPlugin("budgets", sweep, every=min(config.reservation_ttl, 60.0))


class StorePlugin:
    """The state store: open while the sidecar runs, closed after every other part has stopped.

    A PostgreSQL store unreachable at start-up has its schema checked in the background, every
    SCHEMA_RETRY_SECONDS, until it answers; until then (and while its schema is refused) the status says why."""

    required = False  # a store that is down makes requests DENY, it does not stop the sidecar

    def __init__(self, name: str, close: Callable[[], Awaitable[None]], *,
                 schema: Callable[[], Awaitable[bool]] | None = None) -> None:
        self.name = name
        self._close = close
        self._schema = schema
        self._task: asyncio.Task[None] | None = None
        self._status = RUNNING if schema is None else PluginStatus(
            PluginState.ERROR, "unreachable at start-up: requests that need state are DENY state_unavailable")

    async def start(self) -> None:
        if self._schema is not None:
            self._task = asyncio.get_running_loop().create_task(self._check(self._schema), name=self.name)

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        await self._close()

    def status(self) -> PluginStatus:
        return self._status

    async def _check(self, check: Callable[[], Awaitable[bool]]) -> None:
        while True:
            await asyncio.sleep(SCHEMA_RETRY_SECONDS)
            try:
                if await check():
                    self._status = RUNNING
                    return
            except StateError as exc:  # reachable, but a schema this tollgate cannot use: said once per change
                if self._status.message != str(exc):
                    log.error("%s", exc)
                self._status = PluginStatus(PluginState.ERROR, str(exc))


class ListenerPlugin:
    """A sidecar on a shared store: the kill switches read once before the servers start, then kept by the
    store's listener (LISTEN/NOTIFY, a refresh every kill_switch_refresh seconds as backstop, reconnecting).

    Its status is the staleness rule: ERROR (health NOT_SERVING) while the kill switches cannot be confirmed,
    since every request is then DENY state_stale; OK again as soon as they are."""

    name = "kill switches"
    required = True

    def __init__(self, kill_switches: PgKillSwitches, *, approvals_changed: Callable[[], None],
                 on_change: Callable[[], Awaitable[None]] | None = None) -> None:
        self._kills = kill_switches
        self._approvals_changed = approvals_changed
        #: Set by serve: the plugin manager's changed(), so health follows the staleness rule.
        self.on_change = on_change
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False

    async def start(self) -> None:
        from tollgate.state.postgres import APPROVALS_CHANNEL

        started = time.monotonic()
        with contextlib.suppress(StateError):  # unreachable: stale until the listener confirms them
            await self._kills.refresh()
        loop = asyncio.get_running_loop()
        listeners = {APPROVALS_CHANNEL: [self._approvals_changed]}  # WatchApproval wakes for other replicas' changes
        self._tasks = [loop.create_task(self._listen(listeners), name=self.name),
                       loop.create_task(self._watch(), name=f"{self.name} staleness")]
        self._started = True
        if self._kills.staleness():
            log.error("kill switches: %s", self._kills.staleness())
        else:
            active = self._kills.snapshot().active
            log.info("kill switches: confirmed from the shared store in %.0f ms%s", (time.monotonic() - started) * 1000,
                     "; active: " + ", ".join(f"{scope}={value}" for scope, value in active) if active else "")

    async def stop(self) -> None:
        self._started = False
        for task in self._tasks:
            await cancel(task)
        self._tasks = []

    def status(self) -> PluginStatus:
        if not self._started:
            return PluginStatus(PluginState.NOT_READY, "not started")
        stale = self._kills.staleness()
        return PluginStatus(PluginState.ERROR, stale) if stale else RUNNING

    async def _listen(self, listeners: dict[str, list[Callable[[], None]]]) -> None:
        """The store's listener, started again should it ever fail: it reconnects by itself after a lost
        connection, so this is for the unforeseen, which would otherwise leave the sidecar stale for good."""
        while True:
            try:
                await self._kills.run(listeners=listeners)
            except Exception:
                log.exception("kill switches: the listener failed; starting it again in %gs (until it confirms them, "
                              "the staleness rule denies)", LISTENER_RESTART_SECONDS)
            await asyncio.sleep(LISTENER_RESTART_SECONDS)

    async def _watch(self) -> None:
        """Report readiness again whenever the staleness rule starts or stops denying (logged once each)."""
        stale = bool(self._kills.staleness())
        while True:
            await asyncio.sleep(min(0.25, self._kills.refresh_every))
            now_stale = bool(self._kills.staleness())
            if now_stale == stale:
                continue
            stale = now_stale
            if stale:
                log.error("kill switches: %s", self._kills.staleness())
            else:
                log.info("kill switches: confirmed again; requests are decided again")
            if self.on_change is not None:
                await self.on_change()
