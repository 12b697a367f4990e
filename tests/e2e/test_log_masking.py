"""Secrets in requests never reach disk: a real sidecar with the default library masks them in every file it writes."""

from __future__ import annotations

import json
import secrets
import sqlite3
import subprocess
import textwrap
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from tests.conftest import REGO, ROOT, TOLLGATE, Server, tool_request, write_policy
from tollgate.v1 import authorization_pb2 as pb


def _secret(prefix: str, length: int = 36) -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    return prefix + "".join(secrets.choice(alphabet) for _ in range(length))


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _leaks(root: Path, needles: list[str]) -> list[tuple[str, str]]:
    """(file, secret) for every secret whose bytes appear in any file under root."""
    found = []
    for path in _files(root):
        data = path.read_bytes()
        found += [(str(path.relative_to(root)), n) for n in needles if n.encode() in data]
    return found


def _records(data_dir: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(f"file:{data_dir / 'decisions.db'}?mode=ro", uri=True) as db:
        return [json.loads(r[0]) for r in db.execute("SELECT record FROM decisions ORDER BY seq")]


def _model_request(context: dict[str, Any]) -> pb.AuthorizeRequest:
    request = pb.AuthorizeRequest(principal=pb.Principal(agent_id="code-reviewer", session_id="s-1"),
                                  model=pb.ModelCall(provider="anthropic", model="claude-sonnet-4-5",
                                                     input_tokens=100, max_output_tokens=100))
    request.context.update(context)
    return request


def test_secrets_in_arguments_and_context_are_nowhere_on_disk(serve, tmp_path: Path) -> None:
    token, api_key, bearer = _secret("ghp_"), _secret("k-", 24), _secret("", 40)
    password, pem_body = _secret("pw-", 16), _secret("MIIE", 60)
    pem = f"-----BEGIN RSA PRIVATE KEY-----\n{pem_body}\n-----END RSA PRIVATE KEY-----"
    needles = [token, api_key, bearer, password, pem_body]
    data_dir = tmp_path / "data"
    server: Server = serve(data_dir=data_dir)

    allowed = server.authorize(tool_request("code-reviewer", "github", "get_pull_request", {
        "owner": "acme", "repo": "payments-api", "pullNumber": 7, "api_key": api_key,
        "headers": {"Authorization": f"Bearer {bearer}", "Accept": "application/json"}}, session_id="s-1"))
    denied = server.authorize(tool_request("code-reviewer", "github", "delete_repository", {
        "repo": "payments-api", "steps": [{"note": f"use {token}"}, {"ssh_key": pem}]}, session_id="s-1"))
    merge = tool_request("release-bot", "github", "merge_pull_request", {
        "owner": "acme", "repo": "app", "pullNumber": 3, "github_token": token, "db_password": password},
        session_id="s-2")
    merge.request_id = "merge-3"
    asked = server.authorize(merge)
    model = server.authorize(_model_request({"upstream_auth": f"Bearer {bearer}", "ticket": "INC-1"}))
    plain = server.authorize(tool_request("code-reviewer", "github", "get_pull_request", {
        "owner": "acme", "repo": "payments-api", "pullNumber": 8}, session_id="s-1"))
    assert allowed.decision == pb.DECISION_ALLOW, allowed
    assert denied.decision == pb.DECISION_DENY, denied
    assert asked.decision == pb.DECISION_REQUIRE_APPROVAL and asked.approval_id, asked
    assert model.decision in (pb.DECISION_ALLOW, pb.DECISION_DENY)
    # The idempotent retry of the masked request still finds its answer (it is bound to the unmasked digest).
    assert server.authorize(merge).decision_id == asked.decision_id

    # While the server runs (the records still in the WAL files) and after it checkpoints on exit.
    assert {"decisions.db", "decisions.db-wal", "state.db", "state.db-wal"} <= {p.name for p in _files(data_dir)}
    assert _leaks(data_dir, needles) == []
    record = server.get_decision(allowed.decision_id)
    assert sorted(record.masked) == ["/input/tool/arguments/api_key",
                                     "/input/tool/arguments/headers/Authorization"]
    assert list(record.erased) == [] and record.error == ""
    arguments = json_format.MessageToDict(record.tool.arguments)
    assert arguments == {"owner": "acme", "repo": "payments-api", "pullNumber": 7, "api_key": "***",
                         "headers": {"Authorization": "***", "Accept": "application/json"}}
    assert server.terminate() == 0
    assert _leaks(data_dir, needles) == []
    assert not any(n in server.stderr for n in needles)

    by_id = {r["decision_id"]: r for r in _records(data_dir)}
    assert sorted(by_id[denied.decision_id]["masked"]) == ["/input/tool/arguments/steps/0/note",
                                                          "/input/tool/arguments/steps/1/ssh_key"]
    assert by_id[model.decision_id]["masked"] == ["/input/context/upstream_auth"]
    assert (by_id[plain.decision_id]["masked"], by_id[plain.decision_id]["erased"]) == ([], [])
    # Only the credential inside a value is replaced; the rest of the value stays readable.
    assert by_id[model.decision_id]["input"]["context"] == {"upstream_auth": "Bearer ***", "ticket": "INC-1"}
    # The approval stores the action as masked, bound to the digest of the request as it was asked.
    with sqlite3.connect(f"file:{data_dir / 'state.db'}?mode=ro", uri=True) as db:
        action, digest = db.execute("SELECT action, request_digest FROM approvals WHERE id = ?",
                                    (asked.approval_id,)).fetchone()
    assert json.loads(action)["arguments"] == {"owner": "acme", "repo": "app", "pullNumber": 3,
                                               "github_token": "***", "db_password": "***"}
    assert digest == by_id[asked.decision_id]["request_digest"] != ""

    # Replay reads the masked records: the library's answers do not depend on the masked values.
    replayed = subprocess.run([*TOLLGATE, "replay", "--bundle", str(REGO), "--data-dir", str(data_dir),
                               "--format", "json"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert replayed.returncode == 0, replayed.stderr
    report = json.loads(replayed.stdout)
    assert (report["replayed"], report["changed"], report["bad_records"]["count"]) == (len(by_id), 0, 0), report
    assert report["masked_records"] == {"count": len(by_id) - 1, "changed": 0}  # all but the plain request
    text = subprocess.run([*TOLLGATE, "replay", "--bundle", str(REGO), "--data-dir", str(data_dir)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120).stdout
    assert f"Masked: {len(by_id) - 1} replayed records had members erased or replaced" in text, text
    # The hash chain covers the records as masked, the fast path (input serialised once) and the masked one alike.
    verified = subprocess.run([*TOLLGATE, "logs", "verify", "--data-dir", str(data_dir)], capture_output=True,
                              text=True, cwd=ROOT, timeout=120)
    assert verified.returncode == 0 and f"verified {len(by_id)} records" in verified.stdout, verified


FAILING_MASK = """
package tollgate.log

mask := ["/input/tool/arguments/a"] if input.context.a
mask := ["/input/tool/arguments/b"] if input.context.b
"""
# Garbage only for requests with a token, so that the bundle passes the activation's smoke test.
GARBAGE_MASK = """
package tollgate.log

mask := "/input/tool/arguments/token" if input.tool.arguments.token
"""
ALWAYS_GARBAGE_MASK = """
package tollgate.log

mask := {"path": "/input/tool/arguments/token"}
"""
ALLOW = """
package tollgate

decision := {"decision": "allow", "reasons": []}
"""


def _bundle(root: Path, mask: str) -> Path:
    write_policy(root, ALLOW)
    (root / "tollgate" / "log").mkdir()
    (root / "tollgate" / "log" / "mask.rego").write_text(textwrap.dedent(mask))
    return root


def test_a_failing_or_garbage_mask_keeps_the_decision_and_erases_arguments_and_context(serve, tmp_path: Path) -> None:
    token = _secret("tok-", 24)
    for name, mask, context, why in [
        ("failing", FAILING_MASK, {"a": True, "b": True},
         "data.tollgate.log.mask failed: tollgate/log/mask.rego:4: eval_conflict_error"),
        ("garbage", GARBAGE_MASK, {}, "data.tollgate.log.mask must be a set or array of entries, not a string"),
    ]:
        data_dir = tmp_path / name / "data"
        server: Server = serve(bundle=_bundle(tmp_path / name / "bundle", mask), data_dir=data_dir)
        request = tool_request("a", "s", "t", {"token": token})
        request.context.update(context)
        response = server.authorize(request)
        assert response.decision == pb.DECISION_ALLOW  # the policy decided; only the log is affected
        record = server.get_decision(response.decision_id)
        assert sorted(record.erased) == ["/input/context", "/input/principal/labels", "/input/tool/arguments"]
        assert why in record.error
        assert "erased /input/tool/arguments, /input/context, /input/principal/labels instead" in record.error
        assert "arguments" not in json_format.MessageToDict(record.input)["tool"]
        assert _leaks(data_dir, [token]) == []


# A policy that quotes the argument it refuses, as many real reasons do ("url ... is not allowed").
QUOTING = """
package tollgate

default decision := {"decision": "deny", "reasons": [{"code": "no_url", "message": "no url"}]}

decision := {"decision": "deny", "obligations": {},
             "reasons": [{"code": "bad_url", "message": sprintf("url %s is not allowed", [input.tool.arguments.url])}]}
"""


def test_a_reason_quoting_a_masked_value_is_scrubbed_in_the_record(serve, tmp_path: Path) -> None:
    password = _secret("pw-", 20)
    root = write_policy(tmp_path / "bundle", QUOTING)
    (root / "tollgate" / "log").mkdir()
    (root / "tollgate" / "log" / "mask.rego").write_text(
        'package tollgate.log\n\nmask contains {"op": "upsert", "path": "/input/tool/arguments/url", "value": "***"}\n')
    data_dir = tmp_path / "data"
    server: Server = serve(bundle=root, data_dir=data_dir)
    url = f"https://deploy:{password}@internal.example/hook"
    response = server.authorize(tool_request("a", "s", "t", {"url": url}))
    # The caller, who sent the secret, gets the policy's own words; the log keeps them without it.
    assert response.reasons[0].message == f"url {url} is not allowed"
    record = server.get_decision(response.decision_id)
    assert record.reasons[0].message == "url *** is not allowed"
    assert json_format.MessageToDict(record.result)["reasons"][0]["message"] == "url *** is not allowed"
    assert list(record.masked) == ["/input/tool/arguments/url"]
    assert server.terminate() == 0
    assert _leaks(data_dir, [password]) == []


# For agent "slow", minutes of work: the evaluation runs past its deadline and the worker gives no answer.
RUNAWAY = """
package tollgate

default decision := {"decision": "allow", "reasons": []}

decision := {"decision": "deny", "reasons": [{"code": "n", "message": sprintf("%d", [n])}]} if {
    input.principal.agent_id == "slow"
    n := count([x | some x in numbers.range(1, 1000000000)])
}
"""


def _runaway(root: Path) -> Path:
    write_policy(root, RUNAWAY)
    (root / "tollgate" / "log").mkdir()
    (root / "tollgate" / "log" / "mask.rego").write_text('package tollgate.log\n\nmask contains "/input/context"\n')
    return root


def test_without_a_mask_answer_the_record_erases_arguments_and_context(serve, tmp_path: Path) -> None:
    token = _secret("tok-", 24)
    cases = [
        ("no-bundle", write_policy(tmp_path / "broken", "package tollgate\n\ndecision := undefined_function(1)\n"),
         "a", "no_bundle", "the mask could not be computed (no policy bundle is loaded)"),
        ("deadline", _runaway(tmp_path / "runaway"),
         "slow", "deadline_exceeded", "the mask could not be computed (no engine answer: deadline_exceeded)"),
    ]
    for name, bundle, agent, code, why in cases:
        data_dir = tmp_path / name
        server: Server = serve(bundle=bundle, data_dir=data_dir, extra=["--eval-timeout-ms", "300"])
        request = tool_request(agent, "s", "t", {"note": f"Bearer {token}"})
        request.context.update({"ticket": token})
        response = server.authorize(request, timeout=30)
        assert [r.code for r in response.reasons] == [code]
        record = server.get_decision(response.decision_id)
        assert sorted(record.erased) == ["/input/context", "/input/principal/labels", "/input/tool/arguments"]
        assert why in record.error
        assert _leaks(data_dir, [token]) == []


def test_a_bundle_whose_mask_fails_the_smoke_test_is_refused(serve, tmp_path: Path) -> None:
    server: Server = serve(bundle=_bundle(tmp_path / "bundle", ALWAYS_GARBAGE_MASK))
    response = server.authorize(tool_request("a", "s", "t", {"token": "x"}))
    assert [r.code for r in response.reasons] == ["no_bundle"]
    assert "data.tollgate.log.mask is an object, not a set of entries" in server.stderr
