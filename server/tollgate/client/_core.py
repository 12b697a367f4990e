"""What the sync and async clients share: building requests, reading answers, channels, retry timing."""

from __future__ import annotations

import ipaddress
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format

from tollgate.client._errors import InvalidRequest, NotFound, SidecarUnavailable, TollgateError
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
from tollgate.v1 import authorization_pb2 as pb

#: Seconds a call may take, retries included, unless the client or the call says otherwise. A sidecar answers
#: in about a millisecond; the rest is room for a restart in progress.
DEFAULT_TIMEOUT = 1.0

# Codes a retry can cure: the sidecar is not (yet) there, or asked to be asked again. Anything else is an answer.
_RETRYABLE = frozenset({grpc.StatusCode.UNAVAILABLE})
# Without these, a channel that failed to connect waits gRPC's default reconnect backoff (1 s, growing to 120 s)
# before it tries again, which is longer than a whole call's deadline: a sidecar restarting would look down.
_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 500),
)
_VERDICTS: dict[int, Verdict] = {
    pb.DECISION_ALLOW: "allow", pb.DECISION_DENY: "deny", pb.DECISION_REQUIRE_APPROVAL: "require_approval",
}


#: Retries of a local sidecar: from 25 ms up to 250 ms, full jitter (a random wait up to the capped step).
DEFAULT_BACKOFF = Backoff(0.025, 0.25)


@dataclass(frozen=True)
class ChannelSpec:
    """Where and how to connect: a gRPC target, its credentials (None: plaintext) and channel options."""

    target: str
    credentials: grpc.ChannelCredentials | None
    options: tuple[tuple[str, Any], ...]


def channel_spec(target: str, *, tls: TLS | None, insecure: bool) -> ChannelSpec:
    """Plaintext is for this machine only (a Unix socket or a loopback address) unless insecure=True says so."""
    if not target:
        raise ValueError("target: required (HOST:PORT or unix:PATH)")
    options = _CHANNEL_OPTIONS
    if tls is None:
        if not (insecure or _is_local(target)):
            raise ValueError(f"target {target!r} is not on this machine: pass tls=TLS(...) to connect over TLS, "
                             "or insecure=True to send requests in plaintext")
        return ChannelSpec(target, None, options)
    credentials = grpc.ssl_channel_credentials(
        root_certificates=_read(tls.root_ca, "root_ca"),
        private_key=_read(tls.client_key, "client_key"),
        certificate_chain=_read(tls.client_cert, "client_cert"),
    )
    if tls.server_name:
        options = (*options, ("grpc.ssl_target_name_override", tls.server_name))
    return ChannelSpec(target, credentials, options)


def _is_local(target: str) -> bool:
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    host = target.rsplit(":", 1)[0].strip("[]") if ":" in target else target
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _read(path: Path | str | None, name: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ValueError(f"TLS.{name}: cannot read {path} ({exc.strerror or exc})") from exc


def to_pb_principal(principal: Principal) -> pb.Principal:
    return pb.Principal(agent_id=principal.agent_id, instance_id=principal.instance_id,
                        session_id=principal.session_id, workflow=principal.workflow, team=principal.team,
                        user=principal.user, labels=dict(principal.labels))


def _base(principal: Principal, context: Mapping[str, Any] | None, request_id: str | None,
          approval_id: str | None) -> pb.AuthorizeRequest:
    request = pb.AuthorizeRequest(principal=to_pb_principal(principal), request_id=request_id or "",
                                  approval_id=approval_id or "")
    if context:
        request.context.update(dict(context))
    return request


def tool_request(principal: Principal, server: str, name: str, arguments: Mapping[str, Any] | None = None, *,
                 resources: Iterable[str] = (), context: Mapping[str, Any] | None = None,
                 request_id: str | None = None, approval_id: str | None = None,
                 dry_run: bool = False) -> pb.AuthorizeRequest:
    """An AuthorizeRequest for a tool call (arguments must be JSON-like: dicts, lists, str, numbers, bool, None);
    dry_run asks what the policy would answer without opening an approval or reserving anything."""
    request = _base(principal, context, request_id, approval_id)
    request.dry_run = dry_run
    request.tool.server, request.tool.name = server, name
    if arguments:
        request.tool.arguments.update(dict(arguments))
    request.tool.resources.extend(resources)
    return request


def model_request(principal: Principal, provider: str, model: str, *, input_tokens: int = 0,
                  max_output_tokens: int = 0, data_classes: Iterable[str] = (),
                  context: Mapping[str, Any] | None = None, request_id: str | None = None,
                  approval_id: str | None = None) -> pb.AuthorizeRequest:
    """An AuthorizeRequest for a model call (data_classes: what the context holds, e.g. "pii")."""
    request = _base(principal, context, request_id, approval_id)
    request.model.CopyFrom(pb.ModelCall(provider=provider, model=model, input_tokens=input_tokens,
                                        max_output_tokens=max_output_tokens, data_classes=list(data_classes)))
    return request


def budget_request(principal: Principal, amount: float, unit: str = "usd", category: str = "", *,
                   context: Mapping[str, Any] | None = None, request_id: str | None = None,
                   approval_id: str | None = None) -> pb.AuthorizeRequest:
    """An AuthorizeRequest to spend amount of unit ("usd" or "tokens") on category ("model", "tool", "compute")."""
    request = _base(principal, context, request_id, approval_id)
    request.budget.CopyFrom(pb.BudgetRequest(amount=amount, unit=unit, category=category))
    return request


def with_request_id(request: pb.AuthorizeRequest) -> pb.AuthorizeRequest:
    """The request with an idempotency key: a retry of a request the sidecar already decided is then answered
    from its log, not decided (or budget reserved) a second time. A dry run acts on nothing, so it has none
    (the sidecar refuses one with a request_id)."""
    if request.request_id or request.dry_run:
        return request
    keyed = pb.AuthorizeRequest()
    keyed.CopyFrom(request)
    keyed.request_id = f"tgc-{uuid.uuid4().hex}"
    return keyed


def reask(request: pb.AuthorizeRequest, approval_id: str) -> pb.AuthorizeRequest:
    """The request again, presenting the approval. It gets its own request_id, derived from the first so that
    its retries stay idempotent: the sidecar answers a request_id whose logged answer opened this very
    approval from its log (that is a retry of the first ask), which would repeat require_approval."""
    again = pb.AuthorizeRequest()
    again.CopyFrom(request)
    again.approval_id = approval_id
    again.request_id = f"{request.request_id}+{approval_id}"
    return again


def to_decision(response: pb.AuthorizeResponse, request_id: str, target: str) -> Decision:
    verdict = _VERDICTS.get(response.decision)
    if verdict is None:  # a newer or broken server: an answer we cannot read is not an allow
        return fail_closed(SIDECAR_ERROR, f"the sidecar at {target} answered decision {response.decision}, "
                           "which this client does not know; denied", request_id,
                           error=f"unknown decision {response.decision}")
    return Decision(
        decision=verdict, decision_id=response.decision_id,
        reasons=tuple(Reason(r.code, r.message) for r in response.reasons),
        obligations=integral(json_format.MessageToDict(response.obligations)),
        bundle_revision=response.bundle_revision, approval_id=response.approval_id,
        reservation_id=response.reservation_id, request_id=request_id,
    )


def fail_closed(code: str, message: str, request_id: str, *, error: str) -> Decision:
    return Decision(decision="deny", reasons=(Reason(code, message),), request_id=request_id, failed_closed=True,
                    error=error)


def integral(value: Any) -> Any:
    """Struct numbers travel as doubles; give 2000.0 back as 2000."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value


def to_approval_state(state: pb.ApprovalState) -> ApprovalState:
    return ApprovalState(id=state.id, status=state.status,
                         expires_at=state.expires_at.ToDatetime(tzinfo=UTC) if state.HasField("expires_at") else None,
                         decided_by=state.decided_by, reason=state.reason)


def to_usage_report(response: pb.ReportUsageResponse) -> UsageReport:
    return UsageReport(reservation_id=response.reservation_id, unit=response.unit, reserved=response.reserved,
                       committed=response.committed, released=response.released,
                       over_reserved=response.over_reserved)


def retryable(exc: grpc.RpcError) -> bool:
    return exc.code() in _RETRYABLE


def describe(exc: grpc.RpcError) -> str:
    return f"{exc.code().name}: {exc.details()}"


def decision_on_error(exc: grpc.RpcError, *, target: str, timeout: float, request_id: str,
                      fail_closed_: bool) -> Decision:
    """What an Authorize that got no answer returns: INVALID_ARGUMENT raises (a caller bug); anything else is a
    DENY the client makes itself, or, for a client made with fail_closed=False, an exception."""
    code = exc.code()
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        raise InvalidRequest(f"the sidecar refused the request: {exc.details()}", code=code.name) from exc
    unavailable = code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)
    if not fail_closed_:
        kind = SidecarUnavailable if unavailable else TollgateError
        raise kind(f"no decision from the sidecar at {target}: {describe(exc)}", code=code.name) from exc
    if unavailable:
        return fail_closed(SIDECAR_UNAVAILABLE, f"no answer from the Tollgate sidecar at {target} within {timeout:g} s "
                           f"({describe(exc)}); denied by the client (fail closed)", request_id, error=describe(exc))
    return fail_closed(SIDECAR_ERROR, f"the Tollgate sidecar at {target} failed the request ({describe(exc)}); "
                       "denied by the client (fail closed)", request_id, error=describe(exc))


def raise_for(exc: grpc.RpcError, what: str, target: str) -> TollgateError:
    """The exception for a failed call off the decision path (get_decision, report_usage, wait_for_approval)."""
    code = exc.code()
    kind: type[TollgateError] = {
        grpc.StatusCode.INVALID_ARGUMENT: InvalidRequest, grpc.StatusCode.NOT_FOUND: NotFound,
        grpc.StatusCode.UNAVAILABLE: SidecarUnavailable, grpc.StatusCode.DEADLINE_EXCEEDED: SidecarUnavailable,
    }.get(code, TollgateError)
    return kind(f"{what}: the sidecar at {target} answered {describe(exc)}", code=code.name)


def metadata_tuple(metadata: Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...] | None:
    return tuple(metadata) or None

