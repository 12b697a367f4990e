"""The MCP gateway's pure parts: what goes upstream, what the model reads, which denials hide a tool, stdin lines.
(The gateway as a whole is tested end to end in tests/e2e/test_mcp_gateway.py.)"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest

from tollgate.client import Decision, Reason
from tollgate.mcpgateway._gate import _never_allowed, decision_meta, refusal_text
from tollgate.mcpgateway._proxy import _upstream_params
from tollgate.mcpgateway._stdio import StdinLines


@pytest.mark.parametrize(("params", "upstream"), [
    (None, None),
    ({"name": "t", "arguments": {"a": None}}, {"name": "t", "arguments": {"a": None}}),
    ({"name": "t", "_meta": {"progressToken": 7}}, {"name": "t"}),
    ({"name": "t", "_meta": {"progressToken": 7, "io.modelcontextprotocol/protocolVersion": "2026-07-28",
                             "io.modelcontextprotocol/clientInfo": {}, "vendor.example/trace": "abc"}},
     {"name": "t", "_meta": {"vendor.example/trace": "abc"}}),
], ids=["none", "as-is", "own-progress-token", "reserved-keys"])
def test_upstream_params_keep_the_request_less_the_clients_own_connection(params: dict[str, Any] | None,
                                                                          upstream: dict[str, Any] | None) -> None:
    assert _upstream_params(params) == upstream


def deny(*codes: str, failed_closed: bool = False) -> Decision:
    return Decision("deny", decision_id="" if failed_closed else "d-1",
                    reasons=tuple(Reason(c, f"{c} message") for c in codes), failed_closed=failed_closed)


@pytest.mark.parametrize(("decision", "hidden"), [
    (deny("tool_not_in_manifest"), True),
    (deny("unknown_tool"), True),
    (deny("unknown_agent", "unknown_tool"), True),
    (deny("tool_not_in_manifest", "killed"), False),  # a kill switch can be lifted
    (deny("invalid_tool_arguments"), False),  # the arguments decide
    (deny(), False),
    (deny("sidecar_unavailable", failed_closed=True), False),
    (Decision("require_approval", decision_id="d-2", reasons=(Reason("destructive_action", ""),)), False),
    (Decision("allow", decision_id="d-3"), False),
], ids=["not-in-manifest", "unknown-tool", "unknown-agent", "killed-too", "arguments", "no-reason", "no-answer",
        "approval", "allow"])
def test_only_denials_that_hold_whatever_the_arguments_hide_a_tool(decision: Decision, hidden: bool) -> None:
    assert _never_allowed(decision) is hidden


def test_refusals_name_the_decision_the_reasons_and_what_to_do() -> None:
    denied = refusal_text(deny("tool_not_in_manifest", "killed"), tool="github/merge_pull_request")
    assert denied == ("Tollgate denied github/merge_pull_request (decision d-1).\n"
                      "- tool_not_in_manifest: tool_not_in_manifest message\n- killed: killed message")
    pending = Decision("require_approval", decision_id="d-2", approval_id="apr_1",
                       reasons=(Reason("destructive_action", "merging is destructive"),))
    text = refusal_text(pending, tool="github/merge_pull_request")
    assert "approval apr_1 is pending (decision d-2)" in text
    assert "`tollgate approvals approve apr_1 --token-file YOUR_TOKEN_FILE`" in text and "same call again" in text
    closed = refusal_text(deny("sidecar_unavailable", failed_closed=True), tool="github/x")
    assert "fail closed" in closed and "(decision" not in closed
    assert decision_meta(pending) == {"decision": "require_approval", "decision_id": "d-2", "approval_id": "apr_1",
                                      "reasons": [{"code": "destructive_action",
                                                   "message": "merging is destructive"}]}
    assert decision_meta(deny("sidecar_unavailable", failed_closed=True))["failed_closed"] is True


def test_stdin_lines_read_a_pipe_line_by_line_and_leave_files_to_the_sdk(tmp_path: Path) -> None:
    async def scenario() -> None:
        read_end, write_end = os.pipe()
        try:
            lines = await StdinLines.open(read_end)
            assert lines is not None
            os.write(write_end, b'{"a": 1}\n{"b": "\xc3\xa9"}\n{"c"')
            os.close(write_end)
            assert [line async for line in lines] == ['{"a": 1}\n', '{"b": "é"}\n', '{"c"']
        finally:
            os.close(read_end)
        file = tmp_path / "messages.jsonl"
        file.write_text("{}\n")
        with file.open("rb") as f:
            assert await StdinLines.open(f.fileno()) is None
        with open(os.devnull, "rb") as null:
            assert await StdinLines.open(null.fileno()) is None

    asyncio.run(scenario())
