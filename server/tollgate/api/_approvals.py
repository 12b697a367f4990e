"""ApprovalService: list, read, decide and watch approvals, for people (their own credential) and automation
(the admin token, admin identities); a decision names the caller's credential, never a declared name."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from datetime import datetime

import grpc
from google.protobuf import struct_pb2

from tollgate.api._access import AdminAccess, audited, authenticate
from tollgate.api._errors import NotFound, PermissionDenied, TooLarge, stream_errors, unary_errors
from tollgate.api._handlers import unary
from tollgate.identity._tokens import ADMIN_TOKEN_ACTOR, ApiCaller
from tollgate.state import ApprovalStore
from tollgate.state.approvals import PENDING, Approval, NotAnApprover
from tollgate.v1 import approval_pb2 as pb

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["ApprovalService"].full_name
#: How often a watcher looks for a change (a cheap counter read; the approval is re-read only after a change).
_WATCH_POLL_SECONDS = 0.2
#: Approval streams (WaitForApproval, WatchApproval) open at once, by default (max_concurrent_streams).
DEFAULT_MAX_STREAMS = 1024


class StreamRoom:
    """The room long-lived approval streams share, apart from the unary RPCs': a stream may stay open for an
    approval's whole TTL, so counted against max_concurrent_rpcs, enough of them starved Authorize, Kill and
    health. The gRPC server's own limit is max_concurrent_rpcs plus this bound, so unary RPCs keep theirs.
    Held and released on the event loop only, so a plain counter is enough."""

    def __init__(self, limit: int = DEFAULT_MAX_STREAMS) -> None:
        self.limit = limit
        self.open = 0

    @contextlib.contextmanager
    def hold(self, rpc: str) -> Iterator[None]:
        """Room for one stream while the block runs; TooLarge (RESOURCE_EXHAUSTED) when there is none."""
        if self.open >= self.limit:
            raise TooLarge(f"{rpc}: {self.open} approval streams are open, the most this server keeps "
                           f"(max_concurrent_streams); poll GetApproval instead, or open the stream again later")
        self.open += 1
        try:
            yield
        finally:
            self.open -= 1


class ApprovalServicer:
    """The approver's side of approvals. The approver is the caller its credential names (api/_access.py): a
    person, `admin-token`, or an admin identity, checked against the approval's approvers like any name."""

    def __init__(self, approvals: ApprovalStore, *, access: AdminAccess, streams: StreamRoom | None = None) -> None:
        self._approvals = approvals
        self._streams = streams or StreamRoom()
        self._access = access

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "ListApprovals": unary(self.ListApprovals, pb.ListApprovalsRequest, pb.ListApprovalsResponse),
            "GetApproval": unary(self.GetApproval, pb.GetApprovalRequest, pb.Approval),
            "Decide": unary(self.Decide, pb.DecideRequest, pb.Approval),
            "WatchApproval": grpc.unary_stream_rpc_method_handler(
                self.WatchApproval, request_deserializer=pb.GetApprovalRequest.FromString,
                response_serializer=pb.Approval.SerializeToString),
        })

    @unary_errors("approvals: ListApprovals")
    async def ListApprovals(  # noqa: N802 - gRPC method name
        self, request: pb.ListApprovalsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListApprovalsResponse:
        await self._authenticate(context, "ListApprovals")
        found = await self._approvals.list(approver=request.approver, agent=request.agent_id,
                                           session=request.session_id, status=request.status)
        return pb.ListApprovalsResponse(approvals=[to_approval_message(a) for a in found])

    @unary_errors("approvals: GetApproval")
    async def GetApproval(  # noqa: N802 - gRPC method name
        self, request: pb.GetApprovalRequest, context: grpc.aio.ServicerContext
    ) -> pb.Approval:
        await self._authenticate(context, "GetApproval")
        return to_approval_message(await self._get(request.id, context))

    @unary_errors("approvals: Decide", unavailable="state store is unavailable; nothing was decided")
    async def Decide(  # noqa: N802 - gRPC method name
        self, request: pb.DecideRequest, context: grpc.aio.ServicerContext
    ) -> pb.Approval:
        caller = await self._authenticate(context, "Decide")
        verb = "approve" if request.approve else "deny"
        try:
            check_declared(request.by, caller)
            decided = await self._approvals.decide(request.id, approve=request.approve, by=caller.name,
                                                   reason=request.reason, groups=caller.groups)
        except (NotAnApprover, PermissionDenied) as exc:  # a refused decision is an audit event, not only an answer
            log.warning("approvals: %s %s by %s refused: %s", verb, request.id, caller.logged(), exc)
            await audited(self._access, caller, f"approval.{verb}.refused", request.id[:200], str(exc))
            raise
        log.warning("approvals: %s %s by %s: %s", verb, decided.id, caller.logged(), decided.reason)
        await audited(self._access, caller, f"approval.{verb}", decided.id, decided.reason)
        return to_approval_message(decided)

    @stream_errors("approvals: WatchApproval")
    async def WatchApproval(  # noqa: N802 - gRPC method name
        self, request: pb.GetApprovalRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[pb.Approval]:
        await self._authenticate(context, "WatchApproval")
        with self._streams.hold("WatchApproval"):
            first = await self._get(request.id, context)
            async for approval in approval_changes(self._approvals, first):
                yield to_approval_message(approval)

    async def _authenticate(self, context: grpc.aio.ServicerContext, method: str) -> ApiCaller:
        return await authenticate(context, self._access, method, people=True)

    async def _get(self, approval_id: str, context: grpc.aio.ServicerContext) -> Approval:
        found = await self._approvals.get(approval_id)
        if found is None:
            raise NotFound(f"approval {approval_id} does not exist")
        return found


def check_declared(by: str, caller: ApiCaller) -> None:
    """A declared `by` (kept in DecideRequest for older clients) must name the caller: nobody decides as someone
    else. PermissionDenied naming the field otherwise."""
    if by and by != caller.name:
        how = ("the shared admin token decides as admin-token, where the approval's approvers name it"
               if caller.name == ADMIN_TOKEN_ACTOR else f"your credential ({caller.via}) names {caller.name}")
        raise PermissionDenied(
            f"by: {by[:200]!r} is not the caller: the approver is taken from the credential, and {how}; leave "
            f"`by` empty, or decide as {by[:200]!r} with their own token (tollgate approvals approve ID "
            "--token-file FILE; `tollgate users token NAME` issues one)")


async def approval_changes(approvals: ApprovalStore, first: Approval) -> AsyncIterator[Approval]:
    """first, then the approval each time its status changes, until it is no longer pending.

    StateError when the state store cannot be read.
    """
    approval = first
    while True:
        generation = approvals.generation
        yield approval
        if approval.status != PENDING:
            return
        expires = datetime.fromisoformat(approval.expires_at)
        while True:
            # Polling the change counter holds no thread: a thousand watchers cost no executor slots,
            # which Authorize needs for its own approval reads and writes.
            await asyncio.sleep(_WATCH_POLL_SECONDS)
            # The approvals' own clock: the one that will read it as expired.
            if approvals.generation == generation and approvals.clock.now() < expires:
                continue
            generation = approvals.generation
            current = await approvals.get(approval.id)
            if current is None:  # deleted from the store behind the server (by hand): nothing is left to watch
                return
            if current.status != approval.status:
                break
        approval = current


def to_approval_message(a: Approval) -> pb.Approval:
    principal, action = struct_pb2.Struct(), struct_pb2.Struct()
    principal.update(dict(a.principal))
    action.update(dict(a.action))
    message = pb.Approval(id=a.id, status=a.status, request_digest=a.request_digest, kind=a.kind,
                          principal=principal, action=action, approvers=list(a.approvers),
                          decided_by=a.decided_by, reason=a.reason, opened_by=a.opened_by, used_by=a.used_by,
                          masked=list(a.masked), required=a.required, allow_requester=a.allow_requester)
    message.created_at.FromJsonString(a.created_at)
    message.expires_at.FromJsonString(a.expires_at)
    if a.decided_at:
        message.decided_at.FromJsonString(a.decided_at)
    for vote in a.votes:
        shown = message.votes.add(voter=vote.voter, approve=vote.approve, reason=vote.reason)
        shown.voted_at.FromJsonString(vote.voted_at)
    return message
