"""`tollgate hook claude-code` on PostToolUse and PostToolUseFailure, against a real sidecar on each store: what
ran goes on the session's timeline, an `ask` the keyboard let run leaves no pending approval behind, only the
caller that asked may report, and the hook never blocks the agent."""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import ROOT, TOLLGATE, Server, start_server, wait_for
from tests.pki import TestCA
from tollgate.client import TLS, Client, Principal, TollgateError, tool_request
from tollgate.v1 import approval_pb2, approval_pb2_grpc
from tollgate.v1 import authorization_pb2 as pb
from tollgate.v1 import authorization_pb2_grpc as pb_grpc
from tollgate_cli._hook import read_event

CONFIG = {"approver_groups": {"platform-leads": ["paula"]}}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A sidecar, and the `tollgate logs timeline` flags that read its session with its results."""
    root = tmp_path_factory.mktemp(f"results-{request.param}")
    if request.param == "sqlite":
        server = start_server(root / "data", config=CONFIG)
        flags = ["--data-dir", str(root / "data")]
    else:
        url = request.getfixturevalue("postgres").database()
        server = start_server(root / "data", config={**CONFIG, "state_store": url, "state_store_migrate": True})
        flags = ["--state-store", url]  # the fleet's copy of the records, and the results beside them
    yield server, " ".join(flags)
    server.terminate()


def event(name: str, tool_name: str, tool_input: dict[str, Any], tool_use_id: str, session: str,
          **extra: Any) -> dict[str, Any]:
    """A hook input as Claude Code sends it on stdin."""
    return {"session_id": session, "transcript_path": f"/home/dev/.claude/projects/app/{session}.jsonl",
            "cwd": "/workspace", "permission_mode": "default", "hook_event_name": name, "tool_name": tool_name,
            "tool_input": tool_input, "tool_use_id": tool_use_id, **extra}


def hook(server: str, payload: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([*TOLLGATE, "hook", "claude-code", "--server", server, *extra],
                            input=json.dumps(payload), capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result


def ask(server: str, tool_name: str, tool_input: dict[str, Any], tool_use_id: str, session: str,
        *extra: str) -> dict[str, Any]:
    answer: dict[str, Any] = json.loads(hook(server, event("PreToolUse", tool_name, tool_input, tool_use_id,
                                                           session), *extra).stdout)["hookSpecificOutput"]
    return answer


def report(server: str, tool_name: str, tool_input: dict[str, Any], tool_use_id: str, session: str,
           *extra: str, name: str = "PostToolUse", **fields: Any) -> subprocess.CompletedProcess[str]:
    """Run the hook on a PostToolUse(Failure): it prints nothing, whatever happens."""
    done = hook(server, event(name, tool_name, tool_input, tool_use_id, session, **fields), *extra)
    assert done.stdout == "", done.stdout
    return done


def timeline(flags: str, session: str) -> tuple[list[str], dict[str, Any]]:
    def logs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*TOLLGATE, "logs", "timeline", session, *flags.split(), *args], capture_output=True,
                              text=True, timeout=60, cwd=ROOT)

    text, doc = logs(), logs("--format", "json")
    assert text.returncode == 0 and doc.returncode == 0, text.stderr + doc.stderr
    return text.stdout.splitlines(), json.loads(doc.stdout)


def test_post_tool_use_puts_what_ran_on_the_timeline(store: tuple[Server, str]) -> None:
    server, flags = store
    session = "timeline-session"
    read = {"file_path": "/workspace/src/app.py"}
    status = {"command": "git status", "description": "Show working tree status"}
    assert ask(server.address, "Read", read, "toolu_read", session)["permissionDecision"] == "allow"
    assert ask(server.address, "Bash", status, "toolu_git", session)["permissionDecision"] == "allow"
    assert ask(server.address, "Grep", {"pattern": "x", "path": "/workspace"}, "toolu_grep",
               session)["permissionDecision"] == "allow"
    outside = ask(server.address, "Read", {"file_path": "/etc/shadow"}, "toolu_denied", session)
    assert outside["permissionDecision"] == "deny"
    # The event's own duration when it carries one; the tool's response is read for its class, never kept.
    report(server.address, "Read", read, "toolu_read", session, duration_ms=1234,
           tool_response={"type": "text", "file": {"content": "API_KEY=sk-live-secret"}})
    report(server.address, "Bash", status, "toolu_git", session, name="PostToolUseFailure",
           error="Command exited with non-zero status code 128", is_interrupt=False)

    def shown() -> bool:
        return sum("ran: " in line for line in timeline(flags, session)[0]) == 2

    wait_for(shown, timeout=30, what="both results on the timeline")  # the fleet's copy is shipped in batches
    text, doc = timeline(flags, session)
    steps = {s["action"].split()[0]: s for s in doc["steps"] if s["decision"] == "allow"}
    assert steps["Read"]["tool_result"] == {"reported": True, "result": "ok", "duration_ms": 1234,
                                            "duration_measured": False, "approval_closed": ""}
    assert steps["Bash"]["tool_result"]["result"] == "error" and steps["Bash"]["tool_result"]["duration_measured"]
    assert steps["Grep"]["tool_result"] == {"reported": False}  # allowed, nothing reported: said, not an error
    denied = [s for s in doc["steps"] if s["decision"] == "deny"]
    assert denied and "tool_result" not in denied[0]  # a denied call did not run
    assert "    ran: ok in 1.2 s" in text
    assert any(re.fullmatch(r"    ran: error \d+\.\d s after the decision", line) for line in text), text
    assert "    no result reported" in text
    assert "sk-live-secret" not in json.dumps(doc) and "sk-live-secret" not in server.stderr


def test_an_ask_let_run_at_the_keyboard_leaves_no_pending_approval_and_can_never_allow(
        store: tuple[Server, str]) -> None:
    server, flags = store
    session, command = "ask-session", {"command": "make deploy"}
    answer = ask(server.address, "Bash", command, "toolu_deploy", session)
    assert answer["permissionDecision"] == "ask"
    assert "if you let the call run, the PostToolUse hook closes it" in answer["permissionDecisionReason"]
    approval_id = re.search(r"approval (apr_\S+) is needed", answer["permissionDecisionReason"]).group(1)  # type: ignore[union-attr]
    # A harness waiting on it sees it close: its stream has said "pending" before the result is reported.
    waiting = pb_grpc.AuthorizationServiceStub(server.channel).WaitForApproval(
        pb.WaitForApprovalRequest(approval_id=approval_id), timeout=40)
    try:
        assert next(waiting).status == "pending"
        report(server.address, "Bash", command, "toolu_deploy", session, tool_response={"stdout": "deployed"})
        closed = next(waiting)
    finally:
        waiting.cancel()
    assert closed.status == "expired", closed
    assert closed.reason == "answered at the keyboard in Claude Code; not decided in Tollgate"
    stub = approval_pb2_grpc.ApprovalServiceStub(server.channel)
    approval = stub.GetApproval(approval_pb2.GetApprovalRequest(id=approval_id), timeout=10,
                                metadata=server.admin_metadata)
    assert approval.status == "expired"
    pending = stub.ListApprovals(approval_pb2.ListApprovalsRequest(status="pending"), timeout=10,
                                 metadata=server.admin_metadata)
    assert approval_id not in [a.id for a in pending.approvals]
    listed = subprocess.run([*TOLLGATE, "approvals", "list", "--server", server.address, "--token",
                             server.admin_metadata[0][1].removeprefix("Bearer "), "--status", "pending", "--json"],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and approval_id not in listed.stdout, listed.stdout + listed.stderr
    # Presenting it is a DENY: nobody can use a closed approval to allow anything.
    call = read_event(json.dumps(event("PreToolUse", "Bash", command, "toolu_again", session)))
    presented = tool_request(Principal("claude-code", session_id=session), call.server, call.name, call.arguments,
                             resources=call.resources, context=call.context)
    presented.approval_id = approval_id
    again = server.authorize(presented)
    assert again.decision == pb.DECISION_DENY and [r.code for r in again.reasons] == ["approval_expired"]
    text, _ = timeline(flags, session)
    assert any(line.startswith("    ran: ok ") and f"closed approval {approval_id}" in line for line in text), text


def test_a_refused_ask_sends_no_post_tool_use_and_its_approval_stays_pending(store: tuple[Server, str]) -> None:
    server, _ = store
    answer = ask(server.address, "Bash", {"command": "make publish"}, "toolu_refused", "refused-session")
    approval_id = re.search(r"approval (apr_\S+) is needed", answer["permissionDecisionReason"]).group(1)  # type: ignore[union-attr]
    stub = approval_pb2_grpc.ApprovalServiceStub(server.channel)
    assert stub.GetApproval(approval_pb2.GetApprovalRequest(id=approval_id), timeout=10,
                            metadata=server.admin_metadata).status == "pending"


@pytest.mark.parametrize(("request_fields", "code", "message"), [
    ({"result": pb.TOOL_RESULT_OK}, "INVALID_ARGUMENT", "decision_id: required"),
    ({"decision_id": "d" * 513, "result": pb.TOOL_RESULT_OK}, "INVALID_ARGUMENT", "decision_id: at most 512"),
    ({"request_id": "claude-code:\x1b[2J", "result": pb.TOOL_RESULT_OK}, "INVALID_ARGUMENT",
     "request_id: control characters"),
    ({"request_id": "claude-code:toolu_read"}, "INVALID_ARGUMENT", "result: required"),
    ({"request_id": "claude-code:toolu_read", "result": pb.TOOL_RESULT_OK, "duration_ms": -1}, "INVALID_ARGUMENT",
     "duration_ms: must be from 0"),
    ({"request_id": "claude-code:toolu_read", "result": pb.TOOL_RESULT_OK, "duration_ms": 10**12},
     "INVALID_ARGUMENT", "duration_ms: must be from 0"),
    ({"request_id": "claude-code:toolu_never", "result": pb.TOOL_RESULT_OK}, "NOT_FOUND", "no decision"),
    ({"request_id": "claude-code:toolu_denied", "result": pb.TOOL_RESULT_OK}, "FAILED_PRECONDITION",
     "answered deny: it did not run"),
    ({"request_id": "claude-code:toolu_read", "result": pb.TOOL_RESULT_ERROR}, "ALREADY_EXISTS",
     "already has the result ok"),
], ids=["no-id", "long-id", "escape", "no-result", "negative", "too-long", "unknown", "denied", "different"])
def test_invalid_or_conflicting_reports_are_refused_naming_the_field(
        store: tuple[Server, str], request_fields: dict[str, Any], code: str, message: str) -> None:
    server, _ = store
    # The decisions the requests name: one allowed (its result already reported, ok), one denied.
    ask(server.address, "Read", {"file_path": "/workspace/x.py"}, "toolu_read", "refusals")
    report(server.address, "Read", {"file_path": "/workspace/x.py"}, "toolu_read", "refusals", duration_ms=5)
    ask(server.address, "Read", {"file_path": "/etc/passwd"}, "toolu_denied", "refusals")
    with pytest.raises(grpc.RpcError) as refused:
        server.stub.ReportToolResult(pb.ReportToolResultRequest(**request_fields), timeout=10)
    assert refused.value.code().name == code, refused.value.details()
    assert message in (refused.value.details() or "")


def test_the_same_result_again_is_answered_as_stored(store: tuple[Server, str]) -> None:
    server, _ = store
    ask(server.address, "Read", {"file_path": "/workspace/y.py"}, "toolu_twice", "twice")
    request = pb.ReportToolResultRequest(request_id="claude-code:toolu_twice", result=pb.TOOL_RESULT_OK,
                                         duration_ms=40)
    first = server.stub.ReportToolResult(request, timeout=10)
    again = server.stub.ReportToolResult(request, timeout=10)
    assert not first.unchanged and again.unchanged and again.reported_at == first.reported_at
    assert (again.duration_ms, again.duration_measured, again.reported_by) == (40, False, "")
    by_id = server.stub.ReportToolResult(pb.ReportToolResultRequest(decision_id=first.decision_id,
                                                                    result=pb.TOOL_RESULT_OK, duration_ms=40),
                                         timeout=10)
    assert by_id.unchanged


@pytest.mark.parametrize(("fields", "result"), [
    ({"tool_response": {"stdout": "", "stderr": "", "interrupted": True}}, "interrupted"),
    ({"tool_response": {"content": [], "isError": True}}, "error"),
    ({"tool_response": "plain text"}, "ok"),
    ({"name": "PostToolUseFailure", "error": "Interrupted by user", "is_interrupt": True}, "interrupted"),
], ids=["bash-interrupted", "mcp-error", "text", "failure-interrupt"])
def test_the_result_class_comes_from_the_event(store: tuple[Server, str], fields: dict[str, Any],
                                               result: str) -> None:
    server, _ = store
    tool_use_id = f"toolu_class_{result}_{len(json.dumps(fields))}"
    ask(server.address, "Bash", {"command": "git status"}, tool_use_id, "classes")
    report(server.address, "Bash", {"command": "git status"}, tool_use_id, "classes", **fields)
    again = server.stub.ReportToolResult(pb.ReportToolResultRequest(
        request_id=f"claude-code:{tool_use_id}", result=pb.ToolResult.Value(f"TOOL_RESULT_{result.upper()}")),
        timeout=10)
    assert again.unchanged  # the hook reported exactly this class


def test_the_hook_never_blocks_the_agent() -> None:
    payload = event("PostToolUse", "Read", {"file_path": "/workspace/a.py"}, "toolu_down", "down")
    started = time.monotonic()
    down = report("127.0.0.1:1", "Read", {"file_path": "/workspace/a.py"}, "toolu_down", "down", "--timeout", "30")
    assert time.monotonic() - started < 15  # the report's own bound (2 s) plus the interpreter's start
    assert "the tool result was not reported" in down.stderr
    no_id = hook("127.0.0.1:1", {k: v for k, v in payload.items() if k != "tool_use_id"})
    assert no_id.stdout == "" and "tool_use_id: required" in no_id.stderr


def test_only_the_caller_that_asked_may_report(tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    cert, alice, bob = ca.server(), ca.client("spiffe://acme/claude/alice"), ca.client("spiffe://acme/claude/bob")
    server = start_server(tmp_path / "data", config=CONFIG, extra=[
        "--tls-cert", str(cert.cert), "--tls-key", str(cert.key), "--tls-client-ca", str(ca.cert),
        "--tls-require-client-cert"],
        credentials=grpc.ssl_channel_credentials(ca.cert.read_bytes(), *alice.pair()))
    try:
        as_alice = ("--ca", str(ca.cert), "--cert", str(alice.cert), "--key", str(alice.key))
        as_bob = ("--ca", str(ca.cert), "--cert", str(bob.cert), "--key", str(bob.key))
        read = {"file_path": "/workspace/a.py"}
        assert ask(server.address, "Read", read, "toolu_alice", "mine", *as_alice)["permissionDecision"] == "allow"
        refused = report(server.address, "Read", read, "toolu_alice", "mine", *as_bob, duration_ms=1)
        assert "asked by another caller" in refused.stderr, refused.stderr
        with Client(server.address, timeout=10, tls=TLS(root_ca=str(ca.cert), client_cert=str(bob.cert),
                                                        client_key=str(bob.key))) as client:
            with pytest.raises(TollgateError, match="asked by another caller"):
                client.report_tool_result("ok", request_id="claude-code:toolu_alice", duration_ms=1)
        report(server.address, "Read", read, "toolu_alice", "mine", *as_alice, duration_ms=7)
        _, doc = timeline(f"--data-dir {tmp_path / 'data'}", "mine")
        assert doc["steps"][0]["tool_result"]["duration_ms"] == 7  # alice's, not the refused ones'
    finally:
        server.terminate()


def test_the_readme_registers_the_same_hook_for_both_post_events_within_a_short_timeout() -> None:
    from tests.readme import readme_section

    section = readme_section("Claude Code")
    settings = json.loads(re.search(r"```json\n(.*?)```", section, re.S).group(1))  # type: ignore[union-attr]
    pre = settings["hooks"]["PreToolUse"][0]["hooks"][0]["command"]
    for name in ("PostToolUse", "PostToolUseFailure"):
        (entry,) = settings["hooks"][name]
        assert entry["matcher"] == "*" and entry["hooks"][0]["command"] == pre
        assert entry["hooks"][0]["timeout"] <= 5  # the hook bounds its own report to 2 s
