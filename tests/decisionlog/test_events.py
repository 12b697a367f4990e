"""Export events: a decision record as OPA's decision-log event, field by field, and as a JSON Lines record."""

from __future__ import annotations

from typing import Any

import pytest

from tollgate.decisionlog import jsonl_record, opa_event, opa_time
from tollgate.decisionlog._events import VERSION


def _record(**changes: Any) -> dict[str, Any]:
    """A record with every field the authorizer writes (authorizer.py `record = {...}`), as read back with its hash."""
    record: dict[str, Any] = {
        "decision_id": "dec_01JD3", "timestamp": "2026-11-21T18:04:05.123456Z",
        "input": {"kind": "tool", "principal": {"agent_id": "code-reviewer", "instance_id": "cr-7", "session_id": "s1"},
                  "tool": {"server": "github", "name": "merge_pull_request"}},
        "result": {"decision": "require_approval", "reasons": [{"code": "needs_review", "message": "m"}]},
        "decision": "require_approval", "reasons": [{"code": "needs_review", "message": "m"}],
        "obligations": {"redact": True}, "bundle_revision": "rev-42", "policy_path": "tollgate/decision",
        "request_id": "req-1", "request_digest": "d" * 64, "approval_id": "apr_1", "approval_status": "",
        "reservation_id": "", "previous_decision_id": "", "error": "", "latency_us": 1234,
        "prev_hash": "0" * 64, "hash": "a" * 64,
    }
    record.update(changes)
    return record


def test_opa_event_has_opas_fields_and_tollgates_extras_under_their_own_key() -> None:
    record = _record()
    event = opa_event(record)
    assert set(event) == {"decision_id", "labels", "bundles", "path", "input", "result", "requested_by",
                          "timestamp", "metrics", "tollgate"}
    assert event["decision_id"] == "dec_01JD3"
    assert event["labels"] == {"id": "cr-7", "version": VERSION, "app": "tollgate"}
    assert event["bundles"] == {"tollgate": {"revision": "rev-42"}}
    assert event["path"] == "tollgate/decision"
    assert event["input"] == record["input"]
    assert event["result"] == record["result"]  # the policy's own result, as OPA logs it
    assert event["requested_by"] == ""  # records do not name the caller yet
    assert event["timestamp"] == "2026-11-21T18:04:05.123456000Z"
    assert event["metrics"] == {"timer_server_handler_ns": 1_234_000}
    assert event["tollgate"] == {
        "decision": "require_approval", "reasons": record["reasons"], "obligations": {"redact": True},
        "approval_id": "apr_1", "approval_status": "", "reservation_id": "", "previous_decision_id": "",
        "request_id": "req-1", "request_digest": "d" * 64, "error": "", "hash": "a" * 64, "prev_hash": "0" * 64,
    }


def test_opa_event_keeps_erased_and_masked_and_requested_by_when_the_record_has_them() -> None:
    event = opa_event(_record(erased=["/input/tool/arguments/token"], masked=["/input/principal/user"],
                              requested_by="unix:/run/agent.sock"))
    assert event["erased"] == ["/input/tool/arguments/token"]
    assert event["masked"] == ["/input/principal/user"]
    assert event["requested_by"] == "unix:/run/agent.sock"


def test_opa_event_labels_take_a_given_instance_id_and_bundle_name() -> None:
    event = opa_event(_record(), instance_id="sidecar-3", version="9.9.9", bundle_name="agents")
    assert event["labels"] == {"id": "sidecar-3", "version": "9.9.9", "app": "tollgate"}
    assert event["bundles"] == {"agents": {"revision": "rev-42"}}


@pytest.mark.parametrize(("logged", "exported"), [
    ("2026-11-21T18:04:05.123456Z", "2026-11-21T18:04:05.123456000Z"),
    ("2026-11-21T18:04:05Z", "2026-11-21T18:04:05.000000000Z"),
    ("2026-11-21T18:04:05.1Z", "2026-11-21T18:04:05.100000000Z"),
], ids=["micros", "whole-seconds", "tenths"])
def test_opa_time_has_nanoseconds(logged: str, exported: str) -> None:
    assert opa_time(logged) == exported


def test_opa_time_refuses_a_time_that_is_not_the_logs_spelling() -> None:
    with pytest.raises(ValueError, match="not a decision-log time"):
        opa_time("2026-11-21T18:04:05.123+02:00")


def test_jsonl_record_is_the_record_with_seq_hash_and_prev_hash() -> None:
    record = _record()
    del record["hash"]
    line = jsonl_record(record, seq=7, hash="b" * 64)
    assert line == {**record, "seq": 7, "hash": "b" * 64}
    assert line["prev_hash"] == "0" * 64
