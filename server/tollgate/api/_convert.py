"""Wire ↔ domain: validate an AuthorizeRequest into a DecisionRequest, and records back into messages."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, NoReturn

from google.protobuf import json_format, message, struct_pb2

from tollgate.contract import MAX_AMOUNT, MAX_IDENTIFIER, Decision, DecisionRequest, is_amount
from tollgate.decisionlog import DecisionRecord
from tollgate.identity import ANONYMOUS, Caller
from tollgate.v1 import authorization_pb2 as pb

DECISION_ENUM = {
    "allow": pb.DECISION_ALLOW,
    "deny": pb.DECISION_DENY,
    "require_approval": pb.DECISION_REQUIRE_APPROVAL,
}
BUDGET_UNITS = ("usd", "tokens")


class InvalidRequest(ValueError):
    """A request that breaks the API schema; the message names the field."""


def to_decision_request(msg: pb.AuthorizeRequest, *, max_depth: int, caller: Caller = ANONYMOUS) -> DecisionRequest:
    """The domain request of a message, asked by caller; InvalidRequest naming the field when it breaks the API."""
    kind = msg.WhichOneof("action")
    if kind is None:
        raise InvalidRequest("action: one of tool, model or budget is required")
    p = msg.principal
    if not p.agent_id:
        raise InvalidRequest("principal.agent_id: required")
    principal = {
        "agent_id": p.agent_id, "instance_id": p.instance_id, "session_id": p.session_id,
        "workflow": p.workflow, "team": p.team, "user": p.user, "labels": dict(p.labels) if p.labels else {},
    }
    action: dict[str, Any]
    if kind == "tool":
        t = msg.tool
        if not t.name:
            raise InvalidRequest("tool.name: required")
        action = {
            "server": t.server, "name": t.name,
            "arguments": struct_to_dict(t.arguments, "tool.arguments", max_depth),
            "resources": list(t.resources),
        }
    elif kind == "model":
        m = msg.model
        if not m.model:
            raise InvalidRequest("model.model: required")
        if m.input_tokens < 0:
            raise InvalidRequest("model.input_tokens: must not be negative")
        if m.max_output_tokens < 0:
            raise InvalidRequest("model.max_output_tokens: must not be negative")
        action = {
            "provider": m.provider, "model": m.model, "input_tokens": m.input_tokens,
            "max_output_tokens": m.max_output_tokens, "data_classes": list(m.data_classes),
        }
    else:
        b = msg.budget
        if not is_amount(b.amount):
            raise InvalidRequest(f"budget.amount: must be a number from 0 to {MAX_AMOUNT:g}, not {b.amount}")
        if b.unit not in BUDGET_UNITS:
            raise InvalidRequest(f"budget.unit: must be one of {', '.join(BUDGET_UNITS)}, got {b.unit!r}")
        action = {"amount": b.amount, "unit": b.unit, "category": b.category}
    context = struct_to_dict(msg.context, "context", max_depth) if msg.HasField("context") else {}
    _check_identifiers(kind, principal, action, request_id=msg.request_id, approval_id=msg.approval_id)
    if msg.dry_run and msg.request_id:
        raise InvalidRequest("request_id: not allowed with dry_run (a dry run is never answered as a retry, "
                             "and a later real request must not be answered with it)")
    if msg.dry_run and msg.approval_id:
        raise InvalidRequest("approval_id: not allowed with dry_run (a dry run never uses an approval)")
    return DecisionRequest(
        kind=kind, principal=principal, action=action, context=context,
        request_id=msg.request_id, approval_id=msg.approval_id, dry_run=msg.dry_run, caller=caller,
    )


def struct_to_dict(s: struct_pb2.Struct, where: str, max_depth: int) -> dict[str, Any]:
    """Struct → dict, refusing nesting deeper than max_depth and numbers JSON cannot carry.

    Numbers with an integral value print as integers (42, not 42.0) below 2**53, where a float still holds
    every integer exactly. The walk builds no field path: a refusal carries the path up as it unwinds, so a
    request that is accepted pays nothing for the names its errors would give."""
    try:
        return _struct(s, 1, max_depth)
    except _Refused as exc:
        raise InvalidRequest(f"{where}{''.join(reversed(exc.path))}: {exc.problem}") from None


class _Refused(Exception):
    """A value struct_to_dict refuses; path collects its location (".key", "[i]") innermost first."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem
        self.path: list[str] = []


# One walk over the fields, scalars inline (most values are), one call per nested struct or list: the per-value
# function call, oneof lookup and path string of a value-by-value walk were most of a request's conversion.
# depth: the nesting of the members (1 for the top-level struct's); past max_depth the object itself is refused.
def _struct(s: struct_pb2.Struct, depth: int, max_depth: int) -> dict[str, Any]:
    if depth > max_depth:
        raise _Refused(f"nested deeper than the limit of {max_depth} levels")
    out: dict[str, Any] = {}
    fields = s.fields
    for key in fields:  # a map's items() is a Python-level view; iterating and indexing stay in C
        v = fields[key]
        kind = v.WhichOneof("kind")
        try:
            if kind == "string_value":
                out[key] = v.string_value
            elif kind == "number_value":
                out[key] = _number(v.number_value)
            elif kind == "bool_value":
                out[key] = v.bool_value
            elif kind == "struct_value":
                out[key] = _struct(v.struct_value, depth + 1, max_depth)
            elif kind == "list_value":
                out[key] = _list(v.list_value, depth + 1, max_depth)
            else:
                out[key] = None
        except _Refused as exc:
            exc.path.append(f".{key}")
            raise
    return out


def _list(values: struct_pb2.ListValue, depth: int, max_depth: int) -> list[Any]:
    if depth > max_depth:
        raise _Refused(f"nested deeper than the limit of {max_depth} levels")
    out: list[Any] = []
    for i, v in enumerate(values.values):
        kind = v.WhichOneof("kind")
        try:
            if kind == "string_value":
                out.append(v.string_value)
            elif kind == "number_value":
                out.append(_number(v.number_value))
            elif kind == "bool_value":
                out.append(v.bool_value)
            elif kind == "struct_value":
                out.append(_struct(v.struct_value, depth + 1, max_depth))
            elif kind == "list_value":
                out.append(_list(v.list_value, depth + 1, max_depth))
            else:
                out.append(None)
        except _Refused as exc:
            exc.path.append(f"[{i}]")
            raise
    return out


#: Below this magnitude a float holds every integer exactly (2**53).
_EXACT = float(2**53)


def _number(n: float) -> int | float:
    if not math.isfinite(n):
        raise _Refused("NaN and infinite numbers are not allowed")
    return int(n) if n.is_integer() and -_EXACT < n < _EXACT else n


#: The names the server keys state by, per field path: bounded to MAX_IDENTIFIER characters.
_IDENTIFIERS = {"tool": ("server", "name"), "model": ("provider", "model"), "budget": ("unit", "category")}


def _check_identifiers(kind: str, principal: Mapping[str, Any], action: Mapping[str, Any], *, request_id: str,
                       approval_id: str) -> None:
    """InvalidRequest naming the first name longer than MAX_IDENTIFIER (stores index them all)."""
    # The names of the fields are made only for the one refused: every request passes through here.
    for key, value in principal.items():
        if isinstance(value, str) and len(value) > MAX_IDENTIFIER:
            _too_long(f"principal.{key}", value)
    for key in _IDENTIFIERS[kind]:
        if len(action[key]) > MAX_IDENTIFIER:
            _too_long(f"{kind}.{key}", action[key])
    for where, value in (("request_id", request_id), ("approval_id", approval_id)):
        if len(value) > MAX_IDENTIFIER:
            _too_long(where, value)


def _too_long(where: str, value: str) -> NoReturn:
    raise InvalidRequest(f"{where}: at most {MAX_IDENTIFIER} characters, got {len(value)}")


def largest_field(msg: pb.AuthorizeRequest) -> tuple[str, int]:
    """The biggest top-level part of a request (for size errors), e.g. ("tool.arguments", 1200000)."""
    sizes: list[tuple[str, int]] = [("principal", msg.principal.ByteSize()), ("context", msg.context.ByteSize())]
    kind = msg.WhichOneof("action")
    if kind == "tool":
        sizes += [("tool.arguments", msg.tool.arguments.ByteSize()),
                  ("tool.resources", sum(len(r) for r in msg.tool.resources))]
    elif kind is not None:
        sizes.append((kind, getattr(msg, kind).ByteSize()))
    return max(sizes, key=lambda s: s[1])


def to_response(d: Decision) -> pb.AuthorizeResponse:
    response = pb.AuthorizeResponse(
        decision=DECISION_ENUM[d.decision],
        decision_id=d.decision_id,
        reasons=[pb.Reason(code=r.code, message=r.message) for r in d.reasons],
        bundle_revision=d.bundle_revision,
        approval_id=d.approval_id if d.decision == "require_approval" else "",
        reservation_id=d.reservation_id,
    )
    if d.obligations:
        response.obligations.update(d.obligations)
    return response


def to_record_message(record: DecisionRecord) -> pb.DecisionRecord:
    """A logged record as the DecisionRecord message.

    The record's input may be masked: a member the mask erased is unset here, and so is one it replaced
    with a value of another type (a "***" where a number or an object belongs); `input` always holds the
    record's input exactly as logged.
    """
    inp = record.input
    msg = pb.DecisionRecord(
        decision_id=record.decision_id,
        decision=DECISION_ENUM[record.decision],
        reasons=[pb.Reason(code=r.code, message=r.message) for r in record.reasons],
        bundle_revision=record.bundle_revision,
        latency_us=record.latency_us,
        request_id=record.request_id,
        approval_id=record.approval_id,
        approval_status=record.approval_status,
        reservation_id=record.reservation_id,
        previous_decision_id=record.previous_decision_id,
        prev_hash=record.prev_hash,
        hash=record.hash,
        policy_path=record.policy_path,
        request_digest=record.request_digest,
        requested_by=record.requested_by,
        erased=list(record.erased),
        masked=list(record.masked),
        error=record.error,
        dry_run=record.dry_run,
    )
    msg.timestamp.FromJsonString(record.timestamp)
    _fill(msg.principal, inp.get("principal"))
    kind = record.kind
    if kind in ("tool", "model", "budget"):
        _fill(getattr(msg, kind), inp.get(kind))
    _fill(msg.context, inp.get("context"))
    msg.obligations.update(dict(record.obligations))
    msg.input.update(dict(inp))
    if record.result is not None:
        msg.result.CopyFrom(_to_value(record.result))
    else:
        msg.result.null_value = struct_pb2.NULL_VALUE
    return msg


def _fill(target: message.Message, part: Any) -> None:
    """Set target from a logged, possibly masked, part of an input: each member that still fits."""
    if not isinstance(part, Mapping):
        return
    try:
        json_format.ParseDict(dict(part), target, ignore_unknown_fields=True)
        return
    except json_format.ParseError:
        target.Clear()
    for key, value in part.items():
        try:
            json_format.ParseDict({key: value}, target, ignore_unknown_fields=True)
        except json_format.ParseError:
            continue


def _to_value(x: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": x})
    return holder.fields["v"]
