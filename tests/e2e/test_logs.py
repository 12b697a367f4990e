"""`tollgate logs` against a live server's data directory: a run with an approval and a reported spend, in order."""

from __future__ import annotations

import gzip
import json
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, TOLLGATE, Server, start_server, tool_request
from tests.people import as_person
from tests.readme import readme_section
from tollgate.v1 import approval_pb2, approval_pb2_grpc
from tollgate.v1 import authorization_pb2 as pb

pytestmark = pytest.mark.clock  # times shown and windows read on a server's clock

GROUPS = {"release-managers": ["rita"], "sre-oncall": ["sam"]}
SESSION = "run-42"


def logs(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOLLGATE, "logs", *args, "--data-dir", str(server.data_dir)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, dict[str, Any]]]:
    """A live server and one run of release-bot: read, merge (approval opened, approved, used), a model call
    whose usage is reported; plus a decision of another session."""
    root = tmp_path_factory.mktemp("logs")
    server = start_server(root / "data", config={"approver_groups": GROUPS})
    try:
        def merge(approval_id: str = "") -> pb.AuthorizeRequest:
            request = tool_request("release-bot", "github", "merge_pull_request",
                                   {"owner": "acme", "repo": "app", "pullNumber": 7}, session_id=SESSION)
            request.approval_id = approval_id
            return request

        steps: dict[str, Any] = {}
        steps["read"] = server.authorize(tool_request("release-bot", "github", "get_pull_request",
                                                      {"owner": "acme", "repo": "app", "pullNumber": 7},
                                                      session_id=SESSION))
        steps["asked"] = server.authorize(merge())
        assert steps["asked"].decision == pb.DECISION_REQUIRE_APPROVAL
        approvals = approval_pb2_grpc.ApprovalServiceStub(server.channel)
        approvals.Decide(approval_pb2.DecideRequest(id=steps["asked"].approval_id, approve=True,
                                                    reason="release 1.2"),
                         timeout=10, metadata=as_person(server, "rita"))
        steps["merged"] = server.authorize(merge(steps["asked"].approval_id))
        assert steps["merged"].decision == pb.DECISION_ALLOW
        steps["model"] = server.authorize(pb.AuthorizeRequest(
            principal=pb.Principal(agent_id="release-bot", session_id=SESSION),
            model=pb.ModelCall(provider="anthropic", model="claude-haiku-4-5", input_tokens=1000,
                               max_output_tokens=2000)))
        assert steps["model"].decision == pb.DECISION_ALLOW and steps["model"].reservation_id
        server.stub.ReportUsage(pb.ReportUsageRequest(reservation_id=steps["model"].reservation_id, amount=0.002,
                                                      unit="usd"), timeout=10)
        server.authorize(tool_request("release-bot", "github", "get_pull_request", session_id="another-run"))
        yield server, steps
    finally:
        server.terminate()


def test_timeline_shows_the_run_in_order_with_its_approval_and_spend(run: tuple[Server, dict[str, Any]]) -> None:
    server, steps = run
    result = logs(server, "timeline", SESSION, "--format", "json")  # the server is live: read-only beside it
    assert result.returncode == 0, result.stderr
    line = json.loads(result.stdout)
    assert line["session"] == SESSION and "state_note" not in line
    assert [s["decision_id"] for s in line["steps"]] == [
        steps[k].decision_id for k in ("read", "asked", "merged", "model")]
    read, asked, merged, model = line["steps"]
    assert (read["decision"], read["action"]) == (
        "allow", "github/get_pull_request owner=acme, pullNumber=7, repo=app")
    approval_id = steps["asked"].approval_id
    assert asked["decision"] == "require_approval"
    assert asked["approval"] == {
        "event": "opened", "id": approval_id, "status_seen": "", "status_now": "used",
        "approvers": ["group:release-managers", "group:sre-oncall"], "decided_by": "rita",
        "decided_at": asked["approval"]["decided_at"], "reason": "release 1.2"}
    assert merged["decision"] == "allow" and merged["reasons"] == ["approved"]
    assert merged["approval"]["event"] == "presented" and merged["approval"]["status_seen"] == "approved"
    assert model["action"].startswith("anthropic/claude-haiku-4-5 (1000 input tokens)")
    spend = model["spend"]
    assert spend["reservation_id"] == steps["model"].reservation_id
    units = {u["unit"]: u for u in spend["units"]}
    assert units["usd"]["status"] == "committed" and units["usd"]["committed"] == pytest.approx(0.002)
    assert units["usd"]["reserved"] > 0.002


def test_timeline_text_reads_as_the_story_of_the_run(run: tuple[Server, dict[str, Any]]) -> None:
    server, steps = run
    result = logs(server, "timeline", SESSION)
    assert result.returncode == 0, result.stderr
    text = result.stdout.splitlines()
    approval_id = steps["asked"].approval_id
    assert text[0].startswith(f"session {SESSION}: 4 decision(s), ")
    assert text[1].endswith("tool github/get_pull_request owner=acme, pullNumber=7, repo=app  ALLOW")
    assert text[2].endswith("tool github/merge_pull_request owner=acme, pullNumber=7, repo=app  REQUIRE_APPROVAL  "
                            "[destructive_action]")
    assert text[3] == (f"    approval {approval_id} opened for group:release-managers, group:sre-oncall; "
                       "now used")
    assert "ALLOW  [approved]" in text[4]
    assert text[5].startswith(f"    approval {approval_id} presented: the policy saw approved; decided by rita at ")
    assert text[5].endswith("(release 1.2); used by this decision")
    assert "model anthropic/claude-haiku-4-5 (1000 input tokens)  ALLOW" in text[6]
    assert text[7].startswith(f"    spend {steps['model'].reservation_id}: ")
    assert "usd reserved" in text[7] and "committed 0.002 (committed)" in text[7]


def test_verify_and_query_a_live_servers_log(run: tuple[Server, dict[str, Any]]) -> None:
    server, steps = run
    verified = logs(server, "verify")
    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.startswith("verified 5 records, seq 1..5, head hash ")
    found = logs(server, "query", "--session", SESSION, "--decision", "allow", "--format", "jsonl")
    assert found.returncode == 0, found.stderr
    assert [json.loads(line)["decision_id"] for line in found.stdout.splitlines()] == [
        steps[k].decision_id for k in ("read", "merged", "model")]
    by_id = logs(server, "query", "--decision-id", steps["asked"].decision_id)
    assert by_id.returncode == 0 and steps["asked"].decision_id in by_id.stdout
    assert "github/merge_pull_request" in by_id.stdout


def test_the_readme_section_runs_as_shown(run: tuple[Server, dict[str, Any]], tmp_path: Path) -> None:
    """"The decision log" in README.md, command by command, on this run's data directory."""
    server, _ = run
    ran = []
    for block in re.findall(r"```console\n(.*?)```", readme_section("The decision log"), re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("$ .venv/bin/tollgate logs "):
                continue
            argv = [str(server.data_dir) if a == ".tollgate" else a for a in shlex.split(line[2:])]
            result = subprocess.run([*TOLLGATE, *argv[1:]], cwd=tmp_path, capture_output=True, text=True, timeout=60)
            assert result.returncode == 0, f"{line}\n{result.stdout}{result.stderr}"
            shown = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("$ ") else ""
            assert result.stdout.split()[:2] == shown.split()[:2], f"{line}\n{result.stdout}"
            ran.append(argv[2])
    assert ran == ["verify", "query", "timeline", "export"]
    events = [json.loads(line) for line in gzip.decompress((tmp_path / "decisions.jsonl.gz").read_bytes()).splitlines()]
    assert [e["tollgate"]["seq"] for e in events] == [1, 2, 3, 4, 5]
