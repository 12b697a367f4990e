"""The console accounts' and sessions' contract, on both stores: SQLite (LocalUsers) and PostgreSQL (PgUsers)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest

from tollgate.clock import ManualClock
from tollgate.state import LocalUsers, StateStore, UserError, UserStore
from tollgate.state._users import MAX_SESSIONS_PER_PERSON
from tollgate.state.postgres import PgOptions, PgStore, PgUsers

pytestmark = pytest.mark.clock

START = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)
T = TypeVar("T")


@contextlib.asynccontextmanager
async def opened(where: tuple[str, Any], clock: ManualClock) -> AsyncIterator[UserStore]:
    kind, target = where
    if kind == "sqlite":
        local = StateStore(target)
        try:
            yield LocalUsers(local, clock=clock)
        finally:
            local.close()
        return
    store = PgStore(PgOptions(target, timeout=5.0, max_connections=4))
    await store.open()
    try:
        users = PgUsers(store, clock=clock)
        await users.migrate(upgrade=True)
        yield users
    finally:
        await store.close()


def run(where: tuple[str, Any], body: Callable[[UserStore, ManualClock], Awaitable[T]]) -> T:
    clock = ManualClock(START)

    async def main() -> T:
        async with opened(where, clock) as users:
            return await body(users, clock)

    return asyncio.run(main())


def test_accounts_are_added_listed_by_name_and_a_taken_name_is_refused(where: tuple[str, Any]) -> None:
    async def body(users: UserStore, clock: ManualClock) -> None:
        added = await users.add("rita@example.com", groups=["release-managers", "admin"], password_hash="h1")
        assert added.groups == ("release-managers", "admin") and added.created_at == "2026-12-31T23:59:30.000000Z"
        await users.add("Bob", groups=[], password_hash="h2")
        with pytest.raises(UserError, match="exists"):
            await users.add("rita@example.com", groups=[], password_hash="h3")
        assert [a.name for a in await users.list()] == ["Bob", "rita@example.com"]
        assert await users.get("rita@example.com") == added
        assert await users.get("nobody") is None

    run(where, body)


def test_a_session_holds_the_person_until_its_expiry_by_the_stores_clock(where: tuple[str, Any]) -> None:
    async def body(users: UserStore, clock: ManualClock) -> None:
        started = await users.start_session("hash-1", name="rita", groups=["sre"], via="oidc", ttl=60)
        assert started.expires_at == "2027-01-01T00:00:30.000000Z"
        assert await users.session("hash-1") == started
        assert await users.session("hash-2") is None
        clock.advance(59.9)
        assert await users.session("hash-1") == started
        clock.advance(0.1)
        assert await users.session("hash-1") is None

    run(where, body)


def test_sign_out_removal_and_a_new_password_end_sessions(where: tuple[str, Any]) -> None:
    async def body(users: UserStore, clock: ManualClock) -> None:
        await users.add("rita", groups=[], password_hash="h1")
        await users.add("sam", groups=[], password_hash="h1")
        for number in range(2):
            await users.start_session(f"rita-{number}", name="rita", groups=[], via="local", ttl=600)
        await users.start_session("sam-0", name="sam", groups=[], via="local", ttl=600)
        await users.end_session("rita-0")
        assert await users.session("rita-0") is None and await users.session("rita-1") is not None
        await users.set_password("rita", "h2")
        assert (await users.get("rita")).password_hash == "h2"  # type: ignore[union-attr]
        assert await users.session("rita-1") is None and await users.session("sam-0") is not None
        with pytest.raises(UserError, match="no such account"):
            await users.set_password("nobody", "h")
        assert await users.remove("sam") is True
        assert await users.session("sam-0") is None and await users.get("sam") is None
        assert await users.remove("sam") is False

    run(where, body)


def test_a_person_holds_at_most_so_many_sessions_the_oldest_ending_first(where: tuple[str, Any]) -> None:
    async def body(users: UserStore, clock: ManualClock) -> None:
        for number in range(MAX_SESSIONS_PER_PERSON + 3):
            await users.start_session(f"s-{number:02d}", name="rita", groups=[], via="local", ttl=600)
            clock.advance(1)
        await users.start_session("other", name="sam", groups=[], via="local", ttl=600)
        live = [n for n in range(MAX_SESSIONS_PER_PERSON + 3) if await users.session(f"s-{n:02d}") is not None]
        assert live == list(range(3, MAX_SESSIONS_PER_PERSON + 3))
        assert await users.session("other") is not None

    run(where, body)


def test_expired_sessions_are_deleted_when_a_new_one_starts(where: tuple[str, Any], tmp_path: Path) -> None:
    async def body(users: UserStore, clock: ManualClock) -> None:
        await users.start_session("old", name="rita", groups=[], via="local", ttl=60)
        clock.advance(61)
        await users.start_session("new", name="sam", groups=[], via="local", ttl=60)
        clock.set(START)  # even were the clock set back, the expired row is gone
        assert await users.session("old") is None

    run(where, body)
