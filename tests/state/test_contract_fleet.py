"""The fleet registry's contract, on both stores: SQLite in the data dir and PostgreSQL (the same tests run on each).

Heartbeats create and replace one entry per sidecar, last_seen is the registry's clock, replicas see each other,
what a sidecar writes is bounded (and a row written by hand is shown no differently), old entries are pruned.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tests.pg import free_port
from tollgate.clock import ManualClock
from tollgate.encoding import format_time
from tollgate.state import LocalFleet, SidecarInfo, StateError, StateStore, is_stale
from tollgate.state._protocol import FleetRegistry
from tollgate.state.postgres import PgFleet, PgOptions, PgStore

START = datetime(2026, 11, 21, 18, 0, 0, tzinfo=UTC)


def _info(sidecar_id: str = "pod-a-1f2e3d", **changes: Any) -> SidecarInfo:
    base = SidecarInfo(id=sidecar_id, host="pod-a", version="0.1.0", listen="10.0.0.7:50051",
                       bundle_revision="prod-2026.11.21", bundle_digest="sha256:" + "ab" * 32, health="serving",
                       export_lag_seconds=0.0, started_at="2026-11-21T17:59:00+00:00", last_seen="",
                       heartbeat_seconds=5.0)
    return replace(base, **changes)


@contextlib.asynccontextmanager
async def registries(where: tuple[str, Any], clock: ManualClock, replicas: int = 1
                     ) -> AsyncIterator[list[FleetRegistry]]:
    """replicas registries on one store (PostgreSQL: each on a pool of its own, as separate sidecars are)."""
    kind, target = where
    if kind == "sqlite":
        local = StateStore(target)
        try:
            yield [LocalFleet(local, clock=clock) for _ in range(replicas)]
        finally:
            local.close()
        return
    stores = [PgStore(PgOptions(target, timeout=5.0, max_connections=4)) for _ in range(replicas)]
    try:
        for store in stores:
            await store.open()
        fleets = [PgFleet(store, clock=clock) for store in stores]
        await fleets[0].migrate(upgrade=True)
        yield list(fleets)
    finally:
        for store in stores:
            await store.close()


def run(where: tuple[str, Any], body: Callable[[list[FleetRegistry], ManualClock], Any], *,
        replicas: int = 1, clock: ManualClock | None = None) -> Any:
    clock = clock or ManualClock(START)

    async def main() -> Any:
        async with registries(where, clock, replicas) as fleets:
            return await body(fleets, clock)

    return asyncio.run(main())


def test_a_heartbeat_creates_then_replaces_the_entry_stamped_by_the_registrys_clock(where: tuple[str, Any]) -> None:
    async def body(fleets: list[FleetRegistry], clock: ManualClock) -> list[list[SidecarInfo]]:
        (fleet,) = fleets
        await fleet.heartbeat(_info(last_seen="1999-01-01T00:00:00Z"))  # a claimed last_seen is not kept
        first = await fleet.sidecars()
        clock.advance(5)
        await fleet.heartbeat(_info(bundle_revision="prod-2026.11.22", export_lag_seconds=2.5))
        return [first, await fleet.sidecars()]

    first, second = run(where, body)
    assert first == [_info(started_at="2026-11-21T17:59:00.000000Z", last_seen=format_time(START))]
    assert second == [_info(started_at="2026-11-21T17:59:00.000000Z", bundle_revision="prod-2026.11.22",
                            export_lag_seconds=2.5, last_seen=format_time(START + timedelta(seconds=5)))]


def test_replicas_see_every_entry_most_recently_seen_first(where: tuple[str, Any]) -> None:
    async def body(fleets: list[FleetRegistry], clock: ManualClock) -> list[list[str]]:
        a, b = fleets
        await a.heartbeat(_info("pod-a-1"))
        clock.advance(1)
        await b.heartbeat(_info("pod-b-2", host="pod-b"))
        clock.advance(1)
        await asyncio.gather(*(f.heartbeat(_info(f"burst-{i:02d}")) for i, f in enumerate([a, b] * 10)))
        clock.advance(1)
        await a.heartbeat(_info("pod-a-1", health="stopped"))
        return [[s.id for s in await f.sidecars()] for f in fleets]

    seen_by_a, seen_by_b = run(where, body, replicas=2)
    assert seen_by_a == seen_by_b == ["pod-a-1", *(f"burst-{i:02d}" for i in range(20)), "pod-b-2"]


def test_what_a_sidecar_writes_is_bounded_and_cleaned(where: tuple[str, Any]) -> None:
    async def body(fleets: list[FleetRegistry], clock: ManualClock) -> SidecarInfo:
        (fleet,) = fleets
        await fleet.heartbeat(_info(bundle_revision="r" * 5000 + "\x1b[2J", host="pod\x1b]0;owned\x07-a",
                                    version="v\n2", listen="x" * 1000, bundle_digest="d" * 129))
        (entry,) = await fleet.sidecars()
        return entry

    entry = run(where, body)
    assert entry.bundle_revision == "r" * 255 + "…"
    assert entry.host == "pod?]0;owned?-a"
    assert entry.version == "v?2"
    assert (len(entry.listen), len(entry.bundle_digest)) == (300, 128)


REFUSED = [
    ("id-empty", {"id": ""}, "sidecar id: '' is not one"),
    ("id-space", {"id": "pod a"}, "sidecar id: 'pod a' is not one"),
    ("id-escape", {"id": "pod\x1b[2J"}, "sidecar id:"),
    ("id-too-long", {"id": "p" * 129}, "sidecar id:"),
    ("health", {"health": "fine"}, "health: 'fine' is not one of serving, not_serving, stopped"),
    ("lag-nan", {"export_lag_seconds": math.nan}, "export_lag_seconds: must be a number of seconds"),
    ("lag-inf", {"export_lag_seconds": math.inf}, "export_lag_seconds: must be a number of seconds"),
    ("lag-negative", {"export_lag_seconds": -1.0}, "export_lag_seconds: must be a number of seconds"),
    ("heartbeat-zero", {"heartbeat_seconds": 0.0}, "heartbeat_seconds: must be greater than 0"),
    ("heartbeat-huge", {"heartbeat_seconds": 1e12}, "heartbeat_seconds: must be a number of seconds"),
    ("started-at", {"started_at": "yesterday"}, "started_at: 'yesterday' is not an RFC 3339 time"),
]


@pytest.mark.parametrize(("changes", "message"), [(c, m) for _, c, m in REFUSED], ids=[i for i, _, _ in REFUSED])
def test_an_entry_the_registry_cannot_hold_is_refused_and_nothing_is_written(
        where: tuple[str, Any], changes: dict[str, Any], message: str) -> None:
    async def body(fleets: list[FleetRegistry], clock: ManualClock) -> tuple[str, list[SidecarInfo]]:
        (fleet,) = fleets
        try:
            await fleet.heartbeat(_info(**changes))
        except ValueError as exc:
            return str(exc), await fleet.sidecars()
        raise AssertionError("the heartbeat was accepted")

    refusal, entries = run(where, body)
    assert refusal.startswith(message)
    assert entries == []


def _write_by_hand(where: tuple[str, Any], row: dict[str, Any]) -> None:
    """INSERT a row straight into the table, as an operator with a SQL shell could."""
    kind, target = where
    columns = ", ".join(row)
    if kind == "sqlite":
        with contextlib.closing(sqlite3.connect(target)) as db, db:
            db.execute(f"INSERT INTO fleet_sidecars ({columns}) VALUES ({', '.join('?' * len(row))})",
                       tuple(row.values()))
        return
    with psycopg.connect(target, autocommit=True) as conn:
        conn.execute(f"INSERT INTO fleet_sidecars ({columns}) VALUES ({', '.join(['%s'] * len(row))})",
                     tuple(row.values()))


_HAND_ROW = {"id": "by-hand", "host": "h", "version": "v", "listen": "l", "bundle_revision": "r",
             "bundle_digest": "d", "health": "serving", "export_lag_seconds": 0.0, "heartbeat_seconds": 5.0,
             "started_at": format_time(START), "last_seen": format_time(START)}


def test_a_row_written_by_hand_is_shown_as_cleanly_as_a_heartbeat(where: tuple[str, Any]) -> None:
    run(where, lambda fleets, clock: asyncio.sleep(0))  # creates the table
    _write_by_hand(where, {**_HAND_ROW, "bundle_revision": "\x1b[31mred\x1b[0m"})

    async def body(fleets: list[FleetRegistry], clock: ManualClock) -> list[SidecarInfo]:
        return await fleets[0].sidecars()

    (entry,) = run(where, body)
    assert entry.bundle_revision == "?[31mred?[0m"


@pytest.mark.parametrize("row", [{"health": "pwned"}, {"bundle_revision": "r" * 257}, {"export_lag_seconds": -1.0},
                                 {"heartbeat_seconds": 0.0}, {"id": ""}],
                         ids=["health", "revision-length", "lag", "heartbeat", "id"])
def test_the_table_refuses_a_row_outside_the_bounds(where: tuple[str, Any], row: dict[str, Any]) -> None:
    run(where, lambda fleets, clock: asyncio.sleep(0))
    with pytest.raises((sqlite3.IntegrityError, psycopg.errors.CheckViolation)):
        _write_by_hand(where, {**_HAND_ROW, **row})


def test_entries_not_seen_for_a_week_are_pruned_by_the_next_registry(where: tuple[str, Any]) -> None:
    clock = ManualClock(START)

    async def old(fleets: list[FleetRegistry], clock: ManualClock) -> None:
        await fleets[0].heartbeat(_info("replaced-pod"))
        clock.advance(2 * 86400)
        await fleets[0].heartbeat(_info("recent-pod"))
        clock.advance(5 * 86400 + 1)

    async def later(fleets: list[FleetRegistry], clock: ManualClock) -> list[str]:
        await fleets[0].heartbeat(_info("new-pod"))
        return [s.id for s in await fleets[0].sidecars()]

    run(where, old, clock=clock)
    # A registry of a later run (a restarted sidecar) prunes on its first heartbeat.
    assert run(where, later, clock=clock) == ["new-pod", "recent-pod"]


def test_a_listing_is_bounded_to_the_most_recently_seen(where: tuple[str, Any],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import tollgate.state._fleet
    import tollgate.state.postgres._fleet

    for module in (tollgate.state._fleet, tollgate.state.postgres._fleet):
        monkeypatch.setattr(module, "MAX_LISTED", 3)

    async def body(fleets: list[FleetRegistry], clock: ManualClock) -> list[str]:
        for i in range(5):
            await fleets[0].heartbeat(_info(f"pod-{i}"))
            clock.advance(1)
        return [s.id for s in await fleets[0].sidecars()]

    assert run(where, body) == ["pod-4", "pod-3", "pod-2"]


def test_the_entries_outlive_the_registry(where: tuple[str, Any]) -> None:
    run(where, lambda fleets, clock: fleets[0].heartbeat(_info()))

    async def body(fleets: list[FleetRegistry], clock: ManualClock) -> list[str]:
        return [s.id for s in await fleets[0].sidecars()]

    assert run(where, body) == ["pod-a-1f2e3d"]


@pytest.mark.parametrize(("health", "age", "every", "stale"), [
    ("serving", 15.0, 5.0, False), ("serving", 15.1, 5.0, True), ("not_serving", 16.0, 5.0, True),
    ("serving", 16.0, 30.0, False), ("stopped", 3600.0, 5.0, False)],
    ids=["three-beats", "past-three-beats", "not-serving", "its-own-interval", "stopped-is-not-stale"])
def test_an_entry_is_stale_past_three_of_its_own_heartbeats(health: str, age: float, every: float,
                                                            stale: bool) -> None:
    entry = _info(health=health, heartbeat_seconds=every, last_seen=format_time(START))
    assert is_stale(entry, now=START + timedelta(seconds=age)) is stale


def test_an_entry_whose_last_seen_cannot_be_read_is_stale() -> None:
    assert is_stale(_info(last_seen="garbage"), now=START)


def test_an_unreachable_postgresql_store_fails_the_heartbeat_within_its_timeout() -> None:
    async def main() -> float:
        store = PgStore(PgOptions(f"postgresql://tollgate@127.0.0.1:{free_port()}/none", timeout=0.5))
        await store.open(wait=False)
        started = time.monotonic()
        try:
            with pytest.raises(StateError, match="cannot record a fleet heartbeat"):
                await PgFleet(store).heartbeat(_info())
            with pytest.raises(StateError, match="cannot read the fleet registry"):
                await PgFleet(store).sidecars()
        finally:
            await store.close()
        return time.monotonic() - started

    assert asyncio.run(main()) < 3.0
