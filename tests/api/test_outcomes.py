"""ReportOutcome through a real sidecar: a harness says how a session ended, through the API, the Python client and
`tollgate outcome`; a caller reports only sessions whose principal it may speak for; the rules of one outcome per
(session, task) hold on the wire."""

from __future__ import annotations

import functools
import json
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import ROOT, TOLLGATE, Server
from tests.e2e.test_budgets import budget_request
from tollgate.client import Client, NotFound, OutcomeReceipt, TollgateError
from tollgate.v1 import authorization_pb2 as pb

ISSUER, AUDIENCE = "https://idp.acme.example", "tollgate"


def _outcome(server: Server, session: str, outcome: int = pb.OUTCOME_SUCCEEDED, *,
             metadata: list[tuple[str, str]] | None = None, **fields: object) -> pb.ReportOutcomeResponse:
    request = pb.ReportOutcomeRequest(session_id=session, outcome=outcome, **fields)  # type: ignore[arg-type]
    response: pb.ReportOutcomeResponse = server.stub.ReportOutcome(request, metadata=metadata, timeout=10)
    return response


def _refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert isinstance(error, grpc.Call)
    return error.code(), error.details() or ""


def test_a_session_outcome_is_stored_once_retried_unchanged_and_replaced_only_when_asked(
        serve: Callable[..., Server]) -> None:
    server = serve()
    decided = server.authorize(budget_request(0.25, session="run-1", team="payments"))
    assert decided.decision == pb.DECISION_ALLOW

    first = _outcome(server, "run-1", labels=["pr_merged", "ci_passed"], summary="PR #4123 merged")
    assert (first.session_id, first.task_id, first.outcome, list(first.labels), first.revision, first.unchanged) == (
        "run-1", "", pb.OUTCOME_SUCCEEDED, ["ci_passed", "pr_merged"], 1, False)
    assert first.reported_by == ""  # nothing proven on a plain TCP connection
    again = _outcome(server, "run-1", labels=["ci_passed", "pr_merged"], summary="PR #4123 merged")
    assert again.unchanged and again.revision == 1 and again.reported_at == first.reported_at

    code, message = _refused(lambda: _outcome(server, "run-1", pb.OUTCOME_FAILED))
    assert code == grpc.StatusCode.FAILED_PRECONDITION
    assert "already has the outcome succeeded (revision 1" in message and "replace" in message
    replaced = _outcome(server, "run-1", pb.OUTCOME_FAILED, labels=["pr_merged", "reverted"], replace=True)
    assert (replaced.outcome, list(replaced.labels), replaced.revision) == (
        pb.OUTCOME_FAILED, ["pr_merged", "reverted"], 2)
    task = _outcome(server, "run-1", pb.OUTCOME_ABANDONED, task_id="lint")
    assert (task.task_id, task.revision) == ("lint", 1)

    db = sqlite3.connect(server.data_dir / "state.db")
    try:
        rows = db.execute("SELECT session_id, task_id, outcome, labels, agent_id, team, revision FROM outcomes "
                          "ORDER BY task_id").fetchall()
    finally:
        db.close()
    assert rows == [("run-1", "", "failed", '["pr_merged", "reverted"]', "code-reviewer", "payments", 2),
                    ("run-1", "lint", "abandoned", "[]", "code-reviewer", "payments", 1)]
    assert "outcome of session run-1 replaced: failed [pr_merged, reverted] (revision 2" in server.stderr
    assert "it was succeeded (revision 1" in server.stderr


@pytest.mark.parametrize(("fields", "code", "message"), [
    ({"session_id": ""}, grpc.StatusCode.INVALID_ARGUMENT, "session_id: required"),
    ({"outcome": pb.OUTCOME_UNSPECIFIED}, grpc.StatusCode.INVALID_ARGUMENT, "outcome: required"),
    ({"labels": ["CI passed"]}, grpc.StatusCode.INVALID_ARGUMENT, "labels: 'CI passed' is not a label"),
    ({"labels": [f"l{i}" for i in range(17)]}, grpc.StatusCode.INVALID_ARGUMENT, "labels: at most 16"),
    ({"summary": "x" * 1001}, grpc.StatusCode.INVALID_ARGUMENT, "summary: at most 1000"),
    ({"summary": "<script>\x1b[2J"}, grpc.StatusCode.INVALID_ARGUMENT, "summary: control characters"),
    ({"session_id": "s" * 513}, grpc.StatusCode.INVALID_ARGUMENT, "session_id: at most 512"),
    ({"session_id": "never-decided"}, grpc.StatusCode.NOT_FOUND, "has no decisions in the log"),
])
def test_a_report_that_cannot_be_stored_is_refused_naming_why(
        serve: Callable[..., Server], fields: dict[str, object], code: grpc.StatusCode, message: str) -> None:
    server = serve()
    server.authorize(budget_request(0.1, session="run-1"))
    request = {"session_id": "run-1", "outcome": pb.OUTCOME_SUCCEEDED, **fields}
    got, details = _refused(lambda: server.stub.ReportOutcome(
        pb.ReportOutcomeRequest(**request), timeout=10))  # type: ignore[arg-type]
    assert (got, message in details) == (code, True), details


def test_the_python_client_and_tollgate_outcome_report_too(serve: Callable[..., Server]) -> None:
    server = serve()
    server.authorize(budget_request(0.1, session="run-py"))
    server.authorize(budget_request(0.1, session="run-cli"))
    with Client(server.address) as client:
        receipt = client.report_outcome("run-py", "succeeded", labels=["ci_passed"], summary="green")
        assert receipt == OutcomeReceipt(session_id="run-py", task_id="", outcome="succeeded",
                                         labels=("ci_passed",), reported_at=receipt.reported_at, reported_by="",
                                         revision=1, unchanged=False)
        with pytest.raises(NotFound):
            client.report_outcome("no-such-run", "failed")
        with pytest.raises(TollgateError, match="already has the outcome succeeded"):
            client.report_outcome("run-py", "failed")
        with pytest.raises(ValueError, match="outcome: must be one of succeeded, failed, abandoned"):
            client.report_outcome("run-py", "won")

    done = subprocess.run([*TOLLGATE, "outcome", "run-cli", "--failed", "--label", "ci_failed", "--task", "build",
                           "--server", server.address], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("session run-cli task build: failed [ci_failed] recorded (revision 1, ")
    again = subprocess.run([*TOLLGATE, "outcome", "run-cli", "--failed", "--label", "ci_failed", "--task", "build",
                            "--server", server.address, "--json"], capture_output=True, text=True, cwd=ROOT,
                           timeout=60)
    assert again.returncode == 0 and json.loads(again.stdout)["unchanged"] is True
    other = subprocess.run([*TOLLGATE, "outcome", "run-cli", "--succeeded", "--task", "build",
                            "--server", server.address], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert other.returncode == 1 and "FAILED_PRECONDITION" in other.stderr


@pytest.fixture
def token_server(serve: Callable[..., Server], tmp_path: Path) -> tuple[Server, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    keys = tmp_path / "token-keys"
    keys.mkdir()
    (keys / "harness-1.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    config = tmp_path / "tollgate.yaml"
    config.write_text(json.dumps({
        "token_keys": str(keys), "token_issuer": ISSUER, "token_audience": AUDIENCE,
        "callers": [{"id": "jwt:payments-harness", "agents": ["*"], "teams": ["payments"], "workflows": ["*"]},
                    {"id": "jwt:search-harness", "agents": ["*"], "teams": ["search"], "workflows": ["*"]}],
    }))
    return serve(extra=["--config", str(config)]), key


def _token(key: ec.EllipticCurvePrivateKey, sub: str) -> list[tuple[str, str]]:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": int(time.time() + 300)}
    return [("tollgate-caller-token", jwt.encode(claims, key, algorithm="ES256", headers={"kid": "harness-1"}))]


def test_a_caller_reports_only_sessions_whose_principal_it_may_speak_for(
        token_server: tuple[Server, ec.EllipticCurvePrivateKey]) -> None:
    server, key = token_server
    payments, search = _token(key, "payments-harness"), _token(key, "search-harness")
    decided = server.stub.Authorize(budget_request(0.1, session="pay-1", team="payments"), metadata=payments,
                                    timeout=10)
    assert decided.decision == pb.DECISION_ALLOW

    code, message = _refused(lambda: _outcome(server, "pay-1", metadata=search))
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "caller jwt:search-harness (token) may not speak for team 'payments'" in message
    code, message = _refused(lambda: _outcome(server, "pay-1"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "not listed in callers" in message
    code, message = _refused(lambda: _outcome(server, "no-such-session"))  # refused before the log is read
    assert code == grpc.StatusCode.PERMISSION_DENIED and "not listed in callers" in message
    bad = [("tollgate-caller-token", "not-a-jwt")]
    code, message = _refused(lambda: _outcome(server, "pay-1", metadata=bad))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "caller token" in message

    done = _outcome(server, "pay-1", metadata=payments, labels=["pr_merged"])
    assert (done.reported_by, done.revision) == ("jwt:payments-harness", 1)

    # A session id the search team's harness also used: its decisions name two teams, so neither reports alone.
    server.stub.Authorize(budget_request(0.1, session="shared-1", team="payments"), metadata=payments, timeout=10)
    server.stub.Authorize(budget_request(0.1, session="shared-1", team="search"), metadata=search, timeout=10)
    for metadata in (payments, search):
        code, message = _refused(functools.partial(_outcome, server, "shared-1", metadata=metadata))
        assert code == grpc.StatusCode.PERMISSION_DENIED, message
