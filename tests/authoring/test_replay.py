"""`tollgate replay`: recorded decisions decided again with a candidate bundle, the report and its gates.

Records come from real servers' decision logs, from the DecisionLog class, and from samples/decisions.jsonl
(written by a real server); candidates are real copies of rego/; the gates run the real CLI.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REGO, ROOT, TOLLGATE, Server, start_server, tool_request, write_policy
from tollgate.authoring.replay import (
    ANY,
    BadRecord,
    Candidate,
    RecordedDecision,
    ReplayError,
    ReplayReport,
    Window,
    parse_transitions,
    read_data_dir,
    read_jsonl,
    render_markdown,
    replay,
)
from tollgate.decisionlog import DecisionLog, DecisionRecord, LogConfig
from tollgate.encoding import parse_moment
from tollgate.ids import new_decision_id
from tollgate.v1 import admin_pb2, admin_pb2_grpc
from tollgate.v1 import authorization_pb2 as pb

SAMPLE = ROOT / "samples" / "decisions.jsonl"
AGENTS = sorted(p.name for p in (REGO / "agents").iterdir() if p.is_dir())


def _candidate(root: Path, agent: str, *tools: str) -> Path:
    """A copy of rego/ whose `agent` manifest no longer lists `tools`: a typical policy pull request."""
    shutil.copytree(REGO, root)
    manifest = root / "agents" / agent / "data.yaml"
    text = manifest.read_text()
    for tool in tools:
        assert f"  - {tool}\n" in text
        text = text.replace(f"  - {tool}\n", "")
    manifest.write_text(text)
    return root


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOLLGATE, "replay", *map(str, args)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


def _replay(source: Iterator[Any], bundle: Path, **kwargs: Any) -> ReplayReport:
    with Candidate(bundle) as candidate:
        return replay(source, candidate, **kwargs)


@pytest.fixture(scope="module")
def no_push(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The candidate: code-reviewer loses github/push_files."""
    return _candidate(tmp_path_factory.mktemp("candidate") / "rego", "code-reviewer", "github/push_files")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, list[str]]]]:
    """A running server on rego/ that has answered a varied set of requests; their decision IDs by label."""
    server = start_server(tmp_path_factory.mktemp("data"))
    asked: dict[str, list[str]] = {}

    def ask(label: str, request: pb.AuthorizeRequest, expected: int) -> None:
        response = server.authorize(request)
        assert response.decision == expected, (label, response)
        asked.setdefault(label, []).append(response.decision_id)

    for i in range(3):
        ask("push", tool_request("code-reviewer", "github", "push_files", {"branch": f"fix-{i}"},
                                 session_id=f"s-{i}"), pb.DECISION_ALLOW)
    for i in range(2):
        ask("read", tool_request("code-reviewer", "github", "get_pull_request", {"pullNumber": i}), pb.DECISION_ALLOW)
    ask("merge", tool_request("release-bot", "github", "merge_pull_request", {"pullNumber": 812}),
        pb.DECISION_REQUIRE_APPROVAL)
    ask("merge-denied", tool_request("code-reviewer", "github", "merge_pull_request"), pb.DECISION_DENY)
    model = pb.AuthorizeRequest(principal=pb.Principal(agent_id="code-reviewer"),
                                model=pb.ModelCall(provider="anthropic", model="claude-sonnet-4-5",
                                                   max_output_tokens=20000))
    ask("model", model, pb.DECISION_ALLOW)
    budget = pb.AuthorizeRequest(principal=pb.Principal(agent_id="release-bot"),
                                 budget=pb.BudgetRequest(amount=0.5, unit="usd", category="tool"))
    ask("budget", budget, pb.DECISION_ALLOW)
    yield server, asked
    server.kill()


# -- what changes ---------------------------------------------------------------------------------


def test_the_same_bundle_changes_nothing(live: tuple[Server, dict[str, list[str]]]) -> None:
    server, asked = live
    report = _replay(read_data_dir(server.data_dir), REGO)
    assert report.replayed == sum(len(ids) for ids in asked.values())
    assert (report.changed, report.reason_changes, report.obligation_changes, report.bad_records) == (0, 0, 0, 0)
    assert report.transitions == ()


def test_removing_a_tool_from_a_manifest_denies_exactly_the_calls_to_it(
        live: tuple[Server, dict[str, list[str]]], no_push: Path) -> None:
    server, asked = live  # still running: the log is read while the server holds it
    report = _replay(read_data_dir(server.data_dir), no_push)
    assert report.changed == 3
    assert [(t.transition, t.count) for t in report.transitions] == [(("allow", "deny"), 3)]
    assert report.by_agent == {"code-reviewer": {("allow", "deny"): 3}}
    assert report.by_tool == {"github/push_files": {("allow", "deny"): 3}}
    change = report.transitions[0]
    assert [c.record.decision_id for c in change.examples] == asked["push"]
    assert {(c.record.reasons, c.reasons) for c in change.examples} == {((), ("tool_not_in_manifest",))}
    assert report.revision not in report.recorded_revisions  # the candidate's own revision is reported
    assert list(report.recorded_revisions.values()) == [report.replayed]


def test_examples_are_capped_per_transition_and_counts_are_not(
        live: tuple[Server, dict[str, list[str]]], no_push: Path) -> None:
    report = _replay(read_data_dir(live[0].data_dir), no_push, examples=1)
    assert report.transitions[0].count == 3
    assert len(report.transitions[0].examples) == 1


def test_tool_ids_name_the_server_and_tool_the_model_or_budget(live: tuple[Server, dict[str, list[str]]]) -> None:
    records = {r.decision_id: r for r in read_data_dir(live[0].data_dir) if isinstance(r, RecordedDecision)}
    asked = live[1]
    assert records[asked["push"][0]].tool == "github/push_files"
    assert records[asked["model"][0]].tool == "anthropic/claude-sonnet-4-5"
    assert records[asked["budget"][0]].tool == "budget"
    assert records[asked["merge"][0]].agent == "release-bot"


def test_reason_and_obligation_changes_under_the_same_decision_are_informational(tmp_path: Path) -> None:
    # Take github/merge_pull_request out of the tool catalog: the code reviewer's call to it stays a deny, but
    # for one more reason (unknown_tool). And lower the reviewer's token cap.
    candidate = _candidate(tmp_path / "rego", "code-reviewer")
    catalog = candidate / "catalog" / "tools" / "data.yaml"
    catalog.write_text(catalog.read_text().replace(
        "github/merge_pull_request:\n  description: Merge a pull request into its base branch.\n"
        "  effect: destructive\n", ""))
    manifest = candidate / "agents" / "code-reviewer" / "data.yaml"
    manifest.write_text(manifest.read_text().replace("max_output_tokens: 8000", "max_output_tokens: 4000"))
    report = _replay(read_jsonl(SAMPLE), candidate)
    shifted = {(c.record.agent, c.record.reasons, c.reasons) for c in report.reason_examples}
    assert shifted == {("code-reviewer", ("tool_not_in_manifest",), ("tool_not_in_manifest", "unknown_tool"))}
    capped = [(c.record.obligations, c.obligations) for c in report.obligation_examples]
    assert ({"max_output_tokens": 8000}, {"max_output_tokens": 4000}) in capped
    # release-bot may merge: without a catalog entry, its approval becomes a deny.
    assert report.count(("require_approval", "deny")) == 1


@pytest.mark.parametrize(("case", "agent", "tool", "code"), [
    ("engine-error", "conflict", "t", "engine_error"),
    ("breaks-contract", "contract", "u", "policy_contract"),
    ("undefined", "nobody", "u", "policy_contract"),
    ("policy-deny", "ok", "t", "x"),
], ids=["engine-error", "breaks-contract", "undefined", "policy-deny"])
def test_replay_fails_closed_exactly_as_the_server_did(tmp_path: Path, case: str, agent: str, tool: str,
                                                       code: str) -> None:
    policy = write_policy(tmp_path / "policy", """
        package tollgate

        decision := {"decision": "allow", "reasons": []} if input.principal.agent_id == "conflict"
        decision := {"decision": "deny", "reasons": [{"code": "x", "message": "x"}]} if input.tool.name == "t"
        decision := {"decision": "maybe", "reasons": []} if input.principal.agent_id == "contract"
        # The server activates a bundle only if it answers its contract smoke test.
        decision := {"decision": "deny", "reasons": [{"code": "smoke", "message": "smoke"}]} if {
            input.principal.agent_id == "tollgate-smoke-test"
        }
        """)
    server = start_server(tmp_path / "data", bundle=policy)
    try:
        response = server.authorize(tool_request(agent, "s", tool))
    finally:
        server.terminate()
    assert [r.code for r in response.reasons] == [code]
    report = _replay(read_data_dir(tmp_path / "data"), policy)
    assert (report.replayed, report.changed, report.reason_changes) == (1, 0, 0)
    # Against a policy that allows everything, the server's fail-closed DENY is what changes.
    allow_all = write_policy(tmp_path / "allow", 'package tollgate\n\ndecision := {"decision": "allow"}\n')
    opened = _replay(read_data_dir(tmp_path / "data"), allow_all).transitions[0].examples[0]
    assert (opened.record.decision, opened.record.reasons, opened.decision) == ("deny", (code,), "allow")


def test_a_kill_the_server_enforced_replays_as_a_kill_against_a_bundle_without_the_rule(tmp_path: Path) -> None:
    allow_all = write_policy(tmp_path / "allow", 'package tollgate\n\ndecision := {"decision": "allow"}\n')
    server = start_server(tmp_path / "data", bundle=allow_all)
    try:
        admin_pb2_grpc.AdminServiceStub(server.channel).Kill(
            admin_pb2.KillRequest(scope="agent", value="a", reason="INC-7", by="alice"), timeout=10,
            metadata=server.admin_metadata)
        killed = server.authorize(tool_request("a", "s", "t"))
        spared = server.authorize(tool_request("b", "s", "t"))
    finally:
        server.terminate()
    assert ([r.code for r in killed.reasons], list(spared.reasons)) == (["killed"], [])
    report = _replay(read_data_dir(tmp_path / "data"), allow_all)
    assert (report.replayed, report.changed, report.reason_changes) == (2, 0, 0)


def test_records_the_server_denied_without_a_policy_decision_are_not_compared(tmp_path: Path) -> None:
    broken = write_policy(tmp_path / "broken", "package tollgate\n\ndecision := undefined_function(1)\n")
    # Slow for agent "slow" only: a revision that cannot answer its smoke test (the synthetic input and the
    # recent decisions', here code-reviewer's) in time is not activated at all.
    slow = write_policy(tmp_path / "slow", """
        package tollgate

        decision := {"decision": "allow", "reasons": [{"code": "n", "message": sprintf("%d", [n])}]} if {
            input.principal.agent_id == "slow"
            n := count([x | some x in numbers.range(1, 100000)])
        }

        decision := {"decision": "allow", "reasons": []} if input.principal.agent_id != "slow"
        """)
    for bundle, extra, agent in ((broken, [], "code-reviewer"), (slow, ["--eval-timeout-ms", "1"], "slow")):
        server = start_server(tmp_path / "data", bundle=bundle, extra=extra)
        try:
            server.authorize(tool_request(agent))
        finally:
            server.terminate()
    report = _replay(read_data_dir(tmp_path / "data"), REGO)
    assert report.not_compared == {"deadline_exceeded": 1, "no_bundle": 1}
    assert (report.replayed, report.changed) == (0, 0)


def test_fields_erased_from_a_logged_input_are_simply_absent(tmp_path: Path) -> None:
    lines = SAMPLE.read_text().splitlines()
    masked = []
    for line in lines:
        record = json.loads(line)
        record["input"].get("tool", {}).pop("arguments", None)
        record["input"].pop("context", None)
        masked.append(json.dumps(record))
    path = tmp_path / "masked.jsonl"
    path.write_text("\n".join(masked) + "\n")
    report = _replay(read_jsonl(path), REGO)
    assert report.replayed == len(lines)
    assert report.bad_records == 0
    # Argument rules now see no arguments: what they decide is the policy's business, not a replay error.
    assert all(c.decision in ("allow", "deny", "require_approval") for t in report.transitions for c in t.examples)
    assert not any(c.error for t in report.transitions for c in t.examples)


# -- which records --------------------------------------------------------------------------------


def _log_sample_at(path: Path, times: list[datetime]) -> list[str]:
    """Write sample records into a decision log with the DecisionLog class, stamped with these times."""
    records = [json.loads(line) for line in SAMPLE.read_text().splitlines()][: len(times)]
    for record, moment in zip(records, times, strict=True):
        record["decision_id"] = new_decision_id()
        record["timestamp"] = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        record.pop("prev_hash", None)
    log = DecisionLog(LogConfig(path=path / "decisions.db"))

    async def append_all() -> None:
        log.start(asyncio.get_running_loop())
        for record in records:
            await log.append(DecisionRecord.from_dict(record))

    asyncio.run(append_all())
    log.close()
    return [r["decision_id"] for r in records]


def test_since_and_until_choose_records_by_time(tmp_path: Path, no_push: Path) -> None:
    now = datetime.now(UTC)
    times = [now - timedelta(days=10 - i) for i in range(10)]  # one a day, the last one a day ago
    ids = _log_sample_at(tmp_path, times)
    jsonl = tmp_path / "export.jsonl"
    jsonl.write_text("".join(f"{json.dumps(rec)}\n" for rec in _records(tmp_path)))
    for read in (lambda w: read_data_dir(tmp_path, w), lambda w: read_jsonl(jsonl, w)):
        def chosen(window: Window, read: Callable[[Window], Iterator[Any]] = read) -> list[str]:
            return [r.decision_id for r in read(window)]

        assert chosen(Window(since=parse_moment("3d12h", now=now))) == ids[-3:]
        assert chosen(Window(until=times[2])) == ids[:2]
        assert chosen(Window(since=times[2], until=times[5])) == ids[2:5]
        assert chosen(Window(limit=4)) == ids[-4:]  # the most recent
        assert chosen(Window(until=times[5], limit=2)) == ids[3:5]
    since = times[6].isoformat()
    result = _cli("--bundle", REGO, "--data-dir", tmp_path, "--since", since, "--format", "json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["replayed"] == 4
    assert document["source"]["since"] == times[6].strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _records(data_dir: Path) -> list[dict[str, Any]]:
    import sqlite3

    db = sqlite3.connect(data_dir / "decisions.db")
    try:
        return [json.loads(body) for (body,) in db.execute("SELECT record FROM decisions ORDER BY seq")]
    finally:
        db.close()


def test_bad_records_are_reported_with_their_line_numbers(tmp_path: Path) -> None:
    good = SAMPLE.read_text().splitlines()
    record = json.loads(good[0])
    del record["input"]
    path = tmp_path / "decisions.jsonl"
    path.write_text("\n".join([good[0], "{not json", good[1], "", json.dumps(record), "[1, 2]", good[2]]) + "\n")
    seen = list(read_jsonl(path))
    bad = [r for r in seen if isinstance(r, BadRecord)]
    assert [(b.where, b.message.split(" (")[0]) for b in bad] == [
        ("line 2", "not JSON"), ("line 5", "input is missing"), ("line 6", "not a JSON object")]
    assert sum(isinstance(r, RecordedDecision) for r in seen) == 3
    result = _cli("--bundle", REGO, "--decisions", path)
    assert result.returncode == 2
    assert f"{path}: line 2: not JSON" in result.stderr
    assert f"{path}: line 5: input is missing" in result.stderr
    assert "3 decisions" in result.stdout  # the good ones are still replayed and reported
    assert "3 records could not be read" in result.stdout


# -- the CLI and its gates ------------------------------------------------------------------------


@pytest.mark.parametrize(("fail_on", "expected"), [
    ("allow→deny", 1), ("allow->deny", 1), ("deny→allow,allow→deny", 1), ("any", 1), ("deny→allow", 0),
    ("require_approval->deny, allow -> require_approval", 0),
], ids=["arrow", "ascii", "list", "any", "other-transition", "spaced-list"])
def test_fail_on_exits_1_only_when_a_listed_transition_occurred(no_push: Path, fail_on: str, expected: int) -> None:
    result = _cli("--bundle", no_push, "--decisions", SAMPLE, "--fail-on", fail_on)
    assert result.returncode == expected, result.stderr
    assert ("failing" in result.stderr) == (expected == 1)
    assert "allow → deny  1" in result.stdout


def test_fail_on_passes_for_an_unchanged_bundle() -> None:
    result = _cli("--bundle", REGO, "--decisions", SAMPLE, "--fail-on", "any")
    assert result.returncode == 0, result.stderr
    assert "No decision changes." in result.stdout


@pytest.mark.parametrize(("text", "expected"), [
    ("allow→deny", {("allow", "deny")}),
    ("allow->deny,deny->allow", {("allow", "deny"), ("deny", "allow")}),
    ("ANY", {ANY}),
    ("allow→require-approval", {("allow", "require_approval")}),
], ids=["arrow", "ascii-list", "any", "dashed-decision"])
def test_transitions_parse(text: str, expected: set[tuple[str, str]]) -> None:
    assert parse_transitions(text) == expected


@pytest.mark.parametrize("text", ["allow", "allow→allow", "allow→maybe", "", "allow=>deny"])
def test_transitions_that_are_not_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_transitions(text)


def test_unknown_fail_on_transition_is_a_usage_error_exit_2() -> None:
    result = _cli("--bundle", REGO, "--decisions", SAMPLE, "--fail-on", "allow→maybe")
    assert result.returncode == 2
    assert "is not a transition" in result.stderr


def test_a_candidate_that_does_not_compile_exits_2(tmp_path: Path) -> None:
    broken = _candidate(tmp_path / "rego", "code-reviewer")
    (broken / "tollgate" / "broken.rego").write_text("package tollgate.broken\n\nx := undefined_function(1)\n")
    result = _cli("--bundle", broken, "--decisions", SAMPLE, "--fail-on", "any")
    assert result.returncode == 2
    assert "does not compile" in result.stderr and "undefined_function" in result.stderr
    assert result.stdout == ""
    with pytest.raises(ReplayError, match="does not compile"):
        Candidate(broken)


@pytest.mark.parametrize("args", [
    ["--decisions", "missing.jsonl"], ["--data-dir", "missing-dir"],
], ids=["no-file", "no-data-dir"])
def test_unreadable_input_exits_2(tmp_path: Path, args: list[str]) -> None:
    result = _cli("--bundle", REGO, args[0], tmp_path / args[1])
    assert result.returncode == 2
    assert result.stderr.startswith("tollgate replay: ")
    assert str(tmp_path / args[1]) in result.stderr


def test_json_output_is_a_stable_document(no_push: Path) -> None:
    result = _cli("--bundle", no_push, "--decisions", SAMPLE, "--format", "json", "--examples", "3")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert sorted(document) == ["bad_records", "by_agent", "by_tool", "candidate", "changed", "gate",
                                "masked_records", "not_compared", "obligation_changes", "reason_changes",
                                "recorded_revisions", "replayed", "source", "transitions"]
    assert document["gate"] is None  # no --fail-on
    assert document["masked_records"] == {"count": 0, "changed": 0}  # the sample holds no secrets
    assert document["replayed"] == len(SAMPLE.read_text().splitlines())
    assert document["changed"] == 1
    assert document["by_agent"] == {"code-reviewer": {"allow→deny": 1}}
    assert document["by_tool"] == {"github/push_files": {"allow→deny": 1}}
    (transition,) = document["transitions"]
    assert {k: transition[k] for k in ("from", "to", "count")} == {"from": "allow", "to": "deny", "count": 1}
    (example,) = transition["examples"]
    assert sorted(example) == ["after", "agent", "before", "decision_id", "kind", "timestamp", "tool"]
    assert example["before"] == {"decision": "allow", "reasons": [], "obligations": {}}
    assert example["after"] == {"decision": "deny", "reasons": ["tool_not_in_manifest"], "obligations": {}}
    assert document["candidate"]["revision"].startswith("sha256:")
    again = _cli("--bundle", no_push, "--decisions", SAMPLE, "--format", "json", "--examples", "3")
    assert again.stdout == result.stdout  # byte for byte: fit for diffing and caching


@pytest.mark.parametrize(("fail_on", "gate"), [
    ("deny->allow,allow->deny", {"fail_on": ["allow→deny", "deny→allow"], "passed": False,
                                 "tripped": {"allow→deny": 1}}),
    ("deny→allow", {"fail_on": ["deny→allow"], "passed": True, "tripped": {}}),
    ("any", {"fail_on": ["any"], "passed": False, "tripped": {"allow→deny": 1}}),
], ids=["tripped", "passed", "any"])
def test_json_and_markdown_carry_the_gate_verdict(no_push: Path, fail_on: str, gate: dict[str, Any]) -> None:
    document = json.loads(_cli("--bundle", no_push, "--decisions", SAMPLE, "--format", "json",
                               "--fail-on", fail_on).stdout)
    assert document["gate"] == gate
    markdown = _cli("--bundle", no_push, "--decisions", SAMPLE, "--format", "markdown", "--fail-on", fail_on).stdout
    spelled = ",".join(gate["fail_on"])
    verdict = "passed**." if gate["passed"] else "failed**: allow → deny: 1."
    assert f"**Gate `--fail-on {spelled}`: {verdict}" in markdown


def test_markdown_output_is_a_pull_request_comment(live: tuple[Server, dict[str, list[str]]], no_push: Path) -> None:
    result = _cli("--bundle", no_push, "--data-dir", live[0].data_dir, "--format", "markdown", "--examples", "2")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    total = sum(len(ids) for ids in live[1].values())
    assert text.startswith(f"### Tollgate replay: 3 of {total} decisions would change\n")
    assert f"replayed against {total} recorded decisions from `" in text
    assert "| transition | decisions |\n| --- | ---: |\n| allow → deny | 3 |\n" in text
    assert "<details><summary><b>allow → deny</b>: 3</summary>" in text
    assert "By agent: `code-reviewer` 3" in text
    assert "By tool: `github/push_files` 3" in text
    assert "Examples (first 2):" in text
    rows = [line for line in text.splitlines() if line.startswith(f"| `{live[1]['push'][0][:8]}")
            or line.startswith(f"| `{live[1]['push'][1][:8]}")]
    assert rows == [f"| `{i}` | `code-reviewer` | `github/push_files` | — | `tool_not_in_manifest` |"
                    for i in live[1]["push"][:2]]
    assert text.count("<details>") == text.count("</details>") == 1


def test_markdown_names_no_changes_and_keeps_log_text_inert(tmp_path: Path) -> None:
    record = json.loads(SAMPLE.read_text().splitlines()[0])
    record["input"]["principal"]["agent_id"] = "evil|<img src=x>`"
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(record) + "\n")
    report = _replay(read_jsonl(path), REGO)
    assert report.changed == 1  # an unknown agent is denied
    text = render_markdown(report)
    assert "`evil\\|<img src=x>'`" in text  # a code span: no cell break, no HTML, no broken span
    same = render_markdown(_replay(read_jsonl(SAMPLE), REGO))
    assert same.startswith("### Tollgate replay: no decision changes (53 decisions replayed)")


def test_a_bundle_tarball_is_a_candidate(tmp_path: Path, no_push: Path) -> None:
    tarball = tmp_path / "bundle.tar.gz"
    with tarfile.open(tarball, "w:gz") as tar:
        manifest = tmp_path / ".manifest"
        manifest.write_text(json.dumps({"revision": "pr-123", "roots": ["tollgate", "agents", "catalog"]}))
        tar.add(manifest, ".manifest")
        for path in sorted(no_push.rglob("*")):
            if path.is_file() and not path.name.endswith("_test.rego"):
                tar.add(path, str(path.relative_to(no_push)))
    report = _replay(read_jsonl(SAMPLE), tarball)
    assert report.revision == "pr-123"
    assert report.count(("allow", "deny")) == 1


# -- the sample and the README --------------------------------------------------------------------


def test_the_sample_holds_real_records_for_every_agent_kind_and_decision() -> None:
    records = list(read_jsonl(SAMPLE))
    assert not [r for r in records if isinstance(r, BadRecord)]
    good = [r for r in records if isinstance(r, RecordedDecision)]
    assert len(good) >= 30
    assert set(AGENTS) <= {r.agent for r in good}
    assert {r.kind for r in good} == {"tool", "model", "budget"}
    assert {r.decision for r in good} == {"allow", "deny", "require_approval"}
    assert len({r.decision_id for r in good}) == len(good)


def test_a_few_thousand_records_replay_in_seconds(tmp_path: Path) -> None:
    lines = SAMPLE.read_text().splitlines()
    path = tmp_path / "many.jsonl"
    path.write_text("\n".join(lines * (5000 // len(lines) + 1)) + "\n")
    cpu = time.process_time()
    report = _replay(read_jsonl(path, Window(limit=5000)), REGO)
    assert report.replayed == 5000
    # The bound is on CPU seconds (the engine runs in this process), not on wall time: ~3 s on the 2-core CI
    # machine, whatever else it runs at once (the suite runs in parallel).
    assert time.process_time() - cpu < 20


def test_readme_replay_example_is_what_replay_prints(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```console\n(\$ \.venv/bin/tollgate replay .*?)```", readme, re.S)
    assert block, "README shows a tollgate replay example"
    command, *shown = block.group(1).rstrip("\n").splitlines()
    argv = __import__("shlex").split(command[2:])[2:]
    # The example is a pull request taking two tools from the code reviewer; its checkout's rego/ is the candidate.
    candidate = _candidate(tmp_path / "rego", "code-reviewer", "github/push_files", "github/create_pull_request")
    argv[argv.index("--bundle") + 1] = str(candidate)
    result = _cli(*argv)
    assert result.returncode == 1, result.stderr

    def normal(text: str) -> list[str]:
        text = text.replace(str(candidate), "rego")
        text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "ID", text)
        text = re.sub(r"sha256:[0-9a-f]+", "sha256:REV", text)
        return re.sub(r"in \d+\.\d+s\.", "in Ts.", text).splitlines()

    assert normal(result.stdout + result.stderr) == normal("\n".join(shown))


# -- what export writes ---------------------------------------------------------------------------


def _export(data_dir: Path, fmt: str, out: Path) -> Path:
    done = subprocess.run([*TOLLGATE, "logs", "export", "--data-dir", str(data_dir), "--format", fmt, "-o", str(out)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return out


def _seen(report: ReplayReport) -> tuple[Any, ...]:
    return (report.replayed, report.changed, report.bad_records,
            [(t.transition, t.count, [c.record.decision_id for c in t.examples]) for t in report.transitions],
            report.by_agent, report.by_tool, report.recorded_revisions)


def test_a_gzipped_opa_export_replays_as_the_jsonl_export_and_the_log_do(
        live: tuple[Server, dict[str, list[str]]], no_push: Path, tmp_path: Path) -> None:
    server, asked = live
    jsonl = _export(server.data_dir, "jsonl", tmp_path / "decisions.jsonl")
    opa = _export(server.data_dir, "opa", tmp_path / "decisions.opa.gz")
    assert opa.read_bytes()[:2] == b"\x1f\x8b" and b"labels" not in opa.read_bytes()  # compressed, OPA inside
    from_log, from_jsonl, from_opa = (_replay(read_data_dir(server.data_dir), no_push),
                                      _replay(read_jsonl(jsonl), no_push), _replay(read_jsonl(opa), no_push))
    assert _seen(from_opa) == _seen(from_jsonl) == _seen(from_log)
    assert [(t.transition, t.count) for t in from_opa.transitions] == [(("allow", "deny"), 3)]
    assert from_opa.replayed == sum(len(ids) for ids in asked.values())
    cli = _cli("--bundle", no_push, "--decisions", opa, "--format", "json")
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["replayed"] == from_opa.replayed


def test_a_jsonl_exports_checkpoint_lines_are_not_records(tmp_path: Path) -> None:
    line = SAMPLE.read_text().splitlines()[0]
    checkpoint = json.dumps({"type": "tollgate.checkpoint", "seq": 1, "hash": "x", "time": "t", "key_id": "k",
                             "signature": "s"})
    path = tmp_path / "export.jsonl"
    path.write_text(f"{line}\n{checkpoint}\n")
    records = list(read_jsonl(path))
    assert [type(r).__name__ for r in records] == ["RecordedDecision"]


def test_a_cut_gzip_export_is_a_replay_error(tmp_path: Path) -> None:
    import gzip

    data = gzip.compress(SAMPLE.read_bytes())
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ReplayError, match="cannot read"):
        list(read_jsonl(cut))


def test_the_fleets_log_in_the_shared_store_replays_as_the_local_log_does(
        live: tuple[Server, dict[str, list[str]]], no_push: Path, postgres: Any) -> None:
    from tests.conftest import wait_for
    from tests.decisionlog.test_pg_export import _migrate, _shipping
    from tollgate.authoring.replay import read_state_store

    server, asked = live
    url = postgres.database()
    _migrate(url)
    shipping = _shipping(server.data_dir / "decisions.db", url)
    shipping.start()
    try:
        wait_for(lambda: shipping.exporters[0].status.cursor == sum(len(ids) for ids in asked.values()))
    finally:
        shipping.stop(1)
    from_store = _replay(read_state_store(url), no_push)
    assert _seen(from_store) == _seen(_replay(read_data_dir(server.data_dir), no_push))
    cli = _cli("--bundle", no_push, "--state-store", url, "--fail-on", "allow→deny")
    assert cli.returncode == 1, cli.stderr
    assert "allow → deny" in cli.stdout or "allow→deny" in cli.stdout, cli.stdout
    refused = _cli("--bundle", no_push, "--state-store", "sqlite:///nowhere")
    assert refused.returncode == 2 and "postgresql://" in refused.stderr
