"""Call Tollgate from Python: ask before each tool call, model call and spend, and get a Decision.

    from tollgate.client import Client, Principal

    with Client("127.0.0.1:50051") as tollgate:
        decision = tollgate.authorize_tool(Principal("code-reviewer", session_id=run_id), "github",
                                           "get_pull_request", {"number": 7}, resources=["repo:payments-api"])
        if not decision.allowed:
            raise PermissionError(decision.message)

Fail closed: when the sidecar does not answer in time, the answer is DENY (failed_closed=True, reason
sidecar_unavailable), never an exception, unless the client is made with fail_closed=False.
`tollgate.client.openai_agents` (imported on its own) connects the OpenAI Agents SDK.
"""

from __future__ import annotations

from tollgate.client._async import AsyncClient
from tollgate.client._core import DEFAULT_TIMEOUT, budget_request, model_request, tool_request
from tollgate.client._errors import Denied, InvalidRequest, NotFound, SidecarUnavailable, TollgateError
from tollgate.client._outcome import OutcomeReceipt
from tollgate.client._reservation import Reservation
from tollgate.client._sync import Client
from tollgate.client._values import (
    SIDECAR_ERROR,
    SIDECAR_UNAVAILABLE,
    TLS,
    ApprovalState,
    Decision,
    Principal,
    Reason,
    UsageReport,
    Verdict,
)
from tollgate.net import Backoff

__all__ = [
    "DEFAULT_TIMEOUT",
    "SIDECAR_ERROR",
    "SIDECAR_UNAVAILABLE",
    "TLS",
    "ApprovalState",
    "AsyncClient",
    "Backoff",
    "Client",
    "Decision",
    "Denied",
    "InvalidRequest",
    "NotFound",
    "OutcomeReceipt",
    "Principal",
    "Reason",
    "Reservation",
    "SidecarUnavailable",
    "TollgateError",
    "UsageReport",
    "Verdict",
    "budget_request",
    "model_request",
    "tool_request",
]
