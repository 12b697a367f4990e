"""Tollgate for the OpenAI Agents SDK: ask before each function tool runs (needs `openai-agents`).

    gate = ToolGate(AsyncClient("127.0.0.1:50051"), Principal("support-bot"), server="crm")
    agent = Agent(name="support", tools=[gate.protect(refund_order), gate.protect(lookup_order)])

protect() gives the tool two checks. `needs_approval` asks Tollgate when the model calls the tool: anything but
allow interrupts the run (RunResult.interruptions), so a require_approval reaches the application, which shows
the Tollgate approval id (ToolGate.approval_id) to a person who decides it in Tollgate (`tollgate approvals
approve`), then approves the interruption and resumes. The input guardrail asks again just before the tool
runs, presenting that approval: only an allow lets the tool run; otherwise the model gets the reasons instead
of the tool's output (or the run stops, with on_deny="raise"). With the sidecar down both answer deny.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Literal

from agents import FunctionTool, RunContextWrapper, ToolGuardrailFunctionOutput, ToolInputGuardrail
from agents.tool_guardrails import ToolInputGuardrailData

from tollgate.client._async import AsyncClient
from tollgate.client._core import reask, tool_request
from tollgate.client._values import Decision, Principal

#: A fixed principal, or one read from the run's context (e.g. the session and user of this run).
PrincipalSource = Principal | Callable[[RunContextWrapper[Any]], Principal]


class ToolGate:
    """Asks Tollgate about the tools it protects, as tools of `server` (catalog ids "<server>/<tool name>")."""

    def __init__(self, client: AsyncClient, principal: PrincipalSource, *, server: str,
                 on_deny: Literal["reject", "raise"] = "reject", approval_wait: float = 0.0) -> None:
        """on_deny: "reject" answers the model with the reasons in place of the tool's output; "raise" stops the
        run (ToolInputGuardrailTripwireTriggered). approval_wait: seconds the guardrail waits for a Tollgate
        approval still pending when the tool is about to run (0: reject at once)."""
        self.client = client
        self.server = server
        self._principal = principal
        self._on_deny = on_deny
        self._approval_wait = approval_wait
        # Tool call id → the approval Tollgate opened for it, so that the guardrail presents it.
        self._approvals: dict[str, str] = {}
        self.guardrail: ToolInputGuardrail[Any] = ToolInputGuardrail(self._check, name="tollgate")

    def protect(self, tool: FunctionTool) -> FunctionTool:
        """Give tool its Tollgate checks (needs_approval and the input guardrail); returns the same tool."""
        tool.needs_approval = self.needs_approval(tool.name)
        tool.tool_input_guardrails = [*(tool.tool_input_guardrails or []), self.guardrail]
        return tool

    def needs_approval(self, tool_name: str) -> Callable[[RunContextWrapper[Any], dict[str, Any], str], Any]:
        """The SDK's needs_approval callable for one tool: True unless Tollgate allows the call."""

        async def ask(context: RunContextWrapper[Any], arguments: dict[str, Any], call_id: str) -> bool:
            decision = await self._ask(context, tool_name, arguments, call_id)
            if decision.decision == "require_approval" and decision.approval_id:
                self._approvals[call_id] = decision.approval_id
            return not decision.allowed

        return ask

    def approval_id(self, call_id: str) -> str:
        """The Tollgate approval opened for a tool call (by its call id), to show the person who must decide."""
        return self._approvals.get(call_id, "")

    async def _check(self, data: ToolInputGuardrailData) -> ToolGuardrailFunctionOutput:
        tool = data.context
        try:
            arguments = json.loads(tool.tool_arguments or "{}")
        except ValueError as exc:
            return self._refuse(f"Tollgate: the arguments of {tool.tool_name} are not JSON ({exc}); not run", None)
        if not isinstance(arguments, dict):
            return self._refuse(f"Tollgate: the arguments of {tool.tool_name} are not a JSON object; not run", None)
        decision = await self._ask(tool, tool.tool_name, arguments, tool.tool_call_id)
        self._approvals.pop(tool.tool_call_id, None)  # an approval is used once; the call is over
        if decision.allowed:
            return ToolGuardrailFunctionOutput.allow(output_info=decision)
        return self._refuse(f"Tollgate did not allow {tool.tool_name}: {decision.decision}: {decision.message}",
                            decision)

    def _refuse(self, message: str, decision: Decision | None) -> ToolGuardrailFunctionOutput:
        if self._on_deny == "raise":
            return ToolGuardrailFunctionOutput.raise_exception(output_info=decision or message)
        return ToolGuardrailFunctionOutput.reject_content(message, output_info=decision)

    async def _ask(self, context: RunContextWrapper[Any], tool_name: str, arguments: dict[str, Any],
                   call_id: str) -> Decision:
        principal = self._principal(context) if callable(self._principal) else self._principal
        # The model's call id keys the request: asking twice about one call is one decision in the log.
        request = tool_request(principal, self.server, tool_name, arguments,
                               request_id=f"openai-agents:{call_id}" if call_id else None)
        approval_id = self._approvals.get(call_id, "")
        if approval_id:
            return await self.client.authorize(reask(request, approval_id))
        if self._approval_wait > 0:
            return await self.client.authorize_with_approval(request, wait=self._approval_wait)
        return await self.client.authorize(request)
