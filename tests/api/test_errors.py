"""The one error → gRPC status table, alone and behind a real in-process grpc.aio server."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from tollgate.api._convert import InvalidRequest
from tollgate.api._errors import (
    NotFound,
    NotServed,
    PermissionDenied,
    TooLarge,
    Unauthenticated,
    status_for,
    stream_errors,
    unary_errors,
)
from tollgate.bundle import BundleError
from tollgate.contract import ContractError
from tollgate.decisionlog import DecisionLogError, LogReadError
from tollgate.engine import EngineError, EvaluationTimeout
from tollgate.state import InvalidKillSwitch, KillSwitchNotFound, StateError
from tollgate.state.approvals import ApprovalError, ApprovalNotFound, NotAnApprover
from tollgate.state.budgets import ReservationClosed, ReservationNotFound

Code = grpc.StatusCode
POLICY = "the policy could not be evaluated for this request; the sidecar's log says why"

TABLE = [
    pytest.param(InvalidRequest("principal.agent_id: required"), Code.INVALID_ARGUMENT,
                 "principal.agent_id: required", id="invalid-request-names-the-field"),
    pytest.param(InvalidKillSwitch("scope: 'agnet' is not a kill switch scope"), Code.INVALID_ARGUMENT,
                 "scope: 'agnet' is not a kill switch scope", id="invalid-kill-switch"),
    pytest.param(ApprovalError("reason: required (say why)"), Code.INVALID_ARGUMENT, "reason: required (say why)",
                 id="approval-input"),
    pytest.param(ApprovalError("approval apr_1 is approved, not pending: it can no longer be decided"),
                 Code.FAILED_PRECONDITION, "approval apr_1 is approved, not pending: it can no longer be decided",
                 id="approval-state"),
    pytest.param(ReservationClosed("reservation r1 (usd) is already committed"), Code.FAILED_PRECONDITION,
                 "reservation r1 (usd) is already committed", id="reservation-closed"),
    pytest.param(NotServed("this server keeps no budgets"), Code.FAILED_PRECONDITION,
                 "this server keeps no budgets", id="not-served"),
    pytest.param(ContractError("decision: must be allow, deny or require_approval"), Code.FAILED_PRECONDITION,
                 POLICY, id="policy-contract"),
    pytest.param(EvaluationTimeout("past 50 ms"), Code.FAILED_PRECONDITION, POLICY, id="policy-engine"),
    pytest.param(BundleError("bundle: manifest roots overlap"), Code.FAILED_PRECONDITION, POLICY, id="policy-bundle"),
    pytest.param(NotFound("decision 'x' is not in the log"), Code.NOT_FOUND, "decision 'x' is not in the log",
                 id="not-found"),
    pytest.param(ApprovalNotFound("approval apr_1 does not exist"), Code.NOT_FOUND, "approval apr_1 does not exist",
                 id="approval-not-found"),
    pytest.param(KillSwitchNotFound("agent=x is not killed"), Code.NOT_FOUND, "agent=x is not killed",
                 id="kill-switch-not-found"),
    pytest.param(ReservationNotFound("reservation 'r9' does not exist"), Code.NOT_FOUND,
                 "reservation 'r9' does not exist", id="reservation-not-found"),
    pytest.param(NotAnApprover("mallory is not an approver of apr_1"), Code.PERMISSION_DENIED,
                 "mallory is not an approver of apr_1", id="not-an-approver"),
    pytest.param(PermissionDenied("admin RPCs are disabled"), Code.PERMISSION_DENIED, "admin RPCs are disabled",
                 id="permission-denied"),
    pytest.param(Unauthenticated("admin token is not valid"), Code.UNAUTHENTICATED, "admin token is not valid",
                 id="unauthenticated"),
    pytest.param(TooLarge("request is 2000000 bytes"), Code.RESOURCE_EXHAUSTED, "request is 2000000 bytes",
                 id="too-large"),
    pytest.param(StateError("database is locked"), Code.UNAVAILABLE, "state store is unavailable; nothing was done",
                 id="state-down"),
    pytest.param(LogReadError("disk I/O error"), Code.UNAVAILABLE, "state store is unavailable; nothing was done",
                 id="log-unreadable"),
    pytest.param(DecisionLogError("fsync failed"), Code.UNAVAILABLE,
                 "decision log is unavailable; no decision can be answered", id="decision-log-down"),
    # What no table row names is the server's own failure: a generic message, never its details.
    pytest.param(KeyError("secret-key"), Code.INTERNAL, "internal error", id="a-bug-is-internal-not-not-found"),
    pytest.param(ValueError("amount: looks like input"), Code.INTERNAL, "internal error",
                 id="a-plain-value-error-is-internal"),
    pytest.param(PermissionError(13, "Permission denied", "/var/lib/tollgate/state.db"), Code.INTERNAL,
                 "internal error", id="an-os-permission-error-is-internal"),
    pytest.param(EngineError("internal", "x"), Code.FAILED_PRECONDITION, POLICY, id="engine-error"),
]


@pytest.mark.parametrize(("exc", "code", "message"), TABLE)
def test_each_error_has_one_status(exc: Exception, code: grpc.StatusCode, message: str) -> None:
    status = status_for(exc, unavailable="state store is unavailable; nothing was done")
    assert (status.code, status.message) == (code, message)


def test_a_call_may_name_more_exceptions_that_check_its_input() -> None:
    status = status_for(ValueError("unit: required, reservation r1 holds usd"), inputs=(ValueError,))
    assert (status.code, status.message) == (Code.INVALID_ARGUMENT, "unit: required, reservation r1 holds usd")


class _Servicer:
    """Raises what the request names, from a unary method and from a stream after one message."""

    @unary_errors("probe", unavailable="nothing was probed")
    async def Probe(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:  # noqa: N802
        raise _ERRORS[request.decode()]

    @stream_errors("watch")
    async def Watch(self, request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:  # noqa: N802
        yield b"first"
        raise _ERRORS[request.decode()]


_ERRORS: dict[str, Exception] = {
    "bug": RuntimeError("the secret is hunter2"),
    "field": InvalidRequest("tool.name: required"),
    "down": StateError("database is locked"),
}


async def _call(kind: str) -> tuple[grpc.StatusCode, str, list[bytes]]:
    servicer = _Servicer()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Probe", {
        "Probe": grpc.unary_unary_rpc_method_handler(servicer.Probe),
        "Watch": grpc.unary_stream_rpc_method_handler(servicer.Watch),
    })])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    received: list[bytes] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                if kind.startswith("stream-"):
                    async for message in channel.unary_stream("/test.Probe/Watch")(kind[7:].encode(), timeout=10):
                        received.append(message)
                else:
                    await channel.unary_unary("/test.Probe/Probe")(kind.encode(), timeout=10)
            except grpc.aio.AioRpcError as exc:
                return exc.code(), exc.details() or "", received
    finally:
        await server.stop(None)
    raise AssertionError("the call did not fail")


@pytest.mark.parametrize(("kind", "code", "message", "received"), [
    ("bug", Code.INTERNAL, "internal error", []),
    ("field", Code.INVALID_ARGUMENT, "tool.name: required", []),
    ("down", Code.UNAVAILABLE, "nothing was probed", []),
    ("stream-bug", Code.INTERNAL, "internal error", [b"first"]),
    ("stream-down", Code.UNAVAILABLE, "state store is unavailable", [b"first"]),
], ids=["unary-bug", "unary-invalid", "unary-unavailable", "stream-bug", "stream-unavailable"])
def test_servicer_methods_answer_through_the_table_and_keep_details_in_the_log(
        kind: str, code: grpc.StatusCode, message: str, received: list[bytes], caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR, logger="tollgate.api._errors"):
        got = asyncio.run(_call(kind))
    assert got == (code, message, received)
    logged = caplog.text
    if kind.endswith("bug"):
        assert "hunter2" in logged and "Traceback" in logged  # the details are the operator's, not the caller's
    if kind.endswith("down"):
        assert "database is locked" in logged
    if kind == "field":
        assert logged == ""  # a caller's mistake is answered, not logged as a server error
