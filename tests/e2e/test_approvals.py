"""Approvals on real servers: require_approval opens one; a re-ask with it is allowed once, for that request only."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.conftest import ADMIN_TOKEN, REGO, TOLLGATE, Server, start_server, tool_request, write_policy
from tests.people import People
from tests.readme import mask_dates, readme_section
from tollgate.authoring.replay import Candidate, read_data_dir, replay
from tollgate.v1 import admin_pb2, admin_pb2_grpc, approval_pb2, approval_pb2_grpc
from tollgate.v1 import authorization_pb2 as pb
from tollgate.v1 import authorization_pb2_grpc as pb_grpc

pytestmark = pytest.mark.clock

# release-bot is in a group of approvers on purpose: an agent still never approves its own request.
GROUPS = {"release-managers": ["rita", "release-bot"], "sre-oncall": ["sam"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("approvals")
    started = start_server(root / "data", config={"approver_groups": GROUPS})
    yield started
    started.terminate()


class ApproverClient:
    """ApprovalService as approvers use it: each person decides with their own token (the approver is the token's
    person); reading is done with the admin token."""

    def __init__(self, server: Server) -> None:
        self.stub = approval_pb2_grpc.ApprovalServiceStub(server.channel)
        self.metadata = server.admin_metadata
        self.people = People(server.data_dir)

    def decide(self, approval_id: str, *, approve: bool, by: str, reason: str) -> approval_pb2.Approval:
        decided: approval_pb2.Approval = self.stub.Decide(
            approval_pb2.DecideRequest(id=approval_id, approve=approve, reason=reason), timeout=10,
            metadata=self.people.metadata(by))
        return decided

    def get(self, approval_id: str) -> approval_pb2.Approval:
        found: approval_pb2.Approval = self.stub.GetApproval(approval_pb2.GetApprovalRequest(id=approval_id),
                                                             timeout=10, metadata=self.metadata)
        return found


@pytest.fixture(scope="module")
def approvals(server: Server) -> ApproverClient:
    return ApproverClient(server)


def merge(pr: int = 7, session: str = "s-1", approval_id: str = "") -> pb.AuthorizeRequest:
    request = tool_request("release-bot", "github", "merge_pull_request", {"owner": "acme", "repo": "app",
                                                                           "pullNumber": pr}, session_id=session)
    request.approval_id = approval_id
    return request


def codes(response: pb.AuthorizeResponse) -> list[str]:
    return [r.code for r in response.reasons]


def record(server: Server, decision_id: str) -> dict[str, Any]:
    with sqlite3.connect(server.data_dir / "decisions.db") as db:
        row = db.execute("SELECT record FROM decisions WHERE decision_id = ?", (decision_id,)).fetchone()
    found: dict[str, Any] = json.loads(row[0])
    return found


def ask_for_approval(server: Server, **kwargs: Any) -> pb.AuthorizeResponse:
    response = server.authorize(merge(**kwargs))
    assert response.decision == pb.DECISION_REQUIRE_APPROVAL, response
    assert response.approval_id.startswith("apr_")
    return response


def test_approved_request_is_allowed_exactly_once_and_every_step_is_linked(server: Server,
                                                                           approvals: ApproverClient) -> None:
    asked = ask_for_approval(server, pr=1)
    assert ask_for_approval(server, pr=1).approval_id == asked.approval_id  # the pending one is reused
    approval = approvals.get(asked.approval_id)
    assert list(approval.approvers) == ["group:release-managers", "group:sre-oncall"]
    assert approval.opened_by == asked.decision_id

    pending = server.authorize(merge(pr=1, approval_id=asked.approval_id))
    assert pending.decision == pb.DECISION_REQUIRE_APPROVAL and "approval_pending" in codes(pending)

    approvals.decide(asked.approval_id, approve=True, by="rita", reason="release 1.2")
    allowed = server.authorize(merge(pr=1, approval_id=asked.approval_id))
    assert allowed.decision == pb.DECISION_ALLOW and codes(allowed) == ["approved"]
    again = server.authorize(merge(pr=1, approval_id=asked.approval_id))
    assert again.decision == pb.DECISION_DENY and codes(again) == ["approval_used"]

    used = approvals.get(asked.approval_id)
    assert used.status == "used" and used.used_by == allowed.decision_id
    for response, status in ((asked, ""), (pending, "pending"), (allowed, "approved"), (again, "used")):
        logged = record(server, response.decision_id)
        assert logged["approval_id"] == asked.approval_id
        assert logged["approval_status"] == status
        assert logged["request_digest"] == used.request_digest
        read_back = server.get_decision(response.decision_id)
        assert (read_back.approval_id, read_back.approval_status) == (asked.approval_id, status)
        assert logged["input"]["state"]["approval"] == (
            None if not status else {"id": asked.approval_id, "status": status,
                                     "approver": "rita" if status in ("approved", "used") else ""})


def test_a_re_ask_with_the_approval_under_the_same_request_id_is_decided_anew(server: Server,
                                                                             approvals: ApproverClient) -> None:
    first = merge(pr=2)
    first.request_id = "call-2"
    asked = server.authorize(first)
    assert asked.decision == pb.DECISION_REQUIRE_APPROVAL
    assert server.authorize(first).decision_id == asked.decision_id  # a plain retry: the logged answer
    approvals.decide(asked.approval_id, approve=True, by="rita", reason="ok")
    again = merge(pr=2, approval_id=asked.approval_id)
    again.request_id = "call-2"
    allowed = server.authorize(again)
    assert allowed.decision == pb.DECISION_ALLOW
    assert server.get_decision(allowed.decision_id).previous_decision_id == asked.decision_id
    # Retrying the allowed re-ask is answered from the log (the same decision), not as a second use.
    assert server.authorize(again).decision_id == allowed.decision_id


def test_an_approval_for_other_arguments_is_a_mismatch(server: Server, approvals: ApproverClient) -> None:
    asked = ask_for_approval(server, pr=2)
    approvals.decide(asked.approval_id, approve=True, by="sam", reason="ok")
    other = server.authorize(merge(pr=3, approval_id=asked.approval_id))
    assert other.decision == pb.DECISION_DENY and codes(other) == ["approval_mismatch"]
    # The mismatch did not use it up: the request it was granted for still gets its one ALLOW.
    assert server.authorize(merge(pr=2, approval_id=asked.approval_id)).decision == pb.DECISION_ALLOW


def test_an_unknown_approval_id_is_a_mismatch(server: Server) -> None:
    response = server.authorize(merge(pr=4, approval_id="apr_made-up"))
    assert response.decision == pb.DECISION_DENY and codes(response) == ["approval_mismatch"]


def test_a_denied_approval_is_denied(server: Server, approvals: ApproverClient) -> None:
    asked = ask_for_approval(server, pr=5)
    approvals.decide(asked.approval_id, approve=False, by="rita", reason="not during the freeze")
    response = server.authorize(merge(pr=5, approval_id=asked.approval_id))
    assert response.decision == pb.DECISION_DENY and codes(response) == ["approval_denied"]


def test_concurrent_re_asks_with_one_approval_get_exactly_one_allow(server: Server, approvals: ApproverClient) -> None:
    asked = ask_for_approval(server, pr=6)
    approvals.decide(asked.approval_id, approve=True, by="sam", reason="ok")
    with ThreadPoolExecutor(max_workers=16) as pool:
        answers = list(pool.map(lambda _: server.authorize(merge(pr=6, approval_id=asked.approval_id)), range(32)))
    assert sum(a.decision == pb.DECISION_ALLOW for a in answers) == 1
    assert all(codes(a) == ["approval_used"] for a in answers if a.decision != pb.DECISION_ALLOW)


def test_an_approved_request_a_kill_switch_names_is_denied_and_the_approval_kept(server: Server,
                                                                                 approvals: ApproverClient) -> None:
    asked = ask_for_approval(server, pr=8, session="s-killed")
    approvals.decide(asked.approval_id, approve=True, by="rita", reason="ok")
    admin = admin_pb2_grpc.AdminServiceStub(server.channel)
    admin.Kill(admin_pb2.KillRequest(scope="session", value="s-killed", reason="incident", by="ops"), timeout=10,
               metadata=server.admin_metadata)
    try:
        killed = server.authorize(merge(pr=8, session="s-killed", approval_id=asked.approval_id))
        assert killed.decision == pb.DECISION_DENY and "killed" in codes(killed)
    finally:
        admin.Revive(admin_pb2.ReviveRequest(scope="session", value="s-killed", by="ops"), timeout=10,
                     metadata=server.admin_metadata)
    revived = server.authorize(merge(pr=8, session="s-killed", approval_id=asked.approval_id))
    assert revived.decision == pb.DECISION_ALLOW


def test_an_expired_approval_is_denied(tmp_path: Path) -> None:
    bundle = tmp_path / "rego"
    shutil.copytree(REGO, bundle)
    manifest = bundle / "agents/release-bot/data.yaml"
    manifest.write_text(manifest.read_text().replace("ttl_seconds: 1800", "ttl_seconds: 60"))
    server = start_server(tmp_path / "data", bundle=bundle, config={"approver_groups": GROUPS})
    try:
        asked = ask_for_approval(server, pr=9)
        ApproverClient(server).decide(asked.approval_id, approve=True, by="rita", reason="ok")
        server.advance_clock(61)  # past the approval's 60 s on the server's clock, without waiting for them
        expired = server.authorize(merge(pr=9, approval_id=asked.approval_id))
        assert expired.decision == pb.DECISION_DENY and codes(expired) == ["approval_expired"]
        assert record(server, expired.decision_id)["approval_status"] == "expired"
    finally:
        server.terminate()


REFUSED = [
    pytest.param("release-bot", "PERMISSION_DENIED", "release-bot cannot decide a request made by or for itself",
                 id="the-agent-itself"),
    pytest.param("bob", "PERMISSION_DENIED", "bob cannot decide a request made by or for itself (principal user)",
                 id="the-user-it-acts-for"),
    pytest.param("mallory", "PERMISSION_DENIED", "mallory is not an approver of", id="not-an-approver"),
]


@pytest.mark.parametrize(("by", "code", "message"), REFUSED)
def test_who_may_not_decide(server: Server, approvals: ApproverClient, by: str, code: str, message: str) -> None:
    asked = server.authorize(merge(pr=10, session=f"s-refused-{by}"))
    asked_for_bob = server.authorize(
        tool_request("release-bot", "github", "merge_pull_request", {"pullNumber": 10}, session_id="s-bob",
                     user="bob")) if by == "bob" else asked
    with pytest.raises(grpc.RpcError) as refused:
        approvals.decide(asked_for_bob.approval_id, approve=True, by=by, reason="mine")
    assert refused.value.code().name == code and message in str(refused.value.details())
    assert approvals.get(asked_for_bob.approval_id).status == "pending"


def test_a_member_of_either_named_group_may_decide_and_only_once(server: Server, approvals: ApproverClient) -> None:
    asked = ask_for_approval(server, pr=11)
    assert approvals.decide(asked.approval_id, approve=True, by="sam", reason="on call").decided_by == "sam"
    with pytest.raises(grpc.RpcError) as again:
        approvals.decide(asked.approval_id, approve=False, by="rita", reason="too late")
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_list_filters_by_approver_agent_session_and_status(server: Server, approvals: ApproverClient) -> None:
    asked = ask_for_approval(server, pr=12, session="s-list")
    listed = approvals.stub.ListApprovals(approval_pb2.ListApprovalsRequest(
        approver="rita", agent_id="release-bot", session_id="s-list", status="pending"), timeout=10,
        metadata=approvals.metadata)
    assert [a.id for a in listed.approvals] == [asked.approval_id]
    assert listed.approvals[0].action["name"] == "merge_pull_request"
    nobody = approvals.stub.ListApprovals(approval_pb2.ListApprovalsRequest(approver="mallory"), timeout=10,
                                          metadata=approvals.metadata)
    assert not nobody.approvals


def test_watch_streams_pending_then_approved(server: Server, approvals: ApproverClient) -> None:
    asked = ask_for_approval(server, pr=13)
    stream = approvals.stub.WatchApproval(approval_pb2.GetApprovalRequest(id=asked.approval_id), timeout=20,
                                          metadata=approvals.metadata)
    first = next(stream)
    assert first.status == "pending"
    approvals.decide(asked.approval_id, approve=True, by="rita", reason="ok")
    assert [a.status for a in stream] == ["approved"]


def test_a_harness_waits_for_the_decision_without_admin_credentials(server: Server,
                                                                   approvals: ApproverClient) -> None:
    asked = ask_for_approval(server, pr=15)
    stub = pb_grpc.AuthorizationServiceStub(server.channel)
    stream = stub.WaitForApproval(pb.WaitForApprovalRequest(approval_id=asked.approval_id), timeout=20)
    first = next(stream)
    assert (first.id, first.status, first.decided_by) == (asked.approval_id, "pending", "")
    assert first.expires_at.seconds > server.clock_range()[1].timestamp()  # in the future on the server's clock
    approvals.decide(asked.approval_id, approve=False, by="sam", reason="not during the freeze")
    assert [(s.status, s.decided_by, s.reason) for s in stream] == [("denied", "sam", "not during the freeze")]
    # A decided approval answers at once, and the stream ends.
    assert [s.status for s in stub.WaitForApproval(pb.WaitForApprovalRequest(approval_id=asked.approval_id),
                                                   timeout=5)] == ["denied"]


@pytest.mark.parametrize(("approval_id", "code"), [("", grpc.StatusCode.INVALID_ARGUMENT),
                                                   ("apr_nope", grpc.StatusCode.NOT_FOUND)], ids=["empty", "unknown"])
def test_waiting_for_no_approval_is_refused(server: Server, approval_id: str, code: grpc.StatusCode) -> None:
    stub = pb_grpc.AuthorizationServiceStub(server.channel)
    with pytest.raises(grpc.RpcError) as refused:
        list(stub.WaitForApproval(pb.WaitForApprovalRequest(approval_id=approval_id), timeout=5))
    assert refused.value.code() == code
    assert (approval_id or "approval_id") in (refused.value.details() or "")


def test_approval_rpcs_need_a_credential(server: Server) -> None:
    stub = approval_pb2_grpc.ApprovalServiceStub(server.channel)
    asked = ask_for_approval(server, pr=14)
    for metadata in ([], [("authorization", "Bearer wrong")], [("authorization", "Bearer tgp_" + "x" * 43)]):
        with pytest.raises(grpc.RpcError) as refused:
            stub.Decide(approval_pb2.DecideRequest(id=asked.approval_id, approve=True, by="rita", reason="r"),
                        timeout=10, metadata=metadata)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError):
            stub.ListApprovals(approval_pb2.ListApprovalsRequest(), timeout=10, metadata=metadata)
    assert server.authorize(merge(pr=14, approval_id=asked.approval_id)).decision == pb.DECISION_REQUIRE_APPROVAL


def tollgate(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    return subprocess.run([*TOLLGATE, *argv], capture_output=True, text=True, timeout=60, env=env)


def test_the_cli_lists_watches_approves_and_denies(server: Server, approvals: ApproverClient,
                                                   tmp_path: Path) -> None:
    at = ["--server", server.address]
    token_files = {}
    for person in ("release-bot", "rita", "sam"):
        token_files[person] = tmp_path / f"{person}.token"
        token_files[person].write_text(approvals.people.token(person) + "\n")
    asked = ask_for_approval(server, pr=20, session="s-cli")
    listed = tollgate("approvals", "list", "--approver", "rita", "--status", "pending", *at)
    assert listed.returncode == 0, listed.stderr
    assert f"{asked.approval_id}  release-bot  github/merge_pull_request  expires " in listed.stdout

    watcher = subprocess.Popen([*TOLLGATE, "approvals", "watch", asked.approval_id, *at], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN})
    assert watcher.stdout is not None
    assert watcher.stdout.readline().rstrip().endswith("  pending")
    refused = tollgate("approvals", "approve", asked.approval_id, "--token-file", str(token_files["release-bot"]),
                       "--reason", "me", *at)
    assert refused.returncode == 1 and "PERMISSION_DENIED: release-bot cannot decide" in refused.stderr
    approved = tollgate("approvals", "approve", asked.approval_id, "--token-file", str(token_files["rita"]),
                        "--reason", "release 2.0", *at)
    assert approved.returncode == 0, approved.stderr
    assert approved.stdout == f"approved {asked.approval_id}  by rita: release 2.0\n"
    out, _ = watcher.communicate(timeout=30)
    assert watcher.returncode == 0 and out.rstrip().endswith("approved by rita: release 2.0")
    assert server.authorize(merge(pr=20, session="s-cli", approval_id=asked.approval_id)).decision == \
        pb.DECISION_ALLOW

    other = ask_for_approval(server, pr=21, session="s-cli")
    denied = tollgate("approvals", "deny", other.approval_id, "--token-file", str(token_files["sam"]), "--as", "sam",
                      "--reason", "freeze", *at)
    assert denied.returncode == 0 and denied.stdout.startswith(f"denied {other.approval_id}  by sam")
    assert tollgate("approvals", "watch", other.approval_id, *at).returncode == 2


def test_the_readme_walkthrough_runs_as_shown(tmp_path: Path) -> None:
    """The README's "Approvals" section, command by command, on a sidecar with the config it shows."""
    section = readme_section("Approvals")
    config = tmp_path / "tollgate.yaml"
    config.write_text(re.search(r"```yaml\n(.*?)```", section, re.S).group(1))  # type: ignore[union-attr]
    server = start_server(tmp_path / "data", extra=["--config", str(config)])
    try:
        shown_id = re.search(r"approval_id (apr_\S+)", section).group(1)  # type: ignore[union-attr]
        real_id = ""
        commands = _console_commands(section)
        assert [argv[1:3] for argv, _ in commands][:4] == [
            ["authorize", "--agent"], ["approvals", "list"], ["users", "token"], ["approvals", "approve"]]
        for argv, shown in commands:
            argv = [real_id if a == shown_id and real_id else a for a in argv]
            if argv[1] == "users":  # it works on the store, not the server: the sidecar's data dir
                argv = [str(server.data_dir) if a == ".tollgate" else a for a in argv]
            else:
                argv = [*argv, "--server", server.address]
            # The token files the README names are written where the commands run.
            result = subprocess.run([*TOLLGATE, *argv[1:]], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                                    env={**os.environ, "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN})
            verdict = shown.split()[0]
            assert result.returncode == {"ALLOW": 0, "DENY": 2, "REQUIRE_APPROVAL": 3}.get(verdict, 0), \
                result.stdout + result.stderr
            if argv[1:3] == ["users", "token"]:
                (tmp_path / f"{argv[3].split('@')[0]}.token").write_text(result.stdout)
            found = re.search(r"approval_id (apr_\S+)", result.stdout)
            real_id = found.group(1) if found and not real_id else real_id
            assert _varying(result.stdout) == _varying(shown), result.stdout
    finally:
        server.terminate()


def _console_commands(section: str) -> list[tuple[list[str], str]]:
    """Each `$ .venv/bin/tollgate ...` line (continuations joined) with the output the README shows."""
    found = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        for chunk in re.split(r"^\$ ", block, flags=re.M)[1:]:
            lines = chunk.splitlines()
            command = lines.pop(0)
            while command.endswith("\\"):
                command = command[:-1] + lines.pop(0).strip()
            found.append((shlex.split(command), "\n".join(lines)))
    return found


def _varying(text: str) -> str:
    text = mask_dates(text)
    text = re.sub(r"apr_[0-9a-f-]+", "apr_ID", text)
    text = re.sub(r"tgp_[A-Za-z0-9_-]+", "tgp_TOKEN", text)
    return re.sub(r"(decision_id|bundle)=\S+", r"\1=...", text).strip()


PERMISSIVE = """
    package tollgate

    # A careless policy: any approval presented, whatever its status, is taken for a yes.
    decision := {"decision": "allow"} if input.state.approval != null

    decision := {"decision": "require_approval", "approval": {"approvers": ["alice"], "ttl_seconds": 60}} if {
        input.state.approval == null
    }
    """


def test_the_server_holds_a_permissive_policy_to_single_use_and_replay_agrees(tmp_path: Path) -> None:
    bundle = write_policy(tmp_path / "permissive", PERMISSIVE)
    server = start_server(tmp_path / "data", bundle=bundle)
    try:
        asked = server.authorize(tool_request("a", "s", "t", session_id="s-1"))
        assert asked.decision == pb.DECISION_REQUIRE_APPROVAL
        answers = [server.authorize(tool_request("a", "s", "t", session_id="s-1"))]  # reuses the pending one
        again = tool_request("a", "s", "t", session_id="s-1")
        again.approval_id = asked.approval_id
        answers.append(server.authorize(again))  # pending: the policy says allow, the server does not
        ApproverClient(server).decide(asked.approval_id, approve=True, by="alice", reason="ok")
        answers += [server.authorize(again), server.authorize(again)]
        other = tool_request("a", "s", "t", {"x": 1}, session_id="s-1")
        other.approval_id = asked.approval_id
        answers.append(server.authorize(other))
    finally:
        server.terminate()
    assert [(pb.Decision.Name(a.decision), codes(a)) for a in answers] == [
        ("DECISION_REQUIRE_APPROVAL", []), ("DECISION_DENY", ["approval_pending"]), ("DECISION_ALLOW", []),
        ("DECISION_DENY", ["approval_used"]), ("DECISION_DENY", ["approval_mismatch"])]
    with Candidate(bundle) as candidate:
        report = replay(read_data_dir(tmp_path / "data"), candidate)
    # Replay applies the same rule to the approval state each logged input carried (the used one shows as used).
    assert (report.replayed, report.changed) == (6, 0)
