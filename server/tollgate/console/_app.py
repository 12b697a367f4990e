"""The console's Starlette app: the routes of every page module, sign-in, static files, the security headers
on every answer, and error pages that never show a stack trace."""

from __future__ import annotations

import importlib
import logging
import pkgutil
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import jinja2
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tollgate.clock import Clock, SystemClock
from tollgate.console import pages as page_package
from tollgate.console._auth import LoginLimiter, signin_page, signout
from tollgate.console._config import ConsoleConfig
from tollgate.console._decisions import DecisionReader
from tollgate.console._oidc import START_PATH as OIDC_START
from tollgate.console._oidc import oidc_sign_in
from tollgate.console._proxy import TrustedProxy, trusted_proxy
from tollgate.console._web import Page, Visit, csrf_token, new_session_id, roles_of, session_hash
from tollgate.encoding import format_time
from tollgate.identity._people import Person
from tollgate.state import Stores

log = logging.getLogger("tollgate.console")

#: The Content-Security-Policy of every answer: nothing from elsewhere, no inline script or style.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; frame-ancestors 'none'; "
       "form-action 'self'; base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = (
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
#: Largest request body accepted (bytes): forms are small; an argument to approve is read, never sent.
MAX_BODY = 1024 * 1024


class Console:
    """What every page shares: configuration, the store, the decision log, the clock, templates, the nav."""

    def __init__(self, config: ConsoleConfig, *, stores: Stores, decisions: DecisionReader, clock: Clock,
                 pages: Sequence[Page]) -> None:
        self.config = config
        self.stores = stores
        self.decisions = decisions
        self.clock = clock
        self.pages = list(pages)
        self.limiter = LoginLimiter(clock, per_user=config.login_attempts_per_user,
                                    per_address=config.login_attempts_per_address, window=config.login_window)
        self.templates = jinja2.Environment(loader=jinja2.PackageLoader("tollgate.console", "templates"),
                                            autoescape=True, undefined=jinja2.StrictUndefined)
        self.cookie = "__Host-tollgate_session" if config.secure_cookies else "tollgate_session"
        #: A trusted reverse proxy's identity headers (console/_proxy.py), when configured.
        self.proxy: TrustedProxy | None = None

    # -- who is asking ------------------------------------------------------------------------------------

    def client_address(self, request: Request) -> str:
        """The client's address as the console saw it (the TCP peer)."""
        return request.client.host if request.client else ""

    def origin(self, request: Request) -> str:
        """This console's origin, which a form's POST must come from: base_url's, else the one asked for."""
        if self.config.base_url:
            parts = urlsplit(self.config.base_url)
            return f"{parts.scheme}://{parts.netloc}"
        return f"{request.url.scheme}://{request.headers.get('host', '')}"

    async def visit(self, request: Request) -> Visit | None:
        """The signed-in person making this request (None: no cookie, or no live session for it)."""
        cached: Visit | None = request.scope.get("tollgate.visit")
        if cached is not None:
            return cached
        proxied = await self.proxy.person(request) if self.proxy is not None else None
        if proxied is not None:  # the proxy's word, on a connection from the proxy: no cookie session
            person, standing_for = proxied
            visit = Visit(request, self, person, roles_of(person.groups, self.config.roles), standing_for,
                          csrf_token(standing_for))
            request.scope["tollgate.visit"] = visit
            return visit
        session_id = request.cookies.get(self.cookie, "")
        if not session_id or len(session_id) > 100:
            return None
        record = await self.stores.users.session(session_hash(session_id))
        if record is None:
            return None
        person = Person(record.name, record.groups, record.via)
        visit = Visit(request, self, person, roles_of(person.groups, self.config.roles), session_id,
                      csrf_token(session_id))
        request.scope["tollgate.visit"] = visit
        return visit

    async def start_session(self, response: Response, *, name: str, groups: list[str], via: str,
                            address: str) -> None:
        """Sign a person in: a new session in the store, its cookie on response, an audit entry."""
        session_id = new_session_id()
        ttl = self.config.session_ttl
        await self.stores.users.start_session(session_hash(session_id), name=name, groups=groups, via=via, ttl=ttl)
        response.set_cookie(self.cookie, session_id, max_age=int(ttl), path="/", httponly=True, samesite="lax",
                            secure=self.config.secure_cookies)
        await self.stores.audit.record(name, via, "signin", name, f"groups: {', '.join(groups) or 'none'}", address)

    def clear_session_cookie(self, response: Response) -> None:
        response.delete_cookie(self.cookie, path="/", httponly=True, samesite="lax",
                               secure=self.config.secure_cookies)

    # -- answers ------------------------------------------------------------------------------------------

    def nav(self, visit: Visit | None) -> list[Page]:
        if visit is None:
            return []
        return sorted((p for p in self.pages if p.nav and visit.has(p.role)), key=lambda p: (p.order, p.nav))

    def render(self, request: Request, template: str, *, status: int = 200, visit: Visit | None = None,
               **context: Any) -> HTMLResponse:
        page = self.templates.get_template(template).render(
            visit=visit, nav=self.nav(visit), path=request.url.path, now=format_time(self.clock.now()), **context)
        return HTMLResponse(page, status_code=status, headers={"cache-control": "no-store"})

    def error(self, request: Request, status: int, message: str, *, visit: Visit | None = None) -> HTMLResponse:
        return self.render(request, "error.html", status=status, visit=visit, status_code=status, message=message)


def page_modules() -> list[Any]:
    """Every module of tollgate.console.pages (each defines PAGES)."""
    return [importlib.import_module(f"{page_package.__name__}.{m.name}")
            for m in pkgutil.iter_modules(page_package.__path__)]


def registered_pages() -> list[Page]:
    """Every page module's PAGES, each endpoint checked to be behind require() (else a start-up error)."""
    found: list[Page] = []
    for module in page_modules():
        for page in getattr(module, "PAGES", ()):
            if not page.role:
                raise RuntimeError(f"console page {page.path} ({module.__name__}): its endpoint is not wrapped "
                                   "in require(role)")
            found.append(page)
    return found


def create_app(config: ConsoleConfig, *, state: Stores, decisions: DecisionReader,
               clock: Clock = SystemClock()) -> Starlette:
    """The console as an ASGI app on an open store (the caller opens and closes it)."""
    pages = registered_pages()
    console = Console(config, stores=state, decisions=decisions, clock=clock, pages=pages)
    console.proxy = trusted_proxy(console)
    oidc = oidc_sign_in(console)
    if oidc is not None:
        console.templates.globals["oidc_signin"] = OIDC_START  # the sign-in page's link
    routes: list[BaseRoute] = [
        *(oidc.routes() if oidc is not None else ()),
        Route("/signin", signin_page, methods=["GET", "POST"], name="signin"),
        Route("/signout", signout, methods=["POST"], name="signout"),
        Mount("/static", StaticFiles(packages=[("tollgate.console", "static")]), name="static"),
        *(Route(p.path, p.endpoint, methods=list(p.methods), name=p.name or None) for p in pages),
    ]

    async def http_error(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 500
        message = {404: "No such page.", 405: "This page does not take that method.",
                   413: "The request is too large."}.get(status, "Something went wrong.")
        return console.error(request, status, message)

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("console: %s %s failed", request.method, request.url.path, exc_info=exc)
        return HTMLResponse("<!doctype html><title>Error</title><p>Something went wrong; the console's log says "
                            "what.</p>", status_code=500)

    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error, Exception: server_error})
    app.state.console = console
    app.add_middleware(BodyLimit)
    app.add_middleware(SecurityHeaders)
    return app


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every answer (error pages and static files too)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], *SECURITY_HEADERS]
            await send(message)

        await self.app(scope, receive, send_with_headers)


class BodyLimit:
    """Refuses a request body past MAX_BODY (413), by Content-Length and as it arrives (chunked)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > MAX_BODY:
            await HTMLResponse("<!doctype html><title>Too large</title><p>The request is too large.</p>",
                               status_code=413)(scope, receive, send)
            return
        seen = 0

        async def bounded() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > MAX_BODY:
                    raise HTTPException(413)
            return message

        await self.app(scope, bounded, send)
