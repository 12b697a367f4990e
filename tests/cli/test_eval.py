"""`tollgate eval`: one input decided offline as the sidecar decides it, with the rules that made each reason."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ADMIN_TOKEN, REGO, ROOT, TOLLGATE, Server, start_server, write_policy

SQL = ["--agent", "data-analyst", "--tool", "postgres/query",
       "--args", '{"sql": "SELECT 1; DELETE FROM orders", "database": "analytics-primary"}']


def _tollgate(*args: str, stdin: str | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOLLGATE, *args], input=stdin, capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={"PATH": "/usr/bin:/bin", "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN})


def _line(path: Path, marker: str) -> int:
    return next(i for i, line in enumerate(path.read_text().splitlines(), 1) if marker in line)


def test_explain_names_the_rule_that_made_each_reason_and_those_that_passed_it_on() -> None:
    result = _tollgate("eval", "--bundle", "rego", "--explain", *SQL)
    assert result.returncode == 2, result.stdout + result.stderr
    sql = REGO / "tollgate" / "arguments" / "sql" / "sql.rego"
    write = _line(sql, '"code": "sql_write_statement"')
    replica = _line(sql, '"code": "sql_not_replica"')
    tools_file = REGO / "tollgate" / "rules" / "tools" / "tools.rego"
    tools_rego = tools_file.read_text().splitlines()
    dispatch = _line(tools_file, "in data.tollgate.arguments[kind].deny")
    tools = max(i for i, line in enumerate(tools_rego[:dispatch], 1) if line.startswith("deny contains"))
    lines = result.stdout.splitlines()
    assert lines[0].startswith("DENY  bundle=sha256:")
    at = lines.index(next(line for line in lines if line.startswith("  reason sql_write_statement:")))
    assert lines[at + 1] == f"    made by tollgate.arguments.sql.deny  rego/tollgate/arguments/sql/sql.rego:{write}"
    assert lines[at + 2] == f"    passed on by tollgate.rules.tools.deny  rego/tollgate/rules/tools/tools.rego:{tools}"
    assert lines[at + 3].startswith("    passed on by tollgate._rule_denials  rego/tollgate/decision.rego:")
    assert f"    made by tollgate.arguments.sql.deny  rego/tollgate/arguments/sql/sql.rego:{replica}" in lines
    assert "made by tollgate.rules.tools" not in result.stdout  # tools dispatched, the sql package decided


def test_json_output_parses_and_carries_the_explanation() -> None:
    result = _tollgate("eval", "--explain", "--format", "json", "--agent", "release-bot", "--session", "s-7",
                       "--tool", "github/merge_pull_request", "--args", '{"owner": "acme", "pullNumber": 42}')
    assert result.returncode == 3, result.stderr
    doc = json.loads(result.stdout)
    assert doc["decision"] == "require_approval"
    assert [r["code"] for r in doc["reasons"]] == ["destructive_action"]
    made = [hit for hit in doc["reasons"][0]["rules"] if not hit["passed_on"]]
    assert [(hit["package"], hit["rule"]) for hit in made] == [("tollgate.rules.tools", "require_approval")]
    assert doc["approval"] == {"approvers": ["group:release-managers", "group:sre-oncall"], "ttl_seconds": 1800}
    assert doc["input"]["principal"]["session_id"] == "s-7"
    assert doc["input"]["tool"]["arguments"] == {"owner": "acme", "pullNumber": 42}
    assert doc["result"]["decision"] == "require_approval"


REQUESTS = [
    ["--agent", "code-reviewer", "--tool", "github/get_pull_request", "--args", '{"repo": "payments-api"}'],
    ["--agent", "code-reviewer", "--tool", "github/merge_pull_request", "--args", '{"pullNumber": 42}'],
    ["--agent", "release-bot", "--tool", "github/merge_pull_request", "--args", '{"pullNumber": 812}'],
    SQL,
    ["--agent", "code-reviewer", "--model", "anthropic/claude-sonnet-4-5", "--input-tokens", "1200",
     "--max-output-tokens", "20000", "--data-class", "source-code"],
    ["--agent", "code-reviewer", "--budget", "5", "--unit", "usd", "--category", "model"],
    ["--agent", "nobody", "--tool", "Read"],
]


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    server = start_server(tmp_path_factory.mktemp("eval") / "data")
    yield server
    server.terminate()


@pytest.mark.parametrize("flags", REQUESTS, ids=[f"{r[1]}-{r[3]}" for r in REQUESTS])
def test_eval_answers_what_a_live_sidecar_answers(sidecar: Server, flags: list[str]) -> None:
    """The same flags, built into the same input: the sidecar's answer and eval's are one (but for the decision id)."""
    live = _tollgate("authorize", "--server", sidecar.address, "--json", *flags)
    offline = _tollgate("eval", "--format", "json", *flags)
    assert offline.returncode == live.returncode, offline.stdout + offline.stderr
    answer, evaluated = json.loads(live.stdout), json.loads(offline.stdout)
    assert evaluated["decision"] == answer["decision"].removeprefix("DECISION_").lower()
    assert [(r["code"], r["message"]) for r in evaluated["reasons"]] == [
        (r["code"], r["message"]) for r in answer.get("reasons", [])]
    assert evaluated["obligations"] == answer.get("obligations", {})
    assert evaluated["bundle_revision"] == answer["bundle_revision"]


def test_a_logged_decision_record_is_evaluated_again_from_its_input(sidecar: Server) -> None:
    live = _tollgate("authorize", "--server", sidecar.address, *SQL)
    decision_id = live.stdout.split("decision_id=")[1].split()[0]
    record = _tollgate("decision", decision_id, "--server", sidecar.address)
    assert record.returncode == 0, record.stderr
    offline = _tollgate("eval", "--input", "-", "--explain", stdin=record.stdout)
    assert offline.returncode == 2, offline.stderr
    assert offline.stdout.count("made by tollgate.arguments.sql.deny") == 2


def test_a_built_bundle_and_a_new_rule_package_are_explained(tmp_path: Path) -> None:
    import shutil

    source = tmp_path / "rego"
    shutil.copytree(REGO, source)
    rule = source / "tollgate" / "rules" / "freeze" / "freeze.rego"
    rule.parent.mkdir()
    rule.write_text('package tollgate.rules.freeze\n\ndeny contains {"code": "repo_frozen", "message": m} if {\n'
                    '\tinput.tool.arguments.repo == "payments-api"\n\tm := "payments-api is frozen"\n}\n')
    built = _tollgate("build", str(source), "--revision", "v9", "-o", str(tmp_path / "b.tar.gz"))
    assert built.returncode == 0, built.stderr
    result = _tollgate("eval", "--bundle", str(tmp_path / "b.tar.gz"), "--explain", "--agent", "code-reviewer",
                       "--tool", "github/get_pull_request", "--args", '{"repo": "payments-api"}')
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.splitlines()[:3] == [
        "DENY  bundle=v9", "  reason repo_frozen: payments-api is frozen",
        "    made by tollgate.rules.freeze.deny  tollgate/rules/freeze/freeze.rego:3"]


def test_a_reason_the_server_made_is_said_to_be_the_servers(tmp_path: Path) -> None:
    """A policy that allows a killed request: the server's own kill-switch rule denies, and eval says so."""
    bundle = write_policy(tmp_path / "p", 'package tollgate\n\ndecision := {"decision": "allow"}\n')
    doc = {"kind": "tool", "principal": {"agent_id": "a"}, "tool": {"server": "s", "name": "t"},
           "state": {"killed": [{"scope": "agent", "value": "a", "reason": "INC-7"}]}}
    result = _tollgate("eval", "--bundle", str(bundle), "--input", "-", "--explain", stdin=json.dumps(doc))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout.splitlines()[1:3] == [
        '  reason killed: agent "a" is stopped by a kill switch: INC-7',
        "    made by the server: kill switch enforced by the server: the policy did not deny this request as killed"]


@pytest.mark.parametrize(("args", "stdin", "message"), [
    ([], None, "tollgate eval: no input: give --input FILE"),
    (["--input", "-", "--agent", "x", "--tool", "t"], "{}", "--input and the request flags"),
    (["--input", "-"], "[1]", "stdin: the input must be a JSON object"),
    (["--input", "-"], "{nope", "stdin: not JSON"),
    (["--input", "-"], '{"principal": {}}', "stdin: no `kind`"),
    (["--agent", "x", "--tool", "t", "--args", "[1]"], None, "--args must be a JSON object"),
    (["--agent", "x", "--budget", "-1"], None, "invalid request: budget.amount: must be a number from 0"),
    (["--bundle", "nowhere", "--agent", "x", "--tool", "t"], None, "bundle nowhere: no such file or directory"),
], ids=["no-input", "two-inputs", "not-an-object", "not-json", "no-kind", "bad-args", "invalid-request",
        "no-bundle"])
def test_what_cannot_be_evaluated_is_an_error_saying_why(args: list[str], stdin: str | None, message: str) -> None:
    result = _tollgate("eval", *args, stdin=stdin)
    assert result.returncode == 1
    assert message in result.stderr, result.stderr
