"""Decision records as export events: OPA's decision-log event shape, and Tollgate's own JSON Lines shape.

OPA consumers (log pipelines, Styra-compatible services, `opa`-aware dashboards) read the fields OPA's
decision-log plugin sends; everything Tollgate adds beyond them sits under one `tollgate` key, which such
consumers ignore.
"""

from __future__ import annotations

import importlib.metadata
from collections.abc import Mapping
from typing import Any

#: The name a Tollgate bundle goes by in an event's `bundles` (Tollgate serves one bundle).
BUNDLE_NAME = "tollgate"
#: `labels.app` of every event.
APP = "tollgate"


def _version() -> str:
    try:
        return importlib.metadata.version("tollgate")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


VERSION = _version()

# Record fields that OPA's event has a place for; the rest of Tollgate's record goes under "tollgate".
_EXTRAS = ("decision", "reasons", "obligations", "approval_id", "approval_status", "reservation_id",
           "previous_decision_id", "request_id", "request_digest", "error", "seq", "hash", "prev_hash")


def opa_time(timestamp: str) -> str:
    """A log timestamp (RFC 3339, microseconds, `Z`) with nanosecond precision, as OPA's events carry time.

    Always nine fractional digits, so exported timestamps still sort as text.
    """
    head, dot, fraction = timestamp.partition(".")
    if not dot:
        return f"{head.removesuffix('Z')}.000000000Z"
    digits = fraction.removesuffix("Z")
    if not digits.isdigit() or len(digits) > 9 or not fraction.endswith("Z"):
        raise ValueError(f"timestamp {timestamp!r} is not a decision-log time (UTC, `Z`, at most nanoseconds)")
    return f"{head}.{digits.ljust(9, '0')}Z"


def opa_event(record: Mapping[str, Any], *, instance_id: str | None = None, version: str = VERSION,
              bundle_name: str = BUNDLE_NAME) -> dict[str, Any]:
    """One decision record as an OPA decision-log event.

    instance_id goes to `labels.id` (OPA puts its own instance id there); when None, the principal's
    instance_id is used, since a sidecar serves one agent instance. `seq` and `hash`, when the record
    carries them (as read from the log), go under `tollgate` with the other extras.
    """
    input_doc = record.get("input")
    if instance_id is None:
        principal = input_doc.get("principal") if isinstance(input_doc, Mapping) else None
        found = principal.get("instance_id") if isinstance(principal, Mapping) else None
        instance_id = found if isinstance(found, str) else ""
    event: dict[str, Any] = {
        "decision_id": record["decision_id"],
        "labels": {"id": instance_id, "version": version, "app": APP},
        "bundles": {bundle_name: {"revision": record.get("bundle_revision", "")}},
        "path": record.get("policy_path", ""),
        "input": input_doc,
        "result": record.get("result"),
        "requested_by": record.get("requested_by", ""),
        "timestamp": opa_time(record["timestamp"]),
        "metrics": {"timer_server_handler_ns": int(record.get("latency_us", 0)) * 1000},
    }
    # OPA leaves these out when nothing was erased or masked; a record that lists them keeps them.
    for key in ("erased", "masked"):
        if key in record:
            event[key] = list(record[key])
    event["tollgate"] = {key: record[key] for key in _EXTRAS if key in record}
    return event


def jsonl_record(record: Mapping[str, Any], *, seq: int, hash: str) -> dict[str, Any]:
    """One record as Tollgate's JSON Lines export carries it: the record itself plus seq, hash and prev_hash.

    The record already holds prev_hash; with seq and hash a reader can re-check the chain from the file.
    """
    return {**record, "seq": seq, "hash": hash}
