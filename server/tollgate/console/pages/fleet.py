"""Fleet: every sidecar the registry holds, its bundle revision, health, decision-log export lag and last
heartbeat, stale ones marked (no heartbeat for three of its intervals), and how many run each revision."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from tollgate.console._web import Page, Visit, require
from tollgate.state import StateError, is_stale

#: Sidecars listed at most (most recently seen first).
FLEET_LIMIT = 500


@require("viewer")
async def fleet(request: Request, visit: Visit) -> Response:
    now = visit.console.clock.now()
    problems: list[str] = []
    rows: list[dict[str, Any]] = []
    revisions: dict[str, int] = {}
    total = 0
    try:
        sidecars = await visit.console.stores.fleet.sidecars()
        total = len(sidecars)
        for info in sidecars[:FLEET_LIMIT]:
            stale = is_stale(info, now=now)
            rows.append({"s": info, "stale": stale, "lag": f"{info.export_lag_seconds:.1f}"})
            if info.health == "serving" and not stale:
                revisions[info.bundle_revision] = revisions.get(info.bundle_revision, 0) + 1
    except StateError as exc:
        problems.append(str(exc))
    return visit.render("fleet.html", rows=rows, total=total, limit=FLEET_LIMIT,
                        revisions=sorted(revisions.items(), key=lambda kv: (-kv[1], kv[0])), problems=problems)


PAGES = (Page("/fleet", fleet, nav="Fleet", order=60, name="fleet"),)
