"""Per-person API tokens on the shared store: issued once, accepted by every sidecar of the fleet.

The same tokens as state/_tokens.py (columns, rules, words): only the token's sha256 is stored, and a lookup
is one indexed read, so a token issued or revoked through any process counts at every replica at once.
"""

from __future__ import annotations

import builtins
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from tollgate.clock import Clock, SystemClock
from tollgate.encoding import format_time
from tollgate.state._tokens import (
    COLUMNS,
    MAX_LISTED,
    MAX_PERSON,
    IssuedToken,
    PersonToken,
    is_person_token,
    new_token,
    token_from_row,
    token_hash,
)
from tollgate.state.postgres._store import PgStore

COMPONENT = "person_tokens"
#: The person tokens' migrations (`PgStore.migrate`). Times are Tollgate's fixed-width RFC 3339 text, compared
#: byte by byte (COLLATE "C"), as the approvals' are.
TOKEN_STEPS = (
    f"""
    CREATE TABLE person_tokens (
        id text PRIMARY KEY,
        token_hash text NOT NULL UNIQUE,
        person text NOT NULL CHECK (length(person) BETWEEN 1 AND {MAX_PERSON}),
        created_at text COLLATE "C" NOT NULL,
        expires_at text COLLATE "C" NOT NULL DEFAULT '',
        revoked_at text NOT NULL DEFAULT '',
        note text NOT NULL DEFAULT ''
    );
    CREATE INDEX person_tokens_person ON person_tokens (person);
    """,
)


class PgPersonTokens:
    """Person tokens in the shared store's person_tokens table."""

    COMPONENT = COMPONENT
    STEPS = TOKEN_STEPS

    def __init__(self, store: PgStore, *, clock: Clock = SystemClock()) -> None:
        self._store = store
        self.clock = clock

    async def issue(self, person: str, *, ttl: timedelta | None = None, note: str = "") -> IssuedToken:
        issued = new_token(person, now=self.clock.now(), ttl=ttl, note=note)
        t = issued.token
        async with self._store.connection("record a person token") as conn:
            await conn.execute(
                "INSERT INTO person_tokens (id, token_hash, person, created_at, expires_at, note) "
                "VALUES (%s, %s, %s, %s, %s, %s)",
                (t.id, token_hash(issued.secret), t.person, t.created_at, t.expires_at, t.note))
        return issued

    async def lookup(self, secret: str) -> PersonToken | None:
        if not is_person_token(secret):
            return None
        found = await self._select("WHERE token_hash = %s", (token_hash(secret),))
        return found[0] if found and found[0].valid(self.clock.now()) else None

    async def list(self, person: str = "") -> builtins.list[PersonToken]:
        where, args = ("WHERE person = %s", (person,)) if person else ("", ())
        return await self._select(where, args)

    async def revoke(self, token_id: str) -> bool:
        async with self._store.connection("revoke a person token") as conn:
            cursor = await conn.execute(
                "UPDATE person_tokens SET revoked_at = %s WHERE id = %s AND revoked_at = ''",
                (format_time(self.clock.now()), token_id))
            return cursor.rowcount == 1

    async def _select(self, where: str, args: tuple[Any, ...]) -> builtins.list[PersonToken]:
        async with self._store.connection("read person tokens") as conn:
            cursor = await conn.execute(
                f"SELECT {COLUMNS} FROM person_tokens {where} ORDER BY created_at DESC, id LIMIT %s",
                (*args, MAX_LISTED))
            rows = await cursor.fetchall()
        return [token_from_row(r) for r in rows]


if TYPE_CHECKING:
    from tollgate.state._tokens import PersonTokenStore

    _tokens: type[PersonTokenStore] = PgPersonTokens  # mypy holds the class to the protocol
