"""What every console page is built from: `Page` (a route in the registry), `require(role)` (the server-side
check in front of every handler: signed in, the role, and on a POST the CSRF token and the Origin), and `Visit`
(one request of a signed-in person: who, their roles, the form, rendering, the audit entry of a change)."""

from __future__ import annotations

import functools
import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from tollgate.console._config import ROLES
from tollgate.identity._people import Person

if TYPE_CHECKING:
    from tollgate.console._app import Console

#: The hidden field every form carries its CSRF token in.
CSRF_FIELD = "csrf_token"
#: Most fields, and bytes per field, a form may have (the body as a whole is bounded by the app: MAX_BODY).
MAX_FORM_FIELDS = 200
MAX_FIELD_BYTES = 256 * 1024
#: A role no check names: "signed in, whatever the role" (sign-out, the no-role page).
SIGNED_IN = "signed-in"

Handler = Callable[[Request, "Visit"], Awaitable[Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Page:
    """One route of the console: registered by a page module's PAGES (see the package docstring).

    endpoint is a handler wrapped by require(role), so no page is reachable without its check (the app refuses
    to start with one that is not). nav: the label in the navigation ("" keeps it out), shown to people with
    the endpoint's role, ordered by order."""

    path: str
    endpoint: Endpoint
    methods: Sequence[str] = ("GET",)
    nav: str = ""
    order: int = 100
    name: str = ""

    @property
    def role(self) -> str:
        role: str = getattr(self.endpoint, "required_role", "")
        return role


def roles_of(groups: Sequence[str], mapping: Mapping[str, str]) -> frozenset[str]:
    """The roles a person's groups grant: admin implies every role, operator and approver imply viewer."""
    granted = {mapping[g] for g in groups if g in mapping}
    if "admin" in granted:
        return frozenset(ROLES)
    if granted:
        granted.add("viewer")
    return frozenset(granted)


def csrf_token(session_id: str) -> str:
    """The session's CSRF token: derived from the session id (which only the cookie holds), so it needs no
    storage, differs per session and cannot be made without the cookie."""
    return hmac.new(session_id.encode(), b"tollgate console csrf", hashlib.sha256).hexdigest()


@dataclass
class Visit:
    """One request of a signed-in person."""

    request: Request
    console: Console
    person: Person
    roles: frozenset[str]
    session_id: str
    csrf: str
    _form: FormData | None = field(default=None, repr=False)

    def has(self, role: str) -> bool:
        return role == SIGNED_IN or role in self.roles

    @property
    def address(self) -> str:
        return self.console.client_address(self.request)

    async def form(self) -> FormData:
        """The POSTed form, parsed once, bounded (fields, bytes per field, no files)."""
        if self._form is None:
            self._form = await self.request.form(max_files=0, max_fields=MAX_FORM_FIELDS,
                                                 max_part_size=MAX_FIELD_BYTES)
        return self._form

    async def field(self, name: str, *, limit: int = 4000) -> str:
        """A text field of the form, stripped ("" when absent); a longer one is cut to limit characters."""
        value = (await self.form()).get(name, "")
        return value.strip()[:limit] if isinstance(value, str) else ""

    def render(self, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        return self.console.render(self.request, template, status=status, visit=self, **context)

    async def audit(self, action: str, target: str = "", detail: str = "") -> None:
        """Record a change this person made (who, how signed in, what, to what, from where; the store's time)."""
        await self.console.stores.audit.record(self.person.name, self.person.via, action, target, detail,
                                               self.address)


def require(role: str) -> Callable[[Handler], Endpoint]:
    """The check in front of a page's handler, on the server, on every request: signed in (else the sign-in
    page for a GET, 403 for anything else), holding role (else 403), and for a POST a valid CSRF token from
    the same origin (else 403). role is one of ROLES, or SIGNED_IN."""
    if role not in (*ROLES, SIGNED_IN):
        raise ValueError(f"require: {role!r} is not one of {', '.join(ROLES)} or {SIGNED_IN}")

    def wrap(handler: Handler) -> Endpoint:
        @functools.wraps(handler)
        async def endpoint(request: Request) -> Response:
            console: Console = request.app.state.console
            visit = await console.visit(request)
            if visit is None:
                if request.method in ("GET", "HEAD"):
                    return RedirectResponse(f"/signin?next={quote(request.url.path)}", status_code=303)
                return console.error(request, 403, "Sign in first: this action needs a signed-in person.")
            changing = request.method not in ("GET", "HEAD")
            refused = "" if visit.has(role) else forbidden_message(visit, role)
            if changing and not refused:
                refused = await csrf_refusal(visit)
            if refused:
                if changing:  # an attempt to change something that was refused: worth an entry
                    await visit.audit("refused", f"{request.method} {request.url.path}", refused)
                return console.error(request, 403, refused, visit=visit)
            return await handler(request, visit)

        endpoint.required_role = role  # type: ignore[attr-defined]  # what the registry checks
        return endpoint

    return wrap


def forbidden_message(visit: Visit, role: str) -> str:
    if not visit.roles:
        groups = ", ".join(visit.person.groups) or "none"
        return (f"You are signed in as {visit.person.name}, but your groups ({groups}) grant no console role. "
                "Ask an admin to map one of them in the console's roles.")
    return f"This page needs the {role} role; you have {', '.join(sorted(visit.roles))}."


async def csrf_refusal(visit: Visit) -> str:
    """Why this POST is refused as cross-site ("" when it is not): the Origin (or Referer) is not the console's,
    or the form's token is missing or not this session's."""
    refused = origin_refusal(visit.request, visit.console.origin(visit.request))
    if refused:
        return refused
    given = await visit.field(CSRF_FIELD, limit=200)
    if not given or not hmac.compare_digest(given, visit.csrf):
        return "This form has expired or did not come from this console (CSRF token missing or wrong); reload it."
    return ""


def origin_refusal(request: Request, origin: str) -> str:
    """Why a state-changing request is refused by its origin headers ("" when it is not)."""
    if request.headers.get("sec-fetch-site", "") == "cross-site":
        return "Refused: the request came from another site."
    given = request.headers.get("origin")
    if given is None:
        referer = request.headers.get("referer")
        if referer is None:
            return ""  # a client that sends neither (not a browser): the token alone decides
        parts = urlsplit(referer)
        given = f"{parts.scheme}://{parts.netloc}"
    if given != origin:
        return "Refused: the request came from another origin than this console."
    return ""


def new_session_id() -> str:
    """A session id: 32 random bytes, URL-safe text (the cookie's value; the store keeps its sha256 only)."""
    return secrets.token_urlsafe(32)


def session_hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode()).hexdigest()


def safe_next(target: str) -> str:
    """Where to go after sign-in: a path on this console, never another site (//host, /\\host, a scheme)."""
    if not target.startswith("/") or target.startswith(("//", "/\\")) or any(c in target for c in "\r\n\\"):
        return "/"
    return target
