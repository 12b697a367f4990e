"""AuthorizationService: check limits → map the request → authorize; errors become status codes through one
table (tollgate.api._errors)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
from google.protobuf.message import DecodeError

from tollgate.api._approvals import StreamRoom, approval_changes
from tollgate.api._convert import (
    InvalidRequest,
    largest_field,
    to_decision_request,
    to_record_message,
    to_response,
)
from tollgate.api._errors import DECISION_LOG_UNAVAILABLE, NotFound, NotServed, TooLarge, stream_errors, unary_errors
from tollgate.api._handlers import metadata_value
from tollgate.contract import MAX_AMOUNT, MAX_DEPTH, is_amount
from tollgate.decision import Authorizer
from tollgate.decisionlog import DecisionLog, DecisionLookup, NoFleetLog
from tollgate.identity import TOKEN_METADATA_KEY, Caller, CallerResolver
from tollgate.state import ApprovalStore, BudgetStore
from tollgate.state.approvals import Approval
from tollgate.v1 import authorization_pb2 as pb

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["AuthorizationService"].full_name


@dataclass(frozen=True)
class RequestLimits:
    """What a request may be before it is refused without reaching the policy."""

    #: Largest serialized AuthorizeRequest, in bytes (RESOURCE_EXHAUSTED above it).
    max_request_bytes: int = 1024 * 1024
    #: Deepest nesting of objects and arrays in tool.arguments and context (INVALID_ARGUMENT above it); at most
    #: MAX_DEPTH, so that every record can be read back.
    max_depth: int = MAX_DEPTH

    def __post_init__(self) -> None:
        if not 1 <= self.max_depth <= MAX_DEPTH:
            raise ValueError(f"max_depth: must be 1 to {MAX_DEPTH}, not {self.max_depth}")


class AuthorizationServicer:
    def __init__(self, authorizer: Authorizer, decision_log: DecisionLog, limits: RequestLimits, *,
                 budgets: BudgetStore | None = None, approvals: ApprovalStore | None = None,
                 callers: CallerResolver | None = None, streams: StreamRoom | None = None,
                 fleet_log: DecisionLookup | None = None) -> None:
        self._authorizer = authorizer
        # Where GetDecision looks for a record this sidecar did not answer: the fleet's store (records other
        # sidecars shipped) when on PostgreSQL, nothing when alone.
        self._fleet_log = fleet_log or NoFleetLog()
        self._streams = streams or StreamRoom()
        self._callers = callers or CallerResolver()
        self._budgets = budgets
        self._approvals = approvals
        self._log = decision_log
        self._limits = limits

    def handler(self) -> grpc.GenericRpcHandler:
        """The service's handlers. Authorize takes raw bytes so that the size limit is checked before
        parsing, and a message the protobuf decoder refuses (too deeply nested, malformed) is an
        INVALID_ARGUMENT rather than an opaque UNKNOWN."""
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Authorize": grpc.unary_unary_rpc_method_handler(
                self.Authorize, request_deserializer=None,
                response_serializer=pb.AuthorizeResponse.SerializeToString),
            "GetDecision": grpc.unary_unary_rpc_method_handler(
                self.GetDecision, request_deserializer=pb.GetDecisionRequest.FromString,
                response_serializer=pb.DecisionRecord.SerializeToString),
            "ReportUsage": grpc.unary_unary_rpc_method_handler(
                self.ReportUsage, request_deserializer=pb.ReportUsageRequest.FromString,
                response_serializer=pb.ReportUsageResponse.SerializeToString),
            "WaitForApproval": grpc.unary_stream_rpc_method_handler(
                self.WaitForApproval, request_deserializer=pb.WaitForApprovalRequest.FromString,
                response_serializer=pb.ApprovalState.SerializeToString),
        })

    @unary_errors("authorize", unavailable=DECISION_LOG_UNAVAILABLE)
    async def Authorize(  # noqa: N802 - gRPC method name
        self, raw: bytes, context: grpc.aio.ServicerContext
    ) -> pb.AuthorizeResponse:
        try:
            request = pb.AuthorizeRequest.FromString(raw)
        except DecodeError as exc:
            raise InvalidRequest(f"request: not a valid AuthorizeRequest ({exc}); arguments and context may nest "
                                 f"at most {self._limits.max_depth} levels") from exc
        if len(raw) > self._limits.max_request_bytes:
            name, field_size = largest_field(request)
            raise TooLarge(f"request is {len(raw)} bytes, over the limit of {self._limits.max_request_bytes}"
                           f" (largest field: {name}, {field_size} bytes)")
        domain = to_decision_request(request, max_depth=self._limits.max_depth, caller=self.caller(context))
        return to_response(await self._authorizer.authorize(domain))

    def caller(self, context: grpc.aio.ServicerContext) -> Caller:
        """Who is calling, as the connection (client certificate, Unix-socket peer) or a caller token proves."""
        return self._callers.resolve(peer=context.peer(), auth_context=context.auth_context(),
                                     token=metadata_value(context, TOKEN_METADATA_KEY))

    # LogReadError (a disk error, a busy database) is UNAVAILABLE: the record may be there next time.
    @unary_errors("get decision", unavailable="the decision log cannot be read; ask again later")
    async def GetDecision(  # noqa: N802 - gRPC method name
        self, request: pb.GetDecisionRequest, context: grpc.aio.ServicerContext
    ) -> pb.DecisionRecord:
        if not request.decision_id:
            raise InvalidRequest("decision_id: required")
        loop = asyncio.get_running_loop()
        record = await loop.run_in_executor(None, self._log.get, request.decision_id)
        if record is None:  # answered by another sidecar of the fleet, and found once it has shipped it
            record = await self._fleet_log.get(request.decision_id)
        if record is None:
            raise NotFound(f"decision {request.decision_id!r} is not in the log")
        return to_record_message(record)

    # Budgets.report raises ValueError for an amount or unit the reservation cannot take: the caller's input.
    @unary_errors("report usage", unavailable="the spend ledger is unavailable; report again later",
                  inputs=(ValueError,))
    async def ReportUsage(  # noqa: N802 - gRPC method name
        self, request: pb.ReportUsageRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportUsageResponse:
        if not request.reservation_id:
            raise InvalidRequest("reservation_id: required")
        if not is_amount(request.amount):  # a bound, not a sign check: refuses NaN, both infinities, 1e308
            raise InvalidRequest(f"amount: must be a number from 0 to {MAX_AMOUNT:g}, not {request.amount}")
        if self._budgets is None:
            raise NotServed("this server keeps no budgets")
        caller = self.caller(context)
        reported = await self._budgets.report(request.reservation_id, amount=request.amount, unit=request.unit,
                                              reported_by=caller.subject)
        if reported.over_reported:
            # Committed as reported: the spend happened, and a ledger that refused it would under-count every
            # limit. The log says who reported how much over what, for the operator to follow up.
            log.warning("reservation %s: %g %s reported by %s, over the %g reserved (committed as reported; "
                        "the harness's estimate was short)", reported.id, reported.committed, reported.unit,
                        caller.subject or "an unauthenticated caller", reported.amount)
        return pb.ReportUsageResponse(
            reservation_id=reported.id, unit=reported.unit, reserved=reported.amount, committed=reported.committed,
            released=max(reported.amount - reported.committed, 0.0), over_reserved=reported.over_reported)

    @stream_errors("wait for approval", unavailable="the state store is unavailable; wait again later")
    async def WaitForApproval(  # noqa: N802 - gRPC method name
        self, request: pb.WaitForApprovalRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.ApprovalState]:
        if not request.approval_id:
            raise InvalidRequest("approval_id: required")
        if self._approvals is None:
            raise NotServed("this server keeps no approvals")
        with self._streams.hold("WaitForApproval"):
            first = await self._approvals.get(request.approval_id)
            if first is None:
                raise NotFound(f"approval {request.approval_id} does not exist")
            async for approval in approval_changes(self._approvals, first):
                yield to_approval_state(approval)


def to_approval_state(approval: Approval) -> pb.ApprovalState:
    """What a waiting harness may know of an approval: its state, never the request or its approvers."""
    state = pb.ApprovalState(id=approval.id, status=approval.status, decided_by=approval.decided_by,
                             reason=approval.reason)
    state.expires_at.FromJsonString(approval.expires_at)
    return state
