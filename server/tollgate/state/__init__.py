"""Run-time state the server owns, in DATA_DIR/state.db: kill switches, approvals and budgets, behind the
state-store protocols (state/_protocol.py) that a shared store implements too."""

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
from tollgate.state._protocol import (
    NO_APPROVALS,
    NO_KILL_SWITCHES,
    ApprovalLedger,
    ApprovalStore,
    BudgetStore,
    KillSwitchStore,
    KillSwitchView,
    NoApprovals,
    NoKillSwitches,
    SpendLedger,
)
from tollgate.state._store import StateError, StateStore, private_dir, private_file

__all__ = [
    "ALL_VALUE",
    "NO_APPROVALS",
    "NO_KILL_SWITCHES",
    "SCOPES",
    "ApprovalLedger",
    "ApprovalStore",
    "BudgetStore",
    "HistoryEntry",
    "InvalidKillSwitch",
    "KillSwitch",
    "KillSwitchNotFound",
    "KillSwitchSnapshot",
    "KillSwitchStore",
    "KillSwitchView",
    "KillSwitches",
    "NoApprovals",
    "NoKillSwitches",
    "SpendLedger",
    "StateError",
    "StateStore",
    "private_dir",
    "private_file",
    "request_targets",
    "validate_target",
]
