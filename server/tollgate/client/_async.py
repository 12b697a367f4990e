"""The asyncio client: `AsyncClient`, the same methods as Client, awaited."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar

import grpc

from tollgate.client import _core
from tollgate.client._errors import Denied, SidecarUnavailable, TollgateError
from tollgate.client._outcome import OutcomeReceipt, outcome_request, to_receipt, tool_result_request
from tollgate.client._reservation import Reservation
from tollgate.client._values import SIDECAR_UNAVAILABLE, TLS, ApprovalState, Decision, Principal, UsageReport
from tollgate.net import Backoff
from tollgate.v1 import authorization_pb2 as pb
from tollgate.v1 import authorization_pb2_grpc as pb_grpc

_T = TypeVar("_T")


class AsyncClient:
    """Asks a Tollgate sidecar before each tool call, model call and spend, from asyncio code.

    Same contract as Client: fail closed (a DENY with failed_closed=True when no answer comes in time) unless
    made with fail_closed=False; InvalidRequest for a request the sidecar calls malformed. The channel is opened
    on first use, in the event loop that uses it.
    """

    def __init__(self, target: str = "127.0.0.1:50051", *, timeout: float = _core.DEFAULT_TIMEOUT,
                 fail_closed: bool = True, tls: TLS | None = None, insecure: bool = False,
                 metadata: Sequence[tuple[str, str]] = (), backoff: Backoff = _core.DEFAULT_BACKOFF) -> None:
        """As Client: target HOST:PORT or unix:PATH; plaintext only to this machine unless insecure=True."""
        self._spec = _core.channel_spec(target, tls=tls, insecure=insecure)
        self.target = target
        self.timeout = timeout
        self.fail_closed = fail_closed
        self._metadata = _core.metadata_tuple(metadata)
        self._backoff = backoff
        #: Called with each request and its answer (tollgate.testing.capture); a list so that captures nest.
        self._observers: list[Callable[[pb.AuthorizeRequest, Decision], None]] = []
        self._channel: grpc.aio.Channel | None = None
        self._stub_: pb_grpc.AuthorizationServiceStub | None = None

    @property
    def _stub(self) -> pb_grpc.AuthorizationServiceStub:
        # grpc.aio binds a channel to the running loop, so it cannot be made in a synchronous __init__.
        if self._stub_ is None:
            spec = self._spec
            self._channel = (grpc.aio.secure_channel(spec.target, spec.credentials, options=spec.options)
                             if spec.credentials else grpc.aio.insecure_channel(spec.target, options=spec.options))
            self._stub_ = pb_grpc.AuthorizationServiceStub(self._channel)
        return self._stub_

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub_ = None, None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    # The decision path.

    async def authorize(self, request: pb.AuthorizeRequest, *, timeout: float | None = None) -> Decision:
        """Ask about a prebuilt AuthorizeRequest (see tool_request, model_request, budget_request)."""
        request = _core.with_request_id(request)
        budget = timeout or self.timeout
        try:
            response = await self._call(
                lambda t: self._stub.Authorize(request, timeout=t, metadata=self._metadata), budget)
        except grpc.RpcError as exc:
            decision = _core.decision_on_error(exc, target=self.target, timeout=budget,
                                               request_id=request.request_id, fail_closed_=self.fail_closed)
        else:
            decision = _core.to_decision(response, request.request_id, self.target)
        for observe in self._observers:
            observe(request, decision)
        return decision

    async def authorize_tool(self, principal: Principal, server: str, name: str,
                             arguments: Mapping[str, Any] | None = None, *, resources: Iterable[str] = (),
                             context: Mapping[str, Any] | None = None, request_id: str | None = None,
                             approval_id: str | None = None, timeout: float | None = None,
                             dry_run: bool = False) -> Decision:
        """May principal call tool name on server with these arguments (touching these resources)?
        With dry_run, only what the policy would answer: nothing is opened or reserved, and it permits nothing."""
        return await self.authorize(_core.tool_request(principal, server, name, arguments, resources=resources,
                                                       context=context, request_id=request_id,
                                                       approval_id=approval_id, dry_run=dry_run), timeout=timeout)

    async def authorize_model(self, principal: Principal, provider: str, model: str, *, input_tokens: int = 0,
                              max_output_tokens: int = 0, data_classes: Iterable[str] = (),
                              context: Mapping[str, Any] | None = None, request_id: str | None = None,
                              approval_id: str | None = None, timeout: float | None = None) -> Decision:
        """May principal call this model with a context of input_tokens holding data_classes?"""
        return await self.authorize(_core.model_request(
            principal, provider, model, input_tokens=input_tokens, max_output_tokens=max_output_tokens,
            data_classes=data_classes, context=context, request_id=request_id, approval_id=approval_id),
            timeout=timeout)

    async def authorize_budget(self, principal: Principal, amount: float, unit: str = "usd", category: str = "",
                               *, context: Mapping[str, Any] | None = None, request_id: str | None = None,
                               approval_id: str | None = None, timeout: float | None = None) -> Decision:
        """May principal spend amount of unit? An allow may reserve it (Decision.reservation_id): report_usage."""
        return await self.authorize(_core.budget_request(principal, amount, unit, category, context=context,
                                                         request_id=request_id, approval_id=approval_id),
                                    timeout=timeout)

    async def authorize_with_approval(self, request: pb.AuthorizeRequest, *, wait: float = 300.0,
                                      timeout: float | None = None,
                                      on_pending: Callable[[Decision], Awaitable[None] | None] | None = None,
                                      ) -> Decision:
        """As Client.authorize_with_approval; on_pending may be a coroutine function."""
        request = _core.with_request_id(request)
        first = await self.authorize(request, timeout=timeout)
        if first.decision != "require_approval" or not first.approval_id:
            return first
        if on_pending is not None:
            pending = on_pending(first)
            if pending is not None:
                await pending
        try:
            await self.wait_for_approval(first.approval_id, wait)
        except TollgateError as exc:
            if not self.fail_closed:
                raise
            return _core.fail_closed(SIDECAR_UNAVAILABLE, f"waiting for approval {first.approval_id} failed "
                                     f"({exc}); denied by the client (fail closed)", request.request_id,
                                     error=str(exc))
        again = _core.reask(request, first.approval_id)
        return await self.authorize(again, timeout=timeout)

    @asynccontextmanager
    async def spend(self, principal: Principal, amount: float, unit: str = "usd", category: str = "", *,
                    context: Mapping[str, Any] | None = None, request_id: str | None = None,
                    timeout: float | None = None) -> AsyncIterator[Reservation]:
        """As Client.spend, with `async with`."""
        decision = await self.authorize_budget(principal, amount, unit, category, context=context,
                                               request_id=request_id, timeout=timeout)
        if not decision.allowed:
            raise Denied(decision)
        reservation = Reservation(decision, amount, unit)
        try:
            yield reservation
        except BaseException:
            try:
                await self._settle(reservation, timeout)
            except TollgateError:
                pass  # the block's own exception is the one to see; the reservation expires on the sidecar
            raise
        await self._settle(reservation, timeout)

    async def _settle(self, reservation: Reservation, timeout: float | None) -> None:
        if reservation.reservation_id:
            reservation.usage = await self.report_usage(reservation.reservation_id, reservation.actual,
                                                        reservation.unit, timeout=timeout)

    # Around the decision path.

    async def get_decision(self, decision_id: str, *, timeout: float | None = None) -> pb.DecisionRecord:
        """The logged record of one answer. Raises NotFound for an unknown id."""
        request = pb.GetDecisionRequest(decision_id=decision_id)
        return await self._unary(lambda t: self._stub.GetDecision(request, timeout=t, metadata=self._metadata),
                                 f"decision {decision_id}", timeout)

    async def report_usage(self, reservation_id: str, amount: float, unit: str = "", *,
                           timeout: float | None = None) -> UsageReport:
        """As Client.report_usage."""
        request = pb.ReportUsageRequest(reservation_id=reservation_id, amount=amount, unit=unit)
        response = await self._unary(lambda t: self._stub.ReportUsage(request, timeout=t, metadata=self._metadata),
                                     f"report usage of reservation {reservation_id}", timeout)
        return _core.to_usage_report(response)

    async def report_outcome(self, session_id: str, outcome: str, *, task_id: str = "", labels: Iterable[str] = (),
                             summary: str = "", replace: bool = False, timeout: float | None = None) -> OutcomeReceipt:
        """As Client.report_outcome."""
        request = outcome_request(session_id, outcome, task_id=task_id, labels=labels, summary=summary,
                                  replace=replace)
        response = await self._unary(lambda t: self._stub.ReportOutcome(request, timeout=t, metadata=self._metadata),
                                     f"report the outcome of session {session_id}", timeout)
        return to_receipt(response)

    async def report_tool_result(self, result: str, *, decision_id: str = "", request_id: str = "",
                                 duration_ms: int | None = None, timeout: float | None = None
                                 ) -> pb.ReportToolResultResponse:
        """As Client.report_tool_result."""
        request = tool_result_request(result, decision_id=decision_id, request_id=request_id,
                                      duration_ms=duration_ms)
        response: pb.ReportToolResultResponse = await self._unary(
            lambda t: self._stub.ReportToolResult(request, timeout=t, metadata=self._metadata),
            f"report the result of {decision_id or request_id}", timeout)
        return response

    async def wait_for_approval(self, approval_id: str, timeout: float) -> ApprovalState:
        """As Client.wait_for_approval."""
        request = pb.WaitForApprovalRequest(approval_id=approval_id)
        deadline = time.monotonic() + timeout
        last: ApprovalState | None = None
        attempt = 0
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                async for message in self._stub.WaitForApproval(request, timeout=remaining, metadata=self._metadata):
                    last, attempt = _core.to_approval_state(message), 0
                    if last.decided:
                        return last
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and last is not None:
                    return last
                if not _core.retryable(exc) and exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise _core.raise_for(exc, f"wait for approval {approval_id}", self.target) from exc
            # The stream broke off (a sidecar restart) or ended early: the approval lives on in its state store.
            await asyncio.sleep(min(self._backoff.delay(attempt), max(deadline - time.monotonic(), 0)))
            attempt += 1
        if last is None:
            raise SidecarUnavailable(f"wait for approval {approval_id}: no state from the sidecar at {self.target} "
                                     f"within {timeout:g} s", code="DEADLINE_EXCEEDED")
        return last

    async def _unary(self, call: Callable[[float], Awaitable[_T]], what: str, timeout: float | None) -> _T:
        try:
            return await self._call(call, timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _core.raise_for(exc, what, self.target) from exc

    async def _call(self, call: Callable[[float], Awaitable[_T]], budget: float) -> _T:
        """call(remaining seconds), retried on UNAVAILABLE with jittered backoff until budget seconds are up."""
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            try:
                return await call(max(deadline - time.monotonic(), 0.001))
            except grpc.RpcError as exc:
                delay = self._backoff.delay(attempt)
                if not _core.retryable(exc) or time.monotonic() + delay >= deadline:
                    raise
            await asyncio.sleep(delay)
            attempt += 1
