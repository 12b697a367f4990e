"""Server TLS and mTLS on the gRPC listener: real certificates, a real `tollgate serve`, real handshakes."""

from __future__ import annotations

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
