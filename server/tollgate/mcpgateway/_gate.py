"""The policy side of the gateway: one decision per tools/call (waiting on approvals), and which tools to hide."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from tollgate.client import ApprovalState, Decision, Principal, Reason, TollgateError
from tollgate.encoding import canonical_json

logger = logging.getLogger(__name__)

#: Denials that hold whatever the arguments are, so a tool denied with only these is one the agent can never
#: use: no manifest for the agent, a tool the catalog does not know, a tool missing from the agent's manifest.
ARGUMENT_INDEPENDENT = frozenset({"unknown_agent", "unknown_tool", "tool_not_in_manifest"})
#: The approval presented is no longer any good (used once already, expired, or for another request): the
#: call is asked about afresh, which opens a new approval if the policy still wants one.
_STALE_APPROVAL = frozenset({"approval_used", "approval_expired", "approval_mismatch"})
_SETTLED_APPROVAL = _STALE_APPROVAL | {"approval_denied"}
#: Reason code of the DENY the gateway makes itself when the client raised (a request the sidecar refused).
GATEWAY_ERROR = "gateway_error"
#: Approvals remembered for retries, at most (the oldest is forgotten first: its call then opens a new one).
MAX_REMEMBERED_APPROVALS = 1024
#: The request context every call carries, so policy (and people reading the log) can tell how it was asked.
CALL_CONTEXT: Mapping[str, Any] = {"mcp": "tools/call"}
LIST_CONTEXT: Mapping[str, Any] = {"mcp": "tools/list"}


class DecisionSource(Protocol):
    """What the gate needs of a Tollgate client (tollgate.client.AsyncClient has it)."""

    async def authorize_tool(self, principal: Principal, server: str, name: str,
                             arguments: Mapping[str, Any] | None = None, *, context: Mapping[str, Any] | None = None,
                             approval_id: str | None = None, dry_run: bool = False) -> Decision: ...

    async def wait_for_approval(self, approval_id: str, timeout: float) -> ApprovalState: ...


@dataclass(frozen=True)
class GateSettings:
    """How the gate asks: as whom, for which MCP server, and how long a call may wait for a person."""

    principal: Principal
    #: ToolCall.server in every request: the MCP server's name as the catalog knows it (e.g. "github").
    server_name: str
    #: Seconds a call that needs approval waits for it before answering a tool error naming the approval.
    approval_wait: float = 0.0


class ToolGate:
    """Decides tools/call and tools/list entries through Tollgate. Never raises on the decision path: any
    failure is a DENY (the client's own when the sidecar is down, GATEWAY_ERROR when the client raised)."""

    def __init__(self, source: DecisionSource, settings: GateSettings) -> None:
        self._source = source
        self._settings = settings
        # The approval opened for a request (tool + arguments), kept so that the model calling the same tool
        # again after a person approved presents it: a plain re-ask would open a second approval instead.
        self._approvals: dict[str, str] = {}

    @property
    def settings(self) -> GateSettings:
        return self._settings

    async def decide_call(self, name: str, arguments: Mapping[str, Any], *,
                          tool: Mapping[str, Any] | None = None) -> Decision:
        """The decision for one tools/call: allow means forward it, anything else means answer a tool error.
        tool: the upstream's definition as the policy sees it (context.mcp_tool: pin, annotations, listed)."""
        context = CALL_CONTEXT if tool is None else {**CALL_CONTEXT, "mcp_tool": dict(tool)}
        key = _request_key(name, arguments)
        remembered = self._approvals.get(key, "")
        decision = await self._ask(name, arguments, context, approval_id=remembered)
        if remembered and decision.decision == "deny" and _codes(decision) & _STALE_APPROVAL:
            self._approvals.pop(key, None)
            decision = await self._ask(name, arguments, context)
        if decision.decision == "require_approval" and decision.approval_id:
            self._remember(key, decision.approval_id)
            if self._settings.approval_wait > 0:
                decision = await self._wait_then_ask_again(name, arguments, decision, context)
        if decision.allowed or _codes(decision) & _SETTLED_APPROVAL:
            # Allowed (the approval is now used) or its approval settled otherwise: a retry starts over. A deny
            # for another reason (a kill switch, say) keeps it, for when that reason is gone.
            self._approvals.pop(key, None)
        return decision

    def _remember(self, key: str, approval_id: str) -> None:
        self._approvals.pop(key, None)  # re-inserted last: the order is the order of last use
        self._approvals[key] = approval_id
        while len(self._approvals) > MAX_REMEMBERED_APPROVALS:
            self._approvals.pop(next(iter(self._approvals)))

    async def hidden_tools(self, names: Sequence[str]) -> frozenset[str]:
        """The tools the policy never allows this agent, whatever the arguments: each is asked about once, as a
        dry run (no arguments, context {"mcp": "tools/list"}: logged, but opening no approval), concurrently;
        any other answer, a failure included, shows it."""
        decisions = await asyncio.gather(*(self._ask(n, {}, LIST_CONTEXT, dry_run=True) for n in names))
        return frozenset(n for n, d in zip(names, decisions, strict=True) if _never_allowed(d))

    async def _wait_then_ask_again(self, name: str, arguments: Mapping[str, Any], asked: Decision,
                                   context: Mapping[str, Any]) -> Decision:
        try:
            state = await self._source.wait_for_approval(asked.approval_id, self._settings.approval_wait)
        except TollgateError as exc:
            logger.warning("waiting for approval %s failed: %s", asked.approval_id, exc)
            return asked
        if state.status == "pending":
            return asked
        # Decided (or expired): the answer that counts is the sidecar's, logged, for this very request.
        return await self._ask(name, arguments, context, approval_id=asked.approval_id)

    async def _ask(self, name: str, arguments: Mapping[str, Any], context: Mapping[str, Any], *,
                   approval_id: str = "", dry_run: bool = False) -> Decision:
        try:
            return await self._source.authorize_tool(self._settings.principal, self._settings.server_name, name,
                                                      arguments, context=context, approval_id=approval_id or None,
                                                      dry_run=dry_run)
        except TollgateError as exc:
            # The client raises only for what is not a policy answer (a request the sidecar refused as
            # malformed, say): still no decision, so still a DENY.
            return Decision(decision="deny", reasons=(Reason(GATEWAY_ERROR, f"no decision: {exc}"),),
                            failed_closed=True, error=str(exc))


def _never_allowed(decision: Decision) -> bool:
    codes = _codes(decision)
    return decision.decision == "deny" and not decision.failed_closed and bool(codes) and codes <= ARGUMENT_INDEPENDENT


def _codes(decision: Decision) -> frozenset[str]:
    return frozenset(r.code for r in decision.reasons)


def _request_key(name: str, arguments: Mapping[str, Any]) -> str:
    return canonical_json([name, arguments])


def refusal_text(decision: Decision, *, tool: str) -> str:
    """What the model reads when a call is not forwarded: the verdict, the reasons, the decision id, and for an
    approval what a person has to do and that the same call can then be made again."""
    reasons = "\n".join(f"- {r.code}: {r.message}" for r in decision.reasons)
    logged = f" (decision {decision.decision_id})" if decision.decision_id else ""
    if decision.decision == "require_approval":
        return (f"Tollgate: {tool} needs a person's approval; approval {decision.approval_id} is pending{logged}.\n"
                f"{reasons}\n"
                f"An approver can approve it with `tollgate approvals approve {decision.approval_id} "
                "--token-file YOUR_TOKEN_FILE`. "
                "Once approved, make the same call again (same arguments) and it will go through.")
    if decision.failed_closed:
        return (f"Tollgate: {tool} was not called: no policy decision could be made, so the call is denied "
                f"(fail closed).\n{reasons}\nEvery tool call is denied until the Tollgate sidecar answers again.")
    return f"Tollgate denied {tool}{logged}.\n{reasons}"


def decision_meta(decision: Decision) -> dict[str, Any]:
    """The decision as data, for the tool result's _meta (key "tollgate/decision")."""
    meta: dict[str, Any] = {"decision": decision.decision, "decision_id": decision.decision_id,
                            "reasons": [{"code": r.code, "message": r.message} for r in decision.reasons]}
    if decision.approval_id:
        meta["approval_id"] = decision.approval_id
    if decision.failed_closed:
        meta["failed_closed"] = True
    return meta
