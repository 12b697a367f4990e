"""apply_server_rules: the server's own rules over a policy's outcome, in order, as the authorizer and replay apply."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate.contract import ALLOW, DENY, REQUIRE_APPROVAL, ApprovalSpec, PolicyResult, Reason
from tollgate.decision import Outcome, ServerFacts, apply_server_rules
from tollgate.state import KillSwitch

ALLOWED = Outcome(PolicyResult(ALLOW), raw={"decision": "allow"})
DENIED = Outcome(PolicyResult(DENY, (Reason("not_allowed", "no"),)), raw={"decision": "deny"})
ASKS = Outcome(PolicyResult(REQUIRE_APPROVAL, (Reason("destructive"),), approval=ApprovalSpec(("alice",), 60)))
REFUSED = Reason("principal_mismatch", "uid:1000 may not speak for agent-a")
KILLED = (KillSwitch("agent", "agent-a", "INC-7", "sre", "2026-12-31T23:59:58Z"),)
BEHIND = "decision log export otlp is 900s behind"


def approval(status: str) -> dict[str, str]:
    return {"id": "apr_1", "status": status, "approver": "alice"}


@pytest.mark.parametrize(("facts", "policy", "decision", "codes"), [
    pytest.param(ServerFacts(), ALLOWED, ALLOW, [], id="nothing-to-enforce"),
    pytest.param(ServerFacts(refusal=REFUSED), None, DENY, ["principal_mismatch"], id="refused-caller"),
    pytest.param(ServerFacts(refusal=REFUSED, kill_switches=KILLED), None, DENY, ["principal_mismatch", "killed"],
                 id="refused-and-killed"),
    pytest.param(ServerFacts(kill_switches=KILLED), ALLOWED, DENY, ["killed"], id="killed-allow"),
    pytest.param(ServerFacts(kill_switches=KILLED), DENIED, DENY, ["not_allowed", "killed"], id="killed-deny"),
    pytest.param(ServerFacts(export_behind=BEHIND), ALLOWED, DENY, ["export_lag"], id="lag-allow"),
    pytest.param(ServerFacts(export_behind=BEHIND), ASKS, DENY, ["export_lag"], id="lag-require-approval"),
    pytest.param(ServerFacts(export_behind=BEHIND), DENIED, DENY, ["not_allowed"], id="lag-deny"),
    pytest.param(ServerFacts(kill_switches=KILLED, export_behind=BEHIND), ALLOWED, DENY, ["killed"],
                 id="killed-before-lag"),
    pytest.param(ServerFacts(approval=approval("approved")), ALLOWED, ALLOW, [], id="approved"),
    pytest.param(ServerFacts(approval=approval("used")), ALLOWED, DENY, ["approval_used"], id="used"),
    pytest.param(ServerFacts(approval=approval("mismatch")), ALLOWED, DENY, ["approval_mismatch"], id="mismatch"),
    pytest.param(ServerFacts(approval=approval("pending")), ASKS, REQUIRE_APPROVAL, ["destructive"],
                 id="pending-asks-again"),
    pytest.param(ServerFacts(approval=approval("pending"), kill_switches=KILLED), ALLOWED, DENY, ["killed"],
                 id="killed-before-approval"),
])
def test_the_server_rules_apply_in_order(facts: ServerFacts, policy: Outcome | None, decision: str,
                                         codes: list[str]) -> None:
    outcome = apply_server_rules(facts, policy)
    assert (outcome.result.decision, [r.code for r in outcome.result.reasons]) == (decision, codes)
    if policy is not None:
        assert outcome.raw == policy.raw  # the policy's own answer stays in the record


def test_a_policy_not_asked_is_only_for_a_refused_caller() -> None:
    with pytest.raises(ValueError, match="not asked"):
        apply_server_rules(ServerFacts(), None)


@pytest.mark.parametrize(("input_doc", "expected"), [
    pytest.param({"kind": "tool"}, ServerFacts(), id="nothing-recorded"),
    pytest.param({"kind": "tool", "auth": {"refused": {"code": "caller_unauthenticated", "message": "expired"}}},
                 ServerFacts(refusal=Reason("caller_unauthenticated", "expired")), id="refused"),
    pytest.param({"kind": "tool", "principal": {"agent_id": "agent-a"}, "tool": {"server": "github", "name": "x"},
                  "state": {"killed": [{"scope": "agent", "value": "agent-a", "reason": "INC-7"},
                                       {"scope": "agent", "value": "agent-b", "reason": "INC-8"}]}},
                 ServerFacts(kill_switches=(KillSwitch("agent", "agent-a", "INC-7", "", ""),)),
                 id="only-the-kill-switches-that-name-it"),
    pytest.param({"kind": "tool", "state": {"approval": approval("used")}}, ServerFacts(approval=approval("used")),
                 id="approval"),
])
def test_recorded_facts_are_read_from_a_logged_input(input_doc: dict[str, Any], expected: ServerFacts) -> None:
    assert ServerFacts.recorded(input_doc) == expected
