"""Spend: what each team, agent, workflow (over a UTC day or month) or session (its run) has spent, against the
limits the decisions carried (see tollgate.console._operations: where limits come from)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tollgate.console._operations import Limits, amount, int_param, limits_seen, share, spend_report, text_param
from tollgate.console._web import Page, Visit, require
from tollgate.decisionlog import DecisionRecord, LogReadError, Query
from tollgate.state import StateError

#: The scopes the page lists, and the periods each is counted over.
SCOPES = {"team": ("day", "month"), "agent": ("day", "month"), "workflow": ("day", "month"), "session": ("run",)}
#: Spending decisions read for the limits: the newest this many of each kind in the period.
LIMIT_RECORDS = 1000
_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")
_MONTH = re.compile(r"\d{4}-\d{2}")


@require("viewer")
async def spend(request: Request, visit: Visit) -> Response:
    console = visit.console
    params = request.query_params
    now = console.clock.now()
    scope = text_param(params, "scope", limit=16)
    scope = scope if scope in SCOPES else "team"
    period_kind = text_param(params, "period", limit=8)
    period_kind = period_kind if period_kind in SCOPES[scope] else SCOPES[scope][0]
    problems: list[str] = []
    at, start, end = _period(period_kind, text_param(params, "at", limit=10), now, problems)
    period = "run" if period_kind == "run" else f"{period_kind} {at}"
    limit = int_param(params, "limit", default=100, low=1, high=500)
    rows: list[dict[str, Any]] = []
    try:
        totals = await spend_report(console.stores, console.clock).totals(scope, period, limit=limit)
    except (StateError, ValueError) as exc:
        problems.append(str(exc))
        totals = []
    # A period still running is read up to now (no until): the log's newest-first walk of the window, bounded.
    limits = await _limits(visit, start, end if end is not None and end <= now else None, problems) if totals else {}
    for total in totals:
        seen = limits.get((scope, total.value))
        limit_value = _limit_of(seen, total.unit, monthly=period_kind == "month")
        spent = total.committed + total.reserved
        rows.append({"t": total, "committed": amount(total.committed), "reserved": amount(total.reserved),
                     "limit": "" if limit_value is None else amount(limit_value), "share": share(spent, limit_value),
                     "over": limit_value is not None and spent > limit_value, "from": seen.decision_id if seen else ""})
    return visit.render("spend.html", rows=rows, scope=scope, scopes=list(SCOPES), period_kind=period_kind,
                        periods=SCOPES[scope], at=at, period=period, limit=limit, problems=problems)


def _period(kind: str, at: str, now: datetime, problems: list[str]) -> tuple[str, datetime | None, datetime | None]:
    """(the period's date as the ledger names it, its start, its end) for a day or month; a run has no bounds."""
    if kind == "run":
        return "", None, None
    pattern, fmt = (_DAY, "%Y-%m-%d") if kind == "day" else (_MONTH, "%Y-%m")
    if at and not pattern.fullmatch(at):
        problems.append(f"at: {at!r} is not a {'YYYY-MM-DD' if kind == 'day' else 'YYYY-MM'} date; showing now")
        at = ""
    try:
        start = datetime.strptime(at, fmt).replace(tzinfo=UTC) if at else None
    except ValueError:
        problems.append(f"at: {at!r} is not a date; showing now")
        start = None
    if start is None:
        start = datetime.strptime(now.strftime(fmt), fmt).replace(tzinfo=UTC)
    if kind == "day":
        end = datetime.fromordinal(start.toordinal() + 1).replace(tzinfo=UTC)
    else:
        end = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start.strftime(fmt), start, end


async def _limits(visit: Visit, start: datetime | None, end: datetime | None,
                  problems: list[str]) -> dict[tuple[str, str], Limits]:
    """The limits the newest spending decisions of the period carried (bounded: LIMIT_RECORDS of each kind)."""
    records: list[DecisionRecord] = []
    try:
        for kind in ("budget", "model"):
            found = await visit.console.decisions.find(Query(kind=kind, decision="allow", since=start, until=end,
                                                             limit=LIMIT_RECORDS))
            records += [row.decision_record() for row in found]
    except (LogReadError, ValueError) as exc:
        problems.append(f"limits are not shown (spend is): {exc}")
        return {}
    return limits_seen(records)


def _limit_of(seen: Limits | None, unit: str, *, monthly: bool) -> float | None:
    if seen is None:
        return None
    return (seen.monthly if monthly else seen.default).get(unit)


PAGES = (Page("/spend", spend, nav="Spend", order=30, name="spend"),)
