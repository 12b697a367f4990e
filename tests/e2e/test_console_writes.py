"""A running sidecar on the embedded default hears what another process writes to its state.db (a console beside
it, `tollgate` commands on the data dir): a kill switch engaged there denies the next decision, an approval
decided there reaches WaitForApproval, within a second, through the sidecar's change watch (PRAGMA data_version).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import REGO, ROOT, Server, start_server, tool_request, wait_for
from tollgate.clock import SHIFT_ENV, START_ENV, from_environment
from tollgate.encoding import format_time
from tollgate.v1 import approval_pb2, approval_pb2_grpc
from tollgate.v1 import authorization_pb2 as pb

pytestmark = pytest.mark.clock

GROUPS = {"release-managers": ["rita"], "sre-oncall": ["sam"]}
#: What "within a second" allows: the watch polls every 0.1 s, WaitForApproval's watcher every 0.2 s.
HEARD_WITHIN = 1.0


def writer() -> None:
    """Another process on the data dir (argv: data dir, then the change): one change, then the time it committed.

    kill SCOPE VALUE | revive SCOPE VALUE | decide ID approve|deny BY"""
    from tollgate.state import open_local_state

    data_dir, what, *args = sys.argv[1:]

    async def change(state: object) -> None:
        from tollgate.state import LocalState

        assert isinstance(state, LocalState)
        if what == "kill":
            await state.kill_switches.kill(args[0], args[1], reason="incident 7", by="ops")
        elif what == "revive":
            await state.kill_switches.revive(args[0], args[1], by="ops")
        else:
            await state.approvals.decide(args[0], approve=args[1] == "approve", by=args[2], reason="from beside")

    state = open_local_state(Path(data_dir), clock=from_environment(), approver_groups=GROUPS)
    try:
        asyncio.run(change(state))
        print(json.dumps({"committed": time.time()}), flush=True)
    finally:
        state.close()


def write(server: Server, *change: str) -> float:
    """Run writer() in a process of its own, on the server's clock; the time.time() its change was committed."""
    env = {**os.environ, START_ENV: format_time(server.clock_range()[0])}  # the shift included
    env.pop(SHIFT_ENV, None)
    code = "from tests.e2e.test_console_writes import writer; writer()"
    done = subprocess.run([sys.executable, "-c", code, str(server.data_dir), *change], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    committed: float = json.loads(done.stdout.strip().splitlines()[-1])["committed"]
    return committed


def merge(pr: int, approval_id: str = "", session: str = "s-1") -> pb.AuthorizeRequest:
    request = tool_request("release-bot", "github", "merge_pull_request",
                           {"owner": "acme", "repo": "app", "pullNumber": pr}, session_id=session)
    request.approval_id = approval_id
    return request


def first_time(condition: Callable[[], bool], *, what: str) -> float:
    """Poll condition until it holds; the time.time() it first did."""
    wait_for(condition, timeout=30, what=what)
    return time.time()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("console-writes")
    started = start_server(root / "data", config={"approver_groups": GROUPS})
    yield started
    started.terminate()


def test_a_kill_switch_engaged_by_another_process_denies_the_next_decision_within_a_second(server: Server) -> None:
    request = tool_request(session_id="s-kill")
    assert server.authorize(request).decision == pb.DECISION_ALLOW
    committed = write(server, "kill", "session", "s-kill")
    denied_at = first_time(lambda: server.authorize(request).decision == pb.DECISION_DENY, what="the kill heard")
    assert "killed" in [r.code for r in server.authorize(request).reasons]
    assert denied_at - committed < HEARD_WITHIN
    assert server.authorize(tool_request(session_id="s-other")).decision == pb.DECISION_ALLOW
    committed = write(server, "revive", "session", "s-kill")
    allowed_at = first_time(lambda: server.authorize(request).decision == pb.DECISION_ALLOW, what="the revive heard")
    assert allowed_at - committed < HEARD_WITHIN


def watch(server: Server, approval_id: str) -> tuple[list[tuple[str, float]], threading.Thread]:
    """WaitForApproval in a thread: each status with the time.time() it arrived."""
    heard: list[tuple[str, float]] = []

    def run() -> None:
        for state in server.stub.WaitForApproval(pb.WaitForApprovalRequest(approval_id=approval_id), timeout=60):
            heard.append((state.status, time.time()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: bool(heard), timeout=30, what="the first state")
    return heard, thread


def test_an_approval_decided_by_another_process_reaches_wait_for_approval_within_a_second(server: Server) -> None:
    asked = server.authorize(merge(pr=11))
    assert asked.decision == pb.DECISION_REQUIRE_APPROVAL
    heard, thread = watch(server, asked.approval_id)
    committed = write(server, "decide", asked.approval_id, "approve", "rita")
    thread.join(timeout=30)
    assert [status for status, _ in heard] == ["pending", "approved"]
    assert heard[-1][1] - committed < HEARD_WITHIN
    allowed = server.authorize(merge(pr=11, approval_id=asked.approval_id))
    assert allowed.decision == pb.DECISION_ALLOW


def test_a_quorum_decided_from_two_processes_opens_only_with_the_second_approver(tmp_path: Path) -> None:
    bundle = tmp_path / "rego"
    shutil.copytree(REGO, bundle)
    # The default library asks for the manifest's quorum (approval.required).
    manifest = bundle / "agents/release-bot/data.yaml"
    manifest.write_text(manifest.read_text().replace("ttl_seconds: 1800", "ttl_seconds: 1800\n  required: 2"))
    server = start_server(tmp_path / "data", bundle=bundle, config={"approver_groups": GROUPS})
    try:
        asked = server.authorize(merge(pr=12))
        assert asked.decision == pb.DECISION_REQUIRE_APPROVAL
        heard, thread = watch(server, asked.approval_id)
        write(server, "decide", asked.approval_id, "approve", "rita")
        write(server, "decide", asked.approval_id, "approve", "rita")  # the same person twice counts once
        shown = approval_pb2_grpc.ApprovalServiceStub(server.channel).GetApproval(
            approval_pb2.GetApprovalRequest(id=asked.approval_id), timeout=10, metadata=server.admin_metadata)
        assert (shown.status, shown.required, [(v.voter, v.approve) for v in shown.votes]) == (
            "pending", 2, [("rita", True)])  # the API shows the quorum's count too
        still = server.authorize(merge(pr=12, approval_id=asked.approval_id))
        assert still.decision == pb.DECISION_REQUIRE_APPROVAL and "approval_pending" in [r.code for r in still.reasons]
        committed = write(server, "decide", asked.approval_id, "approve", "sam")
        thread.join(timeout=30)
        assert [status for status, _ in heard] == ["pending", "approved"]
        assert heard[-1][1] - committed < HEARD_WITHIN
        allowed = server.authorize(merge(pr=12, approval_id=asked.approval_id))
        assert allowed.decision == pb.DECISION_ALLOW
        assert "approved by rita, sam" in allowed.reasons[0].message
    finally:
        server.terminate()
