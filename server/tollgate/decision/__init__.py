"""The decision path: read state, evaluate the policy, apply the server's own rules, settle state effects,
record, answer."""

from tollgate.decision._authorizer import Authorizer, AuthorizerConfig, Evaluation, Settled, StateRead, never_behind
from tollgate.decision._budgets import (
    BUDGET_EXCEEDED,
    BUDGET_UNAVAILABLE,
    NO_BUDGETS,
    NO_SPEND,
    BudgetGuard,
    NoBudgets,
    Settlement,
    SpendGuard,
    SpendView,
)
from tollgate.decision._observer import NO_OBSERVER, DecisionObserver, NoObserver
from tollgate.decision._rules import (
    Outcome,
    ServerFacts,
    apply_server_rules,
    caller_refusal,
    enforce_approval,
    enforce_export_lag,
    enforce_kill_switches,
    policy_outcome,
    server_deny,
)

__all__ = [
    "BUDGET_EXCEEDED",
    "BUDGET_UNAVAILABLE",
    "NO_BUDGETS",
    "NO_OBSERVER",
    "NO_SPEND",
    "Authorizer",
    "AuthorizerConfig",
    "BudgetGuard",
    "DecisionObserver",
    "Evaluation",
    "NoBudgets",
    "NoObserver",
    "Outcome",
    "ServerFacts",
    "Settled",
    "Settlement",
    "SpendGuard",
    "SpendView",
    "StateRead",
    "apply_server_rules",
    "caller_refusal",
    "enforce_approval",
    "enforce_export_lag",
    "enforce_kill_switches",
    "never_behind",
    "policy_outcome",
    "server_deny",
]
