"""Sign-in through a trusted reverse proxy (oauth2-proxy style): the proxy authenticates the person and passes
their name (and groups) in request headers; the console believes those headers only on connections from the
proxy's own addresses.

The check is on the TCP peer of the connection (uvicorn runs without proxy_headers, so no X-Forwarded-For can
change it). From an allowed address, a request with the user header is that person, with the groups header's
groups (comma-separated); no cookie session is needed and the person's CSRF token is derived from a secret of
this process and their name. From any other address the identity headers are ignored (the request is treated as
if they were not there) and the attempt is audited (`proxy.refused`, at most once a minute per address, so a
stranger cannot flood the trail). The proxy must remove these headers from what its clients send; say so in its
configuration (oauth2-proxy does with --pass-user-headers and its own header names).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from tollgate.console._config import ConsoleConfigError
from tollgate.identity._people import VIA_PROXY, Person, valid_group_name, valid_person_name
from tollgate.state import StateError

if TYPE_CHECKING:
    from tollgate.console._app import Console

#: Seconds between audit entries for identity headers refused from one address.
REFUSED_AUDIT_SECONDS = 60.0
#: Addresses whose refusals are remembered (bounded memory).
MAX_REMEMBERED = 4096
MAX_GROUPS = 256

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ProxySettings:
    """The `trusted_proxy` section."""

    #: The proxy's addresses or networks (CIDR), e.g. ["127.0.0.1", "10.0.8.0/24"]; the only peers believed.
    addresses: tuple[Network, ...]
    #: The header naming the person, and the one listing their groups (comma-separated; "" takes none).
    user_header: str = "X-Forwarded-User"
    groups_header: str = "X-Forwarded-Groups"

    @classmethod
    def parse(cls, raw: Mapping[str, Any], *, where: str = "console.trusted_proxy") -> ProxySettings:
        unknown = sorted(set(raw) - {"addresses", "user_header", "groups_header"})
        if unknown:
            raise ConsoleConfigError(f"{where}: unknown key {unknown[0]!r}; known keys: addresses, groups_header, "
                                     "user_header")
        given = raw.get("addresses")
        if not isinstance(given, list) or not given:
            raise ConsoleConfigError(f"{where}.addresses: required: the proxy's addresses or CIDRs (a list)")
        networks = []
        for entry in given:
            try:
                networks.append(ipaddress.ip_network(str(entry), strict=False))
            except ValueError:
                raise ConsoleConfigError(f"{where}.addresses: {entry!r} is not an address or CIDR") from None
        headers = {k: raw.get(k, getattr(cls, k)) for k in ("user_header", "groups_header")}
        for key, value in headers.items():
            if not isinstance(value, str) or (key == "user_header" and not value) or not all(
                    c.isalnum() or c == "-" for c in value):
                raise ConsoleConfigError(f"{where}.{key}: {value!r} is not a header name")
        return cls(tuple(networks), **headers)

    def allows(self, address: str) -> bool:
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            return False  # a Unix socket or no peer: never the proxy
        return any(peer in network for network in self.addresses)


class TrustedProxy:
    """Who a request from the trusted proxy names (None: no proxy identity on it)."""

    def __init__(self, console: Console, settings: ProxySettings) -> None:
        self.console = console
        self.settings = settings
        self._secret = secrets.token_bytes(32)  # this process's: the derived CSRF tokens are good only here
        self._refused: OrderedDict[str, float] = OrderedDict()

    async def person(self, request: Request) -> tuple[Person, str] | None:
        """(the person, a session id standing for their proxied sign-in) when the proxy names one."""
        name = request.headers.get(self.settings.user_header)
        if name is None:
            return None
        address = self.console.client_address(request)
        if not self.settings.allows(address):
            await self._audit_refused(address, name, "identity header from an address that is not the proxy's; "
                                                     "ignored")
            return None
        if not valid_person_name(name):
            await self._audit_refused(address, name, "the proxy's user header names no person; ignored")
            return None
        raw = request.headers.get(self.settings.groups_header, "") if self.settings.groups_header else ""
        groups = tuple(dict.fromkeys(g.strip() for g in raw.split(",") if valid_group_name(g.strip())))
        person = Person(name, groups[:MAX_GROUPS], VIA_PROXY)
        # Stands in for a session id (Visit derives the CSRF token from it): per person and groups, and unknown
        # to anyone without this process's secret.
        derived = hmac.new(self._secret, f"{name}\n{','.join(person.groups)}".encode(), hashlib.sha256).hexdigest()
        return person, derived

    async def _audit_refused(self, address: str, name: str, why: str) -> None:
        now = self.console.clock.time()
        last = self._refused.get(address)
        if last is not None and now - last < REFUSED_AUDIT_SECONDS:
            return
        self._refused.pop(address, None)
        self._refused[address] = now
        while len(self._refused) > MAX_REMEMBERED:
            self._refused.popitem(last=False)
        try:
            await self.console.stores.audit.record(name[:128], VIA_PROXY, "proxy.refused", name[:128], why, address)
        except StateError:
            pass  # ignored either way; the console's log has the store's failure


def trusted_proxy(console: Console) -> TrustedProxy | None:
    """The console's trusted proxy, when its config has a `trusted_proxy` section."""
    if not console.config.trusted_proxy:
        return None
    return TrustedProxy(console, ProxySettings.parse(console.config.trusted_proxy))
