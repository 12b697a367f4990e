"""The decision path in one process: each server rule, state effect and answer, against real parts.

The policy (LAX in tests/decision/inprocess.py) never looks at kill switches, trusts any presented approval and
counts no spend: what is denied here that it allowed is the server's own rules, whatever the bundle says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.decision.inprocess import LAX, START, DecisionPath, FailingEngine, InProcessEngine, codes, spend, tool
from tollgate.authoring.replay import Candidate
from tollgate.contract import ALLOW, DENY, REQUIRE_APPROVAL, Decision
from tollgate.decision import Authorizer
from tollgate.encoding import format_time
from tollgate.engine import EngineError, EvaluationTimeout
from tollgate.identity import Caller, CallerMap
from tollgate.state.approvals import Approval, Approvals

SECRET = "tok-3f9a"


# -- the caller ------------------------------------------------------------------------------------

CALLERS = CallerMap.parse([{"id": "uid:1000", "agents": ["agent-b"]}])


@pytest.mark.parametrize(("caller", "code"), [
    pytest.param(Caller(method="token", error="caller token expired"), "caller_unauthenticated", id="bad-token"),
    pytest.param(Caller(method="uds", subject="uid:1000"), "principal_mismatch", id="principal-not-its-own"),
    pytest.param(Caller(method="uds", subject="uid:2000"), "principal_mismatch", id="caller-not-listed"),
])
def test_a_refused_caller_is_denied_without_asking_the_policy(decision_path: DecisionPath, caller: Caller,
                                                              code: str) -> None:
    authorizer = decision_path.build(callers=CALLERS)
    answer = decision_path.ask(tool(arguments={"token": SECRET}, caller=caller), authorizer=authorizer)
    assert (answer.decision, codes(answer)) == (DENY, [code])
    assert decision_path.engine.asked == []
    record = decision_path.record(answer)
    assert record["input"]["auth"]["refused"]["code"] == code  # so that a replay answers the same
    assert record["error"].startswith("caller refused by the server")
    assert "arguments" not in record["input"]["tool"]  # no mask rule was evaluated: the free-form parts go
    assert record["bundle_revision"] == "rev-1"


def test_a_refused_caller_never_fetches_another_callers_answer_by_its_request_id(decision_path: DecisionPath) -> None:
    first = decision_path.ask(tool(request_id="call-1"))
    refused = decision_path.ask(tool(request_id="call-1", caller=Caller(method="uds", subject="uid:1000")),
                                authorizer=decision_path.build(callers=CALLERS))
    assert first.decision == ALLOW
    assert (refused.decision, codes(refused)) == (DENY, ["principal_mismatch"])
    assert refused.decision_id != first.decision_id


# -- the policy's answer, or the server's fail-closed DENY -----------------------------------------------


def test_without_a_bundle_every_request_is_denied_no_bundle_and_logged(decision_path: DecisionPath) -> None:
    decision_path.use(None)
    answer = decision_path.ask(tool())
    assert (answer.decision, codes(answer), answer.bundle_revision) == (DENY, ["no_bundle"], "")
    assert decision_path.record(answer)["decision"] == DENY


CONFLICT = """
decision := {"decision": "allow"} if input.kind == "tool"
decision := {"decision": "deny", "reasons": [{"code": "x"}]} if input.principal.agent_id == "agent-a"
"""


@pytest.mark.parametrize(("rego", "code", "error"), [
    pytest.param('decision := "allow"', "policy_contract", "result must be an object", id="not-an-object"),
    pytest.param('decision := {"decision": "maybe"}', "policy_contract", "result.decision must be one of",
                 id="unknown-decision"),
    pytest.param('decision := {"decision": "deny", "reasons": []}', "policy_contract",
                 "a deny must carry at least one reason", id="deny-without-reasons"),
    pytest.param('decision := {"decision": "allow", "approval": {}}', "policy_contract",
                 "result.approval is only allowed with require_approval", id="approval-on-allow"),
    pytest.param("other := 1", "policy_contract", "data.tollgate.decision is undefined", id="undefined"),
    pytest.param(CONFLICT, "engine_error", "eval_conflict_error", id="evaluation-error"),
])
def test_a_policy_that_breaks_the_contract_or_fails_is_a_logged_deny(decision_path: DecisionPath, rego: str,
                                                                     code: str, error: str) -> None:
    decision_path.use(InProcessEngine(f"package tollgate\n\n{rego}\n", revision="rev-bad"))
    answer = decision_path.ask(tool())
    assert (answer.decision, codes(answer), answer.bundle_revision) == (DENY, [code], "rev-bad")
    assert error in decision_path.record(answer)["error"]


@pytest.mark.parametrize(("error", "code"), [
    pytest.param(EvaluationTimeout("no answer within 50 ms"), "deadline_exceeded", id="deadline"),
    pytest.param(EngineError("worker_died", "engine worker exited"), "engine_error", id="worker-died"),
])
def test_an_engine_without_an_answer_is_a_logged_deny(decision_path: DecisionPath, error: EngineError,
                                                      code: str) -> None:
    decision_path.use(FailingEngine(error))
    answer = decision_path.ask(tool(arguments={"token": SECRET}))
    assert (answer.decision, codes(answer)) == (DENY, [code])
    record = decision_path.record(answer)
    assert error.code in record["error"]
    assert "arguments" not in record["input"]["tool"]  # the mask could not be computed: fail closed


# -- kill switches -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("scope", "value"), [
    ("agent", "agent-a"), ("session", "s-1"), ("team", "payments"), ("tool", "github/read"),
    ("mcp_server", "github"), ("all", ""),
])
def test_a_kill_switch_denies_what_the_policy_allowed(decision_path: DecisionPath, scope: str, value: str) -> None:
    decision_path.kill_switches.kill(scope, value, reason="INC-7", by="sre")
    answer = decision_path.ask(tool())
    assert (answer.decision, codes(answer)) == (DENY, ["killed"])
    assert "INC-7" in answer.reasons[0].message
    record = decision_path.record(answer)
    assert record["result"]["decision"] == ALLOW  # the policy's own answer stays in the record
    assert "kill switch enforced by the server" in record["error"]
    assert record["input"]["state"]["killed"] == [
        {"scope": scope, "value": value or "*", "reason": "INC-7"}]  # and the policy saw it


def test_a_kill_switch_on_something_else_or_revived_leaves_the_request_alone(decision_path: DecisionPath) -> None:
    decision_path.kill_switches.kill("agent", "agent-b", reason="INC-7", by="sre")
    decision_path.kill_switches.kill("session", "s-1", reason="INC-8", by="sre")
    assert decision_path.ask(tool()).decision == DENY
    decision_path.kill_switches.revive("session", "s-1", by="sre")
    assert decision_path.ask(tool()).decision == ALLOW


def test_a_policy_deny_keeps_its_reasons_ahead_of_the_kill_switch(decision_path: DecisionPath) -> None:
    decision_path.kill_switches.kill("tool", "github/drop", reason="INC-7", by="sre")
    assert codes(decision_path.ask(tool("drop"))) == ["not_allowed", "killed"]


def test_a_kill_switch_stops_a_require_approval_before_any_approval_opens(decision_path: DecisionPath) -> None:
    decision_path.kill_switches.kill("agent", "agent-a", reason="INC-7", by="sre")
    answer = decision_path.ask(tool("delete"))
    assert (answer.decision, codes(answer), answer.approval_id) == (DENY, ["killed"], "")
    assert decision_path.approvals.list() == []


# -- export lag --------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    pytest.param("read", ["export_lag"], id="allow-becomes-deny"),
    pytest.param("delete", ["export_lag"], id="require-approval-becomes-deny"),
    pytest.param("drop", ["not_allowed"], id="deny-keeps-the-policys-reasons"),
])
def test_while_the_export_lags_only_denies_are_answered(decision_path: DecisionPath, name: str,
                                                        expected: list[str]) -> None:
    decision_path.export_behind = "decision log export otlp is 900s (12 records) behind"
    answer = decision_path.ask(tool(name))
    assert (answer.decision, codes(answer), answer.approval_id) == (DENY, expected, "")
    assert decision_path.approvals.list() == []
    decision_path.export_behind = ""
    assert decision_path.ask(tool("read")).decision == ALLOW


# -- approvals ---------------------------------------------------------------------------------------


def _opened(decision_path: DecisionPath, **arguments: Any) -> tuple[Decision, Approval]:
    answer = decision_path.ask(tool("delete", arguments=arguments))
    assert answer.decision == REQUIRE_APPROVAL and answer.approval_id.startswith("apr_")
    approval = decision_path.approvals.get(answer.approval_id)
    assert approval is not None
    return answer, approval


def test_a_require_approval_opens_one_bound_to_its_request_holding_the_masked_action(
        decision_path: DecisionPath) -> None:
    request = tool("delete", arguments={"repo": "app", "token": SECRET})
    answer, approval = _opened(decision_path, repo="app", token=SECRET)
    assert (approval.status, approval.opened_by, approval.approvers) == ("pending", answer.decision_id, ("alice",))
    assert approval.request_digest == request.digest()
    assert approval.action["arguments"] == {"repo": "app"}  # approvers see what the log keeps, no secret
    record = decision_path.record(answer)
    assert (record["approval_id"], record["request_digest"]) == (approval.id, request.digest())


def test_asking_again_while_it_is_pending_finds_the_same_approval(decision_path: DecisionPath) -> None:
    first, _ = _opened(decision_path, repo="app")
    again, _ = _opened(decision_path, repo="app")
    assert again.approval_id == first.approval_id and again.decision_id != first.decision_id


def test_an_approved_approval_allows_its_request_once(decision_path: DecisionPath) -> None:
    _, approval = _opened(decision_path, repo="app")
    decision_path.approvals.decide(approval.id, approve=True, by="alice", reason="planned")
    used = decision_path.ask(tool("delete", arguments={"repo": "app"}, approval_id=approval.id))
    assert (used.decision, used.approval_id) == (ALLOW, approval.id)
    after = decision_path.approvals.get(approval.id)
    assert after is not None and (after.status, after.used_by) == ("used", used.decision_id)
    assert decision_path.record(used)["approval_status"] == "approved"
    twice = decision_path.ask(tool("delete", arguments={"repo": "app"}, approval_id=approval.id))
    assert (twice.decision, codes(twice)) == (DENY, ["approval_used"])


def _pending(path: DecisionPath, approval: Approval) -> None:
    """Nobody decided it yet."""


def _denied(path: DecisionPath, approval: Approval) -> None:
    path.approvals.decide(approval.id, approve=False, by="alice", reason="not now")


def _expired(path: DecisionPath, approval: Approval) -> None:
    path.approvals.decide(approval.id, approve=True, by="alice", reason="planned")
    path.clock.advance(61)  # past its 60 s


@pytest.mark.parametrize(("arrange", "presented", "code"), [
    pytest.param(_pending, {"repo": "app"}, "approval_pending", id="not-yet-decided"),
    pytest.param(_denied, {"repo": "app"}, "approval_denied", id="denied"),
    pytest.param(_expired, {"repo": "app"}, "approval_expired", id="expired"),
    pytest.param(_pending, {"repo": "billing"}, "approval_mismatch", id="opened-for-another-request"),
])
def test_an_allow_on_an_approval_that_cannot_yield_one_is_denied(decision_path: DecisionPath, arrange: Any,
                                                                 presented: dict[str, str], code: str) -> None:
    _, approval = _opened(decision_path, repo="app")
    arrange(decision_path, approval)
    answer = decision_path.ask(tool("delete", arguments=presented, approval_id=approval.id))
    assert (answer.decision, codes(answer), answer.approval_id) == (DENY, [code], approval.id)
    assert "approval enforced by the server" in decision_path.record(answer)["error"]


def test_an_approved_approval_presented_with_another_request_is_a_mismatch(decision_path: DecisionPath) -> None:
    _, approval = _opened(decision_path, repo="app")
    decision_path.approvals.decide(approval.id, approve=True, by="alice", reason="planned")
    answer = decision_path.ask(tool("delete", arguments={"repo": "billing"}, approval_id=approval.id))
    assert codes(answer) == ["approval_mismatch"]
    still = decision_path.approvals.get(approval.id)
    assert still is not None and still.status == "approved"  # the request it was granted for may still use it


def test_an_approval_id_the_server_never_issued_is_a_mismatch(decision_path: DecisionPath) -> None:
    answer = decision_path.ask(tool("delete", approval_id="apr_made-up"))
    assert codes(answer) == ["approval_mismatch"]


class UsedMeanwhile:
    """The approvals, with a concurrent re-ask using the approval between this decision's read and its use."""

    def __init__(self, approvals: Approvals) -> None:
        self.approvals = approvals

    async def get(self, approval_id: str) -> Approval | None:
        return self.approvals.get(approval_id)

    async def open(self, **fields: Any) -> Approval | None:
        return self.approvals.open(**fields)

    async def consume(self, approval_id: str, *, request_digest: str, decision_id: str) -> bool:
        assert self.approvals.consume(approval_id, request_digest=request_digest, decision_id="the-other-re-ask")
        return self.approvals.consume(approval_id, request_digest=request_digest, decision_id=decision_id)


def test_an_approval_used_by_a_concurrent_re_ask_after_it_was_read_is_denied_used(
        decision_path: DecisionPath) -> None:
    _, approval = _opened(decision_path, repo="app")
    decision_path.approvals.decide(approval.id, approve=True, by="alice", reason="planned")
    racing = Authorizer(decision_path.slot, decision_path.log, approvals=UsedMeanwhile(decision_path.approvals),
                        clock=decision_path.clock)
    answer = decision_path.ask(tool("delete", arguments={"repo": "app"}, approval_id=approval.id), authorizer=racing)
    assert (answer.decision, codes(answer)) == (DENY, ["approval_used"])


# -- budgets -----------------------------------------------------------------------------------------


def test_an_allowed_spend_is_reserved_and_the_next_request_sees_it(decision_path: DecisionPath) -> None:
    first = decision_path.ask(spend(0.6))
    assert first.decision == ALLOW and first.reservation_id.startswith("rsv-")
    second = decision_path.ask(spend(0.3))
    assert second.decision == ALLOW
    assert decision_path.record(second)["input"]["state"]["spend"]["session"] == {"usd": 0.6}


def test_the_ledger_rechecks_the_limit_at_reservation_whatever_the_policy_said(decision_path: DecisionPath) -> None:
    decision_path.ask(spend(0.6))
    over = decision_path.ask(spend(0.6))  # the lax policy allows; 0.6 + 0.6 passes the session's 1 usd
    assert (over.decision, codes(over), over.reservation_id) == (DENY, ["budget_exceeded"], "")
    assert "re-check" in decision_path.record(over)["error"]


def test_concurrent_spends_cannot_both_take_the_same_room(decision_path: DecisionPath) -> None:
    answers = decision_path.ask_together(spend(0.6), spend(0.6), spend(0.6))
    assert sorted(a.decision for a in answers) == [ALLOW, DENY, DENY]


def test_a_request_that_spends_nothing_sees_no_spend(decision_path: DecisionPath) -> None:
    decision_path.ask(spend(0.6))
    assert decision_path.record(decision_path.ask(tool()))["input"]["state"]["spend"] == {}


# -- idempotent retries ------------------------------------------------------------------------------


def test_a_retry_with_the_same_request_id_gets_the_same_logged_answer(decision_path: DecisionPath) -> None:
    first = decision_path.ask(tool(request_id="call-1"))
    again = decision_path.ask(tool(request_id="call-1"))
    assert again == first
    assert decision_path.records() == 1


def test_concurrent_retries_share_one_decision(decision_path: DecisionPath) -> None:
    answers = decision_path.ask_together(*(tool(request_id="call-1") for _ in range(3)))
    assert len({a.decision_id for a in answers}) == 1
    assert decision_path.records() == 1


def test_a_changed_request_under_the_same_request_id_is_decided_anew_and_linked(decision_path: DecisionPath) -> None:
    first = decision_path.ask(tool(request_id="call-1"))
    changed = decision_path.ask(tool("drop", request_id="call-1"))
    assert changed.decision_id != first.decision_id and changed.decision == DENY
    assert decision_path.record(changed)["previous_decision_id"] == first.decision_id


def test_a_retry_after_a_kill_switch_is_decided_anew(decision_path: DecisionPath) -> None:
    first = decision_path.ask(tool(request_id="call-1"))
    decision_path.kill_switches.kill("agent", "agent-a", reason="INC-7", by="sre")
    retried = decision_path.ask(tool(request_id="call-1"))
    assert (retried.decision, codes(retried)) == (DENY, ["killed"])
    assert decision_path.record(retried)["previous_decision_id"] == first.decision_id


# -- dry runs ----------------------------------------------------------------------------------------


def test_a_dry_run_is_answered_and_logged_but_opens_and_reserves_nothing(decision_path: DecisionPath) -> None:
    probe = decision_path.ask(tool("delete", dry_run=True))
    assert (probe.decision, probe.approval_id) == (REQUIRE_APPROVAL, "")
    assert decision_path.approvals.list() == []
    spent = decision_path.ask(spend(0.6, dry_run=True))
    assert (spent.decision, spent.reservation_id) == (ALLOW, "")
    assert decision_path.budgets.spend({"session": "s-1"}).by_scope["session"] == {}
    for answer in (probe, spent):
        record = decision_path.record(answer)
        assert record["dry_run"] is True and record["input"]["dry_run"] is True


# -- time, observers, and an authorizer without state ---------------------------------------------------


def test_the_record_and_the_policy_input_are_stamped_by_the_authorizers_clock(decision_path: DecisionPath) -> None:
    before = decision_path.ask(tool())
    decision_path.clock.advance(3)  # across midnight, a month end and a year end
    after = decision_path.ask(tool())
    assert decision_path.record(before)["timestamp"] == format_time(START)
    stamp = decision_path.record(after)["timestamp"]
    assert stamp.startswith("2027-01-01T00:00:01") and decision_path.engine.asked[-1]["now"] == stamp
    assert before.decision_id < after.decision_id  # IDs carry the same clock's time


def test_the_observer_is_told_each_decision_made_but_not_a_retry_answered_from_the_log(
        decision_path: DecisionPath) -> None:
    decision_path.ask(tool("drop", request_id="call-1"))
    decision_path.ask(tool("drop", request_id="call-1"))
    decision_path.use(None)
    decision_path.ask(spend(0.1))
    seen = decision_path.seen.calls
    assert [(c["kind"], c["decision"], c["reasons"], c["revision"]) for c in seen] == [
        ("tool", DENY, ("not_allowed",), "rev-1"), ("budget", DENY, ("no_bundle",), "")]
    assert seen[0]["latency_seconds"] >= seen[0]["evaluation_seconds"] > 0
    assert seen[1]["evaluation_seconds"] == 0.0


def test_an_authorizer_without_state_answers_from_the_policy_alone(decision_path: DecisionPath) -> None:
    bare = Authorizer(decision_path.slot, decision_path.log)
    assert decision_path.ask(tool(), authorizer=bare).decision == ALLOW
    asked = decision_path.ask(tool("delete"), authorizer=bare)
    assert (asked.decision, asked.approval_id) == (REQUIRE_APPROVAL, "")  # nowhere to hold one
    presented = decision_path.ask(tool("delete", approval_id="apr_x"), authorizer=bare)
    assert codes(presented) == ["approval_mismatch"]  # never granted here
    spent = decision_path.ask(spend(5.0), authorizer=bare)
    assert (spent.decision, spent.reservation_id) == (ALLOW, "")


# -- replay ------------------------------------------------------------------------------------------


def test_replay_answers_each_logged_record_as_the_server_did(decision_path: DecisionPath, tmp_path: Path) -> None:
    answers = [decision_path.ask(tool()), decision_path.ask(tool("drop"))]
    answers.append(decision_path.ask(tool(caller=Caller(method="uds", subject="uid:1000")),
                                     authorizer=decision_path.build(callers=CALLERS)))
    _, approval = _opened(decision_path, repo="app")
    answers.append(decision_path.ask(tool("delete", arguments={"repo": "app"}, approval_id=approval.id)))
    decision_path.approvals.decide(approval.id, approve=True, by="alice", reason="planned")
    answers += [decision_path.ask(tool("delete", arguments={"repo": "app"}, approval_id=approval.id))
                for _ in range(2)]
    decision_path.kill_switches.kill("tool", "github/read", reason="INC-7", by="sre")
    answers.append(decision_path.ask(tool()))
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "policy.rego").write_text(LAX)
    with Candidate(bundle) as candidate:
        replayed = [candidate.decide(decision_path.record(a)["input"]).result for a in answers]
    assert [(r.decision, [c.code for c in r.reasons]) for r in replayed] == [
        (a.decision, codes(a)) for a in answers]
    assert [codes(a) for a in answers] == [[], ["not_allowed"], ["principal_mismatch"], ["approval_pending"], [],
                                           ["approval_used"], ["killed"]]
