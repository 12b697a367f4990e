"""Server TLS and mTLS on the gRPC listener: real certificates, a real `tollgate serve`, real handshakes."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest

from tests.conftest import Server, tool_request
from tests.pki import TestCA
from tollgate.v1 import authorization_pb2 as pb
from tollgate.v1 import authorization_pb2_grpc as pb_grpc


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


def _tls_flags(ca: TestCA, *, client_ca: bool, require: bool) -> list[str]:
    server = ca.server()
    flags = ["--tls-cert", str(server.cert), "--tls-key", str(server.key)]
    if client_ca:
        flags += ["--tls-client-ca", str(ca.cert)]
    if require:
        flags.append("--tls-require-client-cert")
    return flags


def test_tls_listener_answers_a_client_that_trusts_its_ca(serve: Callable[..., Server], ca: TestCA) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert.read_bytes())
    server = serve(extra=_tls_flags(ca, client_ca=False, require=False), credentials=credentials)
    assert server.authorize(tool_request()).decision == pb.DECISION_ALLOW


def test_tls_listener_refuses_a_plaintext_client(serve: Callable[..., Server], ca: TestCA) -> None:
    credentials = grpc.ssl_channel_credentials(root_certificates=ca.cert.read_bytes())
    server = serve(extra=_tls_flags(ca, client_ca=False, require=False), credentials=credentials)
    with grpc.insecure_channel(server.address) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.AuthorizationServiceStub(channel).Authorize(tool_request(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_required_refuses_a_client_without_a_certificate(serve: Callable[..., Server], ca: TestCA) -> None:
    agent = ca.client("spiffe://acme/agents/code-reviewer")
    with_cert = grpc.ssl_channel_credentials(ca.cert.read_bytes(), *agent.pair())
    server = serve(extra=_tls_flags(ca, client_ca=True, require=True), credentials=with_cert)
    assert server.authorize(tool_request()).decision == pb.DECISION_ALLOW
    without = grpc.ssl_channel_credentials(root_certificates=ca.cert.read_bytes())
    with grpc.secure_channel(server.address, without) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.AuthorizationServiceStub(channel).Authorize(tool_request(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_a_certificate_from_another_ca(serve: Callable[..., Server], ca: TestCA,
                                                    tmp_path: Path) -> None:
    agent = ca.client("spiffe://acme/agents/code-reviewer")
    server = serve(extra=_tls_flags(ca, client_ca=True, require=True),
                   credentials=grpc.ssl_channel_credentials(ca.cert.read_bytes(), *agent.pair()))
    stranger = TestCA(tmp_path / "other", name="other CA").client("spiffe://acme/agents/code-reviewer")
    credentials = grpc.ssl_channel_credentials(ca.cert.read_bytes(), *stranger.pair())
    with grpc.secure_channel(server.address, credentials) as channel, pytest.raises(grpc.RpcError) as refused:
        pb_grpc.AuthorizationServiceStub(channel).Authorize(tool_request(), timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_the_cli_reaches_an_mtls_sidecar_with_the_tls_flags(serve: Callable[..., Server], ca: TestCA) -> None:
    import subprocess

    from tests.conftest import ADMIN_TOKEN, TOLLGATE

    oncall = ca.client("spiffe://acme/ops/oncall")
    server = serve(extra=_tls_flags(ca, client_ca=True, require=True),
                   credentials=grpc.ssl_channel_credentials(ca.cert.read_bytes(), *oncall.pair()))
    tls = ["--tls-ca", str(ca.cert), "--tls-cert", str(oncall.cert), "--tls-key", str(oncall.key)]

    def tollgate(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*TOLLGATE, *argv, "--server", server.address, *tls], capture_output=True, text=True,
                              timeout=60, env={**os.environ, "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN})

    allowed = tollgate("authorize", "--agent", "code-reviewer", "--tool", "github/get_pull_request")
    assert (allowed.returncode, allowed.stdout.split()[0]) == (0, "ALLOW"), allowed.stderr
    decision_id = allowed.stdout.split()[1].removeprefix("decision_id=")
    assert tollgate("decision", decision_id).returncode == 0
    assert tollgate("status").returncode == 0
    assert tollgate("kills").returncode == 0
    plaintext = subprocess.run([*TOLLGATE, "status", "--server", server.address], capture_output=True, text=True,
                               timeout=60, env={**os.environ, "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN})
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr
    unreadable = subprocess.run([*TOLLGATE, "status", "--server", server.address, "--tls-ca", "/nonexistent/ca.pem"],
                                capture_output=True, text=True, timeout=60)
    assert unreadable.returncode == 1 and "--tls-ca: cannot read /nonexistent/ca.pem" in unreadable.stderr
