"""The policy contract: what `data.tollgate.decision` must return, checked before anything is answered."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

ALLOW = "allow"
DENY = "deny"
REQUIRE_APPROVAL = "require_approval"
DECISIONS = frozenset({ALLOW, DENY, REQUIRE_APPROVAL})

_RESULT_KEYS = frozenset({"decision", "reasons", "obligations", "approval", "reserve"})
_RESERVE_KEYS = frozenset({"amounts", "limits", "monthly_limits"})
_APPROVAL_KEYS = frozenset({"approvers", "ttl_seconds"})


class ContractError(ValueError):
    """The policy's result does not have the shape the contract requires."""


@dataclass(frozen=True)
class Reason:
    """Why: a stable code for machines and a message for people."""

    code: str
    message: str = ""

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class ApprovalSpec:
    """Who may approve a require_approval decision, and for how long the approval may stay open."""

    approvers: tuple[str, ...]
    ttl_seconds: int


@dataclass(frozen=True)
class ReservePlan:
    """What an allowed request spends (unit → amount), and the limits (scope → unit → limit) it must fit:
    `limits` over each scope's default window (a session's run, the UTC day), `monthly_limits` over the UTC month.

    The server reserves the amounts as part of the decision, re-checking the limits against the ledger.
    """

    amounts: Mapping[str, float]
    limits: Mapping[str, Mapping[str, float]]
    monthly_limits: Mapping[str, Mapping[str, float]] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicyResult:
    """A policy result that satisfies the contract."""

    decision: str
    reasons: tuple[Reason, ...] = ()
    obligations: Mapping[str, Any] = field(default_factory=dict)
    approval: ApprovalSpec | None = None
    reserve: ReservePlan | None = None


def parse_result(value: Any) -> PolicyResult:
    """Validate a raw policy result; raise ContractError naming the first thing that is wrong."""
    if not isinstance(value, dict):
        raise ContractError(f"result must be an object, got {_type(value)}")
    unknown = set(value) - _RESULT_KEYS
    if unknown:
        raise ContractError(f"result has unknown keys {sorted(unknown)}; allowed: {sorted(_RESULT_KEYS)}")
    decision = value.get("decision")
    if decision not in DECISIONS:
        raise ContractError(f"result.decision must be one of {sorted(DECISIONS)}, got {decision!r}")
    raw_reasons = value.get("reasons", [])
    if not isinstance(raw_reasons, list):
        raise ContractError(f"result.reasons must be an array, got {_type(raw_reasons)}")
    reasons = []
    for i, r in enumerate(raw_reasons):
        if not isinstance(r, dict) or set(r) - {"code", "message"}:
            raise ContractError(f"result.reasons[{i}] must be an object with code and message")
        code, message = r.get("code"), r.get("message", "")
        if not isinstance(code, str) or not code:
            raise ContractError(f"result.reasons[{i}].code must be a non-empty string")
        if not isinstance(message, str):
            raise ContractError(f"result.reasons[{i}].message must be a string")
        reasons.append(Reason(code, message))
    if decision == DENY and not reasons:
        raise ContractError("a deny must carry at least one reason")
    obligations = value.get("obligations", {})
    if not isinstance(obligations, dict):
        raise ContractError(f"result.obligations must be an object, got {_type(obligations)}")
    approval = None
    raw_approval = value.get("approval")
    if decision == REQUIRE_APPROVAL:
        if raw_approval is None:
            raise ContractError("require_approval needs result.approval with approvers and ttl_seconds")
        approval = _parse_approval(raw_approval)
    elif raw_approval is not None:
        raise ContractError(f"result.approval is only allowed with require_approval, not {decision}")
    reserve = None
    if value.get("reserve") is not None:
        if decision != ALLOW:
            raise ContractError(f"result.reserve is only allowed with allow, not {decision}")
        reserve = _parse_reserve(value["reserve"])
    return PolicyResult(decision, tuple(reasons), obligations, approval, reserve)


def _parse_reserve(raw: Any) -> ReservePlan:
    if not isinstance(raw, dict) or set(raw) - _RESERVE_KEYS:
        raise ContractError(f"result.reserve must be an object with keys {sorted(_RESERVE_KEYS)}")
    amounts = raw.get("amounts", {})
    if not isinstance(amounts, dict) or not all(_non_negative(a) for a in amounts.values()):
        raise ContractError("result.reserve.amounts must map units to numbers >= 0")
    return ReservePlan({str(u): float(a) for u, a in amounts.items()}, _parse_limits(raw, "limits"),
                       _parse_limits(raw, "monthly_limits"))


def _parse_limits(raw: dict[str, Any], key: str) -> dict[str, dict[str, float]]:
    limits = raw.get(key, {})
    if not isinstance(limits, dict) or not all(
            isinstance(units, dict) and all(_non_negative(n) for n in units.values()) for units in limits.values()):
        raise ContractError(f"result.reserve.{key} must map scopes to objects of units and numbers >= 0")
    return {str(s): {str(u): float(n) for u, n in units.items()} for s, units in limits.items()}


def _non_negative(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _parse_approval(raw: Any) -> ApprovalSpec:
    if not isinstance(raw, dict) or set(raw) - _APPROVAL_KEYS:
        raise ContractError(f"result.approval must be an object with keys {sorted(_APPROVAL_KEYS)}")
    approvers = raw.get("approvers")
    if not isinstance(approvers, list) or not approvers or not all(isinstance(a, str) and a for a in approvers):
        raise ContractError("result.approval.approvers must be a non-empty array of non-empty strings")
    ttl = raw.get("ttl_seconds")
    if isinstance(ttl, float) and ttl.is_integer():
        ttl = int(ttl)
    if not isinstance(ttl, int) or isinstance(ttl, bool) or ttl <= 0:
        raise ContractError(f"result.approval.ttl_seconds must be a positive integer, got {ttl!r}")
    return ApprovalSpec(tuple(approvers), ttl)


def _type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(value), "number")
