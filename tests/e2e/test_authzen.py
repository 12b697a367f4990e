"""The AuthZEN 1.0 HTTP API on a real sidecar: evaluation, evaluations and their semantics, approvals as
decision false, 400s naming the field, the well-known metadata, caller tokens; every evaluation is logged."""

from __future__ import annotations

import http.client
import json
import re
import sqlite3
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import Server
from tests.pki import TestCA

PR = {"owner": "acme", "repo": "payments-api", "pullNumber": 42}


def _authzen_address(server: Server) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        found = re.search(r"AuthZEN access evaluation API on https?://(\S+)", server.stderr)
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no AuthZEN address in the server's log:\n{server.stderr}")


class Pdp:
    """An HTTP/1.1 client on one kept-alive connection to the sidecar's AuthZEN port."""

    def __init__(self, server: Server, tls: ssl.SSLContext | None = None) -> None:
        self.server = server
        host, port = _authzen_address(server).rsplit(":", 1)
        self.connection = (http.client.HTTPSConnection(host, int(port), timeout=10, context=tls) if tls
                           else http.client.HTTPConnection(host, int(port), timeout=10))

    def request(self, method: str, path: str, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any], dict[str, str]]:
        self.connection.request(method, path, body=body,
                                headers={"Content-Type": "application/json", **(headers or {})})
        response = self.connection.getresponse()
        raw = response.read()
        return response.status, json.loads(raw) if raw else {}, dict(response.getheaders())

    def post(self, path: str, doc: dict[str, Any], **headers: str) -> tuple[int, dict[str, Any]]:
        status, body, _ = self.request("POST", path, json.dumps(doc).encode(), headers)
        return status, body

    def logged(self) -> int:
        with sqlite3.connect(self.server.data_dir / "decisions.db") as db:
            count: int = db.execute("SELECT count(*) FROM decisions").fetchone()[0]
        return count

    def record(self, decision_id: str) -> dict[str, Any]:
        with sqlite3.connect(self.server.data_dir / "decisions.db") as db:
            row = db.execute("SELECT record FROM decisions WHERE decision_id = ?", (decision_id,)).fetchone()
        assert row is not None, f"{decision_id} is not in the decision log"
        record: dict[str, Any] = json.loads(row[0])
        return record


def tool_eval(agent: str, tool: str, arguments: dict[str, Any] | None = None, **props: str) -> dict[str, Any]:
    return {"subject": {"type": "agent", "id": agent, "properties": props},
            "action": {"name": "call"},
            "resource": {"type": "tool", "id": tool, "properties": {"arguments": arguments or PR}}}


@pytest.fixture
def pdp(serve: Callable[..., Server]) -> Pdp:
    return Pdp(serve(extra=["--authzen-listen", "127.0.0.1:0"]))


def test_evaluation_allow_is_decision_true_and_logged(pdp: Pdp) -> None:
    status, body = pdp.post("/access/v1/evaluation", tool_eval("code-reviewer", "github/get_pull_request",
                                                                session_id="s-1"))
    assert status == 200
    assert body["decision"] is True
    record = pdp.record(body["context"]["decision_id"])
    assert record["decision"] == "allow"
    assert record["input"]["principal"]["session_id"] == "s-1"
    assert record["input"]["tool"] == {"server": "github", "name": "get_pull_request", "arguments": PR,
                                       "resources": []}


def test_evaluation_deny_is_decision_false_with_the_reasons(pdp: Pdp) -> None:
    status, body = pdp.post("/access/v1/evaluation", tool_eval("code-reviewer", "github/merge_pull_request"))
    assert status == 200
    assert body["decision"] is False
    assert [r["code"] for r in body["context"]["reasons"]] == ["tool_not_in_manifest"]
    assert pdp.record(body["context"]["decision_id"])["decision"] == "deny"


def test_require_approval_is_decision_false_with_the_approval_in_context(pdp: Pdp) -> None:
    status, body = pdp.post("/access/v1/evaluation", tool_eval("release-bot", "github/merge_pull_request"))
    assert status == 200
    assert body["decision"] is False
    context = body["context"]
    assert context["approval_required"] is True
    assert context["approval_id"]
    assert "destructive_action" in [r["code"] for r in context["reasons"]]
    record = pdp.record(context["decision_id"])
    assert (record["decision"], record["approval_id"]) == ("require_approval", context["approval_id"])


def test_model_and_budget_resources_map_to_model_calls_and_spends(pdp: Pdp) -> None:
    subject = {"type": "agent", "id": "code-reviewer", "properties": {"session_id": "s-9"}}
    _, model = pdp.post("/access/v1/evaluation", {
        "subject": subject, "action": {"name": "invoke"},
        "resource": {"type": "model", "id": "anthropic/claude-sonnet-4-5",
                     "properties": {"input_tokens": 1200, "max_output_tokens": 20000,
                                    "data_classes": ["source-code"]}}})
    assert model["decision"] is True
    assert model["context"]["obligations"] == {"max_output_tokens": 8000}
    _, budget = pdp.post("/access/v1/evaluation", {
        "subject": subject, "action": {"name": "spend", "properties": {"amount": 5}},
        "resource": {"type": "budget", "id": "usd", "properties": {"category": "model"}}})
    assert budget["decision"] is False
    assert [r["code"] for r in budget["context"]["reasons"]] == ["budget_request_over_limit"]
    assert pdp.record(budget["context"]["decision_id"])["input"]["budget"] == {
        "amount": 5, "unit": "usd", "category": "model"}


def _batch(semantic: str | None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "subject": {"type": "agent", "id": "code-reviewer"}, "action": {"name": "call"},
        "evaluations": [
            {"resource": {"type": "tool", "id": "github/get_pull_request", "properties": {"arguments": PR}}},
            {"resource": {"type": "tool", "id": "github/merge_pull_request", "properties": {"arguments": PR}}},
            {"resource": {"type": "tool", "id": "github/get_pull_request", "properties": {"arguments": PR}}},
        ]}
    if semantic:
        doc["options"] = {"evaluations_semantic": semantic}
    return doc


@pytest.mark.parametrize(("semantic", "decisions"), [
    (None, [True, False, True]),
    ("execute_all", [True, False, True]),
    ("deny_on_first_deny", [True, False]),
    ("permit_on_first_permit", [True]),
], ids=["default", "execute_all", "deny_on_first_deny", "permit_on_first_permit"])
def test_evaluations_answer_in_order_and_stop_as_the_semantic_says(pdp: Pdp, semantic: str | None,
                                                                   decisions: list[bool]) -> None:
    before = pdp.logged()
    status, body = pdp.post("/access/v1/evaluations", _batch(semantic))
    assert status == 200
    assert [e["decision"] for e in body["evaluations"]] == decisions
    assert pdp.logged() == before + len(decisions)  # every evaluation made is a logged decision


def test_evaluations_without_an_array_answer_the_defaults_as_one_evaluation(pdp: Pdp) -> None:
    status, body = pdp.post("/access/v1/evaluations", tool_eval("code-reviewer", "github/get_pull_request"))
    assert status == 200
    assert body["decision"] is True


@pytest.mark.parametrize(("path", "doc", "field"), [
    ("/access/v1/evaluation", {**tool_eval("code-reviewer", "github/get_pull_request"),
                               "subject": {"type": "agent"}}, "subject.id: required"),
    ("/access/v1/evaluation", {**tool_eval("code-reviewer", "github/x"), "subject": {"type": "user", "id": "a"}},
     "subject.type: must be \"agent\""),
    ("/access/v1/evaluation", {**tool_eval("code-reviewer", "github/x"), "resource": {"type": "file", "id": "f"}},
     "resource.type: must be one of tool, model, budget"),
    ("/access/v1/evaluation", {**tool_eval("code-reviewer", "github/x"), "action": {"name": "delete"}},
     "action.name: a tool resource is asked with 'call'"),
    ("/access/v1/evaluation", {k: v for k, v in tool_eval("code-reviewer", "github/x").items() if k != "action"},
     "action: required"),
    ("/access/v1/evaluation", {"subject": {"type": "agent", "id": "code-reviewer"}, "action": {"name": "spend"},
                               "resource": {"type": "budget", "id": "usd"}}, "action.properties.amount: required"),
    ("/access/v1/evaluation", {"subject": {"type": "agent", "id": "code-reviewer"}, "action": {"name": "spend",
                               "properties": {"amount": 1}}, "resource": {"type": "budget", "id": "eur"}},
     "resource.id: must be one of usd, tokens"),
    ("/access/v1/evaluations", {**_batch(None), "options": {"evaluations_semantic": "first"}},
     "options.evaluations_semantic: must be one of"),
    ("/access/v1/evaluations", {**_batch(None), "evaluations": [_batch(None)["evaluations"][0],
                                                                {"resource": {"type": "tool"}}]},
     "evaluations[1].resource.id: required"),
], ids=["no-subject-id", "subject-type", "resource-type", "action-name", "no-action", "no-amount", "unit",
        "semantic", "batch-item"])
def test_bad_input_is_400_naming_the_field_and_logs_nothing(pdp: Pdp, path: str, doc: dict[str, Any],
                                                            field: str) -> None:
    before = pdp.logged()
    status, body = pdp.post(path, doc)
    assert status == 400
    assert body["error"] == "invalid_request"
    assert field in body["error_description"]
    assert pdp.logged() == before


def test_http_errors_are_answered_plainly(pdp: Pdp) -> None:
    assert pdp.request("GET", "/access/v1/evaluation")[0] == 405
    assert pdp.request("POST", "/access/v1/nothing", b"{}")[0] == 404
    status, body, _ = pdp.request("POST", "/access/v1/evaluation", b"{not json")
    assert (status, body["error"]) == (400, "invalid_request")
    status, body, _ = pdp.request("POST", "/access/v1/evaluation", b"{}", {"Content-Type": "text/plain"})
    assert status == 400 and "content-type" in body["error_description"]
    # All of the above went over one kept-alive connection; an oversized body is refused and closes it.
    status, body, headers = pdp.request("POST", "/access/v1/evaluation", b"x" * (1024 * 1024 + 1))
    assert (status, body["error"]) == (413, "invalid_request")
    assert headers.get("Connection") == "close"


def test_request_id_is_echoed_and_metadata_names_the_endpoints(pdp: Pdp) -> None:
    status, _, headers = pdp.request("POST", "/access/v1/evaluation",
                                     json.dumps(tool_eval("code-reviewer", "github/get_pull_request")).encode(),
                                     {"X-Request-ID": "req-77"})
    assert (status, headers.get("X-Request-ID")) == (200, "req-77")
    status, meta, _ = pdp.request("GET", "/.well-known/authzen-configuration")
    assert status == 200
    base = meta["policy_decision_point"]
    assert base.startswith("http://127.0.0.1:")
    assert meta["access_evaluation_endpoint"] == f"{base}/access/v1/evaluation"
    assert meta["access_evaluations_endpoint"] == f"{base}/access/v1/evaluations"


def test_caller_token_names_the_caller_and_a_spoofed_subject_is_a_logged_principal_mismatch(
        serve: Callable[..., Server], tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "gw.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    config = tmp_path / "tollgate.yaml"
    config.write_text(json.dumps({
        "authzen_listen": "127.0.0.1:0", "token_keys": str(tmp_path / "keys"), "token_issuer": "https://idp",
        "token_audience": "tollgate", "callers": [{"id": "jwt:mcp-gateway", "agents": ["code-reviewer"]}]}))
    pdp = Pdp(serve(extra=["--config", str(config)]))
    token = jwt.encode({"iss": "https://idp", "aud": "tollgate", "sub": "mcp-gateway", "exp": int(time.time()) + 60},
                       key, algorithm="ES256", headers={"kid": "gw"})
    _, allowed = pdp.post("/access/v1/evaluation", tool_eval("code-reviewer", "github/get_pull_request"),
                          Authorization=f"Bearer {token}")
    assert allowed["decision"] is True
    assert pdp.record(allowed["context"]["decision_id"])["requested_by"] == "jwt:mcp-gateway"
    _, spoofed = pdp.post("/access/v1/evaluation", tool_eval("release-bot", "github/get_pull_request"),
                          **{"Tollgate-Caller-Token": token})
    assert spoofed["decision"] is False
    assert [r["code"] for r in spoofed["context"]["reasons"]] == ["principal_mismatch"]
    assert pdp.record(spoofed["context"]["decision_id"])["decision"] == "deny"
    _, anonymous = pdp.post("/access/v1/evaluation", tool_eval("code-reviewer", "github/get_pull_request"))
    assert [r["code"] for r in anonymous["context"]["reasons"]] == ["principal_mismatch"]


def test_over_mtls_the_client_certificate_names_the_caller(serve: Callable[..., Server], tmp_path: Path) -> None:
    import grpc

    ca = TestCA(tmp_path / "pki")
    cert, gateway = ca.server(), ca.client("spiffe://acme/gateways/mcp")
    config = tmp_path / "tollgate.yaml"
    config.write_text(json.dumps({
        "authzen_listen": "127.0.0.1:0", "authzen_tls": True, "tls_cert": str(cert.cert), "tls_key": str(cert.key),
        "tls_client_ca": str(ca.cert), "tls_require_client_cert": True,
        "callers": [{"id": "spiffe://acme/gateways/mcp", "agents": ["code-reviewer"]}]}))
    server = serve(extra=["--config", str(config)],
                   credentials=grpc.ssl_channel_credentials(ca.cert.read_bytes(), *gateway.pair()))
    tls = ssl.create_default_context(cafile=str(ca.cert))
    tls.load_cert_chain(gateway.cert, gateway.key)
    pdp = Pdp(server, tls)
    _, allowed = pdp.post("/access/v1/evaluation", tool_eval("code-reviewer", "github/get_pull_request"))
    assert allowed["decision"] is True
    auth = pdp.record(allowed["context"]["decision_id"])["input"]["auth"]
    assert (auth["method"], auth["spiffe_id"]) == ("mtls", "spiffe://acme/gateways/mcp")
    _, spoofed = pdp.post("/access/v1/evaluation", tool_eval("release-bot", "github/get_pull_request"))
    assert [r["code"] for r in spoofed["context"]["reasons"]] == ["principal_mismatch"]
    status, meta, _ = pdp.request("GET", "/.well-known/authzen-configuration")
    assert (status, meta["access_evaluation_endpoint"][:8]) == (200, "https://")
    without = Pdp(server, ssl.create_default_context(cafile=str(ca.cert)))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        without.post("/access/v1/evaluation", tool_eval("code-reviewer", "github/get_pull_request"))


def _raw_tool_eval(arguments: str = "{}", subject_id: str = '"code-reviewer"') -> bytes:
    """A tool evaluation written by hand, for values json.dumps would never write (10**400, a lone surrogate)."""
    return (f'{{"subject": {{"type": "agent", "id": {subject_id}}}, "action": {{"name": "call"}}, "resource": '
            f'{{"type": "tool", "id": "github/get_pull_request", "properties": {{"arguments": {arguments}}}}}}}'
            ).encode()


_MODEL_EVAL = ('{"subject": {"type": "agent", "id": "code-reviewer"}, "action": {"name": "invoke"}, '
               '"resource": {"type": "model", "id": "openai/gpt-4o", "properties": {"input_tokens": %s}}}')
_BUDGET_EVAL = ('{"subject": {"type": "agent", "id": "code-reviewer"}, "action": {"name": "spend", '
                '"properties": {"amount": %s}}, "resource": {"type": "budget", "id": "usd"}}')


@pytest.mark.parametrize(("body", "field"), [
    (_raw_tool_eval('{"n": 1' + "0" * 400 + "}"), "resource.properties.arguments.n: "),
    (_raw_tool_eval('{"n": 1e400}'), "resource.properties.arguments.n: "),
    (_raw_tool_eval('{"deep": [{"n": -1' + "0" * 400 + "}]}"), "resource.properties.arguments.deep[0].n: "),
    ((_MODEL_EVAL % 2**63).encode(), "resource.properties.input_tokens: "),
    ((_BUDGET_EVAL % ("1" + "0" * 400)).encode(), "action.properties.amount: "),
    (_raw_tool_eval('{"s": "x\\ud800y"}'), "resource.properties.arguments.s: "),
    (_raw_tool_eval('{"\\udfff": 1}'), "resource.properties.arguments: "),
    (_raw_tool_eval(subject_id='"\\ud800"'), "subject.id: "),
], ids=["integer-10**400", "float-1e400", "nested-negative-10**400", "input-tokens-2**63", "amount-10**400",
        "lone-surrogate-value", "lone-surrogate-key", "lone-surrogate-subject"])
def test_values_no_request_can_carry_are_400_naming_the_field(pdp: Pdp, body: bytes, field: str) -> None:
    before = pdp.logged()
    status, answer, _ = pdp.request("POST", "/access/v1/evaluation", body)
    assert (status, answer["error"]) == (400, "invalid_request"), answer
    assert answer["error_description"].startswith(field), answer
    assert pdp.logged() == before
    # The connection stays usable: the answer was the API's, not a dropped socket or a 500.
    assert pdp.post("/access/v1/evaluation", tool_eval("code-reviewer", "github/get_pull_request"))[0] == 200


# Header bytes are read as Latin-1: b"\xb2" is "²", which str.isdigit() calls a digit and int() refuses.
@pytest.mark.parametrize("length", [b"\xb2", "١٢".encode(), b"9" * 5000, b"-1", b"+5"],
                         ids=["superscript-two", "arabic-indic", "5000-digits", "negative", "plus"])
def test_a_content_length_that_is_not_a_plain_number_is_answered_400_or_413(pdp: Pdp, length: bytes) -> None:
    import socket

    host, port = _authzen_address(pdp.server).rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /access/v1/evaluation HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + length + b"\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] in (b"400", b"413"), answer[:200]
    assert "content-length" in json.loads(body)["error_description"]


def test_an_evaluations_batch_over_the_limit_is_400_and_decides_nothing(serve: Callable[..., Server]) -> None:
    pdp = Pdp(serve(extra=["--authzen-listen", "127.0.0.1:0", "--authzen-max-batch", "8"]))
    item = tool_eval("code-reviewer", "github/get_pull_request")
    before = pdp.logged()
    status, body = pdp.post("/access/v1/evaluations", {"evaluations": [item] * 9})
    assert status == 400
    assert body["error_description"].startswith("evaluations: 9 evaluation requests, over the limit of 8")
    assert pdp.logged() == before
    status, body = pdp.post("/access/v1/evaluations", {"evaluations": [item] * 8})
    assert (status, len(body["evaluations"])) == (200, 8)


def test_the_default_batch_limit_is_64(pdp: Pdp) -> None:
    item = tool_eval("code-reviewer", "github/get_pull_request")
    before = pdp.logged()
    status, body = pdp.post("/access/v1/evaluations", {"evaluations": [item] * 65})
    assert status == 400 and "over the limit of 64" in body["error_description"]
    assert pdp.logged() == before
