"""`tollgate mcp-gateway` end to end: a real sidecar, the gateway as a subprocess in front of a real MCP server
(tests/mcp_upstream.py, over stdio or streamable HTTP), driven by the MCP SDK's own client over stdio."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import grpc
import jwt
import mcp_types as types
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.session import IncomingMessage
from mcp.shared.exceptions import MCPError
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from tests.conftest import ADMIN_TOKEN, REGO, ROOT, TOLLGATE, Server, start_server, write_policy
from tests.people import as_person
from tests.pki import TestCA
from tests.readme import readme_section
from tollgate.encoding import canonical_json
from tollgate.v1 import admin_pb2, admin_pb2_grpc, approval_pb2, approval_pb2_grpc

UPSTREAM = [sys.executable, str(ROOT / "tests" / "mcp_upstream.py")]
PR: dict[str, Any] = {"owner": "acme", "repo": "app", "pullNumber": 42}
_T = TypeVar("_T")


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("mcp-gateway")
    started = start_server(root / "data", config={"approver_groups": {"release-managers": ["rita"]}})
    yield started
    started.terminate()


class Gateway:
    """An MCP client session with a running `tollgate mcp-gateway`, and what reached the upstream."""

    def __init__(self, session: ClientSession, call_log: Path, notifications: list[str]) -> None:
        self.session = session
        self.call_log = call_log
        self.notifications = notifications

    def upstream_calls(self) -> list[str]:
        return self.call_log.read_text().split() if self.call_log.exists() else []

    async def call(self, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
        return await self.session.call_tool(name, arguments)


@asynccontextmanager
async def gateway(tmp_path: Path, sidecar: str, agent: str, *flags: str, upstream: list[str] | None = None,
                  modern: bool = False, env: dict[str, str] | None = None) -> AsyncIterator[Gateway]:
    """A client session with a gateway started with these flags; modern: the 2026-07-28 protocol (server/discover
    and an envelope on every request) instead of the initialize handshake."""
    call_log = tmp_path / f"upstream-calls-{os.urandom(4).hex()}.log"
    notifications: list[str] = []

    async def on_message(message: IncomingMessage) -> None:
        if not isinstance(message, Exception):
            notifications.append(message.method)

    tail = ["--", *UPSTREAM] if upstream is None else upstream
    params = StdioServerParameters(command=TOLLGATE[0], args=[
        *TOLLGATE[1:], "mcp-gateway", "--server", sidecar, "--agent-id", agent, *flags, *tail],
        # The admin token in the gateway's environment (as for a person's shell) is withheld from the upstream:
        # the upstream logs it if it sees it, and every test checks what the upstream logged.
        env={**os.environ, "MCP_UPSTREAM_CALL_LOG": str(call_log), "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})},
        cwd=ROOT)
    async with stdio_client(params) as (read, write), \
            ClientSession(read, write, message_handler=on_message, read_timeout_seconds=60) as session:
        await (session.discover() if modern else session.initialize())
        yield Gateway(session, call_log, notifications)


async def direct(call: Callable[[ClientSession], Awaitable[_T]]) -> _T:
    """call() on a session with the upstream itself, no gateway between."""
    async with stdio_client(StdioServerParameters(command=UPSTREAM[0], args=UPSTREAM[1:])) as (read, write), \
            ClientSession(read, write) as session:
        await session.initialize()
        return await call(session)


def text(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def tollgate_meta(result: types.CallToolResult) -> dict[str, Any]:
    meta: dict[str, Any] = (result.meta or {})["tollgate/decision"]
    return meta


def logged(sidecar: Server, session_id: str) -> list[dict[str, Any]]:
    with sqlite3.connect(sidecar.data_dir / "decisions.db") as db:
        rows = db.execute("SELECT record FROM decisions ORDER BY rowid").fetchall()
    records = [json.loads(r[0]) for r in rows]
    return [r for r in records if r["input"]["principal"]["session_id"] == session_id]


def pin_of(tool: types.Tool) -> str:
    """The pin of a tool as the MCP SDK's client lists it: sha256 of the canonical JSON of name, description,
    input schema (computed here, apart from the gateway's own code)."""
    definition = {"name": tool.name, "description": tool.description or "", "inputSchema": tool.input_schema}
    return "sha256:" + hashlib.sha256(canonical_json(definition).encode()).hexdigest()


def test_initialize_and_an_allowed_call_pass_through_untouched(tmp_path: Path, sidecar: Server) -> None:
    async def scenario() -> None:
        own = await direct(lambda s: s.call_tool("get_pull_request", PR))
        [listed] = [t for t in (await direct(lambda s: s.list_tools())).tools if t.name == "get_pull_request"]
        async with gateway(tmp_path, sidecar.address, "code-reviewer", "--session-id", "s-pass") as gw:
            init = gw.session.initialize_result
            assert init is not None
            assert (init.server_info.name, init.server_info.version) == ("github", "9.9.9")
            assert init.instructions == "A test double of the GitHub MCP server."
            through = await gw.call("get_pull_request", PR)
            assert through.model_dump() == own.model_dump()
            assert through.structured_content == {"number": 42, "repo": "acme/app", "title": "upstream PR 42",
                                                  "state": "open"}
            assert gw.upstream_calls() == ["get_pull_request"]
        [record] = logged(sidecar, "s-pass")
        assert record["decision"] == "allow"
        assert record["input"]["tool"] == {"server": "github", "name": "get_pull_request", "arguments": PR,
                                           "resources": []}
        # The upstream's annotations reach the policy, beside the pin of the tool's definition (context.mcp_tool).
        assert record["input"]["context"] == {"mcp": "tools/call", "mcp_tool": {
            "listed": True, "pin": pin_of(listed), "annotations": {"readOnlyHint": True, "openWorldHint": True}}}

    asyncio.run(scenario())


def test_denied_call_is_a_tool_error_with_the_reasons_and_decision_id_and_never_reaches_upstream(
        tmp_path: Path, sidecar: Server) -> None:
    async def scenario() -> None:
        async with gateway(tmp_path, sidecar.address, "code-reviewer") as gw:
            result = await gw.call("merge_pull_request", PR)
            assert gw.upstream_calls() == []
        assert result.is_error
        meta = tollgate_meta(result)
        assert meta["decision"] == "deny"
        assert [r["code"] for r in meta["reasons"]] == ["tool_not_in_manifest"]
        assert f"decision {meta['decision_id']}" in text(result)
        assert "tool_not_in_manifest" in text(result) and "github/merge_pull_request" in text(result)
        assert sidecar.get_decision(meta["decision_id"]).tool.name == "merge_pull_request"

    asyncio.run(scenario())


def approver(sidecar: Server) -> approval_pb2_grpc.ApprovalServiceStub:
    return approval_pb2_grpc.ApprovalServiceStub(sidecar.channel)


def approve(sidecar: Server, approval_id: str, *, approve: bool = True) -> None:
    approver(sidecar).Decide(approval_pb2.DecideRequest(id=approval_id, approve=approve, reason="release"),
                             timeout=10, metadata=as_person(sidecar, "rita"))


async def pending_approval(sidecar: Server, session_id: str) -> str:
    """The id of the session's pending approval, once it is there."""
    for _ in range(200):
        request = approval_pb2.ListApprovalsRequest(session_id=session_id, status="pending")
        found = approver(sidecar).ListApprovals(request, timeout=10, metadata=sidecar.admin_metadata)
        if found.approvals:
            approval_id: str = found.approvals[0].id
            return approval_id
        await asyncio.sleep(0.05)
    raise AssertionError(f"no pending approval for session {session_id}")


def test_call_waiting_for_approval_goes_through_once_a_person_approves(tmp_path: Path, sidecar: Server) -> None:
    async def scenario() -> None:
        async with gateway(tmp_path, sidecar.address, "release-bot", "--session-id", "s-wait",
                           "--approval-wait", "30") as gw:
            call = asyncio.create_task(gw.call("merge_pull_request", PR))
            approval_id = await pending_approval(sidecar, "s-wait")
            assert not call.done()  # held while the approval is pending
            approve(sidecar, approval_id)
            result = await call
            assert not result.is_error, text(result)
            assert text(result) == "upstream merged acme/app#42"
            assert gw.upstream_calls() == ["merge_pull_request"]
        decisions = [(r["decision"], r.get("approval_id", "")) for r in logged(sidecar, "s-wait")]
        assert decisions == [("require_approval", approval_id), ("allow", approval_id)]

    asyncio.run(scenario())


def test_a_person_denying_the_waiting_call_denies_it(tmp_path: Path, sidecar: Server) -> None:
    async def scenario() -> None:
        async with gateway(tmp_path, sidecar.address, "release-bot", "--session-id", "s-no",
                           "--approval-wait", "30") as gw:
            call = asyncio.create_task(gw.call("merge_pull_request", PR))
            approve(sidecar, await pending_approval(sidecar, "s-no"), approve=False)
            result = await call
            assert gw.upstream_calls() == []
        assert result.is_error and [r["code"] for r in tollgate_meta(result)["reasons"]] == ["approval_denied"]
        assert f"decision {tollgate_meta(result)['decision_id']}" in text(result)

    asyncio.run(scenario())


def test_a_wait_that_runs_out_answers_with_the_pending_approval(tmp_path: Path, sidecar: Server) -> None:
    async def scenario() -> None:
        async with gateway(tmp_path, sidecar.address, "release-bot", "--session-id", "s-late",
                           "--approval-wait", "0.5") as gw:
            started = asyncio.get_running_loop().time()
            result = await gw.call("merge_pull_request", PR)
            assert asyncio.get_running_loop().time() - started >= 0.5
        assert result.is_error and tollgate_meta(result)["decision"] == "require_approval"
        assert tollgate_meta(result)["approval_id"] == await pending_approval(sidecar, "s-late")

    asyncio.run(scenario())


def test_without_waiting_the_tool_error_names_the_approval_and_the_same_call_after_approval_goes_through(
        tmp_path: Path, sidecar: Server) -> None:
    async def scenario() -> None:
        async with gateway(tmp_path, sidecar.address, "release-bot", "--session-id", "s-retry") as gw:
            first = await gw.call("merge_pull_request", PR)
            assert first.is_error
            approval_id = tollgate_meta(first)["approval_id"]
            assert approval_id.startswith("apr_") and approval_id in text(first)
            assert f"tollgate approvals approve {approval_id}" in text(first)
            assert [r["code"] for r in tollgate_meta(first)["reasons"]] == ["destructive_action"]
            again = await gw.call("merge_pull_request", PR)  # still pending: the same approval, not a new one
            assert tollgate_meta(again)["approval_id"] == approval_id
            assert gw.upstream_calls() == []

            approve(sidecar, approval_id)
            merged = await gw.call("merge_pull_request", PR)
            assert not merged.is_error and text(merged) == "upstream merged acme/app#42"
            # An approval is used once: merging again needs a new one.
            third = await gw.call("merge_pull_request", PR)
            assert third.is_error and tollgate_meta(third)["approval_id"] not in ("", approval_id)
            assert gw.upstream_calls() == ["merge_pull_request"]

    asyncio.run(scenario())


def test_a_2026_era_client_gets_the_same_gate_and_the_upstreams_results(tmp_path: Path, sidecar: Server) -> None:
    async def scenario() -> None:
        own = await direct(lambda s: s.call_tool("get_pull_request", PR))
        async with gateway(tmp_path, sidecar.address, "code-reviewer", modern=True) as gw:
            assert gw.session.protocol_version == "2026-07-28"
            assert gw.session.server_info is not None and gw.session.server_info.name == "github"
            assert len((await gw.session.list_tools()).tools) == 7
            through = await gw.call("get_pull_request", PR)
            denied = await gw.call("merge_pull_request", PR)
            assert gw.upstream_calls() == ["get_pull_request"]
        assert through.content == own.content and through.structured_content == own.structured_content
        assert denied.is_error and tollgate_meta(denied)["reasons"][0]["code"] == "tool_not_in_manifest"

    asyncio.run(scenario())


def test_an_approved_call_stopped_by_a_kill_switch_goes_through_once_it_is_revived(tmp_path: Path,
                                                                                    sidecar: Server) -> None:
    admin = admin_pb2_grpc.AdminServiceStub(sidecar.channel)
    switch = {"scope": "session", "value": "s-kill"}

    async def scenario() -> None:
        async with gateway(tmp_path, sidecar.address, "release-bot", "--session-id", "s-kill") as gw:
            approval_id = tollgate_meta(await gw.call("merge_pull_request", PR))["approval_id"]
            approve(sidecar, approval_id)
            admin.Kill(admin_pb2.KillRequest(**switch, reason="incident 7", by="sam"), timeout=10,
                       metadata=sidecar.admin_metadata)
            killed = await gw.call("merge_pull_request", PR)
            assert [r["code"] for r in tollgate_meta(killed)["reasons"]] == ["killed"]
            admin.Revive(admin_pb2.ReviveRequest(**switch, by="sam"), timeout=10, metadata=sidecar.admin_metadata)
            # The approval was kept through the kill switch's deny: presented again, it is used now.
            merged = await gw.call("merge_pull_request", PR)
            assert not merged.is_error and gw.upstream_calls() == ["merge_pull_request"]
        used = approver(sidecar).GetApproval(approval_pb2.GetApprovalRequest(id=approval_id), timeout=10,
                                             metadata=sidecar.admin_metadata)
        assert used.status == "used"

    asyncio.run(scenario())


SHORT_APPROVALS = """
    package tollgate

    # Every call needs a person, whose approval lasts a minute; the server holds an approval to its status.
    decision := {"decision": "allow"} if input.state.approval != null

    decision := {"decision": "require_approval", "reasons": [{"code": "needs_a_person", "message": "always"}],
                 "approval": {"approvers": ["rita"], "ttl_seconds": 60}} if input.state.approval == null
    """


@pytest.mark.clock
def test_a_remembered_approval_that_expired_is_replaced_by_a_new_one(tmp_path: Path) -> None:
    sidecar = start_server(tmp_path / "data", bundle=write_policy(tmp_path / "policy", SHORT_APPROVALS))

    async def scenario() -> None:
        async with gateway(tmp_path, sidecar.address, "any-agent", "--session-id", "s-exp") as gw:
            first = tollgate_meta(await gw.call("search_code", {"query": "x"}))["approval_id"]
            sidecar.advance_clock(61)  # past the approval's minute on the sidecar's clock, not waited out
            second = tollgate_meta(await gw.call("search_code", {"query": "x"}))["approval_id"]
            assert second not in ("", first)
            approve(sidecar, second)
            assert text(await gw.call("search_code", {"query": "x"})) == "upstream found 3 matches for 'x'"
        asked = [(r["decision"], r["approval_id"], [c["code"] for c in r["reasons"]])
                 for r in logged(sidecar, "s-exp")]
        assert asked == [("require_approval", first, ["needs_a_person"]), ("deny", first, ["approval_expired"]),
                         ("require_approval", second, ["needs_a_person"]), ("allow", second, [])]

    try:
        asyncio.run(scenario())
    finally:
        sidecar.terminate()


def test_hide_denied_tools_leaves_out_only_tools_the_agent_may_never_use(tmp_path: Path, sidecar: Server) -> None:
    async def scenario() -> None:
        async with gateway(tmp_path, sidecar.address, "code-reviewer") as gw:
            everything = [t.name for t in (await gw.session.list_tools()).tools]
        async with gateway(tmp_path, sidecar.address, "code-reviewer", "--hide-denied-tools") as gw:
            listed = (await gw.session.list_tools()).tools
            # merge_pull_request is not in the manifest; delete_repository is in no catalog (unknown_tool).
            assert [t.name for t in listed] == ["get_pull_request", "search_code", "get_pull_request_files",
                                                "get_pull_request_diff", "list_pull_requests"]
            assert listed[0].input_schema["required"] == ["owner", "repo", "pullNumber"]  # entries as sent
            # Hidden is not allowed-by-omission: calling a hidden tool is still decided, and denied.
            assert (await gw.call("delete_repository", {"owner": "acme", "repo": "app"})).is_error
        assert everything == ["get_pull_request", "merge_pull_request", "search_code", "delete_repository",
                              "get_pull_request_files", "get_pull_request_diff", "list_pull_requests"]

    asyncio.run(scenario())


def test_hiding_tools_opens_no_approval_for_its_probes(tmp_path: Path, sidecar: Server) -> None:
    async def scenario() -> None:
        async with gateway(tmp_path, sidecar.address, "release-bot", "--hide-denied-tools",
                           "--session-id", "s-probe") as gw:
            listed = [t.name for t in (await gw.session.list_tools()).tools]
        assert "merge_pull_request" in listed  # it needs a person, so it is not hidden
        probes = logged(sidecar, "s-probe")
        assert probes and all(p["dry_run"] and p["input"]["dry_run"] for p in probes)
        merge = [p for p in probes if p["input"]["tool"]["name"] == "merge_pull_request"]
        assert [(p["decision"], p["approval_id"]) for p in merge] == [("require_approval", "")]
        request = approval_pb2.ListApprovalsRequest(session_id="s-probe")
        assert not approver(sidecar).ListApprovals(request, timeout=10, metadata=sidecar.admin_metadata).approvals

    asyncio.run(scenario())


def test_sidecar_unreachable_denies_every_call_with_a_clear_tool_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with gateway(tmp_path, "127.0.0.1:9", "code-reviewer", "--timeout", "0.5",
                           "--hide-denied-tools") as gw:
            # Nothing is hidden on no answer; the calls are what is denied.
            assert len((await gw.session.list_tools()).tools) == 7
            result = await gw.call("get_pull_request", PR)
            assert gw.upstream_calls() == []
        assert result.is_error
        meta = tollgate_meta(result)
        assert meta["failed_closed"] is True and meta["decision_id"] == ""
        assert [r["code"] for r in meta["reasons"]] == ["sidecar_unavailable"]
        assert "127.0.0.1:9" in text(result) and "fail closed" in text(result)

    asyncio.run(scenario())


def test_resources_prompts_and_change_notifications_are_forwarded(tmp_path: Path, sidecar: Server) -> None:
    async def scenario() -> None:
        async with gateway(tmp_path, sidecar.address, "code-reviewer") as gw:
            resources = await gw.session.list_resources()
            assert [str(r.uri) for r in resources.resources] == ["repo://acme/readme", "repo://acme/exit"]
            read = await gw.session.read_resource("repo://acme/readme")
            assert [c.text for c in read.contents if isinstance(c, types.TextResourceContents)] == [
                "upstream README of acme/app"]
            prompts = await gw.session.list_prompts()
            assert [p.name for p in prompts.prompts] == ["review"]
            prompt = await gw.session.get_prompt("review", {"pr": "42"})
            assert [m.content.text for m in prompt.messages if isinstance(m.content, types.TextContent)] == [
                "upstream prompt: review pull request 42"]

            listed = await gw.call("list_pull_requests", {"owner": "acme", "repo": "app"})
            assert not listed.is_error
            for _ in range(100):
                if "notifications/tools/list_changed" in gw.notifications:
                    break
                await asyncio.sleep(0.05)
            assert gw.notifications == ["notifications/message", "notifications/tools/list_changed"]

    asyncio.run(scenario())


def test_progress_comes_through_and_a_cancelled_call_is_cancelled_upstream(tmp_path: Path, sidecar: Server) -> None:
    async def scenario() -> None:
        async with gateway(tmp_path, sidecar.address, "code-reviewer") as gw:
            seen: list[tuple[float, float | None, str | None]] = []

            async def on_progress(progress: float, total: float | None, message: str | None) -> None:
                seen.append((progress, total, message))

            files = await gw.session.call_tool("get_pull_request_files", PR, progress_callback=on_progress)
            assert text(files) == "upstream files: a.py, b.py"
            assert seen == [(1, 2, "first file"), (2, 2, "second file")]

            with pytest.raises(MCPError):  # the client gives up after 1 s and says so (notifications/cancelled)
                await gw.session.call_tool("get_pull_request_diff", PR, read_timeout_seconds=1)
            for _ in range(100):
                if "cancelled:get_pull_request_diff" in gw.upstream_calls():
                    break
                await asyncio.sleep(0.05)
            assert gw.upstream_calls() == ["get_pull_request_files", "get_pull_request_diff",
                                           "cancelled:get_pull_request_diff"]

    asyncio.run(scenario())


def test_the_gateway_asks_an_mtls_sidecar_with_its_agents_certificate(tmp_path: Path) -> None:
    reviewer_id = "spiffe://acme/agents/code-reviewer"
    ca = TestCA(tmp_path / "pki")
    cert, reviewer = ca.server(), ca.client(reviewer_id)
    config = tmp_path / "tollgate.yaml"
    config.write_text(json.dumps({"tls_cert": str(cert.cert), "tls_key": str(cert.key),
                                  "tls_client_ca": str(ca.cert), "tls_require_client_cert": True,
                                  "callers": [{"id": reviewer_id, "agents": ["code-reviewer"]}]}))
    sidecar = start_server(tmp_path / "data", extra=["--config", str(config)],
                           credentials=grpc.ssl_channel_credentials(ca.cert.read_bytes(), *reviewer.pair()))
    tls = ["--tls-ca", str(ca.cert), "--tls-cert", str(reviewer.cert), "--tls-key", str(reviewer.key)]

    async def scenario() -> None:
        async with gateway(tmp_path, sidecar.address, "code-reviewer", "--session-id", "s-mtls", *tls) as gw:
            assert not (await gw.call("get_pull_request", PR)).is_error
        # Without its certificate the gateway gets no answer from this sidecar: denied, fail closed.
        async with gateway(tmp_path, sidecar.address, "code-reviewer", "--tls-ca", str(ca.cert), "--timeout",
                           "0.5") as gw:
            refused = await gw.call("get_pull_request", PR)
            assert refused.is_error and tollgate_meta(refused)["failed_closed"] is True
            assert gw.upstream_calls() == []

    try:
        asyncio.run(scenario())
        [record] = logged(sidecar, "s-mtls")
        assert (record["decision"], record["requested_by"]) == ("allow", reviewer_id)
    finally:
        sidecar.terminate()


def test_the_gateway_presents_its_caller_token(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    (tmp_path / "keys").mkdir()
    (tmp_path / "keys" / "gw-1.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    config = tmp_path / "tollgate.yaml"
    config.write_text(json.dumps({"token_keys": str(tmp_path / "keys"), "token_issuer": "https://idp.example",
                                  "token_audience": "tollgate",
                                  "callers": [{"id": "jwt:gateway-7", "agents": ["code-reviewer"]}]}))
    sidecar = start_server(tmp_path / "data", extra=["--config", str(config)])
    token = tmp_path / "caller.jwt"
    token.write_text(jwt.encode({"iss": "https://idp.example", "aud": "tollgate", "sub": "gateway-7",
                                 "exp": int(time.time() + 300)}, key, algorithm="ES256", headers={"kid": "gw-1"}))

    async def scenario() -> None:
        async with gateway(tmp_path, sidecar.address, "code-reviewer", "--session-id", "s-jwt",
                           "--caller-token-file", str(token)) as gw:
            assert not (await gw.call("get_pull_request", PR)).is_error
        async with gateway(tmp_path, sidecar.address, "code-reviewer", "--session-id", "s-anon") as gw:
            anonymous = await gw.call("get_pull_request", PR)
            assert anonymous.is_error and gw.upstream_calls() == []

    try:
        asyncio.run(scenario())
        [record] = logged(sidecar, "s-jwt")
        assert (record["decision"], record["requested_by"]) == ("allow", "jwt:gateway-7")
    finally:
        sidecar.terminate()


def test_streamable_http_upstream(tmp_path: Path, sidecar: Server) -> None:
    upstream = subprocess.Popen([*UPSTREAM, "--http"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        assert upstream.stdout is not None
        line = upstream.stdout.readline()
        assert line.startswith("listening on "), line
        url = line.split()[2]

        async def scenario() -> None:
            async with gateway(tmp_path, sidecar.address, "code-reviewer", upstream=["--upstream-url", url]) as gw:
                init = gw.session.initialize_result
                assert init is not None and init.server_info.name == "github"
                allowed = await gw.call("search_code", {"query": "flaky"})
                assert text(allowed) == "upstream found 3 matches for 'flaky'"
                denied = await gw.call("merge_pull_request", PR)
                assert denied.is_error and tollgate_meta(denied)["reasons"][0]["code"] == "tool_not_in_manifest"

        asyncio.run(scenario())
    finally:
        upstream.terminate()
        upstream.wait(10)


def test_the_readme_client_configuration_runs_as_written(tmp_path: Path, sidecar: Server) -> None:
    """The README's .mcp.json entry, with this test's sidecar and the test upstream in place of GitHub's."""
    section = readme_section("MCP gateway")
    [block] = re.findall(r"```json\n(.*?)```", section, re.S)
    entry = json.loads(block)["mcpServers"]["github"]
    assert entry["command"] == "tollgate" and entry["args"][0] == "mcp-gateway"
    args = entry["args"][1:entry["args"].index("--")]
    options = dict(zip(args[::2], args[1::2], strict=False))
    assert options["--server"] == "127.0.0.1:50051" and options["--mcp-server-name"] == "github"
    agent = options["--agent-id"]
    # The gateway() helper gives --server (this test's sidecar) and --agent-id itself; the rest as written.
    flags = [a for i, a in enumerate(args) if a not in ("--server", "--agent-id")
             and (i == 0 or args[i - 1] not in ("--server", "--agent-id"))]

    async def scenario() -> None:
        async with gateway(tmp_path, sidecar.address, agent, *flags) as gw:
            assert "merge_pull_request" not in [t.name for t in (await gw.session.list_tools()).tools]
            assert not (await gw.call("get_pull_request", PR)).is_error
            assert (await gw.call("merge_pull_request", PR)).is_error

    asyncio.run(scenario())


def test_the_gateway_stops_when_its_upstream_exits(sidecar: Server) -> None:
    """Reading repo://acme/exit makes the upstream exit: the read in flight gets an error, then the gateway exits
    1 saying why, without waiting for its client to write again (stdin stays open)."""
    gw = subprocess.Popen([*TOLLGATE, "mcp-gateway", "--server", sidecar.address, "--agent-id", "code-reviewer",
                           "--", *UPSTREAM], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=ROOT)
    assert gw.stdin is not None and gw.stdout is not None

    def send(message: dict[str, Any]) -> None:
        assert gw.stdin is not None
        gw.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
        gw.stdin.flush()

    try:
        send({"id": 1, "method": "initialize", "params": {"protocolVersion": "2025-11-25", "capabilities": {},
                                                          "clientInfo": {"name": "test", "version": "1"}}})
        assert json.loads(gw.stdout.readline())["result"]["serverInfo"]["name"] == "github"
        send({"method": "notifications/initialized"})
        send({"id": 2, "method": "resources/read", "params": {"uri": "repo://acme/exit"}})
        assert json.loads(gw.stdout.readline())["error"]["message"] == "Connection closed"
        assert gw.wait(20) == 1
        assert gw.stderr is not None
        said = gw.stderr.read()
        assert said.endswith(f"tollgate mcp-gateway: upstream MCP server `{' '.join(UPSTREAM)}`: closed the "
                             "connection (it exited or hung up); the gateway stopped, so that its client sees "
                             "it\n"), said
    finally:
        if gw.poll() is None:
            gw.kill()
            gw.wait()


@pytest.mark.parametrize(("args", "says"), [
    (["--agent-id", "a"], "either as `-- COMMAND ARGS...` or as --upstream-url URL"),
    (["--agent-id", "a", "--upstream-url", "http://127.0.0.1:9/mcp", "--", "x"], "exactly one"),
    (["--agent-id", "a", "--upstream-header", "X: y", "--", "x"], "--upstream-header applies to --upstream-url"),
    (["--agent-id", "a", "--", str(ROOT / "no-such-mcp-server")], "no-such-mcp-server"),
    (["--agent-id", "a", "--upstream-start-timeout", "1", "--", "sleep", "30"],
     "upstream MCP server `sleep 30`: no answer to initialize within 1 s"),
    (["--agent-id", "a", "--", "true"], "upstream MCP server `true`: MCPError: Connection closed"),
    (["--agent-id", "a", "--tls-ca", "ca.pem", "--tls-cert", "c.pem", "--", "true"],
     "--tls-cert and --tls-key go together"),
    (["--agent-id", "a", "--caller-token-file", "/no/such.jwt", "--", "true"],
     "--caller-token-file /no/such.jwt: No such file or directory"),
], ids=["no-upstream", "two-upstreams", "header-without-url", "command-not-found", "upstream-silent",
        "upstream-exits-at-once", "half-a-client-certificate", "no-token-file"])
def test_the_command_says_what_is_wrong_and_exits_1(args: list[str], says: str) -> None:
    done = subprocess.run([*TOLLGATE, "mcp-gateway", *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, cwd=ROOT)
    assert done.returncode == 1, done
    assert says in done.stderr and done.stderr.startswith("tollgate mcp-gateway: "), done.stderr


def pinned_library(tmp_path: Path, pins: dict[str, str]) -> Path:
    """The default library with these catalog pins added (tool id -> pin)."""
    root = tmp_path / "pinned-rego"
    shutil.copytree(REGO, root)
    catalog = root / "catalog" / "tools" / "data.yaml"
    text = catalog.read_text()
    for tool_id, pin in pins.items():
        assert f"\n{tool_id}:\n" in text
        text = text.replace(f"\n{tool_id}:\n", f"\n{tool_id}:\n  pin: {pin}\n")
    catalog.write_text(text)
    return root


def print_pins(*env: str) -> str:
    done = subprocess.run([*TOLLGATE, "mcp-gateway", "--print-pins", "--", *UPSTREAM], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=ROOT,
                          env={**os.environ, **dict(e.split("=", 1) for e in env)})
    assert done.returncode == 0, done
    return done.stdout


def test_print_pins_gives_the_catalog_lines_of_every_upstream_tool(tmp_path: Path) -> None:
    listed = asyncio.run(direct(lambda s: s.list_tools())).tools
    printed = print_pins()
    assert printed.startswith("# Pins of the tools of MCP server github")
    for tool in listed:
        assert f"\ngithub/{tool.name}:\n" in printed and f"  pin: {pin_of(tool)}\n" in printed
    assert "  # annotations (the upstream's claims): readOnlyHint=true, openWorldHint=true\n" in printed
    assert f"pin: {pin_of(next(t for t in listed if t.name == 'search_code'))}" not in print_pins(
        "MCP_UPSTREAM_SWAP_TOOL=1")


def test_a_tool_whose_definition_changed_upstream_is_denied_until_the_catalog_pins_the_new_one(
        tmp_path: Path) -> None:
    listed = {t.name: t for t in asyncio.run(direct(lambda s: s.list_tools())).tools}
    reviewed = {"github/search_code": pin_of(listed["search_code"]),
                "github/get_pull_request": pin_of(listed["get_pull_request"])}
    sidecar = start_server(tmp_path / "data", bundle=pinned_library(tmp_path, reviewed))
    query = {"query": "token"}

    async def scenario() -> None:
        async with gateway(tmp_path, sidecar.address, "code-reviewer") as gw:
            same = await gw.call("search_code", query)
            assert not same.is_error and gw.upstream_calls() == ["search_code"]
        async with gateway(tmp_path, sidecar.address, "code-reviewer", "--session-id", "s-swap",
                           env={"MCP_UPSTREAM_SWAP_TOOL": "1"}) as gw:
            swapped = await gw.call("search_code", query)
            unchanged = await gw.call("get_pull_request", PR)
            assert gw.upstream_calls() == ["get_pull_request"]
        assert swapped.is_error
        [reason] = tollgate_meta(swapped)["reasons"]
        assert reason["code"] == "tool_definition_changed"
        assert reviewed["github/search_code"] in reason["message"]
        assert not unchanged.is_error
        first = logged(sidecar, "s-swap")[0]
        assert first["decision"] == "deny" and first["input"]["context"]["mcp_tool"]["listed"] is True
        new_pin = first["input"]["context"]["mcp_tool"]["pin"]
        assert new_pin != reviewed["github/search_code"] and f"pin: {new_pin}" in print_pins("MCP_UPSTREAM_SWAP_TOOL=1")

    try:
        asyncio.run(scenario())
    finally:
        sidecar.terminate()


@pytest.mark.parametrize("version", HANDSHAKE_PROTOCOL_VERSIONS)
def test_every_handshake_version_the_sdk_speaks_is_negotiated(sidecar: Server, version: str) -> None:
    """(2026-07-28, without the handshake: test_a_2026_era_client_gets_the_same_gate_and_the_upstreams_results.)"""
    gw = subprocess.Popen([*TOLLGATE, "mcp-gateway", "--server", sidecar.address, "--agent-id", "code-reviewer",
                           "--", *UPSTREAM], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                          text=True, cwd=ROOT)
    assert gw.stdin is not None and gw.stdout is not None
    try:
        for message in ({"id": 1, "method": "initialize", "params": {
                "protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "test", "version": "1"}}},
                {"method": "notifications/initialized"},
                {"id": 2, "method": "tools/call", "params": {"name": "get_pull_request", "arguments": PR}}):
            gw.stdin.write(json.dumps({"jsonrpc": "2.0", **message}) + "\n")
            gw.stdin.flush()
        assert json.loads(gw.stdout.readline())["result"]["protocolVersion"] == version
        called = json.loads(gw.stdout.readline())["result"]
        assert called.get("isError") is not True and "upstream PR 42" in json.dumps(called)
    finally:
        gw.kill()
        gw.wait()


def test_the_readme_print_pins_example_prints_what_it_shows() -> None:
    section = readme_section("MCP gateway")
    [block] = [b for b in re.findall(r"```sh\n(.*?)```", section, re.S) if "--print-pins" in b]
    command, *shown = block.splitlines()
    assert command.startswith("$ tollgate mcp-gateway --print-pins ")
    argv = command[2:].split("#", 1)[0].split()
    assert argv[-2:] == ["python", "tests/mcp_upstream.py"]
    done = subprocess.run([*TOLLGATE, *argv[1:-2], sys.executable, "tests/mcp_upstream.py"], capture_output=True,
                          text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=ROOT)
    assert done.returncode == 0, done
    assert done.stdout.startswith(shown[0].split("...")[0].replace("python", sys.executable)), done.stdout
    assert "\n".join(shown[2:]) + "\n" in done.stdout, done.stdout
