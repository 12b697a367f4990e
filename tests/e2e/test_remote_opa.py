"""A live sidecar with `--engine opa+http://...` against an OPA-REST STAND-IN (tests/opa_standin.py: a real HTTP
server evaluating the repo's rego/ with the embedded engine; no OPA server binary can be installed here)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import Serve, tool_request, wait_for
from tests.opa_standin import OpaStandIn
from tollgate.v1 import authorization_pb2 as pb


@pytest.fixture
def standin() -> Iterator[OpaStandIn]:
    server = OpaStandIn().start()
    yield server
    server.stop()


def _health(server: object) -> int:
    stub = health_pb2_grpc.HealthStub(server.channel)  # type: ignore[attr-defined]
    return int(stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=5).status)


def test_sidecar_answers_through_a_remote_opa_and_fails_closed(serve: Serve, standin: OpaStandIn,
                                                               tmp_path: Path) -> None:
    server = serve(extra=["--engine", standin.engine_url, "--bundle-poll", "0.2", "--eval-timeout-ms", "2000"])
    assert "POST /v1/data/tollgate/decision" not in standin.requests  # no bundle loaded: no smoke test either
    allowed = server.authorize(tool_request())  # code-reviewer reads a pull request: allowed by rego/
    assert allowed.decision == pb.DECISION_ALLOW, allowed
    assert allowed.bundle_revision == standin.bundle.revision
    assert "POST /v1/data/tollgate/decision" in standin.requests
    denied = server.authorize(tool_request(name="merge_pull_request"))
    assert denied.decision != pb.DECISION_ALLOW
    wait_for(lambda: _health(server) == health_pb2.HealthCheckResponse.SERVING, what="SERVING")

    standin.healthy = False  # readiness follows OPA's health
    wait_for(lambda: _health(server) == health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING")
    standin.healthy = True
    wait_for(lambda: _health(server) == health_pb2.HealthCheckResponse.SERVING, what="SERVING again")

    standin.stop()  # unreachable: a logged DENY engine_error
    response = server.authorize(tool_request())
    assert response.decision == pb.DECISION_DENY
    assert [r.code for r in response.reasons] == ["engine_error"]
    assert server.get_decision(response.decision_id).reasons[0].code == "engine_error"
    wait_for(lambda: _health(server) == health_pb2.HealthCheckResponse.NOT_SERVING, what="NOT_SERVING, OPA gone")


def test_slow_remote_opa_is_a_logged_deny_past_the_deadline(serve: Serve, standin: OpaStandIn) -> None:
    server = serve(extra=["--engine", standin.engine_url, "--eval-timeout-ms", "100"])
    standin.delay = 2.0
    response = server.authorize(tool_request())
    assert response.decision == pb.DECISION_DENY
    assert [r.code for r in response.reasons] == ["deadline_exceeded"]
    assert server.get_decision(response.decision_id).reasons[0].code == "deadline_exceeded"


def test_a_bad_engine_url_is_a_start_up_error(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import TOLLGATE

    done = subprocess.run([*TOLLGATE, "serve", "--data-dir", str(tmp_path / "d"), "--engine", "opa+ftp://x:1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "engine:" in done.stderr


def test_a_sidecar_reaches_opa_over_https_with_a_private_ca_mtls_and_a_token_and_fails_closed_on_the_wrong_ca(
        serve: Serve, tmp_path: Path) -> None:
    """The OPA stand-in over TLS requiring a client certificate and a token: a sidecar given the CA, its certificate
    and the token file answers as through http; one that trusts another CA gets no answer from OPA, so each request
    is a logged DENY engine_error and it never turns SERVING (no fallback to an unverified connection)."""
    from tests.engine.test_remote import TOKEN, _server_tls
    from tests.pki import TestCA

    ca = TestCA(tmp_path / "pki")
    server_cert, client = ca.server(), ca.client("spiffe://acme/tollgate/sidecar", file_name="sidecar")
    pki = {"ca": ca.cert, "server_cert": server_cert.cert, "server_key": server_cert.key}
    token_file = tmp_path / "opa-token"
    token_file.write_text(f"{TOKEN}\n")
    flags = ["--bundle-poll", "0.2", "--eval-timeout-ms", "2000", "--engine-cert-file", str(client.cert),
             "--engine-key-file", str(client.key), "--engine-token-file", str(token_file)]
    with OpaStandIn(tls=_server_tls(pki), token=TOKEN) as opa:
        good = serve(data_dir=tmp_path / "good", extra=["--engine", opa.engine_url, "--engine-ca-file",
                                                        str(ca.cert), *flags])
        allowed = good.authorize(tool_request())
        assert allowed.decision == pb.DECISION_ALLOW and allowed.bundle_revision == opa.bundle.revision, allowed
        wait_for(lambda: _health(good) == health_pb2.HealthCheckResponse.SERVING, what="SERVING over mTLS")

        other = TestCA(tmp_path / "other", name="another CA")
        asked = len(opa.requests)
        wrong = serve(data_dir=tmp_path / "wrong", extra=["--engine", opa.engine_url, "--engine-ca-file",
                                                          str(other.cert), *flags])
        denied = wrong.authorize(tool_request())
        assert denied.decision == pb.DECISION_DENY and [r.code for r in denied.reasons] == ["engine_error"]
        logged = wrong.get_decision(denied.decision_id)
        assert logged.reasons[0].code == "engine_error"
        assert _health(wrong) == health_pb2.HealthCheckResponse.NOT_SERVING
        assert not [r for r in opa.requests[asked:] if r.startswith("POST")]  # no request got past the handshake
        wait_for(lambda: "CERTIFICATE_VERIFY_FAILED" in wrong.stderr, what="the certificate error logged")


@pytest.mark.parametrize(("flags", "message"), [
    (["--engine-token-file", "{token}"], "engine_token_file: needs a remote engine"),
    (["--engine", "opa+http://127.0.0.1:1", "--engine-ca-file", "{token}"], "engine_ca_file: needs --engine opa+https"),
    (["--engine", "opa+https://127.0.0.1:1", "--engine-cert-file", "{token}"], "give both"),
    (["--engine", "opa+https://127.0.0.1:1", "--engine-ca-file", "{token}"], "engine_ca_file: '"),
    (["--engine", "opa+https://127.0.0.1:1", "--engine-token-file", "{empty}"], "engine_token_file: '"),
])
def test_remote_engine_tls_and_token_mistakes_are_start_up_errors(tmp_path: Path, flags: list[str],
                                                                  message: str) -> None:
    import subprocess

    from tests.conftest import TOLLGATE

    (tmp_path / "token").write_text("not a PEM file\n")
    (tmp_path / "empty").write_text("\n")
    argv = [f.format(token=tmp_path / "token", empty=tmp_path / "empty") for f in flags]
    done = subprocess.run([*TOLLGATE, "serve", "--data-dir", str(tmp_path / "d"), *argv],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
