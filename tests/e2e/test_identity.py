"""Caller identity on a real sidecar: a client certificate, Unix-socket peer credentials or a caller token names
the caller; the `callers` mapping says which principals it may speak for; a spoofed principal is a logged DENY."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import Server, tool_request
from tests.pki import TestCA
from tollgate.v1 import authorization_pb2 as pb
from tollgate.v1 import authorization_pb2_grpc as pb_grpc

REVIEWER = "spiffe://acme/agents/code-reviewer"
RELEASE_BOT = "spiffe://acme/agents/release-bot"


def _config(tmp_path: Path, doc: dict[str, Any]) -> list[str]:
    path = tmp_path / "tollgate.yaml"
    path.write_text(json.dumps(doc))  # JSON is YAML
    return ["--config", str(path)]


def _record(server: Server, decision_id: str) -> dict[str, Any]:
    with sqlite3.connect(server.data_dir / "decisions.db") as db:
        row = db.execute("SELECT record FROM decisions WHERE decision_id = ?", (decision_id,)).fetchone()
    assert row is not None, f"decision {decision_id} is not in the log"
    record: dict[str, Any] = json.loads(row[0])
    return record


def _codes(response: pb.AuthorizeResponse) -> list[str]:
    return [r.code for r in response.reasons]


# mTLS -------------------------------------------------------------------------------------------------------


@pytest.fixture
def mtls_server(serve: Callable[..., Server], tmp_path: Path) -> tuple[Server, TestCA]:
    ca = TestCA(tmp_path / "pki")
    cert = ca.server()
    reviewer = ca.client(REVIEWER)
    flags = _config(tmp_path, {
        "tls_cert": str(cert.cert), "tls_key": str(cert.key), "tls_client_ca": str(ca.cert),
        "tls_require_client_cert": True,
        "callers": [{"id": REVIEWER, "agents": ["code-reviewer"]}, {"id": RELEASE_BOT, "agents": ["release-bot"]}],
    })
    server = serve(extra=flags, credentials=grpc.ssl_channel_credentials(ca.cert.read_bytes(), *reviewer.pair()))
    return server, ca


def test_mtls_caller_speaks_for_its_own_agent(mtls_server: tuple[Server, TestCA]) -> None:
    server, _ = mtls_server
    response = server.authorize(tool_request(agent="code-reviewer"))
    assert response.decision == pb.DECISION_ALLOW
    record = _record(server, response.decision_id)
    assert record["requested_by"] == REVIEWER
    assert record["input"]["auth"]["method"] == "mtls"
    assert record["input"]["auth"]["spiffe_id"] == REVIEWER
    assert server.get_decision(response.decision_id).requested_by == REVIEWER


def test_mtls_certificate_for_one_agent_asking_as_another_is_a_logged_principal_mismatch(
        mtls_server: tuple[Server, TestCA]) -> None:
    server, _ = mtls_server
    # The release bot may merge (with approval); the code reviewer's certificate may not ask as the release bot.
    response = server.authorize(tool_request(agent="release-bot", name="merge_pull_request",
                                             arguments={"owner": "acme", "repo": "payments-api", "pullNumber": 1}))
    assert response.decision == pb.DECISION_DENY
    assert _codes(response) == ["principal_mismatch"]
    assert "agent_id 'release-bot'" in response.reasons[0].message
    record = _record(server, response.decision_id)
    assert record["decision"] == "deny"
    assert record["requested_by"] == REVIEWER
    assert record["result"] is None  # the policy was not asked
    assert not response.approval_id  # and no approval was opened for the spoofed principal


def test_mtls_other_agents_certificate_speaks_for_that_agent(mtls_server: tuple[Server, TestCA]) -> None:
    server, ca = mtls_server
    bot = ca.client(RELEASE_BOT)
    with grpc.secure_channel(server.address, grpc.ssl_channel_credentials(ca.cert.read_bytes(), *bot.pair())) as ch:
        stub = pb_grpc.AuthorizationServiceStub(ch)
        as_itself = stub.Authorize(tool_request(agent="release-bot", name="get_pull_request"), timeout=10)
        as_reviewer = stub.Authorize(tool_request(agent="code-reviewer"), timeout=10)
    assert as_itself.decision == pb.DECISION_ALLOW
    assert _codes(as_reviewer) == ["principal_mismatch"]


def test_a_request_id_does_not_fetch_another_callers_answer(mtls_server: tuple[Server, TestCA]) -> None:
    server, ca = mtls_server
    request = tool_request(agent="code-reviewer")
    request.request_id = "r-identity-1"
    assert server.authorize(request).decision == pb.DECISION_ALLOW
    bot = ca.client(RELEASE_BOT)
    with grpc.secure_channel(server.address, grpc.ssl_channel_credentials(ca.cert.read_bytes(), *bot.pair())) as ch:
        replayed = pb_grpc.AuthorizationServiceStub(ch).Authorize(request, timeout=10)
    assert _codes(replayed) == ["principal_mismatch"]


# Unix socket ------------------------------------------------------------------------------------------------


def _unix_address(tmp_path: Path) -> str:
    return f"unix:{tmp_path}/s.sock"  # pytest keeps tmp_path short enough for a socket address


def _unix_server(serve: Callable[..., Server], tmp_path: Path, callers: list[dict[str, Any]]) -> Server:
    return serve(listen=_unix_address(tmp_path), extra=_config(tmp_path, {"callers": callers}) if callers else [])


def test_unix_socket_caller_is_its_uid_and_pid(serve: Callable[..., Server], tmp_path: Path) -> None:
    server = _unix_server(serve, tmp_path, [{"id": f"uid:{os.getuid()}", "agents": ["code-reviewer"]}])
    response = server.authorize(tool_request(agent="code-reviewer"))
    assert response.decision == pb.DECISION_ALLOW
    auth = _record(server, response.decision_id)["input"]["auth"]
    assert auth == {"method": "uds", "subject": f"uid:{os.getuid()}", "uid": os.getuid(), "gid": os.getgid(),
                    "pid": os.getpid()}


def test_unix_socket_uid_not_mapped_to_the_agent_is_a_logged_principal_mismatch(
        serve: Callable[..., Server], tmp_path: Path) -> None:
    server = _unix_server(serve, tmp_path, [{"id": f"uid:{os.getuid()}", "agents": ["code-reviewer"]},
                                            {"id": f"uid:{os.getuid() + 1}", "agents": ["*"]}])
    response = server.authorize(tool_request(agent="data-analyst", server="postgres", name="query",
                                             arguments={"sql": "SELECT 1", "database": "analytics-replica"}))
    assert _codes(response) == ["principal_mismatch"]
    record = _record(server, response.decision_id)
    assert record["requested_by"] == f"uid:{os.getuid()}"
    assert record["reasons"][0]["code"] == "principal_mismatch"


def test_unix_socket_uid_not_listed_at_all_may_claim_nothing(serve: Callable[..., Server], tmp_path: Path) -> None:
    server = _unix_server(serve, tmp_path, [{"id": f"uid:{os.getuid() + 1}", "agents": ["*"]}])
    response = server.authorize(tool_request(agent="code-reviewer"))
    assert _codes(response) == ["principal_mismatch"]
    assert "is not listed in callers" in response.reasons[0].message


def test_without_callers_the_identity_is_reported_and_nothing_is_refused(serve: Callable[..., Server],
                                                                         tmp_path: Path) -> None:
    server = _unix_server(serve, tmp_path, [])
    response = server.authorize(tool_request(agent="code-reviewer"))
    assert response.decision == pb.DECISION_ALLOW
    assert _record(server, response.decision_id)["requested_by"] == f"uid:{os.getuid()}"


# Caller tokens ----------------------------------------------------------------------------------------------


@pytest.fixture
def token_server(serve: Callable[..., Server], tmp_path: Path) -> tuple[Server, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    keys = tmp_path / "token-keys"
    keys.mkdir()
    (keys / "harness-1.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    flags = _config(tmp_path, {
        "token_keys": str(keys), "token_issuer": "https://idp.acme.example", "token_audience": "tollgate",
        "callers": [{"id": "jwt:code-reviewer", "agents": ["code-reviewer"], "teams": ["*"]}],
    })
    return serve(extra=flags), key


def _token(key: ec.EllipticCurvePrivateKey, *, sub: str = "code-reviewer", aud: str = "tollgate",
           exp: float | None = None, kid: str = "harness-1") -> list[tuple[str, str]]:
    claims = {"iss": "https://idp.acme.example", "aud": aud, "sub": sub,
              "exp": int(exp if exp is not None else time.time() + 300)}
    return [("tollgate-caller-token", jwt.encode(claims, key, algorithm="ES256", headers={"kid": kid}))]


def test_token_caller_speaks_for_its_agent_and_not_another(
        token_server: tuple[Server, ec.EllipticCurvePrivateKey]) -> None:
    server, key = token_server
    allowed = server.stub.Authorize(tool_request(agent="code-reviewer", team="payments"), metadata=_token(key),
                                    timeout=10)
    assert allowed.decision == pb.DECISION_ALLOW
    auth = _record(server, allowed.decision_id)["input"]["auth"]
    assert auth == {"method": "token", "subject": "jwt:code-reviewer", "iss": "https://idp.acme.example",
                    "sub": "code-reviewer", "kid": "harness-1"}
    spoofed = server.stub.Authorize(tool_request(agent="release-bot"), metadata=_token(key), timeout=10)
    assert _codes(spoofed) == ["principal_mismatch"]
    assert _record(server, spoofed.decision_id)["requested_by"] == "jwt:code-reviewer"


@pytest.mark.parametrize(("overrides", "error"), [
    ({"exp": time.time() - 3600}, "Signature has expired"),
    ({"aud": "someone-else"}, "Audience doesn't match"),
    ({"kid": "unknown"}, "kid 'unknown' is not a trusted key"),
], ids=["expired", "wrong-audience", "unknown-key"])
def test_a_token_that_does_not_verify_is_a_logged_caller_unauthenticated(
        token_server: tuple[Server, ec.EllipticCurvePrivateKey], overrides: dict[str, Any], error: str) -> None:
    server, key = token_server
    response = server.stub.Authorize(tool_request(agent="code-reviewer"), metadata=_token(key, **overrides),
                                     timeout=10)
    assert _codes(response) == ["caller_unauthenticated"]
    assert error in response.reasons[0].message
    assert error in _record(server, response.decision_id)["input"]["auth"]["error"]


def test_no_token_when_callers_are_mapped_is_a_principal_mismatch(
        token_server: tuple[Server, ec.EllipticCurvePrivateKey]) -> None:
    server, _ = token_server
    response = server.authorize(tool_request(agent="code-reviewer"))
    assert _codes(response) == ["principal_mismatch"]
    assert "an unauthenticated caller" in response.reasons[0].message


# Admin identities ------------------------------------------------------------------------------------------


def test_an_admin_identity_uses_the_admin_services_without_the_token(serve: Callable[..., Server],
                                                                     tmp_path: Path) -> None:
    from tollgate.v1 import admin_pb2, admin_pb2_grpc, approval_pb2, approval_pb2_grpc

    ca = TestCA(tmp_path / "pki")
    cert, oncall, reviewer = ca.server(), ca.client("spiffe://acme/ops/oncall"), ca.client(REVIEWER)
    flags = _config(tmp_path, {"tls_cert": str(cert.cert), "tls_key": str(cert.key), "tls_client_ca": str(ca.cert),
                               "tls_require_client_cert": True, "admin_identities": ["spiffe://acme/ops/oncall"]})
    server = serve(extra=flags, credentials=grpc.ssl_channel_credentials(ca.cert.read_bytes(), *oncall.pair()))
    admin = admin_pb2_grpc.AdminServiceStub(server.channel)
    assert admin.GetStatus(admin_pb2.GetStatusRequest(), timeout=10).serving
    approvals = approval_pb2_grpc.ApprovalServiceStub(server.channel)
    assert not approvals.ListApprovals(approval_pb2.ListApprovalsRequest(), timeout=10).approvals
    with grpc.secure_channel(server.address,
                             grpc.ssl_channel_credentials(ca.cert.read_bytes(), *reviewer.pair())) as channel:
        other = admin_pb2_grpc.AdminServiceStub(channel)
        with pytest.raises(grpc.RpcError) as refused:
            other.GetStatus(admin_pb2.GetStatusRequest(), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # The admin token still works for everyone else.
        assert other.GetStatus(admin_pb2.GetStatusRequest(), metadata=server.admin_metadata, timeout=10).serving


def test_a_unix_socket_admin_uid_runs_tollgate_status_with_no_token_configured(serve: Callable[..., Server],
                                                                               tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import TOLLGATE

    server = serve(listen=_unix_address(tmp_path), admin_token=None,
                   extra=_config(tmp_path, {"admin_identities": [f"uid:{os.getuid()}"]}))
    status = subprocess.run([*TOLLGATE, "status", "--server", server.address], capture_output=True, text=True,
                            timeout=30, env={k: v for k, v in os.environ.items() if k != "TOLLGATE_ADMIN_TOKEN"})
    assert status.returncode == 0, status.stderr
    assert status.stdout.startswith("serving")


def test_replay_answers_a_refused_caller_as_the_server_did(serve: Callable[..., Server], tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import REGO, TOLLGATE

    server = _unix_server(serve, tmp_path, [{"id": f"uid:{os.getuid()}", "agents": ["code-reviewer"]}])
    allowed = server.authorize(tool_request(agent="code-reviewer"))
    refused = server.authorize(tool_request(agent="release-bot", name="get_pull_request"))
    assert (allowed.decision, _codes(refused)) == (pb.DECISION_ALLOW, ["principal_mismatch"])
    # The policy alone would allow the release bot to read a pull request: the record says the server refused.
    assert _record(server, refused.decision_id)["input"]["auth"]["refused"]["code"] == "principal_mismatch"
    report = subprocess.run([*TOLLGATE, "replay", "--data-dir", str(server.data_dir), "--bundle", str(REGO),
                             "--format", "json"], capture_output=True, text=True, timeout=120)
    assert report.returncode == 0, report.stderr
    doc = json.loads(report.stdout)
    assert doc["changed"] == 0, doc


def test_tollgate_authorize_sends_a_caller_token(token_server: tuple[Server, ec.EllipticCurvePrivateKey]) -> None:
    import subprocess

    from tests.conftest import TOLLGATE

    server, key = token_server
    token = _token(key)[0][1]
    argv = [*TOLLGATE, "authorize", "--server", server.address, "--agent", "code-reviewer", "--tool",
            "github/get_pull_request"]
    with_flag = subprocess.run([*argv, "--caller-token", token], capture_output=True, text=True, timeout=60)
    from_env = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                              env={**os.environ, "TOLLGATE_CALLER_TOKEN": token})
    without = subprocess.run(argv, capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in os.environ.items() if k != "TOLLGATE_CALLER_TOKEN"})
    assert (with_flag.returncode, from_env.returncode) == (0, 0), with_flag.stderr + from_env.stderr
    assert without.returncode == 2 and "principal_mismatch" in without.stdout
