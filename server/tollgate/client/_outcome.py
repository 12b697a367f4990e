"""ReportOutcome from the client: how a session, or one task of it, ended."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC

from tollgate.v1 import authorization_pb2 as pb

#: The outcomes a harness may report, by the name the client takes.
OUTCOMES = {"succeeded": pb.OUTCOME_SUCCEEDED, "failed": pb.OUTCOME_FAILED, "abandoned": pb.OUTCOME_ABANDONED}
_NAMES = {value: name for name, value in OUTCOMES.items()}


@dataclass(frozen=True)
class OutcomeReceipt:
    """ReportOutcome's answer: the outcome as the server stored it."""

    session_id: str
    task_id: str
    outcome: str  # succeeded, failed or abandoned
    labels: tuple[str, ...]
    reported_at: str  # RFC 3339, UTC
    reported_by: str  # the caller's authenticated subject ("" when none was proven)
    revision: int
    #: The same outcome was already stored (a retry): nothing changed.
    unchanged: bool


def outcome_request(session_id: str, outcome: str, *, task_id: str = "", labels: Iterable[str] = (),
                    summary: str = "", replace: bool = False) -> pb.ReportOutcomeRequest:
    """The request; ValueError for an outcome that is not succeeded, failed or abandoned."""
    if outcome not in OUTCOMES:
        raise ValueError(f"outcome: must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
    return pb.ReportOutcomeRequest(session_id=session_id, task_id=task_id, outcome=OUTCOMES[outcome],
                                   labels=list(labels), summary=summary, replace=replace)


#: What a tool call came to, as ReportToolResult takes it.
TOOL_RESULTS = ("ok", "error", "interrupted")


def tool_result_request(result: str, *, decision_id: str = "", request_id: str = "",
                        duration_ms: int | None = None) -> pb.ReportToolResultRequest:
    """The request; ValueError for a result that is not ok, error or interrupted."""
    if result not in TOOL_RESULTS:
        raise ValueError(f"result: must be one of {', '.join(TOOL_RESULTS)}, not {result!r}")
    request = pb.ReportToolResultRequest(decision_id=decision_id, request_id=request_id,
                                         result=pb.ToolResult.Value(f"TOOL_RESULT_{result.upper()}"))
    if duration_ms is not None:
        request.duration_ms = duration_ms
    return request


def to_receipt(response: pb.ReportOutcomeResponse) -> OutcomeReceipt:
    at = response.reported_at.ToDatetime(tzinfo=UTC).isoformat().replace("+00:00", "Z")
    return OutcomeReceipt(session_id=response.session_id, task_id=response.task_id,
                          outcome=_NAMES.get(response.outcome, "unspecified"), labels=tuple(response.labels),
                          reported_at=at, reported_by=response.reported_by, revision=response.revision,
                          unchanged=response.unchanged)
