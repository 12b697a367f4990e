"""One contract, two stores: kill switches on SQLite (LocalKillSwitches) and on PostgreSQL (PgKillSwitches) engage,
lift, list, record and refuse alike, through the async KillSwitchStore protocol."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.state.test_killswitches import INVALID
from tollgate.clock import ManualClock
from tollgate.encoding import format_time
from tollgate.state import (
    SCOPES,
    InvalidKillSwitch,
    KillSwitches,
    KillSwitchNotFound,
    KillSwitchStore,
    LocalKillSwitches,
    StateStore,
)
from tollgate.state.postgres import PgKillSwitches, PgOptions, PgStore

pytestmark = pytest.mark.clock

Opener = Callable[[], AbstractAsyncContextManager[KillSwitchStore]]
START = datetime(2026, 11, 20, 9, 30, tzinfo=UTC)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(START)


@pytest.fixture(params=["sqlite", "postgresql"])
def open_switches(request: pytest.FixtureRequest, tmp_path: Path, clock: ManualClock) -> Opener:
    """Opens the store's kill switches (again: the same file or database each time) inside a test's event loop."""
    if request.param == "sqlite":
        path = tmp_path / "state.db"

        @contextlib.asynccontextmanager
        async def sqlite() -> AsyncIterator[KillSwitchStore]:
            store = StateStore(path)
            try:
                yield LocalKillSwitches(KillSwitches(store, clock=clock))
            finally:
                store.close()

        return sqlite
    url: str = request.getfixturevalue("pg_url")

    @contextlib.asynccontextmanager
    async def postgresql() -> AsyncIterator[KillSwitchStore]:
        store = PgStore(PgOptions(url, timeout=5.0, max_connections=4))
        await store.open()
        try:
            switches = PgKillSwitches(store, clock=clock)
            await switches.start(upgrade=True)
            yield switches
        finally:
            await store.close()

    return postgresql


def run(opener: Opener, body: Callable[[KillSwitchStore], Coroutine[Any, Any, None]]) -> None:
    async def main() -> None:
        async with opener() as switches:
            await body(switches)

    asyncio.run(main())


CASES = [*INVALID, ("value-too-long", "session", "s" * 513, "r", "a", "value: at most 512 characters, got 513")]


@pytest.mark.parametrize(("scope", "value", "reason", "by", "message"), [row[1:] for row in CASES],
                         ids=[row[0] for row in CASES])
def test_a_bad_kill_names_the_field_and_changes_nothing(open_switches: Opener, scope: str, value: str, reason: str,
                                                        by: str, message: str) -> None:
    async def body(switches: KillSwitchStore) -> None:
        with pytest.raises(InvalidKillSwitch) as refused:
            await switches.kill(scope, value, reason=reason, by=by)
        assert str(refused.value).startswith(message)
        assert await switches.list() == []
        assert await switches.history() == []

    run(open_switches, body)


def test_a_revive_without_its_author_is_refused(open_switches: Opener) -> None:
    async def body(switches: KillSwitchStore) -> None:
        await switches.kill("agent", "a", reason="INC-1", by="alice")
        with pytest.raises(InvalidKillSwitch, match="by: required"):
            await switches.revive("agent", "a", by=" ")
        assert [s.value for s in await switches.list()] == ["a"]

    run(open_switches, body)


def test_a_kill_is_in_the_next_snapshot_and_a_revive_takes_it_out(open_switches: Opener, clock: ManualClock) -> None:
    async def body(switches: KillSwitchStore) -> None:
        before = switches.snapshot()
        switch = await switches.kill("agent", "code-reviewer", reason="INC-7", by="alice")
        assert (switch.scope, switch.value, switch.reason, switch.killed_by) == ("agent", "code-reviewer", "INC-7",
                                                                                 "alice")
        assert switch.killed_at == format_time(START)
        assert switches.snapshot().active == {("agent", "code-reviewer"): switch}
        assert switches.snapshot().policy_view == [{"scope": "agent", "value": "code-reviewer", "reason": "INC-7"}]
        assert [s.scope for s in switches.snapshot().matching("tool", {"agent_id": "code-reviewer"}, {})] == ["agent"]
        assert before.active == {}  # a published snapshot never changes
        assert await switches.list() == [switch]
        assert switches.staleness() == ""

        assert await switches.revive("agent", "code-reviewer", by="bob") == switch
        assert switches.snapshot().active == {}
        assert switches.snapshot().policy_view == []
        assert await switches.list() == []

    run(open_switches, body)


def test_all_is_stored_under_star_whether_given_empty_or_star(open_switches: Opener) -> None:
    async def body(switches: KillSwitchStore) -> None:
        assert (await switches.kill("all", "", reason="drill", by="alice")).value == "*"
        assert (await switches.kill("all", "*", reason="drill 2", by="alice")).value == "*"
        assert [(s.scope, s.value, s.reason) for s in await switches.list()] == [("all", "*", "drill 2")]
        assert switches.snapshot().matching("model", {}, {"model": "m"})[0].reason == "drill 2"
        await switches.revive("all", "", by="alice")
        assert await switches.list() == []

    run(open_switches, body)


def test_every_scope_can_be_killed_and_revived(open_switches: Opener) -> None:
    async def body(switches: KillSwitchStore) -> None:
        for scope in SCOPES:
            await switches.kill(scope, "x" if scope != "all" else "", reason="r", by="alice")
        assert sorted(s.scope for s in await switches.list()) == sorted(SCOPES)
        for scope in SCOPES:
            await switches.revive(scope, "x" if scope != "all" else "*", by="alice")
        assert await switches.list() == []

    run(open_switches, body)


def test_killing_again_replaces_reason_who_and_time(open_switches: Opener, clock: ManualClock) -> None:
    async def body(switches: KillSwitchStore) -> None:
        await switches.kill("session", "s-1", reason="first", by="alice")
        later = clock.advance(60)
        await switches.kill("session", "s-1", reason="second", by="bob")
        assert [(s.reason, s.killed_by, s.killed_at) for s in await switches.list()] == [
            ("second", "bob", format_time(later))]
        assert [(h.action, h.reason, h.actor) for h in await switches.history()] == [
            ("kill", "first", "alice"), ("kill", "second", "bob")]

    run(open_switches, body)


def test_reviving_what_is_not_killed_raises_not_found_and_records_nothing(open_switches: Opener) -> None:
    async def body(switches: KillSwitchStore) -> None:
        with pytest.raises(KillSwitchNotFound, match="agent=x is not killed"):
            await switches.revive("agent", "x", by="alice")
        assert await switches.history() == []

    run(open_switches, body)


def test_the_list_is_oldest_first(open_switches: Opener, clock: ManualClock) -> None:
    async def body(switches: KillSwitchStore) -> None:
        for value in ("c", "a", "b"):
            await switches.kill("team", value, reason="r", by="alice")
            clock.advance(1)
        assert [s.value for s in await switches.list()] == ["c", "a", "b"]
        assert [s.value for s in switches.snapshot().active.values()] == ["c", "a", "b"]

    run(open_switches, body)


def test_kill_switches_and_their_history_survive_reopening(open_switches: Opener, clock: ManualClock) -> None:
    async def change(switches: KillSwitchStore) -> None:
        await switches.kill("agent", "a", reason="one", by="alice")
        await switches.kill("tool", "github/merge_pull_request", reason="two", by="alice")
        clock.advance(5)
        await switches.revive("agent", "a", by="bob", reason="fixed")

    async def reopened(switches: KillSwitchStore) -> None:
        assert [(s.scope, s.value, s.reason) for s in await switches.list()] == [
            ("tool", "github/merge_pull_request", "two")]
        assert list(switches.snapshot().active) == [("tool", "github/merge_pull_request")]
        history = await switches.history()
        assert [(h.action, h.scope, h.value, h.reason, h.actor) for h in history] == [
            ("kill", "agent", "a", "one", "alice"),
            ("kill", "tool", "github/merge_pull_request", "two", "alice"),
            ("revive", "agent", "a", "fixed", "bob"),
        ]
        assert [h.time for h in history] == [format_time(START)] * 2 + [format_time(clock.now())]
        assert [h.seq for h in history] == sorted(h.seq for h in history)

    run(open_switches, change)
    run(open_switches, reopened)


def test_concurrent_kills_are_all_recorded(open_switches: Opener) -> None:
    async def body(switches: KillSwitchStore) -> None:
        await asyncio.gather(*(switches.kill("session", f"s-{i}", reason="r", by="a") for i in range(20)))
        assert sorted(s.value for s in await switches.list()) == sorted(f"s-{i}" for i in range(20))
        assert len(switches.snapshot().active) == 20
        assert len(await switches.history()) == 20

    run(open_switches, body)
