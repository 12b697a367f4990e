"""tollgate.client.openai_agents with the real SDK objects (no model is called) against a real sidecar."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from agents import Agent, FunctionTool, RunContextWrapper, function_tool
from agents.tool_context import ToolContext
from agents.tool_guardrails import ToolGuardrailFunctionOutput, ToolInputGuardrailData

from tests.conftest import Server, start_server
from tests.people import as_person
from tollgate.client import AsyncClient, Decision, Principal
from tollgate.client.openai_agents import ToolGate
from tollgate.v1 import approval_pb2, approval_pb2_grpc

PR = {"owner": "acme", "repo": "app", "pullNumber": 7}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("agents")
    started = start_server(root / "data", config={"approver_groups": {"release-managers": ["rita"]}})
    yield started
    started.terminate()


def github_tools() -> dict[str, FunctionTool]:
    @function_tool
    def get_pull_request(owner: str, repo: str, pullNumber: int) -> str:  # noqa: N803 - the MCP tool's name
        """Read a pull request."""
        return "PR 7"

    @function_tool
    def merge_pull_request(owner: str, repo: str, pullNumber: int) -> str:  # noqa: N803
        """Merge a pull request."""
        return "merged"

    return {"get_pull_request": get_pull_request, "merge_pull_request": merge_pull_request}


async def needs_approval(tool: FunctionTool, call_id: str) -> bool:
    check = tool.needs_approval
    assert callable(check)
    answer: bool = await check(RunContextWrapper(context=None), PR, call_id)
    return answer


async def guard(gate: ToolGate, tool: FunctionTool, call_id: str) -> ToolGuardrailFunctionOutput:
    context = ToolContext(context=None, tool_name=tool.name, tool_call_id=call_id, tool_arguments=json.dumps(PR))
    return await gate.guardrail.run(ToolInputGuardrailData(context=context, agent=Agent(name="reviewer")))


def run(agent_id: str, address: str, check: Any, **gate_options: Any) -> Any:
    async def main() -> Any:
        async with AsyncClient(address, timeout=10) as client:
            gate = ToolGate(client, Principal(agent_id, session_id="agents-1"), server="github", **gate_options)
            tools = {name: gate.protect(tool) for name, tool in github_tools().items()}
            return await check(gate, tools)

    return asyncio.run(main())


def test_an_allowed_tool_needs_no_approval_and_passes_the_guardrail(server: Server) -> None:
    async def check(gate: ToolGate, tools: dict[str, FunctionTool]) -> tuple[bool, ToolGuardrailFunctionOutput]:
        tool = tools["get_pull_request"]
        assert tool.tool_input_guardrails == [gate.guardrail]
        return await needs_approval(tool, "call_1"), await guard(gate, tool, "call_1")

    approval, output = run("code-reviewer", server.address, check)
    assert approval is False and output.behavior["type"] == "allow"
    assert isinstance(output.output_info, Decision) and output.output_info.decision_id


def test_a_denied_tool_is_rejected_with_the_reasons_for_the_model(server: Server) -> None:
    async def check(gate: ToolGate, tools: dict[str, FunctionTool]) -> tuple[bool, ToolGuardrailFunctionOutput]:
        tool = tools["merge_pull_request"]
        return await needs_approval(tool, "call_2"), await guard(gate, tool, "call_2")

    approval, output = run("code-reviewer", server.address, check)
    assert approval is True  # anything but allow stops the run for a person
    assert output.behavior["type"] == "reject_content"
    assert "tool_not_in_manifest" in output.behavior["message"]  # type: ignore[typeddict-item]


def test_on_deny_raise_stops_the_run(server: Server) -> None:
    async def check(gate: ToolGate, tools: dict[str, FunctionTool]) -> ToolGuardrailFunctionOutput:
        return await guard(gate, tools["merge_pull_request"], "call_3")

    assert run("code-reviewer", server.address, check, on_deny="raise").behavior["type"] == "raise_exception"


def test_require_approval_interrupts_then_the_approved_call_runs_once(server: Server) -> None:
    stub = approval_pb2_grpc.ApprovalServiceStub(server.channel)

    async def check(gate: ToolGate, tools: dict[str, FunctionTool]) -> list[Any]:
        tool = tools["merge_pull_request"]
        interrupted = await needs_approval(tool, "call_4")
        approval_id = gate.approval_id("call_4")
        stub.Decide(approval_pb2.DecideRequest(id=approval_id, approve=True, reason="ok"), timeout=10,
                    metadata=as_person(server, "rita"))
        first = await guard(gate, tool, "call_4")
        again = await guard(gate, tool, "call_4")  # the approval was used: a new ask is pending again
        return [interrupted, approval_id, first, again]

    interrupted, approval_id, first, again = run("release-bot", server.address, check)
    assert interrupted is True and approval_id.startswith("apr_")
    assert first.behavior["type"] == "allow"
    assert again.behavior["type"] == "reject_content"


def test_sidecar_down_interrupts_and_rejects() -> None:
    async def check(gate: ToolGate, tools: dict[str, FunctionTool]) -> tuple[bool, ToolGuardrailFunctionOutput]:
        tool = tools["get_pull_request"]
        return await needs_approval(tool, "call_5"), await guard(gate, tool, "call_5")

    async def main() -> tuple[bool, ToolGuardrailFunctionOutput]:
        async with AsyncClient("127.0.0.1:1", timeout=0.3) as client:
            gate = ToolGate(client, Principal("code-reviewer"), server="github")
            tools = {name: gate.protect(tool) for name, tool in github_tools().items()}
            return await check(gate, tools)

    approval, output = asyncio.run(main())
    assert approval is True and output.behavior["type"] == "reject_content"
    assert "sidecar_unavailable" in output.behavior["message"]  # type: ignore[typeddict-item]
