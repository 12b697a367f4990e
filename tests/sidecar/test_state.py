"""The sidecar's state store: the settings that choose it, checked before anything is opened; opening SQLite or a
real PostgreSQL, its schema checked (refused with the hint, or migrated when told to), and a store down at start-up."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from collections.abc import AsyncIterator, Mapping
from pathlib import Path

import psycopg
import pytest

from tests.conftest import REGO, TOLLGATE, eventually
from tests.pg import PostgresServer
from tollgate.clock import SystemClock
from tollgate.decisionlog import NoFleetLog
from tollgate.sidecar._plugins import PluginState, PluginStatus
from tollgate.sidecar.config import ConfigError, ServeConfig, load_config
from tollgate.sidecar.state import InLine, SidecarState, open_state, schema
from tollgate.state import StateError

PG = "postgresql://tollgate@db.internal:5432/tollgate"


def test_the_default_state_store_is_sqlite_in_the_data_dir() -> None:
    config = load_config(None, {})
    assert (config.state_store, config.state_store_timeout, config.state_store_migrate) == ("", 2.0, False)
    assert (config.kill_switch_max_staleness, config.kill_switch_refresh) == (5.0, 1.0)
    assert config.state_store_max_connections == 10


def test_a_postgresql_url_passes_with_its_libpq_parameters() -> None:
    url = f"{PG}?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    assert load_config(None, {"state_store": url, "state_store_migrate": True}).state_store == url
    assert load_config(None, {"state_store": "postgres://u@h/db"}).state_store == "postgres://u@h/db"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"state_store": "sqlite:///tmp/state.db"}, r"state_store: must be \"\" \(SQLite in data_dir\) or a postgresql://"),
    ({"state_store": "/var/lib/tollgate/state.db"}, "state_store: must be"),
    ({"state_store_migrate": True}, "state_store_migrate: needs a postgresql:// state_store"),
    ({"state_store_password_file": "pw"}, "state_store_password_file: needs a postgresql:// state_store"),
    ({"state_store": PG, "state_store_password_file": "/nonexistent/pw"},
     "state_store_password_file: '/nonexistent/pw' is not a readable file"),
    ({"state_store": PG, "state_store_timeout": 0.0}, "state_store_timeout: must be above 0"),
    ({"state_store": PG, "state_store_timeout": float("nan")}, "state_store_timeout: must be above 0"),
    ({"state_store": PG, "state_store_timeout": float("inf")}, "state_store_timeout: .* at most 60"),
    ({"state_store_max_connections": 0}, "state_store_max_connections: must be 1 or more"),
    ({"kill_switch_max_staleness": float("inf")}, "kill_switch_max_staleness: must be above 0 and at most"),
    ({"kill_switch_max_staleness": -1.0}, "kill_switch_max_staleness: must be above 0"),
    ({"kill_switch_refresh": 5.0}, "kill_switch_refresh: must be above 0 and below kill_switch_max_staleness"),
    ({"kill_switch_refresh": 0.0}, "kill_switch_refresh: must be above 0"),
], ids=["sqlite-url", "path", "migrate-without-pg", "password-without-pg", "password-missing", "timeout-zero",
        "timeout-nan", "timeout-inf", "connections", "staleness-inf", "staleness-negative", "refresh-at-bound",
        "refresh-zero"])
def test_bad_state_store_settings_name_the_key(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_refused_state_store_url_never_shows_its_password() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(None, {"state_store": "mysql://tollgate:s3cret-pw@db/tollgate"})
    assert "s3cret-pw" not in str(caught.value)
    assert "tollgate:***@db" in str(caught.value)


def test_the_state_store_keys_come_from_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    (tmp_path / "tollgate.yaml").write_text(
        f"state_store: {PG}\nstate-store-timeout: 0.5\nstate_store_password_file: {tmp_path / 'pw'}\n"
        "kill_switch_max_staleness: 3\nkill_switch_refresh: 0.25\nstate_store_max_connections: 4\n")
    config = load_config(str(tmp_path / "tollgate.yaml"), {})
    assert (config.state_store, config.state_store_timeout, config.kill_switch_max_staleness) == (PG, 0.5, 3.0)
    assert (config.kill_switch_refresh, config.state_store_max_connections) == (0.25, 4)


# -- opening the store --------------------------------------------------------------------------------------


def open_with(**settings: object) -> str:
    """Open the store these settings name and close it again (in one event loop: a pool lives in its loop)."""
    async def run() -> str:
        state = await opened(load_config(None, settings))
        await state.close()
        return state.where

    return asyncio.run(run())


async def opened(config: ServeConfig) -> SidecarState:
    return await open_state(config, clock=SystemClock())


def test_the_default_opens_sqlite_in_the_data_dir_with_the_store_and_the_sweep(tmp_path: Path) -> None:
    async def run() -> None:
        state = await opened(load_config(None, {"data_dir": str(tmp_path)}))
        try:
            assert state.where == str(tmp_path / "state.db")
            # The store, then the watch that hears what other processes (a console) commit to state.db.
            assert [p.name for p in state.plugins] == ["state store", "state store changes"]
            assert state.sweep.name == "budgets"
            assert isinstance(state.decisions, NoFleetLog)
            assert state.kill_switches.staleness() == ""
        finally:
            await state.close()

    asyncio.run(run())


def test_a_store_never_migrated_is_a_start_up_error_naming_the_command(pg_url: str) -> None:
    with pytest.raises(StateError, match=r"schema is version 0, this tollgate needs \d+ \(hint: run `tollgate state "
                                         r"migrate --state-store URL`, or start with --state-store-migrate\)"):
        open_with(state_store=pg_url)


def test_state_store_migrate_creates_every_component_and_opens(pg_url: str) -> None:
    async def run() -> dict[str, int]:
        state = await opened(load_config(None, {"state_store": pg_url, "state_store_migrate": True}))
        try:
            assert [p.name for p in state.plugins] == ["state store", "kill switches"]
            assert state.plugins[0].status().state is PluginState.OK
            return {c.name: len(c.steps) for c in schema()}
        finally:
            await state.close()

    known = asyncio.run(run())
    with psycopg.connect(pg_url) as conn:
        versions: dict[str, int] = dict(conn.execute("SELECT component, version FROM tollgate_schema").fetchall())
    assert versions == known
    assert open_with(state_store=pg_url) == pg_url  # now migrated: opens without the flag


def test_a_newer_schema_is_refused_even_with_migrate(pg_url: str) -> None:
    open_with(state_store=pg_url, state_store_migrate=True)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE tollgate_schema SET version = 42 WHERE component = 'budgets'")
    with pytest.raises(StateError, match=r"budgets schema is version 42, newer than this tollgate knows"):
        open_with(state_store=pg_url, state_store_migrate=True)


def test_a_store_down_at_start_up_opens_and_its_schema_is_checked_once_it_answers() -> None:
    pg = PostgresServer()
    try:
        url = pg.database()
        pg.stop()

        async def run() -> list[PluginStatus]:
            config = load_config(None, {"state_store": url, "state_store_migrate": True, "state_store_timeout": 0.5})
            state = await opened(config)  # no exception: a pod must not crash-loop while its database restarts
            store = state.plugins[0]
            seen = [store.status()]
            await store.start()
            try:
                assert state.kill_switches.staleness()  # never confirmed: every request is DENY state_stale
                await asyncio.to_thread(pg.start)
                await eventually(lambda: store.status().state is PluginState.OK, timeout=30, what="the store plugin OK")
                seen.append(store.status())
            finally:
                await store.stop()
            return seen

        down, up = asyncio.run(run())
        assert down.state is PluginState.ERROR and "unreachable at start-up" in down.message
        assert up.state is PluginState.OK
        with psycopg.connect(url) as conn:  # migrated in the background once it answered
            assert conn.execute("SELECT count(*) FROM tollgate_schema").fetchone() == (len(schema()),)
    finally:
        pg.close()


def test_serve_on_a_store_never_migrated_stops_with_the_hint_and_never_shows_the_password(tmp_path: Path,
                                                                                          pg_url: str) -> None:
    with_password = pg_url.replace("postgresql://tollgate@", "postgresql://tollgate:s3cret-pw@")  # trust: ignored
    done = subprocess.run([*TOLLGATE, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
                           "--bundle", str(REGO), "--state-store", with_password, "--workers", "1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "tollgate serve: state store postgresql://tollgate:***@" in done.stderr
    assert "s3cret-pw" not in done.stderr + done.stdout
    assert "hint: run `tollgate state migrate --state-store URL`, or start with --state-store-migrate" in done.stderr
    assert "serving on" not in done.stdout and "Traceback" not in done.stderr


class CountingBudgets:
    """The inner store of InLine: counts the holds of each scope value inside it at once."""

    def __init__(self) -> None:
        self.inside: dict[tuple[str, str], int] = {}
        self.most: dict[tuple[str, str], int] = {}
        self.release = asyncio.Event()
        self.entered = asyncio.Event()

    @contextlib.asynccontextmanager
    async def hold(self, scopes: Mapping[str, str]) -> AsyncIterator[None]:
        keys = list(scopes.items())
        for key in keys:
            self.inside[key] = self.inside.get(key, 0) + 1
            self.most[key] = max(self.most.get(key, 0), self.inside[key])
        self.entered.set()
        try:
            if ("session", "hot") in keys:
                await self.release.wait()
            yield None
        finally:
            for key in keys:
                self.inside[key] -= 1


def test_in_line_one_hold_per_scope_reaches_the_store_and_other_scopes_pass_by() -> None:
    async def run() -> CountingBudgets:
        inner = CountingBudgets()
        budgets = InLine(inner)  # type: ignore[arg-type]

        async def step(session: str, agent: str) -> None:
            async with budgets.hold({"session": session, "agent": agent}):
                pass

        hot = [asyncio.create_task(step("hot", "code-reviewer")) for _ in range(50)]
        await inner.entered.wait()
        # While the hot session's first step is inside the store, another agent's step goes through.
        await asyncio.wait_for(step("other", "data-analyst"), timeout=5)
        assert sum(not t.done() for t in hot) == 50
        inner.release.set()
        await asyncio.gather(*hot)
        return inner

    inner = asyncio.run(run())
    assert inner.most[("session", "hot")] == 1  # the 50 reached the store one at a time: one connection
    assert inner.most[("agent", "data-analyst")] == 1
    assert all(n == 0 for n in inner.inside.values())
