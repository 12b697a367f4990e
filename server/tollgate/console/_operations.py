"""What the operations pages share (pages/sessions.py, spend.py, killswitches.py, decisions.py, fleet.py): reading
bounded parameters from a query string, JSON for people (integers as integers), the timeline's approvals and spend
read from the store, and the spend limits a run was held to.

Limits. The console runs no policy engine, and the limits live in the bundle (each agent's manifest sets its
session, agent, team and workflow limits, so two agents of one team may be held to different team limits). The
console reads them from the decision records: an allowed spending decision carries `result.reserve.limits` and
`monthly_limits`, exactly what the ledger re-checked for that principal on the revision the sidecar ran. Loading
the configured bundle's data.json instead would show what the bundle says now, which may not be what the fleet
runs (a promotion under way, a sidecar on its last good bundle), needs the bundle source in the console's
config, and still needs the agent to know which manifest applies. So a limit is shown as "the limit the latest
spending decision of that scope carried", and a scope with no such decision in view shows its spend without a
limit rather than nothing.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from starlette.datastructures import QueryParams

from tollgate.clock import Clock
from tollgate.decisionlog import ApprovalState, DecisionRecord, SpendLine
from tollgate.decisionlog._toolruns import ToolRunView
from tollgate.encoding import parse_moment
from tollgate.state import ApprovalStore, BudgetStore, StateError, Stores
from tollgate.state._spend import LocalSpend, PgSpend, SpendReport
from tollgate.state._toolresults import ToolResultStore
from tollgate.state.budgets import BUDGET_SCOPES, ReservationNotFound

#: Longest text a filter field takes (a principal field is at most 512 characters: contract.MAX_IDENTIFIER).
MAX_FIELD = 512
#: Rows a listing shows at most, whatever the query string asks.
MAX_ROWS = 500


def text_param(params: QueryParams, name: str, *, limit: int = MAX_FIELD) -> str:
    """A query-string field, stripped, cut to limit characters."""
    return params.get(name, "").strip()[:limit]


def int_param(params: QueryParams, name: str, *, default: int, low: int, high: int) -> int:
    """A whole number from the query string, clamped to [low, high]; default when absent or not a number."""
    text = params.get(name, "").strip()
    if not text.isdigit() or len(text) > 9:
        return default
    return max(low, min(high, int(text)))


def moment_param(params: QueryParams, name: str, *, now: datetime, problems: list[str]) -> datetime | None:
    """An RFC 3339 time or a duration back from now (`15m`, `24h`, `7d`); None when empty; a bad one is said in
    problems and ignored."""
    text = text_param(params, name, limit=64)
    if not text:
        return None
    try:
        return parse_moment(text, now=now)
    except ValueError as exc:
        problems.append(f"{name}: {exc}")
        return None


def integral(value: Any) -> Any:
    """value with every integral float as an int (protobuf's Struct makes every number a float: 42.0 was 42)."""
    if isinstance(value, float) and math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, Mapping):
        return {str(k): integral(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [integral(v) for v in value]
    return value


def readable_json(value: Any) -> str:
    """JSON for people: indented, integers as integers, text as written (not \\u-escaped); HTML escaping is the
    template's (autoescape)."""
    return json.dumps(integral(value), indent=2, ensure_ascii=False, sort_keys=False)


def amount(value: float) -> str:
    """A spend amount for a table: up to 6 decimals, no trailing zeros."""
    if not math.isfinite(value):
        return "invalid"
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    return text if text not in ("", "-0") else "0"


def spend_report(stores: Stores, clock: Clock) -> SpendReport:
    """Spend per scope value on the console's store."""
    if stores.pg is not None:
        return PgSpend(stores.pg, clock=clock)
    if stores.sqlite_path is None:
        raise StateError("the console's store is neither SQLite nor PostgreSQL: no spend to read")
    return LocalSpend(stores.sqlite_path, clock=clock)


# -- the timeline's state: approvals and spend read from the store before the timeline is built ---------------


class StoreRunState:
    """decisionlog.RunState from the console's store (async): the run's approvals and reservations, read once."""

    def __init__(self, approvals: dict[str, ApprovalState], spend: dict[str, tuple[SpendLine, ...]],
                 note: str, runs: Mapping[str, ToolRunView] | None = None) -> None:
        self._approvals, self._spend, self.note = approvals, spend, note
        self._runs = runs or {}

    @classmethod
    async def read(cls, approvals: ApprovalStore, budgets: BudgetStore, records: Sequence[DecisionRecord], *,
                   tool_results: ToolResultStore | None = None) -> StoreRunState:
        found: dict[str, ApprovalState] = {}
        spend: dict[str, tuple[SpendLine, ...]] = {}
        try:
            for approval_id in dict.fromkeys(r.approval_id for r in records if r.approval_id):
                approval = await approvals.get(approval_id)
                if approval is not None:
                    found[approval_id] = ApprovalState(approval.id, approval.status, tuple(approval.approvers),
                                                       approval.decided_by, approval.decided_at, approval.reason)
            for reservation_id in dict.fromkeys(r.reservation_id for r in records if r.reservation_id):
                with contextlib.suppress(ReservationNotFound):
                    spend[reservation_id] = tuple(SpendLine(u.unit, u.amount, u.committed, u.status,
                                                            u.over_reported)
                                                  for u in await budgets.get(reservation_id))
        except StateError as exc:  # the decisions still show
            return cls({}, {}, f"{exc}: approval decisions and spend are not shown")
        runs: Mapping[str, ToolRunView] = {}
        if tool_results is not None:
            with contextlib.suppress(StateError):  # a store without the table yet: no result was reported
                runs = await tool_results.for_decisions([r.decision_id for r in records if r.kind == "tool"])
        return cls(found, spend, "", runs)

    def approval(self, approval_id: str) -> ApprovalState | None:
        return self._approvals.get(approval_id)

    def spend(self, reservation_id: str) -> tuple[SpendLine, ...]:
        return self._spend.get(reservation_id, ())

    def tool_run(self, decision_id: str) -> ToolRunView | None:
        return self._runs.get(decision_id)


# -- limits, as the decisions carried them ------------------------------------------------------------------


@dataclass(frozen=True)
class Limits:
    """One scope value's limits by unit, over its default window and over the month, and the decision they are
    read from."""

    default: Mapping[str, float]
    monthly: Mapping[str, float]
    decision_id: str


def limits_seen(records: Iterable[DecisionRecord]) -> dict[tuple[str, str], Limits]:
    """(scope, value) → the limits the newest spending decision of that scope value carried (records in any
    order; a record without result.reserve carries none)."""
    found: dict[tuple[str, str], tuple[str, Limits]] = {}
    for record in records:
        reserve = record.result.get("reserve") if isinstance(record.result, Mapping) else None
        if not isinstance(reserve, Mapping):
            continue
        default, monthly = _units(reserve.get("limits")), _units(reserve.get("monthly_limits"))
        for scope, field in BUDGET_SCOPES.items():
            value = record.principal.get(field)
            if not isinstance(value, str) or not value or (scope not in default and scope not in monthly):
                continue
            key = (scope, value)
            if key in found and found[key][0] >= record.timestamp:
                continue
            found[key] = (record.timestamp, Limits(default.get(scope, {}), monthly.get(scope, {}),
                                                   record.decision_id))
    return {key: limits for key, (_, limits) in found.items()}


def _units(raw: Any) -> dict[str, dict[str, float]]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(scope): {str(u): float(n) for u, n in units.items()
                         if isinstance(n, int | float) and not isinstance(n, bool)}
            for scope, units in raw.items() if isinstance(units, Mapping)}


def share(spent: float, limit: float | None) -> str:
    """"42 %" of a limit, or "" without one."""
    if limit is None or limit <= 0 or not math.isfinite(spent):
        return ""
    return f"{100 * spent / limit:.0f} %"
