"""tollgate.client against real sidecars: answers, fail-closed, retries, Unix sockets, spend, approvals."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import Server, start_server
from tests.people import as_person
from tests.pki import TestCA
from tests.readme import readme_section
from tollgate.client import (
    SIDECAR_UNAVAILABLE,
    TLS,
    AsyncClient,
    Client,
    Decision,
    Denied,
    InvalidRequest,
    NotFound,
    Principal,
    SidecarUnavailable,
    TollgateError,
    tool_request,
)
from tollgate.testing import capture
from tollgate.v1 import approval_pb2, approval_pb2_grpc
from tollgate.v1 import authorization_pb2 as pb

REVIEWER = Principal("code-reviewer", session_id="run-1", team="platform")
RELEASER = Principal("release-bot", session_id="run-2")
PR = {"owner": "acme", "repo": "app", "pullNumber": 7}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("client")
    started = start_server(root / "data", config={"approver_groups": {"release-managers": ["rita"]}})
    yield started
    started.terminate()


@pytest.fixture
def client(server: Server) -> Iterator[Client]:
    with Client(server.address, timeout=10) as c:
        yield c


def free_address() -> str:
    """A loopback address nothing listens on (the port was free a moment ago)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"


def decide(server: Server, approval_id: str, *, approve: bool) -> None:
    stub = approval_pb2_grpc.ApprovalServiceStub(server.channel)
    stub.Decide(approval_pb2.DecideRequest(id=approval_id, approve=approve, reason="release day"),
                timeout=10, metadata=as_person(server, "rita"))


# Answers.

def test_allow_carries_a_logged_decision_id_and_the_generated_request_id(client: Client) -> None:
    decision = client.authorize_tool(REVIEWER, "github", "get_pull_request", PR)
    assert (decision.decision, decision.allowed, decision.failed_closed) == ("allow", True, False)
    assert decision.decision_id and decision.bundle_revision
    record = client.get_decision(decision.decision_id)
    assert record.request_id == decision.request_id and decision.request_id.startswith("tgc-")
    assert record.principal.session_id == "run-1"


def test_deny_carries_the_policy_reasons(client: Client) -> None:
    decision = client.authorize_tool(REVIEWER, "github", "merge_pull_request", PR)
    assert not decision.allowed and decision.decision == "deny"
    assert [r.code for r in decision.reasons] == ["tool_not_in_manifest"]
    assert decision.message.endswith(f"(decision {decision.decision_id})")


def test_model_call_answers_its_obligations_as_whole_numbers(client: Client) -> None:
    decision = client.authorize_model(REVIEWER, "anthropic", "claude-haiku-4-5", input_tokens=1000,
                                      max_output_tokens=500, data_classes=["source-code"])
    assert decision.allowed, decision.message
    assert decision.obligations["max_output_tokens"] == 500 and isinstance(decision.obligations["max_output_tokens"],
                                                                          int)


def test_a_repeated_request_id_is_answered_from_the_log(client: Client) -> None:
    first = client.authorize_tool(REVIEWER, "github", "get_pull_request", PR, request_id="retry-me")
    again = client.authorize_tool(REVIEWER, "github", "get_pull_request", PR, request_id="retry-me")
    assert again.decision_id == first.decision_id


def test_a_malformed_request_raises_instead_of_answering(client: Client) -> None:
    no_action = pb.AuthorizeRequest(principal=pb.Principal(agent_id="code-reviewer"))
    with pytest.raises(InvalidRequest, match="action"):
        client.authorize(no_action)


def test_unknown_decision_id_raises_not_found(client: Client) -> None:
    with pytest.raises(NotFound, match="nope"):
        client.get_decision("nope")


def test_async_client_answers_as_the_sync_one(server: Server) -> None:
    async def run() -> tuple[Decision, Decision, str]:
        async with AsyncClient(server.address, timeout=10) as c:
            allow, deny = await asyncio.gather(c.authorize_tool(REVIEWER, "github", "get_pull_request", PR),
                                               c.authorize_tool(REVIEWER, "github", "merge_pull_request", PR))
            record = await c.get_decision(allow.decision_id)
            return allow, deny, record.request_id

    allow, deny, request_id = asyncio.run(run())
    assert allow.allowed and not deny.allowed and request_id == allow.request_id


def test_async_client_reports_a_tool_result_once_as_the_sync_one_does(server: Server) -> None:
    async def run() -> tuple[Decision, pb.ReportToolResultResponse, pb.ReportToolResultResponse]:
        async with AsyncClient(server.address, timeout=10) as c:
            allow = await c.authorize_tool(REVIEWER, "github", "get_pull_request", PR)
            first = await c.report_tool_result("ok", decision_id=allow.decision_id, duration_ms=12)
            again = await c.report_tool_result("ok", decision_id=allow.decision_id, duration_ms=12)
            with pytest.raises(TollgateError, match="already"):
                await c.report_tool_result("error", decision_id=allow.decision_id, duration_ms=12)
            with pytest.raises(ValueError, match="result: must be one of ok, error, interrupted"):
                await c.report_tool_result("fine", decision_id=allow.decision_id)
            return allow, first, again

    allow, first, again = asyncio.run(run())
    assert (first.decision_id, first.duration_ms, first.unchanged) == (allow.decision_id, 12, False)
    assert again.unchanged


# Fail closed.

def test_nothing_listening_is_a_deny_made_by_the_client() -> None:
    with Client(free_address(), timeout=0.5) as c:
        started = time.monotonic()
        decision = c.authorize_tool(REVIEWER, "github", "get_pull_request", PR)
    assert time.monotonic() - started < 3
    assert (decision.decision, decision.decision_id, decision.failed_closed) == ("deny", "", True)
    assert [r.code for r in decision.reasons] == [SIDECAR_UNAVAILABLE] and "UNAVAILABLE" in decision.error


def test_fail_closed_false_raises_instead() -> None:
    with Client(free_address(), timeout=0.3, fail_closed=False) as c, pytest.raises(SidecarUnavailable):
        c.authorize_tool(REVIEWER, "github", "get_pull_request", PR)


def test_async_client_fails_closed_too() -> None:
    async def run() -> Decision:
        async with AsyncClient(free_address(), timeout=0.3) as c:
            return await c.authorize_tool(REVIEWER, "github", "get_pull_request", PR)

    decision = asyncio.run(run())
    assert decision.failed_closed and not decision.allowed


def test_a_sidecar_killed_mid_way_turns_answers_into_denies(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data")
    with Client(server.address, timeout=1) as c:
        assert c.authorize_tool(REVIEWER, "github", "get_pull_request", PR).allowed
        server.kill()
        decision = c.authorize_tool(REVIEWER, "github", "get_pull_request", PR)
    assert decision.failed_closed and decision.reasons[0].code == SIDECAR_UNAVAILABLE


def test_retries_reach_a_sidecar_that_starts_late(tmp_path: Path) -> None:
    address = free_address()
    answers: list[Decision] = []
    with Client(address, timeout=60) as c:
        asking = threading.Thread(target=lambda: answers.append(
            c.authorize_tool(REVIEWER, "github", "get_pull_request", PR)))
        asking.start()
        time.sleep(0.5)  # the first attempts fail: nothing listens yet
        server = start_server(tmp_path / "data", listen=address)
        try:
            asking.join(60)
        finally:
            server.terminate()
    assert answers and answers[0].allowed and answers[0].decision_id


# Transports.

def test_unix_socket(tmp_path: Path) -> None:
    socket_path = tmp_path / "tollgate.sock"
    server = start_server(tmp_path / "data", listen=f"unix:{socket_path}")
    try:
        with Client(f"unix:{socket_path}", timeout=10) as c:
            assert c.authorize_tool(REVIEWER, "github", "get_pull_request", PR).allowed
    finally:
        server.terminate()


def test_plaintext_to_another_machine_needs_saying_so() -> None:
    with pytest.raises(ValueError, match="tls=TLS"):
        Client("tollgate.internal:50051")
    Client("tollgate.internal:50051", insecure=True).close()


def tls_server(serve: Callable[..., Server], tmp_path: Path, *, mutual: bool) -> tuple[Server, TestCA]:
    ca = TestCA(tmp_path / "pki")
    cert, agent = ca.server(), ca.client("spiffe://acme/agents/code-reviewer")
    flags = ["--tls-cert", str(cert.cert), "--tls-key", str(cert.key)]
    if mutual:
        flags += ["--tls-client-ca", str(ca.cert), "--tls-require-client-cert"]
    credentials = grpc.ssl_channel_credentials(ca.cert.read_bytes(), *agent.pair())
    return serve(extra=flags, credentials=credentials), ca


def test_tls_with_the_sidecars_ca(serve: Callable[..., Server], tmp_path: Path) -> None:
    server, ca = tls_server(serve, tmp_path, mutual=False)
    with Client(server.address, tls=TLS(root_ca=ca.cert), timeout=10) as c:
        assert c.authorize_tool(REVIEWER, "github", "get_pull_request", PR).allowed
    with Client(server.address, timeout=0.5) as plaintext:  # a TLS listener is no answer to plaintext
        assert plaintext.authorize_tool(REVIEWER, "github", "get_pull_request", PR).failed_closed


def test_mutual_tls_with_a_client_certificate(serve: Callable[..., Server], tmp_path: Path) -> None:
    server, ca = tls_server(serve, tmp_path, mutual=True)
    agent = ca.client("spiffe://acme/agents/code-reviewer")
    tls = TLS(root_ca=ca.cert, client_cert=agent.cert, client_key=agent.key)
    with Client(server.address, tls=tls, timeout=10) as c:
        decision = c.authorize_tool(REVIEWER, "github", "get_pull_request", PR)
        assert decision.allowed, decision.message
        assert c.get_decision(decision.decision_id).requested_by == "spiffe://acme/agents/code-reviewer"
    with Client(server.address, tls=TLS(root_ca=ca.cert), timeout=0.5) as without_certificate:
        refused = without_certificate.authorize_tool(REVIEWER, "github", "get_pull_request", PR)
    assert refused.failed_closed and refused.reasons[0].code == SIDECAR_UNAVAILABLE


def test_tls_settings_name_what_is_wrong(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="client_cert and client_key go together"):
        TLS(client_cert=tmp_path / "a.crt")
    with pytest.raises(ValueError, match=r"TLS.root_ca: cannot read .*missing.pem"):
        Client("127.0.0.1:1", tls=TLS(root_ca=tmp_path / "missing.pem"))


# Spend.

def test_spend_reports_the_actual_amount_and_releases_the_rest(client: Client) -> None:
    with client.spend(Principal("code-reviewer", session_id="spend-1"), 0.5, "usd", "model") as r:
        assert r.reservation_id
        r.report(0.2)
    assert r.usage is not None and (r.usage.reserved, r.usage.committed) == (0.5, 0.2)
    assert r.usage.released == pytest.approx(0.3)


def test_spend_without_report_counts_the_whole_reservation(client: Client) -> None:
    with client.spend(Principal("code-reviewer", session_id="spend-2"), 0.5, "usd", "model") as r:
        pass
    assert r.usage is not None and r.usage.committed == 0.5


def test_spend_reports_what_was_set_when_the_block_raises(client: Client) -> None:
    with pytest.raises(RuntimeError, match="model call failed"), \
            client.spend(Principal("code-reviewer", session_id="spend-3"), 0.5, "usd", "model") as r:
        r.report(0.1)
        raise RuntimeError("model call failed")
    assert r.usage is not None and r.usage.committed == 0.1


def test_spend_over_the_limit_raises_denied_with_the_decision(client: Client) -> None:
    with pytest.raises(Denied) as denied, client.spend(REVIEWER, 100, "usd", "model"):
        pytest.fail("the block must not run")
    assert "budget_request_over_limit" in [r.code for r in denied.value.decision.reasons]


def test_async_spend(server: Server) -> None:
    async def run() -> float:
        async with AsyncClient(server.address, timeout=10) as c, \
                c.spend(Principal("code-reviewer", session_id="spend-4"), 0.4, "usd", "model") as r:
            r.report(0.25)
        assert r.usage is not None
        return r.usage.committed

    assert asyncio.run(run()) == 0.25


# Approvals.

def merge_request(session: str) -> pb.AuthorizeRequest:
    return tool_request(Principal("release-bot", session_id=session), "github", "merge_pull_request", PR)


def test_authorize_with_approval_waits_and_asks_again(server: Server, client: Client) -> None:
    pending: list[Decision] = []

    def approve_soon(decision: Decision) -> None:
        pending.append(decision)
        threading.Timer(0.3, decide, (server, decision.approval_id), {"approve": True}).start()

    decision = client.authorize_with_approval(merge_request("approve-1"), wait=30, on_pending=approve_soon)
    assert pending and pending[0].decision == "require_approval"
    assert decision.allowed, decision.message
    assert [r.code for r in decision.reasons] == ["approved"]
    record = client.get_decision(decision.decision_id)
    assert (record.approval_id, record.approval_status) == (pending[0].approval_id, "approved")


def test_a_denied_approval_ends_in_the_sidecars_deny(server: Server, client: Client) -> None:
    decision = client.authorize_with_approval(
        merge_request("deny-1"), wait=30,
        on_pending=lambda d: threading.Timer(0.3, decide, (server, d.approval_id), {"approve": False}).start())
    assert decision.decision == "deny" and decision.decision_id and not decision.failed_closed
    assert "approval_denied" in [r.code for r in decision.reasons]


def test_wait_for_approval_returns_pending_when_time_runs_out(client: Client) -> None:
    first = client.authorize(merge_request("wait-1"))
    assert first.decision == "require_approval" and first.approval_id
    state = client.wait_for_approval(first.approval_id, 0.5)
    assert (state.id, state.status, state.decided) == (first.approval_id, "pending", False)
    assert state.expires_at is not None


def test_async_wait_for_approval_sees_the_decision(server: Server) -> None:
    async def run() -> str:
        async with AsyncClient(server.address, timeout=10) as c:
            first = await c.authorize(merge_request("wait-2"))
            threading.Timer(0.3, decide, (server, first.approval_id), {"approve": True}).start()
            state = await c.wait_for_approval(first.approval_id, 30)
            return f"{state.status} by {state.decided_by}"

    assert asyncio.run(run()) == "approved by rita"


# The README.

def python_block(section: str) -> str:
    match = re.search(r"```python\n(.*?)```", readme_section(section), re.S)
    assert match, f"README section {section!r} has no python block"
    return match.group(1)


def test_readme_python_example_runs(server: Server) -> None:
    code = python_block("Calling Tollgate from Python").replace("127.0.0.1:50051", server.address)
    scope: dict[str, object] = {}
    exec(compile(code, "README.md", "exec"), scope)  # the example as written, against a real sidecar
    assert isinstance(scope["decision"], Decision) and scope["decision"].allowed
    assert scope["max_output_tokens"] == 8000
    assert scope["reserved"].usage.committed == 0.12  # type: ignore[attr-defined]


def test_readme_openai_agents_example_builds_a_protected_agent() -> None:
    scope: dict[str, object] = {}
    exec(compile(python_block("OpenAI Agents SDK"), "README.md", "exec"), scope)
    tool = scope["agent"].tools[0]  # type: ignore[attr-defined]
    assert tool.name == "merge_pull_request" and callable(tool.needs_approval)
    assert tool.tool_input_guardrails == [scope["gate"].guardrail]  # type: ignore[attr-defined]


# tollgate.testing.

def test_capture_records_each_request_and_answer(client: Client) -> None:
    with capture(client) as asked:
        client.authorize_tool(REVIEWER, "github", "get_pull_request", PR)
        client.authorize_tool(REVIEWER, "github", "merge_pull_request", PR)
        client.authorize_model(REVIEWER, "anthropic", "claude-haiku-4-5", input_tokens=10)
    client.authorize_tool(REVIEWER, "github", "get_pull_request", PR)  # after the block: not captured
    assert [a.action for a in asked] == ["github/get_pull_request", "github/merge_pull_request",
                                         "anthropic/claude-haiku-4-5"]
    assert asked.tools(allowed=True) == ["github/get_pull_request"]
    assert [d.reasons[0].code for d in asked.decisions("deny")] == ["tool_not_in_manifest"]
    asked.assert_all_answered()


def test_capture_tells_when_the_sidecar_did_not_answer() -> None:
    with Client(free_address(), timeout=0.2) as down, capture(down) as asked:
        down.authorize_tool(REVIEWER, "github", "get_pull_request", PR)
    with pytest.raises(AssertionError, match="1 of 1 requests got no answer"):
        asked.assert_all_answered()


def test_an_approval_still_pending_when_the_wait_ends_is_answered_require_approval(client: Client) -> None:
    decision = client.authorize_with_approval(merge_request("pending-1"), wait=0.3)
    assert decision.decision == "require_approval" and decision.decision_id
    assert "approval_pending" in [r.code for r in decision.reasons]
