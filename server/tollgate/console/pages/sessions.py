"""Sessions: which runs are active now (decisions in the last minutes), what each has cost against its limits, and
one session's timeline (its decisions, approvals and spend, fleet-wide on PostgreSQL)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tollgate.console._operations import (
    MAX_FIELD,
    StoreRunState,
    amount,
    int_param,
    limits_seen,
    share,
)
from tollgate.console._web import Page, Visit, require
from tollgate.decisionlog import ActiveSession, DecisionRecord, LogReadError, Query, session_timeline
from tollgate.state import StateError
from tollgate.state.budgets import ScopeSpend

#: Decisions a timeline page shows at most (the session's newest).
TIMELINE_LIMIT = 500


@require("viewer")
async def sessions(request: Request, visit: Visit) -> Response:
    console = visit.console
    minutes = int_param(request.query_params, "minutes", default=15, low=1, high=24 * 60)
    limit = int_param(request.query_params, "limit", default=50, low=1, high=200)
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    capped = False
    try:
        active = await console.decisions.sessions(console.clock.now() - timedelta(minutes=minutes), limit=limit)
        capped = active.capped
        rows = await _rows(visit, active.sessions, problems)
    except LogReadError as exc:
        problems.append(str(exc))
    return visit.render("sessions.html", rows=rows, minutes=minutes, limit=limit, capped=capped,
                        problems=problems)


async def _rows(visit: Visit, active: Sequence[ActiveSession], problems: list[str]) -> list[dict[str, Any]]:
    """Each active session with its spend (the ledger), limits (its agent's newest spending decision) and the
    approvals waiting in it."""
    stores, decisions = visit.console.stores, visit.console.decisions
    pending: dict[str, int] = {}
    spend: dict[str, list[ScopeSpend]] = {}
    try:
        for approval in await stores.approvals.list(status="pending"):
            session = str(approval.principal.get("session_id") or "")
            pending[session] = pending.get(session, 0) + 1
        for entry in active:
            spend[entry.session] = await stores.budgets.usage({"session": entry.session})
    except StateError as exc:
        problems.append(f"{exc}: spend and pending approvals are not shown")
    limits = await _agent_limits(decisions, active, problems)
    rows = []
    for entry in active:
        units = _units(spend.get(entry.session, []))
        session_limits = limits.get(entry.agent, {})
        rows.append({"s": entry, "pending": pending.get(entry.session),
                     "spend": [{"unit": unit, "spent": amount(total), "limit": _limit(session_limits.get(unit)),
                                "share": share(total, session_limits.get(unit))}
                               for unit, total in sorted(units.items())],
                     "known": entry.session in spend})
    return rows


async def _agent_limits(decisions: Any, active: Sequence[ActiveSession],
                        problems: list[str]) -> dict[str, Mapping[str, float]]:
    """agent → the session limits (by unit) its manifest sets, as the newest spending decision of one of its active
    sessions carried them (read through the session index, newest first: a session's own rows, never the agent's
    whole history; the first session of an agent that has one answers for its other sessions)."""
    found: dict[str, Mapping[str, float]] = {}
    try:
        for entry in active:
            if entry.agent in found:
                continue
            records: list[DecisionRecord] = []
            for kind in ("budget", "model"):
                rows = await decisions.find(Query(session=entry.session, kind=kind, decision="allow", limit=1))
                records += [row.decision_record() for row in rows]
            seen = limits_seen(records).get(("session", entry.session))
            if seen is not None:
                found[entry.agent] = seen.default
    except (LogReadError, ValueError) as exc:
        problems.append(f"limits are not shown: {exc}")
    return found


def _units(spend: Sequence[ScopeSpend]) -> dict[str, float]:
    """Committed plus live reserved, by unit (the run's window: a session has one)."""
    found: dict[str, float] = {}
    for scope in spend:
        for unit, (committed, reserved) in scope.units.items():
            found[unit] = found.get(unit, 0.0) + committed + reserved
    return found


def _limit(value: float | None) -> str:
    return "" if value is None else amount(value)


@require("viewer")
async def session_page(request: Request, visit: Visit) -> Response:
    console = visit.console
    session = request.path_params["session_id"][:MAX_FIELD]
    problems: list[str] = []
    timeline = None
    spend: list[dict[str, Any]] = []
    total = 0
    try:
        rows = await console.decisions.find(Query(session=session, limit=TIMELINE_LIMIT))
        records = [row.decision_record() for row in rows]
        total = len(records)
        state = await StoreRunState.read(console.stores.approvals, console.stores.budgets, records,
                                         tool_results=console.stores.tool_results)
        timeline = session_timeline(session, records, state=state)
        spend = await _session_spend(visit, session, records, problems)
    except (LogReadError, ValueError) as exc:
        problems.append(str(exc))
    return visit.render("session.html", session=session, timeline=timeline, spend=spend,
                        capped=total >= TIMELINE_LIMIT, limit=TIMELINE_LIMIT, problems=problems)


async def _session_spend(visit: Visit, session: str, records: Sequence[DecisionRecord],
                         problems: list[str]) -> list[dict[str, Any]]:
    try:
        usage = await visit.console.stores.budgets.usage({"session": session})
    except StateError as exc:
        problems.append(f"{exc}: spend is not shown")
        return []
    seen = limits_seen(records).get(("session", session))
    limits = seen.default if seen is not None else {}
    found = []
    for scope in usage:
        for unit, (committed, reserved) in scope.units.items():
            limit = limits.get(unit)
            found.append({"unit": unit, "committed": amount(committed), "reserved": amount(reserved),
                          "limit": _limit(limit), "share": share(committed + reserved, limit),
                          "invalid": scope.invalid})
    return found


PAGES = (
    Page("/sessions", sessions, nav="Sessions", order=20, name="sessions"),
    Page("/sessions/{session_id:path}", session_page, name="session"),
)
