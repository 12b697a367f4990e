"""The audit trail's contract, on both stores: SQLite (LocalAudit) and PostgreSQL (PgAudit)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest

from tollgate.clock import ManualClock
from tollgate.state import AuditLog, LocalAudit, StateStore
from tollgate.state._audit import LIMITS, MAX_LISTED
from tollgate.state.postgres import PgAudit, PgOptions, PgStore

pytestmark = pytest.mark.clock

START = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
T = TypeVar("T")


@contextlib.asynccontextmanager
async def opened(where: tuple[str, Any], clock: ManualClock) -> AsyncIterator[AuditLog]:
    kind, target = where
    if kind == "sqlite":
        local = StateStore(target)
        try:
            yield LocalAudit(local, clock=clock)
        finally:
            local.close()
        return
    store = PgStore(PgOptions(target, timeout=5.0, max_connections=4))
    await store.open()
    try:
        audit = PgAudit(store, clock=clock)
        await audit.migrate(upgrade=True)
        yield audit
    finally:
        await store.close()


def run(where: tuple[str, Any], body: Callable[[AuditLog, ManualClock], Awaitable[T]]) -> T:
    clock = ManualClock(START)

    async def main() -> T:
        async with opened(where, clock) as audit:
            return await body(audit, clock)

    return asyncio.run(main())


def test_entries_are_stamped_by_the_stores_clock_and_listed_newest_first(where: tuple[str, Any]) -> None:
    async def body(audit: AuditLog, clock: ManualClock) -> None:
        first = await audit.record("rita", "local", "signin", "rita", "groups: sre", "10.0.0.7")
        clock.advance(1)
        second = await audit.record("rita", "local", "killswitch.engage", "agent=release-bot", "runaway", "10.0.0.7")
        assert first.at == "2026-12-31T23:59:59.000000Z" and second.at == "2027-01-01T00:00:00.000000Z"
        assert second.id > first.id
        assert await audit.entries() == [second, first]

    run(where, body)


def test_listings_filter_by_actor_and_action_prefix_and_page_by_id(where: tuple[str, Any]) -> None:
    async def body(audit: AuditLog, clock: ManualClock) -> None:
        for number in range(5):
            await audit.record("rita", "local", "signin", "rita")
            await audit.record("mallory", "local", "signin.failed", "rita", str(number))
            await audit.record("sam", "oidc", "signin_x", "sam")  # not a "signin" entry: no dot
        failed = await audit.entries(action="signin.failed")
        assert [e.detail for e in failed] == ["4", "3", "2", "1", "0"]
        signins = await audit.entries(action="signin")
        assert {e.action for e in signins} == {"signin", "signin.failed"} and len(signins) == 10
        assert {e.actor for e in await audit.entries(actor="sam")} == {"sam"}
        page = await audit.entries(limit=4)
        older = await audit.entries(limit=4, before=page[-1].id)
        assert [e.id for e in page + older] == sorted((e.id for e in await audit.entries()), reverse=True)[:8]
        assert len(await audit.entries(limit=10**9)) == 15  # capped at MAX_LISTED, which is more
        assert MAX_LISTED >= 15

    run(where, body)


def test_what_goes_in_is_bounded_and_cleaned(where: tuple[str, Any]) -> None:
    async def body(audit: AuditLog, clock: ManualClock) -> None:
        entry = await audit.record("x" * 1000 + "\x1b[2J", "local", "signin.failed", "t\r\nInjected: yes",
                                   "d" * 10**6, "::1")
        (stored,) = await audit.entries()
        assert stored == entry
        assert len(stored.actor) == LIMITS["actor"] and stored.actor.endswith("…")
        assert stored.target == "t??Injected: yes"
        assert len(stored.detail) == LIMITS["detail"]

    run(where, body)
