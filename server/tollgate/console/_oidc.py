"""Sign-in through an OpenID Connect provider: the authorization-code flow with PKCE (S256), state and nonce bound
to a short-lived pre-session of this browser, then a console session like a local sign-in's.

`GET /signin/oidc` starts it: a fresh pre-session (random state, nonce and PKCE verifier, kept in this process
for PRE_SESSION_SECONDS under the hash of a random cookie set on this browser only) and a redirect to the
provider. The provider sends the browser back to `redirect_path` with a code and the state: the pre-session is
taken (once: a second use of the same callback finds none), the state must be its state, the code is exchanged
(with the verifier) for an ID token, and the token must pass identity/_oidc.py's checks, its nonce this
pre-session's. Every refusal is audited (`signin.failed`, via oidc) and answered without the token's content.

Pre-sessions live in this console process: behind a load balancer, send one browser to one console (sticky
sessions) for the minute a sign-in takes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from tollgate.console._config import ConsoleConfigError
from tollgate.console._web import safe_next
from tollgate.identity._oidc import OidcConfigError, OidcError, OidcProvider, OidcSettings
from tollgate.identity._people import VIA_OIDC, valid_group_name, valid_person_name
from tollgate.state import StateError

if TYPE_CHECKING:
    from tollgate.console._app import Console

#: Seconds a started sign-in may take to come back from the provider.
PRE_SESSION_SECONDS = 600.0
#: Most sign-ins in flight remembered (the oldest forgotten first): bounded memory whatever strangers start.
MAX_PRE_SESSIONS = 10000
#: The cookie binding a started sign-in to this browser.
PRE_SESSION_COOKIE = "tollgate_oidc"
START_PATH = "/signin/oidc"


@dataclass(frozen=True)
class PreSession:
    state: str
    nonce: str
    verifier: str
    next: str
    expires: float  # the console clock's time()


class OidcSignIn:
    """The two routes of an OpenID Connect sign-in, and the pre-sessions between them."""

    def __init__(self, console: Console, provider: OidcProvider) -> None:
        self.console = console
        self.provider = provider
        self._pending: OrderedDict[str, PreSession] = OrderedDict()

    def routes(self) -> list[Route]:
        return [Route(START_PATH, self.start, methods=["GET"], name="signin-oidc"),
                Route(self.provider.settings.redirect_path, self.callback, methods=["GET"], name="signin-oidc-back")]

    def _redirect_uri(self, request: Request) -> str:
        return self.console.origin(request) + self.provider.settings.redirect_path

    async def start(self, request: Request) -> Response:
        cookie = secrets.token_urlsafe(32)
        pre = PreSession(state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32),
                         verifier=secrets.token_urlsafe(64), next=safe_next(request.query_params.get("next", "/")),
                         expires=self.console.clock.time() + PRE_SESSION_SECONDS)
        try:
            url = await self.provider.authorization_url(redirect_uri=self._redirect_uri(request), state=pre.state,
                                                        nonce=pre.nonce, verifier=pre.verifier)
        except OidcError as exc:
            return await self._refused(request, f"the identity provider cannot be used: {exc}", status=502)
        self._remember(_key(cookie), pre)
        response = RedirectResponse(url, status_code=303)
        # SameSite=Lax: the provider's redirect back is a top-level GET from its site, which Lax lets through.
        response.set_cookie(PRE_SESSION_COOKIE, cookie, max_age=int(PRE_SESSION_SECONDS),
                            path=self.provider.settings.redirect_path, httponly=True, samesite="lax",
                            secure=self.console.config.secure_cookies)
        return response

    async def callback(self, request: Request) -> Response:
        params = request.query_params
        pre = self._take(request.cookies.get(PRE_SESSION_COOKIE, ""))
        if pre is None:
            return await self._refused(request, "no sign-in was started from this browser, or it has expired")
        if "error" in params:
            return await self._refused(request, f"the identity provider refused: {params['error'][:100]}")
        if not hmac.compare_digest(params.get("state", "").encode(), pre.state.encode()):
            return await self._refused(request, "state does not match this browser's sign-in")
        code = params.get("code", "")
        if not code or len(code) > 2048:
            return await self._refused(request, "the identity provider sent no code")
        try:
            token = await self.provider.exchange(code, redirect_uri=self._redirect_uri(request), verifier=pre.verifier)
            person = await self.provider.verify(token, nonce=pre.nonce)
        except OidcError as exc:
            return await self._refused(request, f"ID token refused: {exc}")
        if not valid_person_name(person.name):
            return await self._refused(request, f"the token's {self.provider.settings.name_claim} is not a name "
                                                "the console can record")
        groups = [g for g in person.groups if valid_group_name(g)]
        response = RedirectResponse(pre.next, status_code=303)
        await self.console.start_session(response, name=person.name, groups=groups, via=VIA_OIDC,
                                         address=self.console.client_address(request))
        response.delete_cookie(PRE_SESSION_COOKIE, path=self.provider.settings.redirect_path)
        return response

    def _remember(self, key: str, pre: PreSession) -> None:
        now = self.console.clock.time()
        while self._pending and next(iter(self._pending.values())).expires <= now:
            self._pending.popitem(last=False)
        self._pending[key] = pre
        while len(self._pending) > MAX_PRE_SESSIONS:
            self._pending.popitem(last=False)

    def _take(self, cookie: str) -> PreSession | None:
        """This browser's pre-session, removed (a callback is used once); None when there is none live."""
        if not cookie or len(cookie) > 100:
            return None
        pre = self._pending.pop(_key(cookie), None)
        return pre if pre is not None and pre.expires > self.console.clock.time() else None

    async def _refused(self, request: Request, why: str, *, status: int = 401) -> Response:
        address = self.console.client_address(request)
        try:
            await self.console.stores.audit.record("", VIA_OIDC, "signin.failed", "", why, address)
        except StateError:
            pass  # the answer stands; the console's log has the store's failure
        response = self.console.error(request, status, f"Sign-in refused: {why}. Sign in again.")
        response.delete_cookie(PRE_SESSION_COOKIE, path=self.provider.settings.redirect_path)
        return response

    def close(self) -> None:
        self.provider.close()


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


def oidc_sign_in(console: Console) -> OidcSignIn | None:
    """The console's OpenID Connect sign-in, when its config has an `oidc` section (ConsoleConfigError naming
    the key when it cannot be used)."""
    if not console.config.oidc:
        return None
    try:
        settings = OidcSettings.parse(console.config.oidc, where="console.oidc")
    except OidcConfigError as exc:
        raise ConsoleConfigError(str(exc)) from None
    return OidcSignIn(console, OidcProvider(settings, clock=console.clock))
