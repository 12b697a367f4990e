"""Dry runs on a real sidecar: evaluated and logged like any decision, but nothing is opened or reserved."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from tests.conftest import Server, tool_request, write_policy
from tollgate.v1 import authorization_pb2 as pb

MERGE = {"owner": "acme", "repo": "app", "pullNumber": 9}


def rows(server: Server, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(server.data_dir / "state.db") as db:
        return db.execute(sql).fetchall()


def test_a_dry_run_that_needs_approval_opens_none_and_is_logged_as_a_dry_run(serve) -> None:  # type: ignore[no-untyped-def]
    server: Server = serve()
    probe = tool_request("release-bot", "github", "merge_pull_request", MERGE, session_id="s-dry")
    probe.dry_run = True
    answered = server.authorize(probe)
    assert answered.decision == pb.DECISION_REQUIRE_APPROVAL and answered.approval_id == ""
    assert rows(server, "SELECT id FROM approvals") == []
    record = server.get_decision(answered.decision_id)
    assert record.dry_run and record.approval_id == ""
    assert json_format.MessageToDict(record.input)["dry_run"] is True
    # The same request for real opens its approval, and its record is no dry run.
    real = server.authorize(tool_request("release-bot", "github", "merge_pull_request", MERGE, session_id="s-dry"))
    assert real.approval_id.startswith("apr_") and not server.get_decision(real.decision_id).dry_run
    assert "dry_run" not in json_format.MessageToDict(server.get_decision(real.decision_id).input)


def test_a_dry_run_spend_reserves_nothing(serve) -> None:  # type: ignore[no-untyped-def]
    server: Server = serve()
    probe = pb.AuthorizeRequest(principal=pb.Principal(agent_id="code-reviewer", session_id="s-dry"),
                                budget=pb.BudgetRequest(amount=1.5, unit="usd", category="model"), dry_run=True)
    answered = server.authorize(probe)
    assert answered.decision == pb.DECISION_ALLOW and answered.reservation_id == ""
    assert rows(server, "SELECT id FROM budget_reservations") == []


POLICY_SEES_IT = """
package tollgate

default decision := {"decision": "allow", "reasons": []}

decision := {"decision": "deny", "reasons": [{"code": "probe", "message": "a dry run"}]} if input.dry_run
"""


def test_the_policy_sees_a_dry_run(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: Server = serve(bundle=write_policy(tmp_path / "policy", POLICY_SEES_IT))
    probe = tool_request("a", "s", "t")
    probe.dry_run = True
    assert [r.code for r in server.authorize(probe).reasons] == ["probe"]
    assert server.authorize(tool_request("a", "s", "t")).decision == pb.DECISION_ALLOW


@pytest.mark.parametrize(("field", "value"), [("request_id", "call-1"), ("approval_id", "apr_x")])
def test_a_dry_run_is_never_a_retry_or_an_approvals_use(serve, field: str, value: str) -> None:  # type: ignore[no-untyped-def]
    server: Server = serve()
    probe = tool_request("release-bot", "github", "merge_pull_request", MERGE)
    probe.dry_run = True
    setattr(probe, field, value)
    with pytest.raises(grpc.RpcError) as refused:
        server.authorize(probe)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (refused.value.details() or "").startswith(f"{field}: not allowed with dry_run")
