"""Attacks on the API's edges, against real servers: who may decide an approval, and streams that would starve
the unary RPCs."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import Server, start_server, tool_request
from tests.people import as_person, issue_token
from tests.pki import TestCA
from tollgate.state._tokens import TokenError
from tollgate.v1 import admin_pb2, admin_pb2_grpc, approval_pb2, approval_pb2_grpc
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
def test_a_group_entry_is_no_approver_identity(server: Server, by: str, tmp_path: Path) -> None:
    approvals = approval_pb2_grpc.ApprovalServiceStub(server.channel)
    asked = _merge(server, 100 + len(by))
    # The approver is the credential's, and no credential names a group: declaring one is refused ...
    with pytest.raises(grpc.RpcError) as refused:
        approvals.Decide(approval_pb2.DecideRequest(id=asked.approval_id, approve=True, by=by, reason="as the group"),
                         timeout=10, metadata=server.admin_metadata)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert f"by: {by!r} is not the caller" in str(refused.value.details())
    # ... and no token is issued for one.
    with pytest.raises(TokenError, match="is not a person's name"):
        issue_token(server.data_dir, by)
    shown = approvals.GetApproval(approval_pb2.GetApprovalRequest(id=asked.approval_id), timeout=10,
                                  metadata=server.admin_metadata)
    assert shown.status == "pending"
    # A member resolved through approver_groups still may.
    decided = approvals.Decide(approval_pb2.DecideRequest(id=asked.approval_id, approve=True, reason="reviewed"),
                               timeout=10, metadata=as_person(server, "rita"))
    assert (decided.status, decided.decided_by) == ("approved", "rita")


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


# Streams -----------------------------------------------------------------------------------------------------


def _open_streams(server: Server, count: int, stack: ExitStack) -> list[grpc.StatusCode | None]:
    """Open count WaitForApproval streams on pending approvals (each read to its first state, then held open);
    the status each was refused with, or None for one that is open."""
    stub = pb_grpc.AuthorizationServiceStub(server.channel)
    outcomes: list[grpc.StatusCode | None] = []
    for i in range(count):
        asked = _merge(server, 1000 + i)
        stream = stub.WaitForApproval(pb.WaitForApprovalRequest(approval_id=asked.approval_id), timeout=60)
        stack.callback(stream.cancel)
        try:
            assert next(stream).status == "pending"
            outcomes.append(None)
        except grpc.RpcError as err:
            outcomes.append(err.code())
            assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err
            assert "max_concurrent_streams" in str(err.details())
    return outcomes


def _unary_rpcs_answer(server: Server) -> None:
    assert server.authorize(tool_request(), timeout=5).decision == pb.DECISION_ALLOW
    health = health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    admin = admin_pb2_grpc.AdminServiceStub(server.channel)
    killed = admin.Kill(admin_pb2.KillRequest(scope="agent", value="rogue-agent", reason="INC-9", by="alice"),
                        timeout=5, metadata=server.admin_metadata)
    assert killed.value == "rogue-agent"


def test_approval_streams_do_not_take_the_room_of_authorize_kill_and_health(tmp_path: Path) -> None:
    # gRPC's max_concurrent_rpcs counted every open stream: 8 waiting harnesses starved Authorize, Kill and health.
    server = start_server(tmp_path / "data", config={"max_concurrent_rpcs": 8})
    try:
        with ExitStack() as streams:
            assert _open_streams(server, 12, streams) == [None] * 12
            _unary_rpcs_answer(server)
    finally:
        server.kill()


def test_streams_past_their_own_bound_are_resource_exhausted_and_unary_rpcs_still_answer(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", config={"max_concurrent_rpcs": 8, "max_concurrent_streams": 4})
    try:
        with ExitStack() as streams:
            outcomes = _open_streams(server, 7, streams)
            assert outcomes == [None] * 4 + [grpc.StatusCode.RESOURCE_EXHAUSTED] * 3
            # WatchApproval shares the bound.
            watch = approval_pb2_grpc.ApprovalServiceStub(server.channel).WatchApproval(
                approval_pb2.GetApprovalRequest(id=_merge(server, 2000).approval_id), timeout=30,
                metadata=server.admin_metadata)
            streams.callback(watch.cancel)
            with pytest.raises(grpc.RpcError) as refused:
                next(watch)
            assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            _unary_rpcs_answer(server)
        # The room comes back as the streams end.
        with ExitStack() as streams:
            assert _open_streams(server, 4, streams) == [None] * 4
    finally:
        server.kill()
