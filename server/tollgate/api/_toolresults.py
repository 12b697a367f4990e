"""AuthorizationService.ReportToolResult: a harness says what became of one tool call Tollgate decided.

What a caller can claim, and what it cannot:

- Which decision: by decision_id (this sidecar's log, then the records the fleet shipped) or by the request_id it
  asked under (the newest decision for it in this sidecar's log). The tool, session and agent are taken from the
  record, never from the report.
- Who may report: only the caller that asked. The record's requested_by (the subject its caller proved) must be
  the reporting caller's proven subject; a decision asked without credentials is reported only by a caller that
  proves none either. Anyone else is PERMISSION_DENIED, and learns nothing of the record.
- What: a result class (ok / error / interrupted) and a duration; never the tool's output. Without a duration the
  sidecar measures the time since the decision's timestamp on its own clock.
- Only for a tool call that may have run: a tool decision answered allow or require_approval (a DENY did not run:
  FAILED_PRECONDITION).
- Once: the same report again is answered as stored; a different one is ALREADY_EXISTS.

A result for a require_approval decision whose approval is still pending closes it (state/_toolresults.py): the
person at the harness's prompt let the call run, so nobody is left to decide it in Tollgate. Closing can only take
permission away: the approval reads as expired and can never be approved nor used.
"""

from __future__ import annotations

import asyncio
import logging

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tollgate.api._convert import InvalidRequest
from tollgate.api._errors import NotFound, NotServed, PermissionDenied, unary_errors
from tollgate.api._handlers import metadata_value, unary
from tollgate.clock import Clock, SystemClock
from tollgate.contract import MAX_IDENTIFIER
from tollgate.decisionlog import DecisionLog, DecisionLookup, DecisionRecord, NoFleetLog
from tollgate.encoding import parse_time
from tollgate.identity import TOKEN_METADATA_KEY, CallerResolver
from tollgate.state._toolresults import (
    MAX_DURATION_MS,
    ToolResultError,
    ToolResultExists,
    ToolResultReport,
    ToolResultStore,
    ToolRun,
)
from tollgate.v1 import authorization_pb2 as pb

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["AuthorizationService"].full_name
#: ToolResult enum ↔ the stored name.
RESULT_NAMES: dict[int, str] = {pb.TOOL_RESULT_OK: "ok", pb.TOOL_RESULT_ERROR: "error",
                                pb.TOOL_RESULT_INTERRUPTED: "interrupted"}
RESULT_VALUES: dict[str, pb.ToolResult] = {"ok": pb.TOOL_RESULT_OK, "error": pb.TOOL_RESULT_ERROR,
                                           "interrupted": pb.TOOL_RESULT_INTERRUPTED}
#: The decisions after which a tool may have run.
RAN_AFTER = ("allow", "require_approval")
#: Why a result closes the approval its decision opened, by the harness the decision's context names.
CLOSE_REASONS = {"claude-code": "answered at the keyboard in Claude Code; not decided in Tollgate"}
CLOSE_REASON = "answered at the harness's own prompt; not decided in Tollgate"


def close_reason(record: DecisionRecord) -> str:
    context = record.input.get("context")
    harness = context.get("harness") if isinstance(context, dict) else None
    return CLOSE_REASONS.get(harness, CLOSE_REASON) if isinstance(harness, str) else CLOSE_REASON


def tool_of(record: DecisionRecord) -> str:
    """server/name as the decision named the tool (the name alone for a built-in with no server)."""
    tool = record.input.get("tool")
    if not isinstance(tool, dict):
        return ""
    server, name = str(tool.get("server") or ""), str(tool.get("name") or "")
    return f"{server}/{name}" if server else name


def checked_ids(request: pb.ReportToolResultRequest) -> None:
    """The ids' bounds, before any read (InvalidRequest naming the field)."""
    if not request.decision_id and not request.request_id:
        raise InvalidRequest("decision_id: required (or request_id, the one the call was asked under)")
    for name, value in (("decision_id", request.decision_id), ("request_id", request.request_id)):
        if len(value) > MAX_IDENTIFIER:
            raise InvalidRequest(f"{name}: at most {MAX_IDENTIFIER} characters, not {len(value)}")
        if not value.isprintable():
            raise InvalidRequest(f"{name}: control characters are not allowed")
    if request.result not in RESULT_NAMES:
        raise InvalidRequest("result: required (TOOL_RESULT_OK, TOOL_RESULT_ERROR or TOOL_RESULT_INTERRUPTED)")
    if request.HasField("duration_ms") and not 0 <= request.duration_ms <= MAX_DURATION_MS:
        raise InvalidRequest(f"duration_ms: must be from 0 to {MAX_DURATION_MS} (7 days), not {request.duration_ms}")


def to_message(run: ToolRun, *, unchanged: bool) -> pb.ReportToolResultResponse:
    stamp = Timestamp()
    stamp.FromDatetime(parse_time(run.reported_at))
    return pb.ReportToolResultResponse(
        decision_id=run.decision_id, result=RESULT_VALUES.get(run.result, pb.TOOL_RESULT_UNSPECIFIED),
        duration_ms=run.duration_ms, duration_measured=run.duration_measured, reported_at=stamp,
        reported_by=run.reported_by, unchanged=unchanged, approval_id=run.approval_closed)


class ToolResultServicer:
    """ReportToolResult, registered beside AuthorizationServicer's handler under the same service."""

    def __init__(self, results: ToolResultStore | None, decision_log: DecisionLog, *,
                 resolver: CallerResolver | None = None, fleet_log: DecisionLookup | None = None,
                 clock: Clock = SystemClock()) -> None:
        self._results = results
        self._log = decision_log
        self._fleet_log = fleet_log or NoFleetLog()
        self._resolver = resolver or CallerResolver()
        self._clock = clock

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "ReportToolResult": unary(self.ReportToolResult, pb.ReportToolResultRequest, pb.ReportToolResultResponse),
        })

    @unary_errors("report tool result", unavailable="the state store or the decision log is unavailable; report "
                  "the result again later", inputs=(ToolResultError,))
    async def ReportToolResult(  # noqa: N802 - gRPC method name
        self, request: pb.ReportToolResultRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportToolResultResponse:
        checked_ids(request)
        if self._results is None:
            raise NotServed("this server keeps no tool results")
        caller = self._resolver.resolve(peer=context.peer(), auth_context=context.auth_context(),
                                        token=metadata_value(context, TOKEN_METADATA_KEY))
        if caller.error:
            raise PermissionDenied(f"{caller.error}; the tool result was not recorded")
        record = await self._record(request)
        asked = (f"decision_id {request.decision_id[:200]!r}" if request.decision_id
                 else f"request_id {request.request_id[:200]!r}")
        if record is None:
            raise NotFound(f"no decision in the log matches {asked}; a tool result is reported for a decision "
                           "Tollgate answered")
        if record.requested_by != caller.subject:  # nothing of the record is told
            raise PermissionDenied(f"the decision for {asked} was asked by another caller; a tool result is "
                                   "reported by the caller that asked")
        if request.decision_id and request.request_id and record.request_id != request.request_id:
            raise InvalidRequest(f"request_id: decision {record.decision_id} was asked under another request_id")
        if record.kind != "tool" or record.decision not in RAN_AFTER:
            what = (f"a {record.kind} decision" if record.kind != "tool"
                    else f"answered {record.decision}: it did not run")
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION,
                                f"decision {record.decision_id} is {what}; a result is reported for a tool call "
                                "answered allow or require_approval")
            raise AssertionError("unreachable: abort raises")
        return await self._store(self._report(request, record, subject=caller.subject, peer=context.peer() or ""),
                                 context)

    async def _record(self, request: pb.ReportToolResultRequest) -> DecisionRecord | None:
        if request.decision_id:
            record = await asyncio.to_thread(self._log.get, request.decision_id)
            return record if record is not None else await self._fleet_log.get(request.decision_id)
        return await asyncio.to_thread(self._log.latest_for_request, request.request_id)

    def _report(self, request: pb.ReportToolResultRequest, record: DecisionRecord, *, subject: str,
                peer: str) -> ToolResultReport:
        measured = not request.HasField("duration_ms")
        if measured:
            since = (self._clock.now() - parse_time(record.timestamp)).total_seconds() * 1000
            duration = min(max(int(since), 0), MAX_DURATION_MS)
        else:
            duration = request.duration_ms
        principal = record.principal
        opened = record.approval_id if record.decision == "require_approval" else ""
        return ToolResultReport(
            decision_id=record.decision_id, result=RESULT_NAMES[request.result], duration_ms=duration,
            duration_measured=measured, request_id=record.request_id,
            session_id=str(principal.get("session_id") or ""), agent_id=str(principal.get("agent_id") or ""),
            tool=tool_of(record), reported_by=subject, reported_from=peer, approval_id=opened,
            close_reason=close_reason(record) if opened else "")

    async def _store(self, report: ToolResultReport,
                     context: grpc.aio.ServicerContext) -> pb.ReportToolResultResponse:
        assert self._results is not None
        try:
            done = await self._results.report(report)
        except ToolResultExists as exc:
            log.info("tool result of decision %s refused from %s: %s", report.decision_id,
                     report.reported_by or "an unauthenticated caller", exc)
            await context.abort(grpc.StatusCode.ALREADY_EXISTS, str(exc))
            raise AssertionError("unreachable: abort raises") from None
        run = done.run
        log.info("tool result of decision %s (%s, session %s) %s: %s%s reported by %s from %s%s",
                 run.decision_id, run.tool, run.session_id or "-", "unchanged" if done.unchanged else "stored",
                 run.result, f" {run.duration_ms} ms" + (" (measured)" if run.duration_measured else ""),
                 run.reported_by or "an unauthenticated caller", run.reported_from or "?",
                 f"; approval {run.approval_closed} closed: {report.close_reason}" if run.approval_closed else "")
        return to_message(run, unchanged=done.unchanged)
