"""The server's own rules on the decision path, whatever the bundle says: the contract check and its fail-closed
mapping, then, in this order, caller refusal, kill switches, stale kill switches, state the store could not give,
export lag and approvals.

The authorizer and `tollgate replay` both decide through `apply_server_rules`, over the same `ServerFacts` (the
authorizer's read from its state, replay's from the logged input), so a replay answers as the server did.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tollgate.contract import (
    ALLOW,
    DEADLINE_EXCEEDED,
    DENY,
    ENGINE_ERROR,
    EXPORT_LAG,
    KILLED,
    KINDS,
    POLICY_CONTRACT,
    STATE_STALE,
    ContractError,
    PolicyResult,
    Reason,
    parse_result,
    state_unavailable,
)
from tollgate.engine import UNDEFINED, EngineError, EvaluationTimeout
from tollgate.identity import CALLER_UNAUTHENTICATED, PRINCIPAL_MISMATCH, Caller, CallerMap
from tollgate.state import KillSwitch, request_targets
from tollgate.state.approvals import APPROVED


@dataclass(frozen=True)
class Outcome:
    """The final result for one evaluation, after the contract check and the fail-closed mapping."""

    result: PolicyResult
    #: The policy's value as logged in the record's `result`; None when undefined or the engine failed.
    raw: Any = None
    #: Why the server denied on the policy's behalf (the record's `error`); empty for a policy decision.
    error: str = ""


def policy_outcome(evaluated: Any, *, entrypoint: str) -> Outcome:
    """Hold one evaluation to the contract: the policy's value, UNDEFINED, or the EngineError it raised.

    Every failure becomes a server DENY with its reason code and the detail. The authorizer and
    `tollgate replay` both decide through this function, so a replay answers as the server would.
    """
    if isinstance(evaluated, EvaluationTimeout):
        return Outcome(server_deny(DEADLINE_EXCEEDED, evaluated.message), error=str(evaluated))
    if isinstance(evaluated, EngineError):
        return Outcome(server_deny(ENGINE_ERROR, "policy evaluation failed; see the decision log"),
                       error=str(evaluated))
    if evaluated is UNDEFINED:
        detail = f"data.{entrypoint.replace('/', '.')} is undefined"
        return Outcome(server_deny(POLICY_CONTRACT, f"policy result breaks the contract: {detail}"), error=detail)
    try:
        return Outcome(parse_result(evaluated), raw=evaluated)
    except ContractError as exc:
        return Outcome(server_deny(POLICY_CONTRACT, f"policy result breaks the contract: {exc}"), raw=evaluated,
                       error=str(exc))


def enforce_kill_switches(outcome: Outcome, matches: Sequence[KillSwitch]) -> Outcome:
    """The server's own rule, whatever the bundle says: a request a kill switch names is denied.

    A policy that already denies it as `killed` keeps its answer. Otherwise (a policy without the
    kill rule, or one that allowed) the answer becomes a DENY with a `killed` reason per matching
    switch, after any deny reasons the policy gave; the policy's own result stays in the record.
    """
    result = outcome.result
    if result.decision == DENY and any(r.code == KILLED for r in result.reasons):
        return outcome
    kept = result.reasons if result.decision == DENY else ()
    reasons = (*kept, *(Reason(KILLED, m.message()) for m in matches))
    error = "kill switch enforced by the server: the policy did not deny this request as killed"
    return Outcome(PolicyResult(DENY, reasons), raw=outcome.raw,
                   error=f"{outcome.error}; {error}" if outcome.error else error)


def enforce_staleness(outcome: Outcome, stale: str) -> Outcome:
    """While the kill switches cannot be confirmed, every request is denied: no one can prove that no kill switch
    names it. The reason state_stale comes first; a policy's own deny reasons (and kill switches known) stay."""
    result = outcome.result
    kept = result.reasons if result.decision == DENY else ()
    error = f"kill switches unconfirmed, enforced by the server: {stale}"
    return Outcome(PolicyResult(DENY, (Reason(STATE_STALE, stale), *kept)), raw=outcome.raw,
                   error=f"{outcome.error}; {error}" if outcome.error else error)


def enforce_state_unavailable(outcome: Outcome, what: str, *, error: str = "") -> Outcome:
    """State the request needs (`what`: the approval it presents or asks for) could not be read or written: DENY
    state_unavailable, whatever the policy said. error: the store's message, for the record only."""
    detail = f"state unavailable, enforced by the server: {what}" + (f" ({error})" if error else "")
    return Outcome(PolicyResult(DENY, (state_unavailable(what),)), raw=outcome.raw,
                   error=f"{outcome.error}; {detail}" if outcome.error else detail)


def enforce_export_lag(outcome: Outcome, behind: str) -> Outcome:
    """decision_log_fail_closed_on_lag: while the export is too far behind, an answer that is not DENY becomes one."""
    error = f"decision log export behind, enforced by the server: {behind}"
    return Outcome(PolicyResult(DENY, (Reason(EXPORT_LAG, behind),)), raw=outcome.raw,
                   error=f"{outcome.error}; {error}" if outcome.error else error)


def enforce_approval(outcome: Outcome, approval_id: str, status: str) -> Outcome:
    """An ALLOW the policy gave on an approval that cannot yield one: DENY approval_<status>."""
    message = (f"approval {approval_id} is {status}: an approval allows one request, once, and only the "
               "request it was granted for")
    error = f"approval enforced by the server: the policy allowed on an approval that is {status}"
    return Outcome(PolicyResult(DENY, (Reason(f"approval_{status}", message),)), raw=outcome.raw,
                   error=f"{outcome.error}; {error}" if outcome.error else error)


@dataclass(frozen=True)
class ServerFacts:
    """What the server's own rules read for one request, read once: the policy saw the same state."""

    #: Why the caller may not ask this (input.auth.refused); None when it may.
    refusal: Reason | None = None
    #: The active kill switches that name this request.
    kill_switches: tuple[KillSwitch, ...] = ()
    #: The state of the approval the request presents (input.state.approval: id, status, approver).
    approval: Mapping[str, str] | None = None
    #: Why the decision-log export is further behind than allowed; "" while it keeps up.
    export_behind: str = ""
    #: Why the kill switches cannot be confirmed (KillSwitchView.staleness); "" while they can.
    stale: str = ""
    #: What state the request needs that the store could not give (the approval presented); "" when none.
    unavailable: str = ""

    @property
    def asks_policy(self) -> bool:
        """Whether the policy is asked at all: never for a caller the server refuses."""
        return self.refusal is None

    @classmethod
    def recorded(cls, input_doc: Mapping[str, Any]) -> ServerFacts:
        """The facts a logged input document carries, as the server read them when it decided.

        An export lag, stale kill switches or a store that did not answer are not part of the input: they were
        conditions of that server, not of the request, so a replay never has them.
        """
        state = input_doc.get("state")
        approval = state.get("approval") if isinstance(state, Mapping) else None
        return cls(refusal=_recorded_refusal(input_doc), kill_switches=tuple(_recorded_kill_switches(input_doc)),
                   approval=approval if isinstance(approval, Mapping) else None)


def apply_server_rules(facts: ServerFacts, policy: Outcome | None) -> Outcome:
    """The final outcome of one request after the server's own rules, in order, whatever the bundle says:

    1. a refused caller is denied (the policy was not asked: `policy` is None exactly when `facts.refusal` is set);
    2. a request an active kill switch names is denied;
    3. while the kill switches cannot be confirmed, every request is denied (state_stale);
    4. a request whose state the store could not give is denied (state_unavailable);
    5. while the decision-log export is too far behind, what is not a DENY becomes one;
    6. an ALLOW on a presented approval that is not approved for this very request is denied.

    Using an approved approval (once) and reserving budget are state effects the authorizer settles after this.
    """
    if facts.refusal is not None:
        outcome = Outcome(server_deny(facts.refusal.code, facts.refusal.message),
                          error=f"caller refused by the server: {facts.refusal.message}")
    elif policy is None:
        raise ValueError("apply_server_rules: the policy was not asked, yet the caller is not refused")
    else:
        outcome = policy
    if facts.kill_switches:
        outcome = enforce_kill_switches(outcome, facts.kill_switches)
    if facts.stale:
        outcome = enforce_staleness(outcome, facts.stale)
    if facts.unavailable and outcome.result.decision != DENY:
        outcome = enforce_state_unavailable(outcome, facts.unavailable)
    if facts.export_behind and outcome.result.decision != DENY:
        outcome = enforce_export_lag(outcome, facts.export_behind)
    approval = facts.approval
    if approval is not None and outcome.result.decision == ALLOW and approval.get("status") != APPROVED:
        outcome = enforce_approval(outcome, str(approval.get("id", "")), str(approval.get("status", "")))
    return outcome


def caller_refusal(caller: Caller, principal: Mapping[str, Any], callers: CallerMap) -> Reason | None:
    """Why this caller may not ask for this principal: a caller credential that did not verify, or a principal
    the `callers` mapping does not let it speak for; None when it may."""
    if caller.error:
        return Reason(CALLER_UNAUTHENTICATED, caller.error)
    refused = callers.check(caller, principal)
    return Reason(PRINCIPAL_MISMATCH, refused) if refused else None


def server_deny(code: str, message: str) -> PolicyResult:
    """A DENY the server makes itself when the policy could not decide."""
    return PolicyResult(DENY, (Reason(code, message),))


def _recorded_refusal(input_doc: Mapping[str, Any]) -> Reason | None:
    """The caller refusal a logged input records (input.auth.refused): a candidate bundle cannot change who was
    allowed to speak for whom."""
    auth = input_doc.get("auth")
    refused = auth.get("refused") if isinstance(auth, Mapping) else None
    if not isinstance(refused, Mapping) or not refused.get("code"):
        return None
    return Reason(str(refused["code"]), str(refused.get("message", "")))


def _recorded_kill_switches(input_doc: Mapping[str, Any]) -> list[KillSwitch]:
    """The kill switches in an input document's state.killed that name its request, as the server matched them."""
    state = input_doc.get("state")
    kind = input_doc.get("kind")
    entries = state.get("killed") if isinstance(state, Mapping) else None
    if not entries or not isinstance(entries, list) or kind not in KINDS:
        return []
    principal, action = input_doc.get("principal"), input_doc.get(str(kind))
    targets = request_targets(str(kind), principal if isinstance(principal, Mapping) else {},
                              action if isinstance(action, Mapping) else {})
    found = {(e["scope"], e["value"]): KillSwitch(e["scope"], e["value"], str(e.get("reason", "")), "", "")
             for e in entries
             if isinstance(e, Mapping) and (e.get("scope"), e.get("value")) in targets}
    return [found[key] for key in sorted(found)]
