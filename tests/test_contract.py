"""The policy contract: valid results parse; anything else is named precisely; the input document's shape."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate.contract import ContractError, DecisionRequest, Reason, ReservePlan, build_input, parse_result
from tollgate.identity import Caller


def test_allow_with_obligations() -> None:
    result = parse_result({"decision": "allow", "reasons": [{"code": "ok", "message": "fine"}],
                           "obligations": {"max_output_tokens": 2000}})
    assert result.decision == "allow"
    assert result.reasons == (Reason("ok", "fine"),)
    assert result.obligations == {"max_output_tokens": 2000}


def test_require_approval_with_approvers() -> None:
    result = parse_result({"decision": "require_approval", "reasons": [{"code": "destructive_action"}],
                           "approval": {"approvers": ["group:sre"], "ttl_seconds": 3600.0}})
    assert result.approval is not None
    assert result.approval.approvers == ("group:sre",)
    assert result.approval.ttl_seconds == 3600
    assert (result.approval.required, result.approval.allow_requester) == (1, False)  # the defaults


def test_require_approval_with_a_quorum_and_the_requester_allowed() -> None:
    result = parse_result({"decision": "require_approval", "reasons": [{"code": "destructive_action"}],
                           "approval": {"approvers": ["group:sre"], "ttl_seconds": 60, "required": 2.0,
                                        "allow_requester": True}})
    assert result.approval is not None
    assert (result.approval.required, result.approval.allow_requester) == (2, True)


def test_allow_with_a_reservation_plan() -> None:
    result = parse_result({"decision": "allow", "reasons": [],
                           "reserve": {"amounts": {"usd": 0.25, "tokens": 100}, "limits": {"session": {"usd": 5}}}})
    assert result.reserve == ReservePlan({"usd": 0.25, "tokens": 100.0}, {"session": {"usd": 5.0}})
    assert parse_result({"decision": "allow"}).reserve is None


BROKEN: list[tuple[str, Any, str]] = [
    ("not-an-object", "allow", "must be an object"),
    ("null", None, "must be an object"),
    ("unknown-decision", {"decision": "maybe"}, "result.decision"),
    ("unknown-key", {"decision": "allow", "why": 1}, "unknown keys"),
    ("reasons-not-array", {"decision": "allow", "reasons": {}}, "result.reasons must be an array"),
    ("reason-without-code", {"decision": "deny", "reasons": [{"message": "m"}]}, r"reasons\[0\].code"),
    ("reason-extra-key", {"decision": "deny", "reasons": [{"code": "c", "x": 1}]}, r"reasons\[0\]"),
    ("deny-without-reason", {"decision": "deny", "reasons": []}, "at least one reason"),
    ("obligations-not-object", {"decision": "allow", "obligations": []}, "obligations"),
    ("approval-missing", {"decision": "require_approval"}, "needs result.approval"),
    ("approvers-empty", {"decision": "require_approval", "approval": {"approvers": [], "ttl_seconds": 1}},
     "approvers"),
    ("ttl-not-positive", {"decision": "require_approval", "approval": {"approvers": ["a"], "ttl_seconds": 0}},
     "ttl_seconds"),
    ("quorum-zero", {"decision": "require_approval", "approval": {"approvers": ["a"], "ttl_seconds": 1, "required": 0}},
     "required must be an integer from 1 to 10"),
    ("quorum-too-large", {"decision": "require_approval",
                          "approval": {"approvers": ["a"], "ttl_seconds": 1, "required": 11}}, "from 1 to 10"),
    ("quorum-fraction", {"decision": "require_approval",
                         "approval": {"approvers": ["a"], "ttl_seconds": 1, "required": 1.5}}, "required"),
    ("quorum-boolean", {"decision": "require_approval",
                        "approval": {"approvers": ["a"], "ttl_seconds": 1, "required": True}}, "required"),
    ("allow-requester-not-boolean", {"decision": "require_approval",
                                     "approval": {"approvers": ["a"], "ttl_seconds": 1, "allow_requester": "yes"}},
     "allow_requester must be a boolean"),
    ("approval-on-allow", {"decision": "allow", "approval": {"approvers": ["a"], "ttl_seconds": 1}},
     "only allowed with require_approval"),
    ("reserve-on-deny", {"decision": "deny", "reasons": [{"code": "c"}], "reserve": {"amounts": {"usd": 1}}},
     "result.reserve is only allowed with allow"),
    ("reserve-negative", {"decision": "allow", "reserve": {"amounts": {"usd": -1}}}, "reserve.amounts"),
    ("reserve-extra-key", {"decision": "allow", "reserve": {"amounts": {}, "x": 1}}, "result.reserve must be"),
    ("reserve-limit-not-number", {"decision": "allow", "reserve": {"amounts": {}, "limits": {"session": {"usd": "5"}}}},
     "reserve.limits"),
]


@pytest.mark.parametrize(("value", "message"), [(v, m) for _, v, m in BROKEN], ids=[b[0] for b in BROKEN])
def test_broken_results_are_refused_naming_the_problem(value: Any, message: str) -> None:
    with pytest.raises(ContractError, match=message):
        parse_result(value)


REQUEST = DecisionRequest(kind="tool", principal={"agent_id": "a", "session_id": "s"},
                          action={"server": "github", "name": "read"}, caller=Caller(method="uds", subject="uid:7"))


def test_the_input_document_holds_the_request_and_empty_state_by_default() -> None:
    doc = build_input(REQUEST, now="2026-12-31T23:59:59Z")
    assert doc == {"kind": "tool", "principal": {"agent_id": "a", "session_id": "s"},
                   "tool": {"server": "github", "name": "read"}, "context": {}, "request_id": "", "approval_id": "",
                   "auth": {"method": "uds", "subject": "uid:7"},
                   "state": {"spend": {}, "spend_month": {}, "killed": [], "approval": None},
                   "now": "2026-12-31T23:59:59Z"}


def test_the_input_document_carries_the_state_read_and_a_caller_refusal() -> None:
    doc = build_input(REQUEST, now="2026-12-31T23:59:59Z", killed=[{"scope": "all", "value": "*", "reason": "r"}],
                      approval={"id": "apr_1", "status": "approved", "approver": "alice"},
                      spend={"session": {"usd": 0.5}}, spend_month={"agent": {"usd": 3.0}},
                      refused=Reason("principal_mismatch", "not yours"))
    assert doc["state"] == {"spend": {"session": {"usd": 0.5}}, "spend_month": {"agent": {"usd": 3.0}},
                            "killed": [{"scope": "all", "value": "*", "reason": "r"}],
                            "approval": {"id": "apr_1", "status": "approved", "approver": "alice"}}
    assert doc["auth"]["refused"] == {"code": "principal_mismatch", "message": "not yours"}
    assert "refused" not in REQUEST.caller.auth_input()  # the caller's own view is not changed
