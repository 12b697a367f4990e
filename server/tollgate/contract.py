"""The contract of a decision: the request asked, the policy input built from it, the result the policy must
return (checked before anything is answered), and the answer sent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tollgate.encoding import request_digest
from tollgate.identity import ANONYMOUS, Caller

ALLOW = "allow"
DENY = "deny"
REQUIRE_APPROVAL = "require_approval"
DECISIONS = frozenset({ALLOW, DENY, REQUIRE_APPROVAL})

_RESULT_KEYS = frozenset({"decision", "reasons", "obligations", "approval", "reserve"})
_RESERVE_KEYS = frozenset({"amounts", "limits", "monthly_limits"})
_APPROVAL_KEYS = frozenset({"approvers", "ttl_seconds", "required", "allow_requester"})
#: The most distinct approvers a policy may require for one approval (approval.required): a quorum past it
#: is a policy mistake no team could staff, an approval no one could ever complete.
MAX_REQUIRED_APPROVALS = 10
#: The largest amount anything may spend, limit or report in one unit (usd or tokens): budget requests, usage
#: reports, the policy's reserve amounts and limits. A trillion keeps every sum a ledger can make (a trillion
#: rows of it) far from float overflow, and far above any real budget.
MAX_AMOUNT = 1e12
#: The longest name a request may carry where the server keys state by it (an agent, session, team, tool, model,
#: unit, request or approval id): every store indexes these, and PostgreSQL refuses an index entry past about
#: 2,700 bytes, so an unbounded session id would be a request only the fleet denies. No real id comes near it.
MAX_IDENTIFIER = 512


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
    #: How many distinct approvers must say yes (a quorum); one deny denies.
    required: int = 1
    #: Whether the user the agent acts for (principal.user) may be one of them: never unless the policy says so.
    allow_requester: bool = False


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
    if not isinstance(amounts, dict) or not all(is_amount(a) for a in amounts.values()):
        raise ContractError(f"result.reserve.amounts must map units to numbers from 0 to {MAX_AMOUNT:g}")
    return ReservePlan({str(u): float(a) for u, a in amounts.items()}, _parse_limits(raw, "limits"),
                       _parse_limits(raw, "monthly_limits"))


def _parse_limits(raw: dict[str, Any], key: str) -> dict[str, dict[str, float]]:
    limits = raw.get(key, {})
    if not isinstance(limits, dict) or not all(
            isinstance(units, dict) and all(is_amount(n) for n in units.values()) for units in limits.values()):
        raise ContractError(f"result.reserve.{key} must map scopes to objects of units and numbers from 0 to "
                            f"{MAX_AMOUNT:g}")
    return {str(s): {str(u): float(n) for u, n in units.items()} for s, units in limits.items()}


def is_amount(value: Any) -> bool:
    """Whether value is an amount a ledger may hold: a number from 0 to MAX_AMOUNT (never NaN or infinite)."""
    # The comparison refuses NaN and both infinities as well as negatives.
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= MAX_AMOUNT


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
    required = raw.get("required", 1)
    if isinstance(required, float) and required.is_integer():
        required = int(required)
    if not isinstance(required, int) or isinstance(required, bool) or not 1 <= required <= MAX_REQUIRED_APPROVALS:
        raise ContractError(f"result.approval.required must be an integer from 1 to {MAX_REQUIRED_APPROVALS}, "
                            f"got {required!r}")
    allow_requester = raw.get("allow_requester", False)
    if not isinstance(allow_requester, bool):
        raise ContractError(f"result.approval.allow_requester must be a boolean, got {_type(allow_requester)}")
    return ApprovalSpec(tuple(approvers), ttl, required, allow_requester)


def _type(value: Any) -> str:
    if value is None:
        return "null"
    return {dict: "object", list: "array", str: "string", bool: "boolean"}.get(type(value), "number")


#: Request kinds: a tool call, a model call, a spend.
KINDS = ("tool", "model", "budget")

#: Deepest nesting of objects and arrays that tool.arguments and context may have, and the most max_depth may
#: be set to. A request's record must be readable back: GetDecision's DecisionRecord holds tool.arguments again
#: at input.tool.arguments, each object level costs three protobuf messages (Struct, map entry, Value), and
#: protobuf decoders (upb, C++, Java) refuse a message nested over 100 deep; 32 levels there is 103.
MAX_DEPTH = 31

#: Reason codes of the DENYs the server makes itself, when the policy could not decide.
NO_BUNDLE = "no_bundle"
ENGINE_ERROR = "engine_error"
POLICY_CONTRACT = "policy_contract"
DEADLINE_EXCEEDED = "deadline_exceeded"
#: Reason code of a request an active kill switch names (the policy's, and the server's own backstop).
KILLED = "killed"
#: Reason code of a request refused because the decision-log export is further behind than allowed
#: (decision_log_fail_closed_on_lag).
EXPORT_LAG = "export_lag"
#: Reason code of a request that needs state (its spend, its reservation, the approval it presents or opens) the
#: state store cannot read or write now: unreachable, or slower than its timeout. Requests that need no state go on.
STATE_UNAVAILABLE = "state_unavailable"
#: Reason code of every request while the kill switches cannot be confirmed (a shared store not heard from for
#: longer than kill_switch_max_staleness): the server cannot prove that no kill switch names the request.
STATE_STALE = "state_stale"


def state_unavailable(what: str) -> Reason:
    """The DENY state_unavailable of a request that needs `what` (e.g. "the approval presented")."""
    return Reason(STATE_UNAVAILABLE, f"state the request needs cannot be read or written: {what}")


@dataclass(frozen=True)
class DecisionRequest:
    """One validated question: who (principal) wants to do what (a tool call, a model call, a spend)."""

    kind: str
    principal: Mapping[str, Any]
    action: Mapping[str, Any]
    context: Mapping[str, Any] = field(default_factory=dict)
    request_id: str = ""
    approval_id: str = ""
    #: Who asked, as the transport proved it (input.auth; the record's requested_by).
    caller: Caller = ANONYMOUS
    #: Evaluate and log, but act on nothing: no approval opened, no budget reserved (input.dry_run).
    dry_run: bool = False

    def digest(self) -> str:
        """sha256 of the canonical request: principal, kind and action (not context or approval_id)."""
        return request_digest(self.kind, self.principal, self.action)


@dataclass(frozen=True)
class Decision:
    """The answer to one DecisionRequest, as logged under decision_id."""

    decision: str
    decision_id: str
    reasons: tuple[Reason, ...]
    obligations: Mapping[str, Any]
    bundle_revision: str
    approval_id: str = ""
    reservation_id: str = ""

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Decision:
        return cls(
            decision=record["decision"],
            decision_id=record["decision_id"],
            reasons=tuple(Reason(r["code"], r.get("message", "")) for r in record["reasons"]),
            obligations=record.get("obligations") or {},
            bundle_revision=record["bundle_revision"],
            approval_id=record.get("approval_id", ""),
            reservation_id=record.get("reservation_id", ""),
        )


def build_input(request: DecisionRequest, *, now: str, killed: list[dict[str, str]] | None = None,
                approval: Mapping[str, str] | None = None, spend: Mapping[str, Mapping[str, float]] | None = None,
                spend_month: Mapping[str, Mapping[str, float]] | None = None,
                refused: Reason | None = None) -> dict[str, Any]:
    """The input document of the policy contract (DESIGN.md). killed: the active kill switches; approval: the
    state of the approval presented ({id, status, approver}); spend and spend_month: what the principal's scopes
    have spent (a spending request's); refused: why the server refused the caller (input.auth.refused, logged so
    that a replay answers as the server did)."""
    auth = request.caller.auth_input()
    if refused is not None:
        auth["refused"] = refused.as_dict()
    doc: dict[str, Any] = {
        "kind": request.kind,
        "principal": request.principal,
        request.kind: request.action,
        "context": request.context,
        "request_id": request.request_id,
        "approval_id": request.approval_id,
        "auth": auth,
        "state": {"spend": spend or {}, "spend_month": spend_month or {}, "killed": killed or [], "approval": approval},
        "now": now,
    }
    if request.dry_run:
        doc["dry_run"] = True
    return doc
