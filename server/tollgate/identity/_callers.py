"""Caller identity: who is on the other end of a connection, and which principals it may speak for.

A request names a principal (agent, team, user, ...). The caller is what the transport proved: a client
certificate (mTLS: its SPIFFE ID or other SAN), the peer credentials of a Unix-socket connection (uid/gid/pid,
read by the socket relay in tollgate.peercred), or a signed token (a JWT in request metadata). The `callers`
configuration maps callers to the principals they may claim; once it lists anyone, everyone else may claim
nothing. The server enforces the mapping before the policy is asked, like a kill switch: a principal the caller
may not speak for is a DENY `principal_mismatch`, logged like any other decision.

This module has no gRPC import: the servicers hand it the peer string, the auth context and the token.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cachetools import TLRUCache
from cryptography.hazmat.primitives.asymmetric import rsa

from tollgate.clock import Clock, SystemClock

#: Call metadata key (and HTTP header) carrying a caller token. Not `authorization`: that carries the admin token.
TOKEN_METADATA_KEY = "tollgate-caller-token"
#: Reason code of the server's DENY for a principal the caller may not speak for.
PRINCIPAL_MISMATCH = "principal_mismatch"
#: Reason code of the server's DENY for a caller token that does not verify.
CALLER_UNAUTHENTICATED = "caller_unauthenticated"
#: Clock skew tolerated on a token's exp, nbf and iat, in seconds.
TOKEN_LEEWAY = 30.0
#: Verified caller tokens remembered (each until it expires).
TOKEN_CACHE_SIZE = 1024
#: How often (seconds, on the verifier's clock) the token_keys directory is looked at for changed keys.
KEY_CHECK_SECONDS = 5.0
#: Principal fields a caller entry constrains: config key → principal field.
CLAIMABLE = {"agents": "agent_id", "teams": "team", "users": "user", "workflows": "workflow"}

_ID = re.compile(r"^(spiffe://\S+|[a-z][a-z0-9+.-]*://\S+|uid:\d+|gid:\d+|jwt:\S+|dns:\S+|cn:.+)$")


def valid_caller_id(ident: str) -> bool:
    """Whether ident names a caller the way callers and admin_identities entries do."""
    return bool(_ID.match(ident))


class IdentityConfigError(ValueError):
    """A `callers` entry or token setting that cannot be used; the message names the key."""


@dataclass(frozen=True)
class Caller:
    """What the transport proved about the caller of one request."""

    #: "mtls", "uds", "token" or "none" (nothing proven).
    method: str = "none"
    #: The identity the `callers` mapping is keyed by: a SPIFFE ID or other SAN, "uid:N", "jwt:SUB"; "" for none.
    subject: str = ""
    #: What else was verified (spiffe_id, sans, uid, gid, pid, iss, claims); goes into input.auth.
    details: Mapping[str, Any] = field(default_factory=dict)
    #: Further identities that name this caller too (a uds caller is also "gid:N"); matched like subject.
    aliases: tuple[str, ...] = ()
    #: Why a presented credential was refused ("" when none was, or it verified).
    error: str = ""

    def auth_input(self) -> dict[str, Any]:
        """input.auth of the policy contract."""
        doc: dict[str, Any] = {"method": self.method, "subject": self.subject, **self.details}
        if self.error:
            doc["error"] = self.error
        return doc

    def names(self) -> tuple[str, ...]:
        return (self.subject, *self.aliases) if self.subject else ()


ANONYMOUS = Caller()


@dataclass(frozen=True)
class CallerEntry:
    """One `callers` entry: an identity and, per principal field, the values it may claim ("*": any)."""

    id: str
    allowed: Mapping[str, frozenset[str]]

    def permits(self, principal: Mapping[str, Any]) -> str:
        """"" when this caller may speak for principal, else the field it may not claim."""
        for key, name in CLAIMABLE.items():
            value = principal.get(name) or ""
            allowed = self.allowed.get(key, frozenset())
            if value and "*" not in allowed and value not in allowed:
                return name
        return ""


@dataclass(frozen=True)
class CallerMap:
    """The `callers` configuration. Empty: every caller may claim any principal (identity is only reported)."""

    entries: tuple[CallerEntry, ...] = ()

    @classmethod
    def parse(cls, raw: Any) -> CallerMap:
        if raw is None:
            return cls()
        if not isinstance(raw, list):
            raise IdentityConfigError(f"callers: must be a list of {{id, agents, teams, users, workflows}}, "
                                      f"got {raw!r}")
        entries = []
        seen: set[str] = set()
        for i, item in enumerate(raw):
            where = f"callers[{i}]"
            if not isinstance(item, dict):
                raise IdentityConfigError(f"{where}: must be a mapping with id and the principals it may claim")
            unknown = set(item) - {"id", *CLAIMABLE}
            if unknown:
                raise IdentityConfigError(f"{where}: unknown key {sorted(unknown)[0]!r}; known keys: id, "
                                          f"{', '.join(CLAIMABLE)}")
            ident = item.get("id")
            if not isinstance(ident, str) or not valid_caller_id(ident):
                raise IdentityConfigError(
                    f"{where}.id: {ident!r} is not a caller identity; use a SPIFFE ID or other certificate URI "
                    "(spiffe://trust-domain/path), dns:NAME or cn:NAME (mTLS), uid:N or gid:N (Unix socket), "
                    "jwt:SUBJECT (token)")
            if ident in seen:
                raise IdentityConfigError(f"{where}.id: {ident!r} is listed twice; merge the entries")
            seen.add(ident)
            allowed: dict[str, frozenset[str]] = {}
            for key in CLAIMABLE:
                values = item.get(key, [])
                if not isinstance(values, list) or not all(isinstance(v, str) and v for v in values):
                    raise IdentityConfigError(f"{where}.{key}: must be a list of names (\"*\" for any), "
                                              f"got {values!r}")
                allowed[key] = frozenset(values)
            entries.append(CallerEntry(ident, allowed))
        return cls(tuple(entries))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def conflict(self, names: Iterable[str]) -> str:
        """"" unless the names of one credential (a certificate's URI SANs, DNS names, CN) match entries that may
        claim different principals: then why the credential is refused. Else a certificate carrying two agents'
        SPIFFE IDs could speak for both, and for every principal any of its names is mapped to."""
        wanted = set(names)
        matching = [e for e in self.entries if e.id in wanted]
        if all(dict(e.allowed) == dict(matching[0].allowed) for e in matching[1:]):
            return ""
        return (f"client certificate names {len(matching)} callers entries that may claim different principals "
                f"({', '.join(e.id for e in matching)}); a credential is one identity: issue it with one URI SAN, "
                f"or give those entries the same agents, teams, users and workflows")

    def check(self, caller: Caller, principal: Mapping[str, Any]) -> str:
        """"" when caller may speak for principal, else why not (the message of the principal_mismatch DENY)."""
        if not self.entries:
            return ""
        matching = [e for e in self.entries if e.id in caller.names()]
        if not matching:
            who = f"caller {caller.subject} ({caller.method})" if caller.subject else "an unauthenticated caller"
            return f"{who} is not listed in callers, so it may not speak for any principal"
        refused = [f for f in (e.permits(principal) for e in matching) if f]
        if len(refused) < len(matching):
            return ""
        name = refused[0]
        return (f"caller {caller.subject} ({caller.method}) may not speak for {name} "
                f"{principal.get(name)!r} (see its callers entry)")


@dataclass(frozen=True)
class TokenSettings:
    """How caller tokens are verified: trusted keys by kid, the issuer and the audience they must name."""

    keys: Mapping[str, Any]
    issuer: str
    audience: str


class TokenVerifier:
    """Verifies caller JWTs (RS256 or ES256) against trusted keys: signature, kid, iss, aud, exp (required).

    A harness sends the same token with every request until it expires, so verified tokens are remembered
    (a cachetools TLRUCache: up to TOKEN_CACHE_SIZE, least recently used first out, each until its exp on the
    verifier's clock, keyed by the token's SHA-256 so a large token costs no more than a small one): a
    signature check costs more than the rest of a decision. Refusals are never remembered. Built from a keys
    directory (from_config), the verifier looks at it again at most every KEY_CHECK_SECONDS: a key added,
    replaced or removed is loaded and every remembered token forgotten, so a revoked key stops working
    within that time (a directory that no longer loads refuses every token, naming why).
    """

    def __init__(self, settings: TokenSettings, *, clock: Clock = SystemClock(), keys_dir: str = "") -> None:
        self._settings = settings
        # What a remembered token's exp is held against. (PyJWT checks exp itself, on the system clock.)
        self._clock = clock
        self._verified: TLRUCache[bytes, tuple[Caller, float]] = TLRUCache(
            maxsize=TOKEN_CACHE_SIZE, ttu=lambda _token, found, _now: found[1], timer=clock.time)
        self._keys_dir = keys_dir
        self._keys_seen = _key_files(keys_dir) if keys_dir else ()
        self._keys_error = ""
        self._next_key_check = clock.time() + KEY_CHECK_SECONDS

    @classmethod
    def from_config(cls, keys_dir: str, *, issuer: str, audience: str, clock: Clock = SystemClock()) -> TokenVerifier:
        if not issuer or not audience:
            raise IdentityConfigError("token_keys: needs token_issuer and token_audience (the iss and aud every "
                                      "caller token must carry)")
        return cls(TokenSettings(_load_keys(keys_dir), issuer, audience), clock=clock, keys_dir=keys_dir)

    @property
    def remembered(self) -> int:
        """How many verified tokens are remembered now."""
        self._verified.expire()
        return len(self._verified)

    def verify(self, token: str) -> Caller:
        self._check_keys()
        if self._keys_error:
            return _refused(f"caller token: {self._keys_error}")
        digest = hashlib.sha256(token.encode()).digest()
        remembered = self._verified.get(digest)
        if remembered is not None:
            return remembered[0]
        caller, valid_until = self._verify(token)
        if valid_until > self._clock.time():
            self._verified[digest] = (caller, valid_until)
        return caller

    def _check_keys(self) -> None:
        """Reload the keys directory when its files changed (looked at once every KEY_CHECK_SECONDS)."""
        now = self._clock.time()
        if not self._keys_dir or now < self._next_key_check:
            return
        self._next_key_check = now + KEY_CHECK_SECONDS
        seen = _key_files(self._keys_dir)
        if seen == self._keys_seen:
            return
        self._keys_seen = seen
        self._verified.clear()
        try:
            self._settings = TokenSettings(_load_keys(self._keys_dir), self._settings.issuer, self._settings.audience)
            self._keys_error = ""
        except IdentityConfigError as exc:
            self._keys_error = str(exc)

    def _verify(self, token: str) -> tuple[Caller, float]:
        """The caller a token names and until when that holds (0: refused, not to be remembered)."""
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid")
            key = self._settings.keys.get(kid) if isinstance(kid, str) else None
            if key is None:
                known = ", ".join(sorted(self._settings.keys))
                return _refused(f"caller token: kid {kid!r} is not a trusted key (trusted: {known})"), 0.0
            algorithm = "RS256" if isinstance(key, rsa.RSAPublicKey) else "ES256"
            claims = jwt.decode(token, key, algorithms=[algorithm], issuer=self._settings.issuer,
                                audience=self._settings.audience, leeway=TOKEN_LEEWAY,
                                options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.PyJWTError as exc:
            return _refused(f"caller token: {exc}"), 0.0
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            return _refused("caller token: sub must be a non-empty string"), 0.0
        caller = Caller(method="token", subject=f"jwt:{sub}", details={"iss": claims["iss"], "sub": sub, "kid": kid})
        return caller, float(claims["exp"]) + TOKEN_LEEWAY


def _load_keys(keys_dir: str) -> Mapping[str, Any]:
    from tollgate.bundle import BundleError, load_public_keys

    try:
        return load_public_keys(Path(keys_dir))
    except BundleError as exc:
        raise IdentityConfigError(f"token_keys: {exc}") from exc


def _key_files(keys_dir: str) -> tuple[tuple[str, int, int], ...]:
    """What tells a changed keys directory: each KID.pem's name, size and modification time."""
    try:
        return tuple(sorted((f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in Path(keys_dir).glob("*.pem")))
    except OSError:
        return (("", -1, -1),)


def _refused(error: str) -> Caller:
    return Caller(method="token", subject="", error=error)


class CallerResolver:
    """Turns what a transport reports about a connection into a Caller.

    Precedence when several apply: a token names the caller (it is the most specific claim: one agent
    behind a shared socket or certificate), then the client certificate, then the Unix-socket peer.
    """

    def __init__(self, *, tokens: TokenVerifier | None = None, relay_prefix: str = "",
                 callers: CallerMap | None = None) -> None:
        self._tokens = tokens
        #: The callers mapping: a certificate whose names map to different principal sets names no one.
        self._callers = callers or CallerMap()
        #: Peer addresses the Unix-socket relay connects from start with this; they encode uid, gid and pid.
        self._relay_prefix = relay_prefix

    def resolve(self, *, peer: str, auth_context: Mapping[str, Iterable[bytes]], token: str = "") -> Caller:
        if token:
            if self._tokens is None:
                return _refused("caller token: this server verifies no caller tokens (configure token_keys, "
                                "token_issuer and token_audience)")
            return self._tokens.verify(token)
        return self.transport(peer=peer, auth_context=auth_context)

    def transport(self, *, peer: str, auth_context: Mapping[str, Iterable[bytes]]) -> Caller:
        """The caller the connection proves, without a token."""
        if _first(auth_context, "transport_security_type") == "ssl":
            certificate = certificate_caller(auth_context)
            if certificate is not None:
                conflict = self._callers.conflict(certificate.names())
                if conflict:
                    return Caller(method="mtls", subject="", details=certificate.details, error=conflict)
                return certificate
        if self._relay_prefix and peer.startswith(self._relay_prefix):
            return uds_caller(peer[len(self._relay_prefix):])
        return ANONYMOUS


def certificate_caller(auth_context: Mapping[str, Iterable[bytes]]) -> Caller | None:
    """The caller a verified client certificate names: its SPIFFE ID, else its first URI, DNS name, or CN."""
    sans = [v.decode() for v in auth_context.get("x509_subject_alternative_name", ())]
    spiffe = _first(auth_context, "peer_spiffe_id")
    uris = [v.decode() for v in auth_context.get("peer_uri", ())]
    dns = [v.decode() for v in auth_context.get("peer_dns", ())]
    cn = _first(auth_context, "x509_common_name")
    subject = spiffe or (uris[0] if uris else "") or (f"dns:{dns[0]}" if dns else "") or (f"cn:{cn}" if cn else "")
    if not subject:
        return None
    details: dict[str, Any] = {"sans": sans}
    if spiffe:
        details["spiffe_id"] = spiffe
    if cn:
        details["common_name"] = cn
    aliases = tuple(dict.fromkeys([*uris, *(f"dns:{d}" for d in dns), *([f"cn:{cn}"] if cn else [])]))
    return Caller(method="mtls", subject=subject, details=details, aliases=tuple(a for a in aliases if a != subject))


def uds_caller(tag: str) -> Caller:
    """The caller the socket relay saw: tag is "UID.GID.PID.N" (see tollgate.peercred)."""
    parts = tag.split(".")
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        return ANONYMOUS
    uid, gid, pid = (int(p) for p in parts[:3])
    return Caller(method="uds", subject=f"uid:{uid}", details={"uid": uid, "gid": gid, "pid": pid},
                  aliases=(f"gid:{gid}",))


def _first(auth_context: Mapping[str, Iterable[bytes]], key: str) -> str:
    for value in auth_context.get(key, ()):
        return value.decode(errors="replace")
    return ""


__all__ = [
    "ANONYMOUS",
    "CALLER_UNAUTHENTICATED",
    "PRINCIPAL_MISMATCH",
    "TOKEN_METADATA_KEY",
    "Caller",
    "CallerEntry",
    "CallerMap",
    "CallerResolver",
    "IdentityConfigError",
    "TokenVerifier",
    "certificate_caller",
    "uds_caller",
    "valid_caller_id",
]
