"""Attacks on the API's edges, against real servers: who may decide an approval, and streams that would starve
the unary RPCs."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tests.conftest import Server, start_server, tool_request
from tollgate.v1 import approval_pb2, approval_pb2_grpc
from tollgate.v1 import authorization_pb2 as pb

GROUPS = {"release-managers": ["rita"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("security-api") / "data", config={"approver_groups": GROUPS})
    yield started
    started.kill()


def _merge(server: Server, pr: int) -> pb.AuthorizeResponse:
    asked = server.authorize(tool_request("release-bot", "github", "merge_pull_request",
                                          {"owner": "acme", "repo": "app", "pullNumber": pr}, session_id=f"s-{pr}"))
    assert asked.decision == pb.DECISION_REQUIRE_APPROVAL, asked
    return asked


@pytest.mark.parametrize("by", ["group:release-managers", "group:sre-oncall"], ids=["listed-group", "empty-group"])
def test_a_group_entry_is_no_approver_identity(server: Server, by: str) -> None:
    approvals = approval_pb2_grpc.ApprovalServiceStub(server.channel)
    asked = _merge(server, 100 + len(by))
    with pytest.raises(grpc.RpcError) as refused:
        approvals.Decide(approval_pb2.DecideRequest(id=asked.approval_id, approve=True, by=by, reason="as the group"),
                         timeout=10, metadata=server.admin_metadata)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"{by} names a group, not a person" in str(refused.value.details())
    shown = approvals.GetApproval(approval_pb2.GetApprovalRequest(id=asked.approval_id), timeout=10,
                                  metadata=server.admin_metadata)
    assert shown.status == "pending"
    # A member resolved through approver_groups still may.
    decided = approvals.Decide(approval_pb2.DecideRequest(id=asked.approval_id, approve=True, by="rita",
                                                          reason="reviewed"),
                               timeout=10, metadata=server.admin_metadata)
    assert decided.status == "approved"
