"""OTLP/HTTP JSON encoding of decision records: one OpenTelemetry log record per decision (and per checkpoint).

Written by hand (the OTLP JSON mapping is small and stable) rather than with the OpenTelemetry SDK, which
would bring a provider, a batch processor and its own buffer the decision log does not need: the database is
the buffer. Attributes follow the OpenTelemetry GenAI semantic conventions where one fits (agent, conversation,
tool, model, provider) and use `tollgate.*` for the decision itself. The sidecar's signed checkpoints of the
chain head travel as log records of event `tollgate.checkpoint`, after the records up to their seq, so a
collector's copy can prove the log later as a `jsonl` export does.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tollgate.decisionlog._checkpoint import Checkpoint

#: Log record severities (OTLP SeverityNumber): a refusal is worth a warning in a log pipeline.
_SEVERITY = {"allow": (9, "INFO"), "require_approval": (9, "INFO"), "deny": (13, "WARN")}
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")
_HEX = re.compile(r"^[0-9a-f]+$")
SCOPE = "tollgate.decisionlog"
EVENT_NAME = "tollgate.decision"
CHECKPOINT_EVENT = "tollgate.checkpoint"
#: A checkpoint's key ID starts with its algorithm's short name (decisionlog/_checkpoint.py's load_key).
_ALGORITHMS = {"hmac": "hmac-sha256", "ed25519": "ed25519", "es256": "es256"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class OtlpEncoder:
    """An ExportLogsServiceRequest in OTLP's JSON encoding, for POST {otlp_endpoint}/v1/logs."""

    def __init__(self, *, service_name: str = "tollgate", service_version: str = "") -> None:
        resource = {"service.name": service_name}
        if service_version:
            resource["service.version"] = service_version
        self._resource = {"attributes": _attributes(resource)}

    #: OTLP logs have room for any event: checkpoints go after the records they name.
    carries_checkpoints = True

    def encode(self, records: Sequence[dict[str, Any]], checkpoints: Sequence[Checkpoint] = ()) -> bytes:
        observed = str(time.time_ns())
        logs = [log_record(r, observed) for r in records] + [checkpoint_record(c, observed) for c in checkpoints]
        document = {"resourceLogs": [{
            "resource": self._resource,
            "scopeLogs": [{"scope": {"name": SCOPE}, "logRecords": logs}],
        }]}
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def log_record(record: Mapping[str, Any], observed_ns: str) -> dict[str, Any]:
    """One decision as an OTLP LogRecord (JSON mapping: 64-bit integers as strings, trace IDs as hex)."""
    decision = str(record.get("decision", ""))
    number, text = _SEVERITY.get(decision, (9, "INFO"))
    out: dict[str, Any] = {
        "timeUnixNano": _unix_nano(str(record.get("timestamp", ""))) or observed_ns,
        "observedTimeUnixNano": observed_ns,
        "severityNumber": number,
        "severityText": text,
        "eventName": EVENT_NAME,
        "body": {"stringValue": summary(record)},
        "attributes": _attributes(decision_attributes(record)),
    }
    inp = record.get("input")
    context = inp.get("context") if isinstance(inp, Mapping) else None
    trace_id, span_id = trace_context(context if isinstance(context, Mapping) else {})
    if trace_id:
        out["traceId"] = trace_id
        if span_id:
            out["spanId"] = span_id
    return out


def checkpoint_record(checkpoint: Checkpoint, observed_ns: str) -> dict[str, Any]:
    """One signed checkpoint as an OTLP LogRecord: what `logs verify --checkpoints` needs is in its attributes
    (the signature covers seq, hash and time; Checkpoint.statement())."""
    algorithm = _ALGORITHMS.get(checkpoint.key_id.partition(":")[0], "")
    return {
        "timeUnixNano": _unix_nano(checkpoint.time) or observed_ns,
        "observedTimeUnixNano": observed_ns,
        "severityNumber": 9,
        "severityText": "INFO",
        "eventName": CHECKPOINT_EVENT,
        "body": {"stringValue": f"checkpoint of seq {checkpoint.seq}: {checkpoint.hash}"},
        "attributes": _attributes({
            "tollgate.checkpoint.seq": checkpoint.seq,
            "tollgate.checkpoint.hash": checkpoint.hash,
            "tollgate.checkpoint.time": checkpoint.time,
            "tollgate.checkpoint.key_id": checkpoint.key_id,
            "tollgate.checkpoint.algorithm": algorithm,
            "tollgate.checkpoint.signature": checkpoint.signature,
        }),
    }


def decision_attributes(record: Mapping[str, Any]) -> dict[str, Any]:
    """GenAI semantic-convention attributes where they fit, tollgate.* for the rest; empty values left out."""
    inp = _mapping(record.get("input"))
    kind = str(inp.get("kind", ""))
    principal = _mapping(inp.get("principal"))
    action = _mapping(inp.get(kind))
    attrs: dict[str, Any] = {
        "gen_ai.agent.id": principal.get("agent_id"),
        "gen_ai.conversation.id": principal.get("session_id"),  # a session is the agent's run / conversation
    }
    if kind == "tool":
        attrs["gen_ai.operation.name"] = "execute_tool"
        attrs["gen_ai.tool.name"] = action.get("name")
        attrs["tollgate.tool.server"] = action.get("server")
    elif kind == "model":
        # No gen_ai.operation.name: a model request may be chat, text completion or embeddings; it is not said.
        attrs["gen_ai.provider.name"] = action.get("provider")
        attrs["gen_ai.request.model"] = action.get("model")
        attrs["gen_ai.request.max_tokens"] = action.get("max_output_tokens")
    elif kind == "budget":
        attrs["tollgate.budget.amount"] = action.get("amount")
        attrs["tollgate.budget.unit"] = action.get("unit")
    attrs.update({
        "tollgate.kind": kind,
        "tollgate.decision": record.get("decision"),
        "tollgate.decision_id": record.get("decision_id"),
        "tollgate.seq": record.get("seq"),
        "tollgate.reasons": [str(r.get("code", "")) for r in record.get("reasons") or () if isinstance(r, Mapping)],
        "tollgate.bundle.revision": record.get("bundle_revision"),
        "tollgate.policy.path": record.get("policy_path"),
        "tollgate.request_id": record.get("request_id"),
        "tollgate.approval_id": record.get("approval_id"),
        "tollgate.reservation_id": record.get("reservation_id"),
        "tollgate.error": record.get("error"),
        "tollgate.latency_us": record.get("latency_us"),
        "tollgate.principal.instance_id": principal.get("instance_id"),
        "tollgate.principal.workflow": principal.get("workflow"),
        "tollgate.principal.team": principal.get("team"),
        "tollgate.principal.user": principal.get("user"),
    })
    return {k: v for k, v in attrs.items() if v not in (None, "", 0, [])}


def summary(record: Mapping[str, Any]) -> str:
    """The log line a person reads: `deny tool github/create_pull_request: tool_not_in_manifest`."""
    inp = _mapping(record.get("input"))
    kind = str(inp.get("kind", ""))
    action = _mapping(inp.get(kind))
    target = {
        "tool": "/".join(str(action.get(k)) for k in ("server", "name") if action.get(k)),
        "model": "/".join(str(action.get(k)) for k in ("provider", "model") if action.get(k)),
        "budget": f"{action.get('amount', '')} {action.get('unit', '')}".strip(),
    }.get(kind, "")
    codes = ", ".join(str(r.get("code", "")) for r in record.get("reasons") or () if isinstance(r, Mapping))
    line = " ".join(p for p in (str(record.get("decision", "")), kind, target) if p)
    return f"{line}: {codes}" if codes else line


def trace_context(context: Mapping[str, Any]) -> tuple[str, str]:
    """(trace_id, span_id) in lowercase hex from the request context's W3C `traceparent`, else its
    `trace_id`/`span_id`; ("", "") when absent or malformed (an all-zero ID is invalid in W3C)."""
    parent = context.get("traceparent")
    if isinstance(parent, str):
        match = _TRACEPARENT.match(parent.strip().lower())
        if match and set(match[1]) != {"0"}:
            span = match[2] if set(match[2]) != {"0"} else ""
            return match[1], span
    trace, span = context.get("trace_id"), context.get("span_id")
    trace_hex = trace.lower() if isinstance(trace, str) else ""
    span_hex = span.lower() if isinstance(span, str) else ""
    if len(trace_hex) != 32 or not _HEX.match(trace_hex) or set(trace_hex) == {"0"}:
        return "", ""
    if len(span_hex) != 16 or not _HEX.match(span_hex) or set(span_hex) == {"0"}:
        span_hex = ""
    return trace_hex, span_hex


def _unix_nano(timestamp: str) -> str:
    try:
        moment = datetime.fromisoformat(timestamp.replace("Z", "+00:00"))
    except ValueError:
        return ""
    if moment.tzinfo is None:
        return ""
    # Integer arithmetic: a float timestamp would lose the microseconds.
    delta = moment - _EPOCH
    return str((delta.days * 86400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000)


def _attributes(values: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [{"key": k, "value": _any_value(v)} for k, v in values.items()]


def _any_value(value: Any) -> dict[str, Any]:
    if isinstance(value, bool):
        return {"boolValue": value}
    if isinstance(value, int):
        return {"intValue": str(value)}
    if isinstance(value, float):
        return {"doubleValue": value}
    if isinstance(value, list | tuple):
        return {"arrayValue": {"values": [_any_value(v) for v in value]}}
    return {"stringValue": str(value)}


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
