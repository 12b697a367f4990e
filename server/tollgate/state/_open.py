"""Opening the configured state store from a process other than a sidecar: the console, and the commands that
manage what the console keeps (`tollgate users`).

The same store the sidecars use, from the same settings (`data_dir`, `state_store` and its options): SQLite at
DATA_DIR/state.db (WAL with a busy timeout, so it is opened beside a running sidecar), or the fleet's PostgreSQL.
On PostgreSQL nothing is migrated here: every component must already be at this tollgate's version (StateError
with the hint `tollgate state migrate` otherwise). Nothing here runs a sidecar's background work (the kill-switch
listener, the reservation sweep): a reader changes the store, the sidecars notice.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from tollgate.clock import Clock, SystemClock

if TYPE_CHECKING:
    from tollgate.state._audit import AuditLog
    from tollgate.state._protocol import ApprovalStore, BudgetStore, FleetRegistry, KillSwitchStore
    from tollgate.state._toolresults import ToolResultStore
    from tollgate.state._users import UserStore
    from tollgate.state.postgres import PgStore


@dataclass(frozen=True)
class StoreSettings:
    """Where the state lives and how to reach it: the sidecar's keys of the same names (ServeConfig)."""

    #: The data directory: state.db (and the sidecar's decisions.db) when state_store is "".
    data_dir: str = ".tollgate"
    #: postgresql:// URL of the fleet's shared store; "" is SQLite in data_dir.
    state_store: str = ""
    #: Seconds a store call may take before it fails.
    state_store_timeout: float = 2.0
    #: A file holding the store's password (its first line), for a URL that carries none.
    state_store_password_file: str = ""
    #: Most connections this process opens to the store.
    state_store_max_connections: int = 4
    #: The members of each group:NAME an approval names (who may decide it).
    approver_groups: Mapping[str, Sequence[str]] = field(default_factory=dict)
    #: Shown in pg_stat_activity.
    application_name: str = "tollgate console"


@dataclass(frozen=True)
class Stores:
    """Every state component a console (or a command) works with, on one store."""

    kill_switches: KillSwitchStore
    approvals: ApprovalStore
    budgets: BudgetStore
    fleet: FleetRegistry
    users: UserStore
    audit: AuditLog
    #: Where it lives, for messages: the state.db path, or the store's URL without its password.
    where: str
    close: Callable[[], Awaitable[None]]
    #: The PostgreSQL store's pool (None on SQLite): components added later open on it.
    pg: PgStore | None = None
    #: The SQLite store (None on PostgreSQL).
    sqlite_path: Path | None = None
    #: What became of the tool calls decided (the session timeline reads them).
    tool_results: ToolResultStore | None = None


async def open_store(settings: StoreSettings, *, clock: Clock = SystemClock()) -> Stores:
    """Open the configured store (StateError: it cannot be opened, or its schema is not this tollgate's)."""
    if settings.state_store:
        return await _open_postgres(settings, clock)
    return _open_sqlite(settings, clock)


def _open_sqlite(settings: StoreSettings, clock: Clock) -> Stores:
    from tollgate.state._audit import LocalAudit
    from tollgate.state._local import open_local_state
    from tollgate.state._store import private_dir
    from tollgate.state._toolresults import LocalToolResults
    from tollgate.state._users import LocalUsers

    data_dir = Path(settings.data_dir)
    private_dir(data_dir)
    local = open_local_state(data_dir, clock=clock, approver_groups=settings.approver_groups)
    try:
        users, audit = LocalUsers(local.store, clock=clock), LocalAudit(local.store, clock=clock)
        results = LocalToolResults.open(local.store, clock=clock, approvals_changed=local.approvals.approvals.changed)
    except BaseException:
        local.close()
        raise

    async def close() -> None:
        local.close()

    return Stores(local.kill_switches, local.approvals, local.budgets, local.fleet, users, audit,
                  where=str(local.store.path), close=close, sqlite_path=local.store.path, tool_results=results)


async def _open_postgres(settings: StoreSettings, clock: Clock) -> Stores:
    from tollgate.state._store import StateError
    from tollgate.state.postgres import (
        PgApprovals,
        PgAudit,
        PgBudgets,
        PgFleet,
        PgKillSwitches,
        PgOptions,
        PgStore,
        PgUsers,
    )
    from tollgate.state.postgres._toolresults import PgToolResults

    store = PgStore(PgOptions(settings.state_store, timeout=settings.state_store_timeout,
                              password_file=settings.state_store_password_file,
                              max_connections=settings.state_store_max_connections,
                              application_name=settings.application_name))
    await store.open()
    try:
        versions = await store.versions()
        for component, steps in ((PgUsers.COMPONENT, PgUsers.STEPS), (PgAudit.COMPONENT, PgAudit.STEPS),
                                 (PgApprovals.COMPONENT, PgApprovals.STEPS),
                                 (PgKillSwitches.COMPONENT, PgKillSwitches.STEPS)):
            if versions.get(component, 0) != len(steps):
                raise StateError(
                    f"state store {store.name}: {component} schema is version {versions.get(component, 0)}, this "
                    f"tollgate needs {len(steps)} (hint: run `tollgate state migrate --state-store URL`)")
    except BaseException:
        await store.close()
        raise
    return Stores(PgKillSwitches(store, clock=clock), PgApprovals(store, approver_groups=settings.approver_groups,
                                                                   clock=clock),
                  PgBudgets(store, clock=clock), PgFleet(store, clock=clock), PgUsers(store, clock=clock),
                  PgAudit(store, clock=clock), where=store.name, close=store.close, pg=store,
                  tool_results=PgToolResults(store, clock=clock))
