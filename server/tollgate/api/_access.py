"""Who may call AdminService and ApprovalService, as whom, and the audit entry of what they did.

A caller is resolved from its credential, never from a name it declares (identity/_tokens.py names the kinds):
- an identity the transport proves (client certificate, Unix-socket peer, caller token) listed in
  admin_identities: automation, recorded as that identity;
- `authorization: Bearer TOKEN` with the shared admin token: automation, recorded as `admin-token`;
- `authorization: Bearer tgp_...`: a person's own token (`tollgate users token NAME`), looked up by its hash;
- `authorization: Bearer JWT` where an OpenID Connect provider is configured: a person's ID or access token;
- a client certificate (or Unix-socket peer) that person_identities maps to a person.
People may use ApprovalService (read, decide as themselves); AdminService needs the admin token or an admin
identity. Every change (and every refused change) is written to the audit trail with who, how, what and the peer.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import grpc

from tollgate.api._errors import PermissionDenied, Unauthenticated
from tollgate.api._handlers import metadata_value
from tollgate.clock import Clock
from tollgate.identity import TOKEN_METADATA_KEY, CallerResolver
from tollgate.identity._oidc import OidcProvider, OidcSettings
from tollgate.identity._people import valid_person_name
from tollgate.identity._tokens import (
    ADMIN_TOKEN_ACTOR,
    VIA_ADMIN_IDENTITY,
    VIA_ADMIN_TOKEN,
    VIA_CERTIFICATE,
    VIA_OIDC,
    VIA_TOKEN,
    ApiCaller,
)
from tollgate.state import StateError
from tollgate.state._tokens import PersonTokenStore, is_person_token

log = logging.getLogger("tollgate.api.admin")

NO_TOKEN_CONFIGURED = (
    "admin RPCs are disabled for this caller: this sidecar has no admin token (start it with --admin-token-file "
    "FILE, --admin-token TOKEN or the admin_token config key) and the caller is not in admin_identities")
NO_CREDENTIAL = ("admin RPCs need the admin token, and approvals a person's own token: send `authorization: Bearer "
                 "TOKEN` metadata (tollgate: --token-file FILE with your token from `tollgate users token NAME`, "
                 "or --token / TOLLGATE_ADMIN_TOKEN for the admin token)")


class PersonTokenVerifier(Protocol):
    """Verifies a person's bearer JWT (an OpenID Connect ID or access token): the person's name and groups, or
    raises ValueError saying why the token is refused."""

    async def person(self, token: str) -> tuple[str, tuple[str, ...]]:
        ...


class Accounts(Protocol):
    """The console's accounts (state/_users.py's UserStore): a person's groups."""

    async def get(self, name: str) -> Any:
        ...


class OidcPeople:
    """People's OpenID Connect tokens on the API: an ID token for the client_id, or an access token for the
    configured audience, verified as the console's sign-in verifies one (identity/_oidc.py), without a nonce."""

    def __init__(self, provider: OidcProvider) -> None:
        self._provider = provider

    async def person(self, token: str) -> tuple[str, tuple[str, ...]]:
        audience = self._provider.settings.audience
        signed = await self._provider.verify(token, nonce=None, audiences=[audience] if audience else [])
        if not valid_person_name(signed.name):
            raise ValueError(f"the token's {self._provider.settings.name_claim} is not a person's name")
        return signed.name, signed.groups


def oidc_people(settings: OidcSettings | None, *, clock: Clock) -> OidcPeople | None:
    return OidcPeople(OidcProvider(settings, clock=clock)) if settings is not None else None


class Audit(Protocol):
    """Where API actions are recorded (state/_audit.py's AuditLog)."""

    async def record(self, actor: str, via: str, action: str, target: str = "", detail: str = "",
                     source_address: str = "") -> object:
        ...


class NoAudit:
    """Records nothing (a servicer built without a store's audit trail, in unit tests)."""

    async def record(self, actor: str, via: str, action: str, target: str = "", detail: str = "",
                     source_address: str = "") -> object:
        return None


@dataclass(frozen=True)
class AdminAccess:
    """The credentials admin and approval RPCs accept (see the module docstring)."""

    token: bytes = b""
    identities: frozenset[str] = frozenset()
    callers: CallerResolver = field(default_factory=CallerResolver)
    #: Person tokens (None: none are accepted).
    tokens: PersonTokenStore | None = None
    #: Caller identities (certificate, Unix peer) → the person each authenticates.
    people: Mapping[str, str] = field(default_factory=dict)
    #: People's OpenID Connect tokens (None: none are accepted).
    oidc: PersonTokenVerifier | None = None
    audit: Audit = field(default_factory=NoAudit)
    #: Where a person's groups come from when their credential carries none (a token, a certificate).
    accounts: Accounts | None = None


async def authenticate(context: grpc.aio.ServicerContext, access: AdminAccess, method: str, *,
                       people: bool) -> ApiCaller:
    """The caller of method, from its credential. people: whether a person's credential is enough (approvals),
    else only automation's (AdminService). PermissionDenied or Unauthenticated (logged) when it is not."""
    peer = context.peer()
    caller = None
    if access.identities or access.people:
        caller = access.callers.resolve(peer=peer, auth_context=context.auth_context(),
                                        token=metadata_value(context, TOKEN_METADATA_KEY))
        listed = next((name for name in caller.names() if name in access.identities), "")
        if listed:
            return ApiCaller(listed, VIA_ADMIN_IDENTITY, person=False, admin=True, peer=peer)
    if not access.token and (not people or (access.tokens is None and access.oidc is None and not access.people)):
        log.warning("admin: %s from %s refused: no admin token is configured", method, peer)
        raise PermissionDenied(NO_TOKEN_CONFIGURED)
    scheme, _, bearer = metadata_value(context, "authorization").partition(" ")
    bearer = bearer.strip()
    if scheme.lower() == "bearer" and bearer:
        found = await _bearer(bearer, access, method=method, peer=peer)
    elif caller is not None and (person := next((access.people[n] for n in caller.names() if n in access.people),
                                                "")):
        found = ApiCaller(person, VIA_CERTIFICATE if caller.method == "mtls" else caller.method, person=True,
                          admin=False, peer=peer)
    else:
        log.warning("admin: %s from %s refused: no admin token or person's credential sent", method, peer)
        raise Unauthenticated(NO_CREDENTIAL)
    if found.person and not found.groups and access.accounts is not None:
        account = await access.accounts.get(found.name)
        if account is not None:
            found = replace(found, groups=tuple(account.groups))
    if found.person and not people:
        log.warning("admin: %s from %s refused: %s is a person's credential", method, peer, found.logged())
        raise PermissionDenied(f"{method}: {found.name} ({found.via}) is a person's credential; AdminService needs "
                               "the admin token or an admin identity (kill switches for people: the console)")
    return found


async def _bearer(bearer: str, access: AdminAccess, *, method: str, peer: str) -> ApiCaller:
    if access.token and hmac.compare_digest(bearer.encode(), access.token):
        return ApiCaller(ADMIN_TOKEN_ACTOR, VIA_ADMIN_TOKEN, person=False, admin=True, peer=peer)
    if access.tokens is not None and is_person_token(bearer):
        try:
            token = await access.tokens.lookup(bearer)
        except StateError:
            raise  # the store is down: UNAVAILABLE, nothing decided
        if token is not None:
            return ApiCaller(token.person, VIA_TOKEN, person=True, admin=False, peer=peer)
        log.warning("admin: %s from %s refused: a person token that is unknown, expired or revoked", method, peer)
        raise Unauthenticated("this person token is not valid (unknown, expired or revoked): issue a new one with "
                              "`tollgate users token NAME`")
    if access.oidc is not None and bearer.count(".") == 2:
        try:
            person, groups = await access.oidc.person(bearer)
        except ValueError as exc:
            log.warning("admin: %s from %s refused: OpenID Connect token: %s", method, peer, exc)
            raise Unauthenticated(f"OpenID Connect token refused: {exc}") from None
        return ApiCaller(person, VIA_OIDC, person=True, admin=False, peer=peer, groups=groups)
    log.warning("admin: %s from %s refused: wrong admin token", method, peer)
    if not access.token:
        raise Unauthenticated("this credential is no person's token, and this sidecar has no admin token")
    raise Unauthenticated("admin token is not valid for this sidecar")


async def audited(access: AdminAccess, caller: ApiCaller, action: str, target: str, detail: str) -> None:
    """Append to the audit trail; a trail that cannot be written is logged, and the answer stands (the change
    is already made, and the server's log line says so)."""
    try:
        await access.audit.record(caller.name, caller.via, action, target, detail, caller.peer)
    except StateError as exc:
        log.error("audit: cannot record %s %s by %s: %s", action, target, caller.logged(), exc)
