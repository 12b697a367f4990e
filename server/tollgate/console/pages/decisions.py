"""Decisions: search the log (agent, session, decision ID, tool, reason code, decision, kind, time range; newest
first, a bounded page at a time) and one record whole (`/decisions/ID`: the masked record as logged, readable)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tollgate.console._operations import MAX_FIELD, int_param, moment_param, readable_json, text_param
from tollgate.console._web import Page, Visit, require
from tollgate.decisionlog import KINDS, DecisionRecord, LogReadError, Query, action_summary, first_reason
from tollgate.decisionlog._record import RECORD_DECISIONS
from tollgate.encoding import parse_time

#: Records a search page shows by default, and at most.
PAGE_SIZE = 50
MAX_PAGE = 500
#: A search by reason, instance or tool alone (no agent, session or decision ID) reads the record's JSON: it is
#: bounded to this window back from `until` (or now) unless the search gives its own `since`.
UNINDEXED_WINDOW = timedelta(days=1)
_FIELDS = ("agent", "session", "decision_id", "tool", "reason", "instance", "decision", "kind", "since", "until")


@require("viewer")
async def search(request: Request, visit: Visit) -> Response:
    params = request.query_params
    now = visit.console.clock.now()
    problems: list[str] = []
    form = {name: text_param(params, name, limit=MAX_FIELD) for name in _FIELDS}
    since = moment_param(params, "since", now=now, problems=problems)
    until = moment_param(params, "until", now=now, problems=problems)
    # Paging: "older" carries the oldest shown record's time as `before` (exclusive), inside the same filters.
    before_text = text_param(params, "before", limit=40)
    before = None
    if before_text:
        try:
            before = parse_time(before_text)
        except ValueError:
            problems.append(f"before: {before_text!r} is not an RFC 3339 time")
    limit = int_param(params, "limit", default=PAGE_SIZE, low=1, high=MAX_PAGE)
    note = ""
    if (form["reason"] or form["tool"] or form["instance"]) and since is None and not (
            form["agent"] or form["session"] or form["decision_id"]):
        since = (until or now) - UNINDEXED_WINDOW
        note = (f"A search by reason, tool or instance reads each record: it covers the day before "
                f"{'the until time' if until else 'now'} unless you give a since time.")
    if before is not None:
        until = before if until is None else min(until, before)
    rows: list[dict[str, Any]] = []
    older = ""
    try:
        query = Query(decision_id=form["decision_id"], agent=form["agent"], session=form["session"],
                      instance=form["instance"], decision=form["decision"] if form["decision"] in RECORD_DECISIONS
                      else "", kind=form["kind"] if form["kind"] in KINDS else "", tool=form["tool"],
                      reason=form["reason"], since=since, until=until, limit=limit)
        found = list(reversed(await visit.console.decisions.find(query)))  # newest first
        rows = [_row(row.decision_record()) for row in found]
        if len(found) == limit:
            older = found[-1].timestamp
    except (LogReadError, ValueError) as exc:
        problems.append(str(exc))
    return visit.render("decisions.html", rows=rows, form=form, kinds=KINDS, decisions=RECORD_DECISIONS,
                        limit=limit, older=older, note=note, problems=problems)


def _row(record: DecisionRecord) -> dict[str, Any]:
    principal = record.principal
    return {"r": record, "agent": str(principal.get("agent_id", "")), "session": str(principal.get("session_id", "")),
            "user": str(principal.get("user", "")), "action": action_summary(record.input, arguments=True)[:300],
            "reason": first_reason(record.as_dict())}


@require("viewer")
async def record_page(request: Request, visit: Visit) -> Response:
    decision_id = request.path_params["decision_id"][:MAX_FIELD]
    problems: list[str] = []
    record = None
    try:
        record = await visit.console.decisions.get(decision_id)
    except (LogReadError, ValueError) as exc:
        problems.append(str(exc))
    if record is None and not problems:
        return visit.console.error(request, 404, f"No decision {decision_id!r} in the log.", visit=visit)
    body = record.as_dict() if record is not None else {}
    return visit.render("decision.html", record=record, decision_id=decision_id, problems=problems,
                        text=readable_json(body), principal=record.principal if record else {},
                        action=action_summary(record.input, arguments=True) if record else "",
                        place=f"seq {record.seq}" if record and record.seq else "")


PAGES = (
    Page("/decisions", search, nav="Decisions", order=50, name="decisions"),
    Page("/decisions/{decision_id:path}", record_page, name="decision"),
)
