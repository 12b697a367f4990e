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
