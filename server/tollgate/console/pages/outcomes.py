"""Outcomes: what the money bought. Per agent and per workflow over a time range: sessions, outcomes by kind,
success rate, cost, cost per successful outcome, approvals per session, denial rate (tollgate.console._outcomes
says how each is counted and why the cost is the ledger's committed spend)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tollgate.console._operations import amount, moment_param, text_param
from tollgate.console._outcomes import (
    GROUPINGS,
    Figures,
    SessionFacts,
    counted_outcomes,
    figures,
    percent,
    ratio,
    total,
)
from tollgate.console._web import Page, Visit, require
from tollgate.decisionlog import LogReadError
from tollgate.encoding import format_time
from tollgate.state import StateError, Stores
from tollgate.state._outcomes import LocalOutcomeReader, OutcomeReader, SessionCost
from tollgate.state.postgres import PgOutcomes

#: The ranges the selector offers (ending now), and the default.
RANGES = {"1h": timedelta(hours=1), "24h": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}
DEFAULT_RANGE = "7d"
#: Most sessions one page counts (the most recently active); more is said on the page.
MAX_SESSIONS = 5000
#: Sessions listed one by one under the figures (the most recently active).
LISTED = 100


def outcome_reader(stores: Stores, visit: Visit) -> OutcomeReader:
    """Outcomes and session costs on the console's store."""
    if stores.pg is not None:
        return PgOutcomes(stores.pg, clock=visit.console.clock)
    if stores.sqlite_path is None:
        raise StateError("the console's store is neither SQLite nor PostgreSQL: no outcomes to read")
    return LocalOutcomeReader(stores.sqlite_path, clock=visit.console.clock)


def _since(request: Request, now: datetime, problems: list[str]) -> tuple[str, datetime]:
    """(the range chosen, its start): ?since= (RFC 3339 or 15m, 2h, 7d back) over ?range=, which defaults."""
    custom = moment_param(request.query_params, "since", now=now, problems=problems)
    if custom is not None:
        return "", custom
    chosen = text_param(request.query_params, "range", limit=8)
    chosen = chosen if chosen in RANGES else DEFAULT_RANGE
    return chosen, now - RANGES[chosen]


@require("viewer")
async def outcomes(request: Request, visit: Visit) -> Response:
    console = visit.console
    now = console.clock.now()
    problems: list[str] = []
    chosen, since = _since(request, now, problems)
    facts: list[SessionFacts] = []
    capped = False
    try:
        active = await console.decisions.sessions(since, limit=MAX_SESSIONS)
        facts = [SessionFacts(s.session, s.agent, s.workflow, s.decisions, s.denials, s.approvals_asked)
                 for s in active.sessions]
        if active.capped:
            problems.append(f"the range holds more than {active.scanned:,} decisions: only the newest were read, "
                            "so older sessions of the range are left out; choose a shorter range")
        capped = len(facts) >= MAX_SESSIONS
    except LogReadError as exc:
        problems.append(str(exc))
    reported: list[Any] = []
    costs: dict[str, SessionCost] = {}
    if facts:
        try:
            reader = outcome_reader(console.stores, visit)
            ids = [f.session for f in facts]
            reported = await reader.for_sessions(ids)
            costs = await reader.costs(ids)
        except StateError as exc:
            problems.append(str(exc))
    groups = {by: [_row(f) for f in figures(facts, reported, costs, by=by)] for by in GROUPINGS}
    everything = _row(total(facts, reported, costs))
    return visit.render("outcomes.html", groups=groups, total=everything, ranges=list(RANGES), chosen=chosen,
                        since=since.strftime("%Y-%m-%d %H:%M UTC"), since_exact=format_time(since),
                        since_text=text_param(request.query_params, "since", limit=64),
                        sessions=_listed(facts, reported, costs), listed=LISTED, capped=capped,
                        max_sessions=MAX_SESSIONS, problems=problems)


def _row(f: Figures) -> dict[str, Any]:
    """One line of a figures table, formatted."""
    return {"f": f, "success": percent(f.success_rate), "denials": percent(f.denial_rate),
            "approvals": ratio(f.approvals_per_session), "cost": "invalid" if f.cost_invalid else amount(f.cost),
            "reserved": amount(f.reserved),
            "per_success": "invalid" if f.cost_invalid else (
                amount(f.cost_per_success) if f.cost_per_success is not None else "no success"),
            "labels": ", ".join(f"{name} {count}" for name, count in f.labels[:5])}


def _listed(facts: list[SessionFacts], reported: list[Any], costs: dict[str, SessionCost]) -> list[dict[str, Any]]:
    counted = counted_outcomes(reported)
    rows = []
    for f in facts[:LISTED]:
        mine = counted.get(f.session, [])
        spent = costs.get(f.session)
        rows.append({"f": f, "outcomes": ", ".join(
            f"{o.task_id + ': ' if o.task_id else ''}{o.outcome}" + (f" [{', '.join(o.labels)}]" if o.labels else "")
            for o in mine), "cost": "" if spent is None else ("invalid" if spent.invalid else amount(spent.committed)),
            "reserved": "" if spent is None or not spent.reserved else amount(spent.reserved)})
    return rows


PAGES = (Page("/outcomes", outcomes, nav="Outcomes", order=35, name="outcomes"),)
