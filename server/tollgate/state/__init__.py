"""Run-time state the server owns, in DATA_DIR/state.db: kill switches, approvals and budgets."""

from tollgate.state._killswitch import (
    ALL_VALUE,
    SCOPES,
    HistoryEntry,
    InvalidKillSwitch,
    KillSwitch,
    KillSwitches,
    KillSwitchNotFound,
    KillSwitchSnapshot,
    request_targets,
    validate_target,
)
from tollgate.state._store import StateError, StateStore

__all__ = [
    "ALL_VALUE",
    "SCOPES",
    "HistoryEntry",
    "InvalidKillSwitch",
    "KillSwitch",
    "KillSwitchNotFound",
    "KillSwitchSnapshot",
    "KillSwitches",
    "StateError",
    "StateStore",
    "request_targets",
    "validate_target",
]
