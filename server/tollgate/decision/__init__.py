"""The decision path: read state, evaluate the policy, apply the server's own rules, settle state effects,
record, answer."""

from tollgate.decision._authorizer import Authorizer, AuthorizerConfig
from tollgate.decision._budgets import BUDGET_EXCEEDED, BUDGET_UNAVAILABLE, BudgetGuard, Settlement, SpendView
from tollgate.decision._rules import (
    Outcome,
    enforce_approval,
    enforce_export_lag,
    enforce_kill_switches,
    policy_outcome,
    recorded_caller_refusal,
    recorded_kill_switches,
    server_deny,
)

__all__ = [
    "BUDGET_EXCEEDED",
    "BUDGET_UNAVAILABLE",
    "Authorizer",
    "AuthorizerConfig",
    "BudgetGuard",
    "Outcome",
    "Settlement",
    "SpendView",
    "enforce_approval",
    "enforce_export_lag",
    "enforce_kill_switches",
    "policy_outcome",
    "recorded_caller_refusal",
    "recorded_kill_switches",
    "server_deny",
]
