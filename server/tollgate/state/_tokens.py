"""Per-person API tokens: a random secret that authenticates its holder as one person, of which only a hash
is stored, with the rules both stores hold every token to.

`tollgate users token NAME` issues one (the secret is printed once, never stored); ApprovalService takes the
approver from it (api/_admin.py), so a decision names the person who holds the token, not a name the caller
declared. A token may expire (`expires_at`) and be revoked; a revoked or expired token authenticates no one.
Looking a token up compares hashes inside the store's index (sha256 of a 256-bit secret: no timing to learn
from, nothing to brute-force).
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from tollgate.clock import Clock, SystemClock
from tollgate.encoding import format_time
from tollgate.state._store import StateError, StateStore

#: Every person token starts with this, so a bearer credential is told apart from the admin token and a JWT.
TOKEN_PREFIX = "tgp_"
#: Random bytes in a token's secret part (256 bits: a hash of it needs no salt or slow hashing).
TOKEN_BYTES = 32
#: The longest person name a token is issued for (the identity approvals name; users' names are as long).
MAX_PERSON = 200
#: The identity the shared admin token acts as: never a person's name.
ADMIN_TOKEN_ACTOR = "admin-token"
#: Most tokens one listing returns, newest first.
MAX_LISTED = 1000

_SCHEMA = (
    f"""
    CREATE TABLE person_tokens (
        id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL UNIQUE,
        person TEXT NOT NULL CHECK (length(person) BETWEEN 1 AND {MAX_PERSON}),
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL DEFAULT '',
        revoked_at TEXT NOT NULL DEFAULT '',
        note TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX person_tokens_person ON person_tokens (person)
    """,
)
#: The columns a token is read from, in token_from_row's order.
COLUMNS = "id, person, created_at, expires_at, revoked_at, note"


class TokenError(ValueError):
    """A token that cannot be issued as asked; the message names the field."""


@dataclass(frozen=True)
class PersonToken:
    """One issued token as stored (never its secret)."""

    id: str
    person: str
    created_at: str  # RFC 3339, UTC
    expires_at: str = ""  # "": does not expire
    revoked_at: str = ""
    note: str = ""

    def valid(self, now: datetime) -> bool:
        return not self.revoked_at and (not self.expires_at or format_time(now) < self.expires_at)


@dataclass(frozen=True)
class IssuedToken:
    """A token just issued: the secret (shown to the person once) and what the store keeps."""

    secret: str
    token: PersonToken


class PersonTokenStore(Protocol):
    """Person tokens in a state store (SQLite: LocalPersonTokens; PostgreSQL: PgPersonTokens)."""

    async def issue(self, person: str, *, ttl: timedelta | None = None, note: str = "") -> IssuedToken:
        """A new token for person (TokenError for a name no token may carry)."""
        ...

    async def lookup(self, secret: str) -> PersonToken | None:
        """The valid (not expired, not revoked) token whose secret this is; None for any other string."""
        ...

    async def list(self, person: str = "") -> builtins.list[PersonToken]:
        """Tokens (of one person, or all), newest first, revoked and expired ones included."""
        ...

    async def revoke(self, token_id: str) -> bool:
        """Revoke a token by its id; False when no unrevoked token has it."""
        ...


def token_hash(secret: str) -> str:
    """What the store keeps of a token: its sha256, hex."""
    return hashlib.sha256(secret.encode()).hexdigest()


def is_person_token(secret: str) -> bool:
    """Whether a bearer credential has the shape of a person token (checked against the store only then)."""
    return secret.startswith(TOKEN_PREFIX) and 16 < len(secret) <= 100


def check_person(person: str) -> str:
    """person as a token may name it: a person's name as the console's accounts spell them (TokenError naming
    the field when no token may)."""
    from tollgate.identity._people import valid_person_name

    if person == ADMIN_TOKEN_ACTOR or person.startswith("group:"):
        raise TokenError(f"person: {person!r} is not a person's name ({ADMIN_TOKEN_ACTOR!r} is the shared admin "
                         "token; group:NAME is a group)")
    if not valid_person_name(person):
        raise TokenError(f"person: {person[:40]!r} is not a name (a letter or digit, then up to 127 letters, digits "
                         "or . _ @ + -)")
    return person


def new_token(person: str, *, now: datetime, ttl: timedelta | None, note: str = "") -> IssuedToken:
    """A fresh token for person (not yet stored)."""
    check_person(person)
    if ttl is not None and ttl.total_seconds() < 1:
        raise TokenError(f"ttl: must be at least a second, got {ttl}")
    if len(note) > 200 or not note.isprintable():
        raise TokenError("note: at most 200 printable characters")
    secret = TOKEN_PREFIX + secrets.token_urlsafe(TOKEN_BYTES)
    token = PersonToken(id="tok_" + secrets.token_hex(8), person=person, created_at=format_time(now),
                        expires_at=format_time(now + ttl) if ttl is not None else "", note=note)
    return IssuedToken(secret, token)


def token_from_row(row: Sequence[Any]) -> PersonToken:
    return PersonToken(id=str(row[0]), person=str(row[1]), created_at=str(row[2]), expires_at=str(row[3] or ""),
                       revoked_at=str(row[4] or ""), note=str(row[5] or ""))


class LocalPersonTokens:
    """Person tokens in DATA_DIR/state.db; SQLite calls in worker threads, under the store's lock. Written by
    `tollgate users token` (another process): every lookup reads the file, so a new or revoked token counts at
    once."""

    COMPONENT = "person_tokens"

    def __init__(self, store: StateStore, *, clock: Clock = SystemClock()) -> None:
        self._store = store
        self.clock = clock
        store.migrate(self.COMPONENT, _SCHEMA)

    async def issue(self, person: str, *, ttl: timedelta | None = None, note: str = "") -> IssuedToken:
        issued = new_token(person, now=self.clock.now(), ttl=ttl, note=note)
        await asyncio.to_thread(self._insert, issued)
        return issued

    async def lookup(self, secret: str) -> PersonToken | None:
        if not is_person_token(secret):
            return None
        found = await asyncio.to_thread(self._select, "WHERE token_hash = ?", (token_hash(secret),))
        return found[0] if found and found[0].valid(self.clock.now()) else None

    async def list(self, person: str = "") -> builtins.list[PersonToken]:
        where, args = ("WHERE person = ?", (person,)) if person else ("", ())
        return await asyncio.to_thread(self._select, where, args)

    async def revoke(self, token_id: str) -> bool:
        return await asyncio.to_thread(self._revoke, token_id, format_time(self.clock.now()))

    def _insert(self, issued: IssuedToken) -> None:
        t = issued.token
        with self._store.lock, self._store.transaction("record a person token") as db:
            db.execute("INSERT INTO person_tokens (id, token_hash, person, created_at, expires_at, note) "
                       "VALUES (?, ?, ?, ?, ?, ?)",
                       (t.id, token_hash(issued.secret), t.person, t.created_at, t.expires_at, t.note))

    def _select(self, where: str, args: tuple[Any, ...]) -> builtins.list[PersonToken]:
        with self._store.lock:
            try:
                rows = self._store.db.execute(
                    f"SELECT {COLUMNS} FROM person_tokens {where} ORDER BY created_at DESC, id LIMIT ?",
                    (*args, MAX_LISTED)).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"state store {self._store.path}: cannot read person tokens ({exc})") from exc
        return [token_from_row(r) for r in rows]

    def _revoke(self, token_id: str, now: str) -> bool:
        with self._store.lock, self._store.transaction("revoke a person token") as db:
            changed: bool = db.execute("UPDATE person_tokens SET revoked_at = ? WHERE id = ? AND revoked_at = ''",
                                       (now, token_id)).rowcount == 1
        return changed


_local: type[PersonTokenStore] = LocalPersonTokens  # mypy holds the class to the protocol
