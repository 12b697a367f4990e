"""Approvals: the inbox of what the signed-in person may decide (approvers), one approval's page, the history of
decided ones (viewers), and approve or deny with a reason in one POST.

Who may decide is checked on the server, twice: the approver role (require), then the approval's own rule
(`ApprovalStore.may_decide`, again inside `decide`): named by its approvers or a member of a group they name (by
the sidecars' approver_groups or the groups the person signed in with), never the agent, nor the user it acts
for unless the policy allowed it (approval.allow_requester). The approver recorded is the person signed in,
never a name from the form. A quorum counts distinct people; each say is audited. Sidecars hear the decision
as they hear the API's: on PostgreSQL by NOTIFY, on SQLite by their watch of state.db.
"""

from __future__ import annotations

import builtins
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tollgate.console._approvals import MAX_SEARCH, ApprovalView, matches, view
from tollgate.console._web import Page, Visit, require
from tollgate.decisionlog import DecisionRecord, LogReadError, Query
from tollgate.state import StateError
from tollgate.state.approvals import PENDING, Approval, ApprovalError, ApprovalNotFound, NotAnApprover

#: Approvals a listing shows at most (the newest).
MAX_LISTED = 100
#: Decided approvals the history shows at most (the newest).
MAX_HISTORY = 200
#: The session's most recent decisions an approval shows.
TIMELINE_STEPS = 8
#: Longest reason a decision takes from the form.
MAX_REASON = 1000
#: What a decided approval's history lists.
DECIDED = ("approved", "denied", "used", "expired")


def decider(visit: Visit, approval: Approval) -> str:
    """Why the signed-in person may not decide this approval here ("" when they may)."""
    if not visit.has("approver"):
        return "Deciding needs the approver role."
    return visit.console.stores.approvals.may_decide(approval, visit.person.name, groups=visit.person.groups)


async def _views(visit: Visit, approvals: builtins.list[Approval], problems: builtins.list[str], *,
                 timeline: bool) -> builtins.list[ApprovalView]:
    """The approvals with their opening records' reasons and (with timeline) their sessions' latest decisions."""
    decisions, now = visit.console.decisions, visit.console.clock.now()
    shown, unread = [], ""
    for approval in approvals:
        opening: DecisionRecord | None = None
        session: list[DecisionRecord] = []
        try:
            if approval.opened_by:
                opening = await decisions.get(approval.opened_by)
            if timeline and approval.session_id:
                rows = await decisions.find(Query(session=approval.session_id, limit=TIMELINE_STEPS))
                session = [row.decision_record() for row in rows]
        except (LogReadError, ValueError) as exc:
            unread = f"The decision log cannot be read now ({exc}): reasons and timelines are not shown."
        shown.append(view(approval, now=now, opening=opening, session=session))
    if unread:
        problems.append(unread)
    return shown


@require("viewer")
async def inbox(request: Request, visit: Visit) -> Response:
    """Pending approvals, newest first: those the person may decide (or every pending one, with all=1)."""
    search = request.query_params.get("q", "").strip()[:MAX_SEARCH]
    everyone = request.query_params.get("all", "") == "1" or not visit.has("approver")
    problems: list[str] = []
    pending: list[Approval] = []
    try:
        pending = await visit.console.stores.approvals.list(status=PENDING)
    except StateError as exc:
        problems.append(str(exc))
    mine = [a for a in pending if not decider(visit, a)]
    listed = [a for a in (pending if everyone else mine) if matches(a, search)]
    views = await _views(visit, listed[:MAX_LISTED], problems, timeline=True)
    return visit.render("approvals.html", views=views, search=search, everyone=everyone, mine=len(mine),
                        pending=len(pending), capped=len(listed) > MAX_LISTED, limit=MAX_LISTED,
                        deciders={v.id: decider(visit, v.approval) for v in views}, problems=problems,
                        notice=_notice(request), max_reason=MAX_REASON)


@require("viewer")
async def history(request: Request, visit: Visit) -> Response:
    """Decided approvals, newest first: who decided (every vote of a quorum), when, why."""
    search = request.query_params.get("q", "").strip()[:MAX_SEARCH]
    problems: list[str] = []
    decided: list[Approval] = []
    try:
        for status in DECIDED:  # each read finds only the rows of its status
            decided += await visit.console.stores.approvals.list(status=status)
        decided.sort(key=lambda a: a.created_at, reverse=True)
    except StateError as exc:
        problems.append(str(exc))
    listed = [a for a in decided if matches(a, search)]
    views = await _views(visit, listed[:MAX_HISTORY], problems, timeline=False)
    return visit.render("approvals_history.html", views=views, search=search, capped=len(listed) > MAX_HISTORY,
                        limit=MAX_HISTORY, problems=problems)


@require("viewer")
async def approval_page(request: Request, visit: Visit) -> Response:
    approval_id = request.path_params["approval_id"][:600]
    problems: list[str] = []
    try:
        found = await visit.console.stores.approvals.get(approval_id)
    except StateError as exc:
        return visit.render("approval.html", status=503, card=None, problems=[str(exc)], approval_id=approval_id)
    if found is None:
        return visit.render("approval.html", status=404, card=None, approval_id=approval_id,
                            problems=[f"No approval has the id {approval_id}."])
    views = await _views(visit, [found], problems, timeline=True)
    return visit.render("approval.html", card=views[0], approval_id=approval_id, refusal=decider(visit, found),
                        problems=problems, notice=_notice(request), max_reason=MAX_REASON)


@require("approver")
async def decide(request: Request, visit: Visit) -> Response:
    """Approve or deny as the person signed in, with a reason: one POST (the CSRF token and role checked)."""
    approval_id = request.path_params["approval_id"][:600]
    choice = await visit.field("decision", limit=16)
    reason = await visit.field("reason", limit=MAX_REASON)
    back = await visit.field("back", limit=16)
    if choice not in ("approve", "deny"):
        return _refused(visit, 400, "decision: approve or deny")
    if not reason:
        return _refused(visit, 400, "reason: required (say why, in a few words)")
    store = visit.console.stores.approvals
    try:
        decided = await store.decide(approval_id, approve=choice == "approve", by=visit.person.name, reason=reason,
                                     groups=visit.person.groups)
    except NotAnApprover as exc:
        await visit.audit("approval.refused", approval_id, f"{choice}: {exc}")
        return _refused(visit, 403, str(exc))
    except ApprovalNotFound as exc:
        return _refused(visit, 404, str(exc))
    except ApprovalError as exc:
        return _refused(visit, 409, str(exc))
    except StateError as exc:
        return _refused(visit, 503, f"{exc}; nothing was decided")
    counted = f" ({len(decided.approved_by)} of {decided.required} approvals)" if decided.required > 1 else ""
    await visit.audit(f"approval.{choice}", approval_id, f"{reason}{counted}; now {decided.status}")
    where = f"/approvals/{approval_id}" if back == "approval" else "/approvals"
    return RedirectResponse(f"{where}?done={decided.status}&id={approval_id}", status_code=303)


def _refused(visit: Visit, status: int, message: str) -> Response:
    return visit.console.error(visit.request, status, message, visit=visit)


def _notice(request: Request) -> str:
    done, approval_id = request.query_params.get("done", ""), request.query_params.get("id", "")[:600]
    messages: dict[str, Any] = {
        "approved": f"Approved {approval_id}: the harness waiting for it hears it, and its next ask is allowed once.",
        "denied": f"Denied {approval_id}: the harness waiting for it hears it.",
        "pending": f"Your approval of {approval_id} is counted: it waits for more approvers.",
    }
    return str(messages.get(done, ""))


PAGES = (
    Page("/approvals", inbox, nav="Approvals", order=10, name="approvals"),
    Page("/approvals/history", history, name="approvals_history"),
    Page("/approvals/{approval_id}", approval_page, name="approval"),
    Page("/approvals/{approval_id}/decide", decide, methods=("POST",), name="approval_decide"),
)
