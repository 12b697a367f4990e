"""Home: what needs this person now (approvals they may decide), what is stopped, and the fleet at a glance."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from tollgate.console._web import Page, Visit, require
from tollgate.state import StateError, is_stale


@require("viewer")
async def home(request: Request, visit: Visit) -> Response:
    stores = visit.console.stores
    summary: dict[str, int] = {}
    problems: list[str] = []
    try:
        pending = await stores.approvals.list(approver=visit.person.name, status="pending")
        summary["approvals"] = len(pending)
        summary["kill_switches"] = len(await stores.kill_switches.list())
        sidecars = await stores.fleet.sidecars()
        now = visit.console.clock.now()
        summary["sidecars"] = sum(1 for s in sidecars if s.health != "stopped" and not is_stale(s, now=now))
    except StateError as exc:
        problems.append(str(exc))
    return visit.render("home.html", summary=summary, problems=problems)


PAGES = (Page("/", home, nav="Home", order=0, name="home"),)
