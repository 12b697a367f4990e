"""The blocking client: `Client`."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
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


class Client:
    """Asks a Tollgate sidecar before each tool call, model call and spend (blocking; thread-safe).

    Fail closed: when the sidecar gives no answer within the call's timeout (retries included), authorize*
    return a DENY the client made (failed_closed=True, reason sidecar_unavailable) instead of raising, unless
    the client was made with fail_closed=False. A request the sidecar calls malformed raises InvalidRequest.
    """

    def __init__(self, target: str = "127.0.0.1:50051", *, timeout: float = _core.DEFAULT_TIMEOUT,
                 fail_closed: bool = True, tls: TLS | None = None, insecure: bool = False,
                 metadata: Sequence[tuple[str, str]] = (), backoff: Backoff = _core.DEFAULT_BACKOFF) -> None:
        """target: HOST:PORT or unix:PATH. Plaintext only to this machine unless insecure=True; tls for TLS and
        mutual TLS. timeout: seconds per call, retries on UNAVAILABLE included. metadata: sent with each call."""
        spec = _core.channel_spec(target, tls=tls, insecure=insecure)
        self.target = target
        self.timeout = timeout
        self.fail_closed = fail_closed
        self._metadata = _core.metadata_tuple(metadata)
        self._backoff = backoff
        #: Called with each request and its answer (tollgate.testing.capture); a list so that captures nest.
        self._observers: list[Callable[[pb.AuthorizeRequest, Decision], None]] = []
        self._channel = (grpc.secure_channel(target, spec.credentials, options=spec.options) if spec.credentials
                         else grpc.insecure_channel(target, options=spec.options))
        self._stub = pb_grpc.AuthorizationServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # The decision path.

    def authorize(self, request: pb.AuthorizeRequest, *, timeout: float | None = None) -> Decision:
        """Ask about a prebuilt AuthorizeRequest (see tool_request, model_request, budget_request)."""
        request = _core.with_request_id(request)
        budget = timeout or self.timeout
        try:
            response = self._call(lambda t: self._stub.Authorize(request, timeout=t, metadata=self._metadata),
                                  budget)
        except grpc.RpcError as exc:
            decision = _core.decision_on_error(exc, target=self.target, timeout=budget,
                                               request_id=request.request_id, fail_closed_=self.fail_closed)
        else:
            decision = _core.to_decision(response, request.request_id, self.target)
        for observe in self._observers:
            observe(request, decision)
        return decision

    def authorize_tool(self, principal: Principal, server: str, name: str, arguments: Mapping[str, Any] | None = None,
                       *, resources: Iterable[str] = (), context: Mapping[str, Any] | None = None,
                       request_id: str | None = None, approval_id: str | None = None,
                       timeout: float | None = None, dry_run: bool = False) -> Decision:
        """May principal call tool name on server with these arguments (touching these resources)?
        With dry_run, only what the policy would answer: nothing is opened or reserved, and it permits nothing."""
        return self.authorize(_core.tool_request(principal, server, name, arguments, resources=resources,
                                                 context=context, request_id=request_id, approval_id=approval_id,
                                                 dry_run=dry_run),
                              timeout=timeout)

    def authorize_model(self, principal: Principal, provider: str, model: str, *, input_tokens: int = 0,
                        max_output_tokens: int = 0, data_classes: Iterable[str] = (),
                        context: Mapping[str, Any] | None = None, request_id: str | None = None,
                        approval_id: str | None = None, timeout: float | None = None) -> Decision:
        """May principal call this model with a context of input_tokens holding data_classes?"""
        return self.authorize(_core.model_request(principal, provider, model, input_tokens=input_tokens,
                                                  max_output_tokens=max_output_tokens, data_classes=data_classes,
                                                  context=context, request_id=request_id, approval_id=approval_id),
                              timeout=timeout)

    def authorize_budget(self, principal: Principal, amount: float, unit: str = "usd", category: str = "", *,
                         context: Mapping[str, Any] | None = None, request_id: str | None = None,
                         approval_id: str | None = None, timeout: float | None = None) -> Decision:
        """May principal spend amount of unit? An allow may reserve it (Decision.reservation_id): report_usage."""
        return self.authorize(_core.budget_request(principal, amount, unit, category, context=context,
                                                   request_id=request_id, approval_id=approval_id),
                              timeout=timeout)

    def authorize_with_approval(self, request: pb.AuthorizeRequest, *, wait: float = 300.0,
                                timeout: float | None = None,
                                on_pending: Callable[[Decision], None] | None = None) -> Decision:
        """Ask; on require_approval call on_pending(decision) (tell the person who must approve), wait up to
        `wait` seconds for the approval to be decided, then ask again with it and return that answer: ALLOW
        once when approved; the sidecar's DENY when it was denied or expired (approval_denied, approval_expired);
        require_approval again (approval_pending) when nobody decided in time."""
        request = _core.with_request_id(request)
        first = self.authorize(request, timeout=timeout)
        if first.decision != "require_approval" or not first.approval_id:
            return first
        if on_pending is not None:
            on_pending(first)
        try:
            self.wait_for_approval(first.approval_id, wait)
        except TollgateError as exc:
            if not self.fail_closed:
                raise
            return _core.fail_closed(SIDECAR_UNAVAILABLE, f"waiting for approval {first.approval_id} failed "
                                     f"({exc}); denied by the client (fail closed)", request.request_id,
                                     error=str(exc))
        again = _core.reask(request, first.approval_id)
        return self.authorize(again, timeout=timeout)

    @contextmanager
    def spend(self, principal: Principal, amount: float, unit: str = "usd", category: str = "", *,
              context: Mapping[str, Any] | None = None, request_id: str | None = None,
              timeout: float | None = None) -> Iterator[Reservation]:
        """Reserve amount before spending it; raise Denied (with the Decision) when not allowed. Inside the
        block call r.report(actual); on leaving it that amount (without report(), the whole amount) is reported
        and the rest released, also when the block raises."""
        decision = self.authorize_budget(principal, amount, unit, category, context=context, request_id=request_id,
                                         timeout=timeout)
        if not decision.allowed:
            raise Denied(decision)
        reservation = Reservation(decision, amount, unit)
        try:
            yield reservation
        except BaseException:
            try:
                self._settle(reservation, timeout)
            except TollgateError:
                pass  # the block's own exception is the one to see; the reservation expires on the sidecar
            raise
        self._settle(reservation, timeout)

    def _settle(self, reservation: Reservation, timeout: float | None) -> None:
        if reservation.reservation_id:
            reservation.usage = self.report_usage(reservation.reservation_id, reservation.actual, reservation.unit,
                                                  timeout=timeout)

    # Around the decision path.

    def get_decision(self, decision_id: str, *, timeout: float | None = None) -> pb.DecisionRecord:
        """The logged record of one answer. Raises NotFound for an unknown id."""
        request = pb.GetDecisionRequest(decision_id=decision_id)
        record: pb.DecisionRecord = self._unary(
            lambda t: self._stub.GetDecision(request, timeout=t, metadata=self._metadata), f"decision {decision_id}",
            timeout)
        return record

    def report_usage(self, reservation_id: str, amount: float, unit: str = "", *,
                     timeout: float | None = None) -> UsageReport:
        """Commit what a reserved spend actually cost and release the rest. unit is needed only for a model
        call's reservation (it holds usd and tokens). Raises NotFound, or TollgateError (FAILED_PRECONDITION)
        for a reservation already reported or expired."""
        request = pb.ReportUsageRequest(reservation_id=reservation_id, amount=amount, unit=unit)
        response = self._unary(lambda t: self._stub.ReportUsage(request, timeout=t, metadata=self._metadata),
                               f"report usage of reservation {reservation_id}", timeout)
        return _core.to_usage_report(response)

    def report_outcome(self, session_id: str, outcome: str, *, task_id: str = "", labels: Iterable[str] = (),
                       summary: str = "", replace: bool = False, timeout: float | None = None) -> OutcomeReceipt:
        """Say how the session (or task_id in it) ended: "succeeded", "failed" or "abandoned", with labels such as
        "ci_passed" or "pr_merged". The same report again is answered unchanged; a different one raises
        TollgateError (FAILED_PRECONDITION) unless replace. NotFound when the session has no decisions; TollgateError
        (PERMISSION_DENIED) when this caller may not speak for the session's principal."""
        request = outcome_request(session_id, outcome, task_id=task_id, labels=labels, summary=summary,
                                  replace=replace)
        response = self._unary(lambda t: self._stub.ReportOutcome(request, timeout=t, metadata=self._metadata),
                               f"report the outcome of session {session_id}", timeout)
        return to_receipt(response)

    def report_tool_result(self, result: str, *, decision_id: str = "", request_id: str = "",
                           duration_ms: int | None = None, timeout: float | None = None
                           ) -> pb.ReportToolResultResponse:
        """Say what became of a tool call this caller was answered for (by decision_id, or the request_id it asked
        under): "ok", "error" or "interrupted", and how long it ran (None: the sidecar measures from the decision).
        TollgateError (ALREADY_EXISTS) for a different result already reported; NotFound for no such decision."""
        request = tool_result_request(result, decision_id=decision_id, request_id=request_id,
                                      duration_ms=duration_ms)
        response: pb.ReportToolResultResponse = self._unary(
            lambda t: self._stub.ReportToolResult(request, timeout=t, metadata=self._metadata),
            f"report the result of {decision_id or request_id}", timeout)
        return response

    def wait_for_approval(self, approval_id: str, timeout: float) -> ApprovalState:
        """Wait up to timeout seconds for a person to decide the approval; its state then (still "pending" when
        the time ran out). Raises NotFound for an unknown id, SidecarUnavailable when no state came at all."""
        request = pb.WaitForApprovalRequest(approval_id=approval_id)
        deadline = time.monotonic() + timeout
        last: ApprovalState | None = None
        attempt = 0
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                for message in self._stub.WaitForApproval(request, timeout=remaining, metadata=self._metadata):
                    last, attempt = _core.to_approval_state(message), 0
                    if last.decided:
                        return last
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.DEADLINE_EXCEEDED and last is not None:
                    return last
                if not _core.retryable(exc) and exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:
                    raise _core.raise_for(exc, f"wait for approval {approval_id}", self.target) from exc
            # The stream broke off (a sidecar restart) or ended early: the approval lives on in its state store.
            time.sleep(min(self._backoff.delay(attempt), max(deadline - time.monotonic(), 0)))
            attempt += 1
        if last is None:
            raise SidecarUnavailable(f"wait for approval {approval_id}: no state from the sidecar at {self.target} "
                                     f"within {timeout:g} s", code="DEADLINE_EXCEEDED")
        return last

    def _unary(self, call: Callable[[float], _T], what: str, timeout: float | None) -> _T:
        try:
            return self._call(call, timeout or self.timeout)
        except grpc.RpcError as exc:
            raise _core.raise_for(exc, what, self.target) from exc

    def _call(self, call: Callable[[float], _T], budget: float) -> _T:
        """call(remaining seconds), retried on UNAVAILABLE with jittered backoff until budget seconds are up."""
        deadline = time.monotonic() + budget
        attempt = 0
        while True:
            try:
                return call(max(deadline - time.monotonic(), 0.001))
            except grpc.RpcError as exc:
                delay = self._backoff.delay(attempt)
                if not _core.retryable(exc) or time.monotonic() + delay >= deadline:
                    raise
            time.sleep(delay)
            attempt += 1
