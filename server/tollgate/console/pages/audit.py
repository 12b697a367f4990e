"""Audit: what people did, newest first (sign-ins, failed ones too, and every change), for admins."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tollgate.console._web import Page, Visit, require
from tollgate.state import StateError

#: Entries per page.
PAGE_SIZE = 100


@require("admin")
async def audit(request: Request, visit: Visit) -> Response:
    params = request.query_params
    actor = params.get("actor", "")[:128]
    action = params.get("action", "")[:64]
    before_text = params.get("before", "")
    before = int(before_text) if before_text.isdigit() and len(before_text) < 19 else None
    problems: list[str] = []
    entries = []
    try:
        entries = await visit.console.stores.audit.entries(limit=PAGE_SIZE, before=before, actor=actor,
                                                           action=action)
    except StateError as exc:
        problems.append(str(exc))
    more = entries[-1].id if len(entries) == PAGE_SIZE else None
    return visit.render("audit.html", entries=entries, actor=actor, action=action, more=more, problems=problems)


PAGES = (Page("/audit", audit, nav="Audit", order=90, name="audit"),)
