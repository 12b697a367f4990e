"""DecisionRecord: one answer as the decision log keeps it, typed; `as_dict()` is the JSON the hash chain covers.

The authorizer builds one per answer and `DecisionLog.append` writes `as_dict()` (plus the `prev_hash` the
writer links it with) as canonical JSON: that text is what is hashed and exported, byte for byte as the
20-key dict it replaces. Reading goes the other way through `from_dict`, which accepts records written by
any version of the log (fields added later default to empty) and names the first field that is not what a
record holds.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tollgate.contract import ALLOW, DENY, REQUIRE_APPROVAL, Decision, Reason

#: The decisions a record may hold, in the order messages list them.
RECORD_DECISIONS = (ALLOW, DENY, REQUIRE_APPROVAL)


@dataclass(frozen=True, kw_only=True)
class DecisionRecord:
    """One logged answer: what was asked (the masked input), what the policy said, what was answered, and links.

    `input`, `result` and `obligations` are JSON values shared with the caller, not copied: treat them as
    read-only. `seq`, `prev_hash` and `hash` are the record's place in the log, set when it is read back
    (`prev_hash` is hashed with the record; `seq` and `hash` are not part of it).
    """

    decision_id: str
    #: RFC 3339, UTC, microseconds (tollgate.encoding.format_time): the text that is hashed.
    timestamp: str
    #: The policy input as written: members the mask erased are absent, the ones it replaced hold the mask's value.
    input: Mapping[str, Any]
    #: The policy's own result (masked and scrubbed as the input is); None when no policy answered.
    result: Any = None
    decision: str
    reasons: tuple[Reason, ...] = ()
    obligations: Mapping[str, Any] = field(default_factory=dict)
    bundle_revision: str = ""
    #: The entrypoint evaluated (OPA's decision-log `path`).
    policy_path: str = ""
    #: The caller's idempotency key, and the digest of the request it was answered for.
    request_id: str = ""
    request_digest: str = ""
    approval_id: str = ""
    #: The status of the approval presented, as the policy saw it ("" when none was presented).
    approval_status: str = ""
    reservation_id: str = ""
    #: The decision this one replaced for the same request_id (a changed request asked again).
    previous_decision_id: str = ""
    #: The caller's authenticated subject (OPA's `requested_by`).
    requested_by: str = ""
    #: Why the server decided without (or against) the policy, and what masking could not do.
    error: str = ""
    #: JSON pointers the mask removed and replaced (OPA's `erased` and `masked`).
    erased: tuple[str, ...] = ()
    masked: tuple[str, ...] = ()
    latency_us: int = 0
    #: Evaluated and logged, nothing acted on (written only when true, as before the field existed).
    dry_run: bool = False
    seq: int = 0
    prev_hash: str = ""
    hash: str = ""

    @property
    def kind(self) -> str:
        return str(self.input.get("kind", ""))

    @property
    def principal(self) -> Mapping[str, Any]:
        found = self.input.get("principal")
        return found if isinstance(found, Mapping) else {}

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON data, exactly as the log hashes and exports it (seq and hash are not in it)."""
        doc: dict[str, Any] = {
            "decision_id": self.decision_id,
            "timestamp": self.timestamp,
            "input": self.input,
            "result": self.result,
            "decision": self.decision,
            "reasons": [r.as_dict() for r in self.reasons],
            "obligations": dict(self.obligations),
            "bundle_revision": self.bundle_revision,
            "policy_path": self.policy_path,
            "request_id": self.request_id,
            "request_digest": self.request_digest,
            "approval_id": self.approval_id,
            "approval_status": self.approval_status,
            "reservation_id": self.reservation_id,
            "previous_decision_id": self.previous_decision_id,
            "requested_by": self.requested_by,
            "error": self.error,
            "erased": list(self.erased),
            "masked": list(self.masked),
            "latency_us": self.latency_us,
        }
        if self.dry_run:
            doc["dry_run"] = True
        if self.prev_hash:
            doc["prev_hash"] = self.prev_hash
        return doc

    def answer(self) -> Decision:
        """The answer this record logged, as Authorize gave it (an idempotent retry is answered with it)."""
        return Decision(decision=self.decision, decision_id=self.decision_id, reasons=self.reasons,
                        obligations=self.obligations, bundle_revision=self.bundle_revision,
                        approval_id=self.approval_id, reservation_id=self.reservation_id)

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> DecisionRecord:
        """A record read back (a log row, an export line, GetDecision's source); ValueError names what is wrong.

        decision_id, timestamp, decision and input are required; every other field may be missing (a log
        written before it existed) and reads as empty. `seq` and `hash`, which exports carry beside the
        record, are read when present.
        """
        decision_id = _required(value, "decision_id", str)
        timestamp = _required(value, "timestamp", str)
        try:
            datetime.fromisoformat(timestamp)
        except ValueError:
            raise ValueError(f"timestamp {timestamp!r} is not an RFC 3339 time") from None
        decision = _required(value, "decision", str)
        if decision not in RECORD_DECISIONS:
            raise ValueError(f"decision {decision!r} is not one of {', '.join(RECORD_DECISIONS)}")
        reasons = value.get("reasons", [])
        if not isinstance(reasons, list) or not all(isinstance(r, Mapping) and isinstance(r.get("code"), str)
                                                    for r in reasons):
            raise ValueError("reasons must be an array of objects with a code")
        obligations = value.get("obligations") or {}
        if not isinstance(obligations, Mapping):
            raise ValueError("obligations must be an object")
        input_doc = _required(value, "input", dict)
        return cls(
            decision_id=decision_id, timestamp=timestamp, input=input_doc, result=value.get("result"),
            decision=decision, reasons=tuple(Reason(r["code"], str(r.get("message") or "")) for r in reasons),
            obligations=obligations, bundle_revision=_text(value, "bundle_revision"),
            policy_path=_text(value, "policy_path"), request_id=_text(value, "request_id"),
            request_digest=_text(value, "request_digest"), approval_id=_text(value, "approval_id"),
            approval_status=_text(value, "approval_status"), reservation_id=_text(value, "reservation_id"),
            previous_decision_id=_text(value, "previous_decision_id"), requested_by=_text(value, "requested_by"),
            error=_text(value, "error"), erased=_pointers(value, "erased"), masked=_pointers(value, "masked"),
            latency_us=_count(value, "latency_us"), dry_run=value.get("dry_run") is True,
            seq=_count(value, "seq"), prev_hash=_text(value, "prev_hash"), hash=_text(value, "hash"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> DecisionRecord:
        """A record from its JSON (a log row's text, a JSON Lines line); ValueError says what is wrong."""
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
        except ValueError as exc:  # not UTF-8
            raise ValueError(f"not JSON ({exc})") from None
        if not isinstance(value, dict):
            raise ValueError("not a JSON object")
        return cls.from_dict(value)


def _required(value: Mapping[str, Any], name: str, kind: type) -> Any:
    if name not in value:
        raise ValueError(f"{name} is missing")
    found = value[name]
    if not isinstance(found, kind):
        raise ValueError(f"{name} must be {'an object' if kind is dict else 'a string'}")
    return found


def _text(value: Mapping[str, Any], name: str) -> str:
    found = value.get(name)
    return "" if found is None else str(found)


def _pointers(value: Mapping[str, Any], name: str) -> tuple[str, ...]:
    found = value.get(name)
    return tuple(str(p) for p in found) if isinstance(found, list) else ()


def _count(value: Mapping[str, Any], name: str) -> int:
    found = value.get(name)
    # bool is an int in Python; a record never means one by it.
    return found if isinstance(found, int) and not isinstance(found, bool) else 0
