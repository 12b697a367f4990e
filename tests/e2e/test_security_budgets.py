"""Attacks on budgets over real servers (issue 12, items 2 and 3): amounts no ledger can hold, a report from a caller
that did not get the reservation, a bad value planted in state.db, the shared empty scope, invented teams."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from google.protobuf import json_format

from tests.conftest import ADMIN_TOKEN, ROOT, TOLLGATE, Server
from tests.e2e.test_budgets import answer, budget_request, report
from tollgate.v1 import authorization_pb2 as pb

ISSUER, AUDIENCE = "https://idp.acme.example", "tollgate"


def _spend_seen(server: Server, decision_id: str) -> dict[str, Any]:
    spend: dict[str, Any] = json_format.MessageToDict(server.get_decision(decision_id).input)["state"]["spend"]
    return spend


def _ledger(server: Server, sql: str, *params: object) -> None:
    db = sqlite3.connect(server.data_dir / "state.db")
    try:
        with db:
            db.execute(sql, params)
    finally:
        db.close()


# Item 2: amounts ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("amount", [float("inf"), float("nan"), 1e308, -1.0, 1e13],
                         ids=["inf", "nan", "1e308", "negative", "over-maximum"])
def test_report_usage_refuses_an_amount_that_is_not_finite_or_over_the_maximum(serve, amount: float) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    reserved = server.authorize(budget_request(1.0, session="run-poison"))
    assert answer(reserved) == ("DECISION_ALLOW", [])
    with pytest.raises(grpc.RpcError) as refused:
        report(server, reserved.reservation_id, amount)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith("amount: ")
    # Nothing was committed: the session (and every scope beside it) still spends.
    after = server.authorize(budget_request(1.0, session="run-poison"))
    assert answer(after) == ("DECISION_ALLOW", [])
    assert report(server, reserved.reservation_id, 0.5).committed == 0.5


def test_two_reports_of_1e308_cannot_overflow_a_scope(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    codes = []
    for _ in range(2):
        reserved = server.authorize(budget_request(1.0, session="run-overflow"))
        try:
            report(server, reserved.reservation_id, 1e308)
            codes.append(grpc.StatusCode.OK)
        except grpc.RpcError as exc:
            codes.append(exc.code())
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 2
    assert answer(server.authorize(budget_request(1.0, session="run-overflow"))) == ("DECISION_ALLOW", [])


@pytest.mark.parametrize("amount", [1e13, 1e308], ids=["over-maximum", "1e308"])
def test_a_budget_request_over_the_maximum_amount_is_invalid(serve, amount: float) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    with pytest.raises(grpc.RpcError) as refused:
        server.authorize(budget_request(amount))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "budget.amount" in refused.value.details()


@pytest.mark.parametrize("planted", ["9e999", "-9e999", "-5", "'nan'", "1e300"],
                         ids=["inf", "minus-inf", "negative", "nan-text", "over-maximum"])
def test_a_bad_value_planted_in_the_ledger_fails_its_scope_closed_and_spend_shows_it(serve, planted: str) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    poisoned = server.authorize(budget_request(1.0, agent="release-bot", session="run-planted"))
    assert answer(poisoned) == ("DECISION_ALLOW", [])
    _ledger(server, f"UPDATE budget_reservations SET amount = {planted} WHERE id = ?", poisoned.reservation_id)
    denied = server.authorize(budget_request(0.5, agent="release-bot", session="run-planted"))
    assert answer(denied) == ("DECISION_DENY", ["budget_unavailable"])
    assert "session 'run-planted'" in denied.reasons[0].message
    # Another agent in another session is not in the poisoned scopes: it still spends.
    other = server.authorize(budget_request(0.5, agent="code-reviewer", session="run-clean"))
    assert answer(other) == ("DECISION_ALLOW", [])
    shown = subprocess.run([*TOLLGATE, "spend", "--server", server.address, "--token", ADMIN_TOKEN,
                            "--session", "run-planted"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "session=run-planted" in shown.stdout and "invalid" in shown.stdout, shown.stdout


def test_a_bad_running_total_fails_its_scope_closed_also_after_a_restart(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    spent = server.authorize(budget_request(1.0, agent="release-bot", session="run-total"))
    report(server, spent.reservation_id, 1.0)
    _ledger(server, "UPDATE budget_totals SET committed = 9e999 WHERE scope = 'session' AND value = 'run-total'")
    server.terminate()
    restarted = serve(data_dir=server.data_dir)
    denied = restarted.authorize(budget_request(0.5, agent="release-bot", session="run-total"))
    assert answer(denied) == ("DECISION_DENY", ["budget_unavailable"])
    assert "session 'run-total'" in denied.reasons[0].message
    assert answer(restarted.authorize(budget_request(0.5, agent="release-bot", session="run-fresh"))) == (
        "DECISION_ALLOW", [])


# Item 2: the caller that reports ---------------------------------------------------------------------------------


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
        "callers": [{"id": "jwt:code-reviewer", "agents": ["code-reviewer"], "teams": ["*"]},
                    {"id": "jwt:release-bot", "agents": ["release-bot"], "teams": ["release"],
                     "workflows": ["*"]}],
    }))
    return serve(extra=["--config", str(config)]), key


def _token(key: ec.EllipticCurvePrivateKey, sub: str) -> list[tuple[str, str]]:
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": sub, "exp": int(time.time() + 300)}
    return [("tollgate-caller-token", jwt.encode(claims, key, algorithm="ES256", headers={"kid": "harness-1"}))]


def test_report_usage_from_a_caller_other_than_the_reservations_is_refused(
        token_server: tuple[Server, ec.EllipticCurvePrivateKey]) -> None:
    server, key = token_server
    reserved = server.stub.Authorize(budget_request(1.0), metadata=_token(key, "code-reviewer"), timeout=10)
    assert answer(reserved) == ("DECISION_ALLOW", [])
    usage = pb.ReportUsageRequest(reservation_id=reserved.reservation_id, amount=0.0)
    for metadata in (_token(key, "release-bot"), []):
        with pytest.raises(grpc.RpcError) as refused:
            server.stub.ReportUsage(usage, metadata=metadata, timeout=10)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "jwt:code-reviewer" in refused.value.details()
    done = server.stub.ReportUsage(usage, metadata=_token(key, "code-reviewer"), timeout=10)
    assert done.committed == 0.0 and done.released == 1.0


# Item 3: empty and caller-chosen scopes -------------------------------------------------------------------------


def test_two_agents_with_no_team_or_workflow_do_not_share_spend(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    first = server.authorize(budget_request(1.0, agent="release-bot", session="run-a"))
    second = server.authorize(budget_request(1.0, agent="data-analyst", session="run-b"))
    assert answer(first) == answer(second) == ("DECISION_ALLOW", [])
    seen = _spend_seen(server, second.decision_id)
    assert "team" not in seen and "workflow" not in seen, seen
    month = json_format.MessageToDict(server.get_decision(second.decision_id).input)["state"]["spend_month"]
    assert "team" not in month and "workflow" not in month, month


def test_a_caller_inventing_a_team_per_request_cannot_escape_its_team_limit(
        token_server: tuple[Server, ec.EllipticCurvePrivateKey]) -> None:
    server, key = token_server
    invented = [server.stub.Authorize(budget_request(1.0, agent="release-bot", session=f"run-{i}", team=f"t{i}"),
                                      metadata=_token(key, "release-bot"), timeout=10) for i in range(5)]
    assert {tuple(answer(r)[1]) for r in invented} == {("principal_mismatch",)}
    assert all("may not speak for team" in r.reasons[0].message for r in invented)
    assert not any(r.reservation_id for r in invented)
    mapped = server.stub.Authorize(budget_request(1.0, agent="release-bot", session="run-x", team="release"),
                                   metadata=_token(key, "release-bot"), timeout=10)
    assert answer(mapped) == ("DECISION_ALLOW", [])
