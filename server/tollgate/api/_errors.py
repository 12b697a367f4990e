"""The one table from errors to gRPC status codes: every servicer raises, and answers the same error the same way.

As Cerbos's servicers do: input that breaks the schema is INVALID_ARGUMENT with a message naming the field
(`field: what is wrong`); what the state or the policy does not allow is FAILED_PRECONDITION; a store that is down
is UNAVAILABLE, saying what was not done; anything else is INTERNAL with a generic message, and its details go to
the log, never to the caller. Domain errors carry messages written for the caller, which are passed on as they are.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import grpc

from tollgate.api._convert import InvalidRequest
from tollgate.bundle import BundleError
from tollgate.contract import ContractError
from tollgate.decisionlog import DecisionLogError, LogReadError
from tollgate.engine import EngineError
from tollgate.state import InvalidKillSwitch, KillSwitchNotFound, StateError
from tollgate.state.approvals import ApprovalError, ApprovalNotFound, NotAnApprover
from tollgate.state.budgets import ReservationClosed, ReservationNotFound, ReservationNotYours

log = logging.getLogger(__name__)

#: What the caller is told when the server itself failed; the exception is in the server's log.
INTERNAL_MESSAGE = "internal error"
DECISION_LOG_UNAVAILABLE = "decision log is unavailable; no decision can be answered"
STATE_UNAVAILABLE = "state store is unavailable"


class NotFound(LookupError):
    """The thing the request names does not exist (a decision, an approval); the message names it."""


class NotServed(Exception):
    """This server does not keep what the request is about (no budgets, no approvals)."""


class TooLarge(Exception):
    """The request is over a size limit."""


class Unauthenticated(Exception):
    """The caller did not prove who it is (no credential, or a wrong one)."""


class PermissionDenied(Exception):
    """The caller may not make this call."""


#: Exceptions whose message is the answer, by the code they get. Found by exact class along the MRO, so an
#: unrelated subclass of a builtin (a KeyError from a bug is a LookupError) never borrows a caller-facing code.
_CODES: dict[type[BaseException], grpc.StatusCode] = {
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    NotAnApprover: grpc.StatusCode.PERMISSION_DENIED,
    ReservationNotYours: grpc.StatusCode.PERMISSION_DENIED,
    NotFound: grpc.StatusCode.NOT_FOUND,
    ApprovalNotFound: grpc.StatusCode.NOT_FOUND,
    KillSwitchNotFound: grpc.StatusCode.NOT_FOUND,
    ReservationNotFound: grpc.StatusCode.NOT_FOUND,
    TooLarge: grpc.StatusCode.RESOURCE_EXHAUSTED,
    NotServed: grpc.StatusCode.FAILED_PRECONDITION,
    ReservationClosed: grpc.StatusCode.FAILED_PRECONDITION,
}
#: Checks of a request against the schema and the state: `field: ...` is invalid input, the rest a precondition
#: the state refuses (an approval already decided).
_CHECKS: tuple[type[Exception], ...] = (InvalidRequest, InvalidKillSwitch, ApprovalError)
#: A message that names a field first: `principal.agent_id: required`, `evaluations[2].action.name: ...`.
_NAMES_A_FIELD = re.compile(r"^[A-Za-z_][\w.\[\]-]*: ")
#: Policy problems that reach the API (the authorizer turns them into DENY answers; these are a last line).
_POLICY: tuple[type[Exception], ...] = (ContractError, EngineError, BundleError)


@dataclass(frozen=True)
class Status:
    """What a failed call answers."""

    code: grpc.StatusCode
    message: str


def status_for(exc: BaseException, *, unavailable: str = STATE_UNAVAILABLE,
               inputs: tuple[type[Exception], ...] = ()) -> Status:
    """The answer to exc. unavailable: what the caller is told when the store the call needs (state, or the log
    it reads) is down, saying what was not done; inputs: more exception types that, in this call, are checks of
    its input."""
    if isinstance(exc, DecisionLogError):
        return Status(grpc.StatusCode.UNAVAILABLE, DECISION_LOG_UNAVAILABLE)
    if isinstance(exc, StateError | LogReadError):  # a disk error, a busy database: it may work next time
        return Status(grpc.StatusCode.UNAVAILABLE, unavailable)
    for cls in type(exc).__mro__:
        if cls in _CODES:
            return Status(_CODES[cls], str(exc))
    if isinstance(exc, _CHECKS + inputs):
        invalid = _NAMES_A_FIELD.match(str(exc)) or not isinstance(exc, _CHECKS)
        return Status(grpc.StatusCode.INVALID_ARGUMENT if invalid else grpc.StatusCode.FAILED_PRECONDITION, str(exc))
    if isinstance(exc, _POLICY):
        return Status(grpc.StatusCode.FAILED_PRECONDITION,
                      "the policy could not be evaluated for this request; the sidecar's log says why")
    return Status(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)


async def abort(context: grpc.aio.ServicerContext, exc: BaseException, *, rpc: str,
                unavailable: str = STATE_UNAVAILABLE, inputs: tuple[type[Exception], ...] = ()) -> NoReturn:
    """End the call with exc's status; what the caller is not told goes to the log."""
    status = status_for(exc, unavailable=unavailable, inputs=inputs)
    if status.code is grpc.StatusCode.INTERNAL:
        log.error("%s: unexpected error", rpc, exc_info=exc)
    elif status.code is grpc.StatusCode.UNAVAILABLE or status.message != str(exc):
        log.error("%s: %s", rpc, exc)
    await context.abort(status.code, status.message)
    raise AssertionError("unreachable: abort raises")  # for the type checker: abort's stub returns None


_S = TypeVar("_S")
_Req = TypeVar("_Req")
_Resp = TypeVar("_Resp")
Unary = Callable[[_S, _Req, grpc.aio.ServicerContext], Awaitable[_Resp]]
Streaming = Callable[[_S, _Req, grpc.aio.ServicerContext], AsyncIterator[_Resp]]


def unary_errors(rpc: str, *, unavailable: str = STATE_UNAVAILABLE, inputs: tuple[type[Exception], ...] = ()
                 ) -> Callable[[Unary[_S, _Req, _Resp]], Unary[_S, _Req, _Resp]]:
    """A unary servicer method whose exceptions become its status through the table."""
    def decorate(method: Unary[_S, _Req, _Resp]) -> Unary[_S, _Req, _Resp]:
        @functools.wraps(method)
        async def handle(self: _S, request: _Req, context: grpc.aio.ServicerContext) -> _Resp:
            try:
                return await method(self, request, context)
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort(context, exc, rpc=rpc, unavailable=unavailable, inputs=inputs)
        return handle
    return decorate


def stream_errors(rpc: str, *, unavailable: str = STATE_UNAVAILABLE
                  ) -> Callable[[Streaming[_S, _Req, _Resp]], Streaming[_S, _Req, _Resp]]:
    """A server-streaming servicer method whose exceptions (before or between messages) become its status."""
    def decorate(method: Streaming[_S, _Req, _Resp]) -> Streaming[_S, _Req, _Resp]:
        @functools.wraps(method)
        async def handle(self: _S, request: _Req, context: grpc.aio.ServicerContext) -> AsyncIterator[_Resp]:
            try:
                async for message in method(self, request, context):
                    yield message
            except grpc.aio.AbortError:
                raise
            except Exception as exc:
                await abort(context, exc, rpc=rpc, unavailable=unavailable)
        return handle
    return decorate
