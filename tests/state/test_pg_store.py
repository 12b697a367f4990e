"""The PostgreSQL store's core against a real server: versioned migrations, and every call bounded, even on a
server that stops answering (paused with SIGSTOP: TCP stays up, statement_timeout never fires)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg import PostgresServer
from tollgate.state import StateError
from tollgate.state.postgres import PgOptions, PgStore, redact

STEPS = ("CREATE TABLE things (id integer PRIMARY KEY); CREATE TABLE more (id integer)",
         "ALTER TABLE things ADD COLUMN name text")


def _run(coro: object) -> object:
    return asyncio.run(coro)  # type: ignore[arg-type]


async def _opened(url: str, **options: object) -> PgStore:
    store = PgStore(PgOptions(url, **options))  # type: ignore[arg-type]
    await store.open()
    return store


def test_a_new_store_is_migrated_only_when_asked_and_a_newer_one_is_refused(pg_url: str) -> None:
    async def scenario() -> None:
        store = await _opened(pg_url)
        try:
            with pytest.raises(StateError, match=r"things schema is version 0, this tollgate needs 2 .*state migrate"):
                await store.migrate("things", STEPS, upgrade=False)
            assert await store.migrate("things", STEPS, upgrade=True) == 2
            assert await store.migrate("things", STEPS, upgrade=False) == 0  # current: nothing to do, no refusal
            assert (await store.versions())["things"] == 2
            with pytest.raises(StateError, match=r"version 2, newer than this tollgate knows \(1\)"):
                await store.migrate("things", STEPS[:1], upgrade=True)
        finally:
            await store.close()

    _run(scenario())


def test_two_replicas_migrating_at_once_apply_each_step_once(pg_url: str) -> None:
    async def scenario() -> list[object]:
        stores = [await _opened(pg_url) for _ in range(3)]
        try:
            return await asyncio.gather(*(s.migrate("things", STEPS, upgrade=True) for s in stores))
        finally:
            for s in stores:
                await s.close()

    # A step applied twice would fail (CREATE TABLE of a table that exists): the advisory lock serialises them.
    assert sorted(_run(scenario())) == [0, 0, 2]  # type: ignore[arg-type]


def test_an_unreachable_store_fails_within_the_timeout_naming_it_without_the_password() -> None:
    url = "postgresql://tollgate:s3cret@127.0.0.1:1/fleet"
    started = time.monotonic()
    with pytest.raises(StateError, match=r"state store postgresql://tollgate:\*\*\*@127.0.0.1:1/fleet: cannot connect"):
        _run(_opened(url, timeout=0.5))
    assert time.monotonic() - started < 5
    assert "s3cret" not in redact(url)


def test_a_password_file_is_read_and_an_empty_one_is_refused(tmp_path: Path, pg_url: str) -> None:
    empty = tmp_path / "password"
    empty.write_text("")
    with pytest.raises(StateError, match=r"state_store_password_file: .* is empty"):
        PgStore(PgOptions(pg_url, password_file=str(empty)))
    empty.write_text("not-needed-under-trust\n")
    assert PgStore(PgOptions(pg_url, password_file=str(empty))).connect_kwargs["password"] == "not-needed-under-trust"


@pytest.fixture
def own_server() -> Iterator[PostgresServer]:
    server = PostgresServer()
    try:
        yield server
    finally:
        _signal_cluster(server, signal.SIGCONT)
        server.close()


def _cluster_pids(server: PostgresServer) -> list[int]:
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    children = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == postmaster:
                children.append(int(entry))
    return [postmaster, *children]


def _signal_cluster(server: PostgresServer, sig: signal.Signals) -> None:
    for pid in _cluster_pids(server):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def test_a_paused_server_fails_each_call_within_the_bound_and_the_store_recovers(own_server: PostgresServer) -> None:
    async def scenario() -> tuple[float, float]:
        store = await _opened(own_server.url(), timeout=0.5)
        try:
            async with store.connection("warm up") as conn:
                await conn.execute("SELECT 1")
            _signal_cluster(own_server, signal.SIGSTOP)
            timings = []
            for _ in range(2):  # the pooled connection, then whatever the pool hands out next
                started = time.monotonic()
                with pytest.raises(StateError, match="cannot read"):
                    async with store.connection("read") as conn:
                        await conn.execute("SELECT 1")
                timings.append(time.monotonic() - started)
            _signal_cluster(own_server, signal.SIGCONT)
            deadline = time.monotonic() + 30
            while True:  # the pool replaces the connections it closed
                try:
                    async with store.connection("read") as conn:
                        assert await (await conn.execute("SELECT 1")).fetchone() == (1,)
                    break
                except StateError:
                    assert time.monotonic() < deadline, "the store did not recover"
                    await asyncio.sleep(0.05)
            return timings[0], timings[1]
        finally:
            await store.close()

    first, second = _run(scenario())  # type: ignore[misc]
    # timeout 0.5 s + 1 s of grace for a server that answers nothing; psycopg's own cancel path would take 10 s more.
    assert first < 3.5 and second < 3.5, (first, second)
