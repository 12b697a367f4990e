"""Sign-in with a local account, sign-out, and the limit on failed sign-ins.

A sign-in checks the password against the account's scrypt hash (an unknown name is checked against a dummy
hash, so both cost the same), starts a server-side session (a fresh random id in an HttpOnly, SameSite=Lax
cookie, Secure behind TLS; the store keeps its sha256) and audits the attempt either way. Failed attempts are
counted per account name and per client address: past the limit within the window, sign-in is refused for that
name (or address) with the same words whether the account exists or not, until the window has passed.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import secrets
from collections import OrderedDict, deque
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from tollgate.clock import Clock
from tollgate.console._web import SIGNED_IN, Visit, new_session_id, origin_refusal, require, safe_next, session_hash
from tollgate.identity._people import DUMMY_HASH, MAX_PASSWORD_BYTES, VIA_LOCAL, verify_password

if TYPE_CHECKING:
    from tollgate.console._app import Console

#: The cookie a sign-in form's token is doubled in (login CSRF: a form posted from elsewhere has no cookie).
SIGNIN_COOKIE = "tollgate_signin"
#: Most names and addresses the limiter remembers (least recently failed forgotten first): bounded memory.
MAX_TRACKED = 10000
#: Longest account name read from the form.
MAX_NAME = 128


class LoginLimiter:
    """Failed sign-ins per account name and per client address, each within a sliding window.

    Each key keeps at most its limit of failure times, and at most MAX_TRACKED keys are kept, so memory is
    bounded whatever a stranger sends. A success clears the name's failures (not the address's)."""

    def __init__(self, clock: Clock, *, per_user: int, per_address: int, window: float) -> None:
        self._clock = clock
        self._limits = {"user": per_user, "address": per_address}
        self._window = window
        self._failures: OrderedDict[tuple[str, str], deque[float]] = OrderedDict()
        #: (name, address block) → when its refusal while locked was last audited.
        self._noted: OrderedDict[tuple[str, str], float] = OrderedDict()

    def _key(self, kind: str, value: str) -> tuple[str, str]:
        return (kind, value.lower() if kind == "user" else address_block(value))

    def retry_after(self, name: str, address: str) -> float:
        """Seconds until a sign-in as name from address may be tried again (0: now)."""
        now = self._clock.time()
        wait = 0.0
        for kind, value in (("user", name), ("address", address)):
            times = self._failures.get(self._key(kind, value))
            if times is not None and len(times) >= self._limits[kind]:
                wait = max(wait, times[0] + self._window - now)
        return max(wait, 0.0)

    def failed(self, name: str, address: str) -> None:
        now = self._clock.time()
        for kind, value in (("user", name), ("address", address)):
            key = self._key(kind, value)
            times = self._failures.pop(key, None) or deque(maxlen=self._limits[kind])
            while times and times[0] + self._window <= now:
                times.popleft()
            times.append(now)
            self._failures[key] = times  # most recent last
        while len(self._failures) > MAX_TRACKED:
            self._failures.popitem(last=False)

    def first_refusal(self, name: str, address: str) -> bool:
        """Whether this is the first refused attempt of name from address since their lock began: only that one
        is audited, so a locked-out sprayer cannot fill the audit trail at request rate."""
        now = self._clock.time()
        key = (name.lower(), address_block(address))
        noted = self._noted.pop(key, None)
        self._noted[key] = noted if noted is not None and noted + self._window > now else now
        while len(self._noted) > MAX_TRACKED:
            self._noted.popitem(last=False)
        return noted is None or noted + self._window <= now

    def succeeded(self, name: str) -> None:
        self._failures.pop(self._key("user", name), None)

    def __len__(self) -> int:
        return len(self._failures)


def address_block(address: str) -> str:
    """What the per-address limit counts an address under: an IPv6 address by its /64 (one host's share: a
    client holding a /64 must not get 2**64 fresh addresses to guess from), anything else as it is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip.ipv4_mapped or ip) if isinstance(ip, ipaddress.IPv6Address) else str(ip)


async def signin_page(request: Request) -> Response:
    console: Console = request.app.state.console
    if request.method == "POST":
        return await _signin(request, console)
    if await console.visit(request) is not None:
        return RedirectResponse("/", status_code=303)
    return _form(request, console)


def _form(request: Request, console: Console, *, error: str = "", status: int = 200, name: str = "") -> Response:
    token = secrets.token_urlsafe(24)
    response = console.render(request, "signin.html", status=status, visit=None, signin_token=token, error=error,
                              name=name, next=safe_next(request.query_params.get("next", "/")))
    response.set_cookie(SIGNIN_COOKIE, token, max_age=3600, path="/signin", httponly=True, samesite="strict",
                        secure=console.config.secure_cookies)
    return response


async def _signin(request: Request, console: Console) -> Response:
    form = await request.form(max_files=0, max_fields=10, max_part_size=MAX_PASSWORD_BYTES * 4)
    name = str(form.get("name", "")).strip()[:MAX_NAME]
    password = str(form.get("password", ""))
    given = str(form.get("signin_token", ""))
    address = console.client_address(request)
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    refused = origin_refusal(request, console.origin(request))
    if refused or not expected or not hmac.compare_digest(given, expected):
        return _form(request, console, status=403, name=name,
                     error=refused or "This sign-in form has expired; sign in again.")
    wait = console.limiter.retry_after(name, address)
    if wait > 0:
        if console.limiter.first_refusal(name, address):
            await console.stores.audit.record(name, VIA_LOCAL, "signin.locked", name, "too many failed sign-ins "
                                              "(later refusals while locked are not recorded)", address)
        minutes = max(1, round(wait / 60))
        return _form(request, console, status=429, name=name,
                     error=f"Too many failed sign-ins for this account or from this address: sign-in is locked. "
                           f"Try again in about {minutes} minute{'s' if minutes != 1 else ''}.")
    account = await console.stores.users.get(name) if name else None
    matches = await asyncio.to_thread(verify_password, password, account.password_hash if account else DUMMY_HASH)
    if account is None or not matches:
        console.limiter.failed(name, address)
        await console.stores.audit.record(name, VIA_LOCAL, "signin.failed", name, "unknown name or wrong password",
                                          address)
        return _form(request, console, status=401, name=name, error="Unknown name or wrong password.")
    console.limiter.succeeded(name)
    response = RedirectResponse(safe_next(str(form.get("next", "/"))), status_code=303)
    await console.start_session(response, name=account.name, groups=list(account.groups), via=VIA_LOCAL,
                                address=address)
    response.delete_cookie(SIGNIN_COOKIE, path="/signin")
    return response


@require(SIGNED_IN)
async def signout(request: Request, visit: Visit) -> Response:
    await visit.console.stores.users.end_session(session_hash(visit.session_id))
    await visit.audit("signout", visit.person.name)
    response = RedirectResponse("/signin", status_code=303)
    visit.console.clear_session_cookie(response)
    return response


__all__ = ["LoginLimiter", "new_session_id", "signin_page", "signout"]
