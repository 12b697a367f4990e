"""Kill switches: what is stopped now and every change (viewers), and engaging or lifting one (operators), each
in two steps: the form, then a page that says exactly what will stop (or resume), whose confirm button does it.

Both steps are POSTs behind require("operator") (the role, the CSRF token and the Origin, on the server); only the
second, carrying confirm=yes, changes the store. The change is the store's own (`KillSwitchStore.kill` /
`revive`, recorded in its history as the person signed in, never a name from the form) and is audited. The
sidecars hear it as they hear the CLI's: on PostgreSQL through NOTIFY, on SQLite by watching state.db.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tollgate.console._web import Page, Visit, require
from tollgate.state import SCOPES, InvalidKillSwitch, KillSwitchNotFound, StateError, validate_target
from tollgate.state._killswitch import MAX_VALUE

#: History entries shown (the newest).
HISTORY_LIMIT = 200
#: Longest reason a kill switch takes from the form.
MAX_REASON = 1000


@require("viewer")
async def kill_switches(request: Request, visit: Visit) -> Response:
    return await _page(visit, notice=_notice(request.query_params.get("done", "")))


async def _page(visit: Visit, *, notice: str = "", problems: list[str] | None = None, status: int = 200,
                form: dict[str, str] | None = None) -> Response:
    store = visit.console.stores.kill_switches
    problems = list(problems or [])
    active, history = [], []
    try:
        active = await store.list()
        history = list(reversed((await store.history())[-HISTORY_LIMIT:]))
    except StateError as exc:
        problems.append(str(exc))
    return visit.render("killswitches.html", status=status, active=active, history=history, scopes=SCOPES,
                        notice=notice, problems=problems, form=form or {}, operator=visit.has("operator"),
                        max_value=MAX_VALUE, max_reason=MAX_REASON)


def _notice(done: str) -> str:
    return {"engaged": "Kill switch engaged: the sidecars deny what it names from their next decision.",
            "lifted": "Kill switch lifted."}.get(done, "")


async def _target(visit: Visit) -> tuple[str, str, str, str]:
    """(scope, value, reason, the refusal or "") from the form, checked as the store checks them."""
    scope = await visit.field("scope", limit=32)
    value = await visit.field("value", limit=MAX_VALUE + 1)
    reason = await visit.field("reason", limit=MAX_REASON)
    try:
        scope, value = validate_target(scope, value)
    except InvalidKillSwitch as exc:
        return scope, value, reason, str(exc)
    return scope, value, reason, ""


@require("operator")
async def engage(request: Request, visit: Visit) -> Response:
    scope, value, reason, refused = await _target(visit)
    form = {"scope": scope, "value": value, "reason": reason}
    if not refused and not reason:
        refused = "reason: required (say why, e.g. an incident number)"
    if refused:
        return await _page(visit, problems=[refused], status=400, form=form)
    if await visit.field("confirm", limit=8) != "yes":
        return visit.render("killswitch_confirm.html", action="engage", scope=scope, value=value, reason=reason)
    try:
        await visit.console.stores.kill_switches.kill(scope, value, reason=reason, by=visit.person.name)
    except (InvalidKillSwitch, StateError) as exc:
        return await _page(visit, problems=[str(exc)], status=400 if isinstance(exc, InvalidKillSwitch) else 503,
                           form=form)
    await visit.audit("kill_switch.engage", f"{scope}={value}", reason)
    return RedirectResponse("/kill-switches?done=engaged", status_code=303)


@require("operator")
async def lift(request: Request, visit: Visit) -> Response:
    scope, value, reason, refused = await _target(visit)
    if refused:
        return await _page(visit, problems=[refused], status=400)
    if await visit.field("confirm", limit=8) != "yes":
        return visit.render("killswitch_confirm.html", action="lift", scope=scope, value=value, reason=reason)
    try:
        await visit.console.stores.kill_switches.revive(scope, value, by=visit.person.name, reason=reason)
    except KillSwitchNotFound:
        return await _page(visit, problems=[f"{scope}={value} is not stopped (lifted meanwhile?)"], status=404)
    except (InvalidKillSwitch, StateError) as exc:
        return await _page(visit, problems=[str(exc)], status=400 if isinstance(exc, InvalidKillSwitch) else 503)
    await visit.audit("kill_switch.lift", f"{scope}={value}", reason)
    return RedirectResponse("/kill-switches?done=lifted", status_code=303)


PAGES = (
    Page("/kill-switches", kill_switches, nav="Kill switches", order=40, name="kill_switches"),
    Page("/kill-switches/engage", engage, methods=("POST",), name="kill_switch_engage"),
    Page("/kill-switches/lift", lift, methods=("POST",), name="kill_switch_lift"),
)
