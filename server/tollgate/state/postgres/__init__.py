"""The fleet's shared state store on PostgreSQL: the same protocols as the SQLite store, for every replica."""

from tollgate.state.postgres._approvals import PgApprovals
from tollgate.state.postgres._audit import PgAudit
from tollgate.state.postgres._budgets import PgBudgets
from tollgate.state.postgres._fleet import FLEET_STEPS, PgFleet
from tollgate.state.postgres._killswitch import PgKillSwitches
from tollgate.state.postgres._listener import APPROVALS_CHANNEL, KILL_SWITCH_CHANNEL, NotificationListener
from tollgate.state.postgres._outcomes import OUTCOMES_STEPS, PgOutcomes
from tollgate.state.postgres._store import SCHEMES, PgOptions, PgStore, is_postgres_url, redact
from tollgate.state.postgres._users import PgUsers

__all__ = [
    "APPROVALS_CHANNEL",
    "FLEET_STEPS",
    "KILL_SWITCH_CHANNEL",
    "OUTCOMES_STEPS",
    "SCHEMES",
    "NotificationListener",
    "PgApprovals",
    "PgAudit",
    "PgBudgets",
    "PgFleet",
    "PgKillSwitches",
    "PgOptions",
    "PgOutcomes",
    "PgStore",
    "PgUsers",
    "is_postgres_url",
    "redact",
]
