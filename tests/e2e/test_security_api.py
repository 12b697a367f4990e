"""Attacks on the API's edges, against real servers: who may decide an approval, and streams that would starve
the unary RPCs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import Server, start_server, tool_request
from tests.pki import TestCA
from tollgate.v1 import approval_pb2, approval_pb2_grpc
from tollgate.v1 import authorization_pb2 as pb
from tollgate.v1 import authorization_pb2_grpc as pb_grpc

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


REVIEWER = "spiffe://acme/agents/code-reviewer"
RELEASE_BOT = "spiffe://acme/agents/release-bot"


def _mtls_server(serve: Callable[..., Server], tmp_path: Path, ca: TestCA) -> Server:
    cert = ca.server()
    config = tmp_path / "tollgate.yaml"
    config.write_text(json.dumps({
        "tls_cert": str(cert.cert), "tls_key": str(cert.key), "tls_client_ca": str(ca.cert),
        "tls_require_client_cert": True,
        "callers": [{"id": REVIEWER, "agents": ["code-reviewer"]}, {"id": RELEASE_BOT, "agents": ["release-bot"]},
                    {"id": "spiffe://acme/agents/code-reviewer-2", "agents": ["code-reviewer"]}],
    }))
    return serve(extra=["--config", str(config)],
                 credentials=grpc.ssl_channel_credentials(ca.cert.read_bytes(), *ca.client(REVIEWER).pair()))


def test_a_certificate_naming_two_callers_with_different_principals_speaks_for_no_one(
        serve: Callable[..., Server], tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    server = _mtls_server(serve, tmp_path, ca)
    both = ca.client(REVIEWER, also=(RELEASE_BOT,), file_name="both")
    with grpc.secure_channel(server.address, grpc.ssl_channel_credentials(ca.cert.read_bytes(), *both.pair())) as ch:
        stub = pb_grpc.AuthorizationServiceStub(ch)
        answers = [stub.Authorize(tool_request(agent=agent), timeout=10) for agent in ("code-reviewer", "release-bot")]
    for answer in answers:
        assert answer.decision == pb.DECISION_DENY
        assert [r.code for r in answer.reasons] == ["caller_unauthenticated"]
        message = answer.reasons[0].message
        assert f"client certificate names 2 callers entries that may claim different principals ({REVIEWER}, " \
               f"{RELEASE_BOT})" in message
        assert "issue it with one URI SAN" in message


def test_a_certificate_whose_names_map_to_the_same_principals_is_one_caller(
        serve: Callable[..., Server], tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    server = _mtls_server(serve, tmp_path, ca)
    twins = ca.client(REVIEWER, also=("spiffe://acme/agents/code-reviewer-2", "spiffe://acme/unlisted"),
                      file_name="twins")
    with grpc.secure_channel(server.address, grpc.ssl_channel_credentials(ca.cert.read_bytes(), *twins.pair())) as ch:
        stub = pb_grpc.AuthorizationServiceStub(ch)
        assert stub.Authorize(tool_request(agent="code-reviewer"), timeout=10).decision == pb.DECISION_ALLOW
        spoofed = stub.Authorize(tool_request(agent="release-bot"), timeout=10)
    assert [r.code for r in spoofed.reasons] == ["principal_mismatch"]
