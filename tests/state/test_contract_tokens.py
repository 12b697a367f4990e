"""Person tokens' contract, on both stores: SQLite in the data dir and PostgreSQL (the same tests run on each).

A token is issued once (only its hash stored), authenticates its person until it expires or is revoked, is seen
by every replica at once, and no name a token may not carry gets one.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tollgate.clock import ManualClock
from tollgate.state import StateStore
from tollgate.state._tokens import LocalPersonTokens, PersonTokenStore, TokenError, token_hash
from tollgate.state.postgres import PgOptions, PgStore
from tollgate.state.postgres._tokens import PgPersonTokens

START = datetime(2026, 12, 2, 9, 0, 0, tzinfo=UTC)


@contextlib.asynccontextmanager
async def stores(where: tuple[str, Any], clock: ManualClock, replicas: int) -> AsyncIterator[list[PersonTokenStore]]:
    kind, target = where
    if kind == "sqlite":
        local = [StateStore(target) for _ in range(replicas)]  # separate connections, as separate processes
        try:
            yield [LocalPersonTokens(store, clock=clock) for store in local]
        finally:
            for store in local:
                store.close()
        return
    pg = [PgStore(PgOptions(target, timeout=5.0, max_connections=2)) for _ in range(replicas)]
    try:
        for pool in pg:
            await pool.open()
        await pg[0].migrate(PgPersonTokens.COMPONENT, PgPersonTokens.STEPS, upgrade=True)
        yield [PgPersonTokens(pool, clock=clock) for pool in pg]
    finally:
        for pool in pg:
            await pool.close()


def run(where: tuple[str, Any], body: Callable[[list[PersonTokenStore], ManualClock], Any], *,
        replicas: int = 1) -> Any:
    clock = ManualClock(START)

    async def main() -> Any:
        async with stores(where, clock, replicas) as tokens:
            return await body(tokens, clock)

    return asyncio.run(main())


def _stored_hashes(where: tuple[str, Any]) -> list[str]:
    kind, target = where
    if kind == "sqlite":
        with contextlib.closing(sqlite3.connect(target)) as db:
            return [r[0] for r in db.execute("SELECT token_hash FROM person_tokens")]
    with psycopg.connect(target) as conn:
        return [r[0] for r in conn.execute("SELECT token_hash FROM person_tokens")]


def test_an_issued_token_authenticates_its_person_and_only_its_hash_is_stored(where: tuple[str, Any]) -> None:
    async def body(tokens: list[PersonTokenStore], clock: ManualClock) -> Any:
        a, b = tokens
        issued = await a.issue("rita@example.com", note="laptop")
        return issued, await b.lookup(issued.secret), await b.lookup(issued.secret + "x"), await b.lookup("")

    issued, found, wrong, empty = run(where, body, replicas=2)
    assert issued.secret.startswith("tgp_") and len(issued.secret) > 40
    assert found == issued.token and found.person == "rita@example.com" and found.note == "laptop"
    assert wrong is None and empty is None
    assert _stored_hashes(where) == [token_hash(issued.secret)]
    assert issued.secret not in str(_stored_hashes(where))


def test_a_token_stops_at_its_expiry_and_when_revoked_at_every_replica(where: tuple[str, Any]) -> None:
    async def body(tokens: list[PersonTokenStore], clock: ManualClock) -> list[Any]:
        a, b = tokens
        short = await a.issue("rita", ttl=timedelta(hours=1))
        kept = await a.issue("rita")
        seen: list[Any] = [await b.lookup(short.secret) is not None]
        clock.advance(3600)
        seen.append(await b.lookup(short.secret) is not None)
        seen.append(await b.revoke(kept.token.id))
        seen.append(await a.revoke(kept.token.id))  # already revoked
        seen.append(await a.lookup(kept.secret) is not None)
        listed = await b.list("rita")
        seen.append([(t.id, bool(t.revoked_at)) for t in listed])
        seen.append([t.id for t in await b.list("nobody")])
        return [*seen, short.token.id, kept.token.id]

    before, after, revoked, again, kept_valid, listed, none, short_id, kept_id = run(where, body, replicas=2)
    assert (before, after) == (True, False)
    assert (revoked, again, kept_valid) == (True, False, False)
    assert sorted(listed) == sorted([(short_id, False), (kept_id, True)])
    assert none == []


@pytest.mark.parametrize("person", ["", " rita", "admin-token", "group:release", "x" * 201, "ri\nta"],
                         ids=["empty", "space", "admin-token", "group", "too-long", "control"])
def test_no_token_is_issued_for_a_name_that_is_no_person(where: tuple[str, Any], person: str) -> None:
    async def body(tokens: list[PersonTokenStore], clock: ManualClock) -> None:
        with pytest.raises(TokenError, match="person:"):
            await tokens[0].issue(person)
        assert await tokens[0].list() == []

    run(where, body, replicas=1)
