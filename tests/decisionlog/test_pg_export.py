"""The `postgresql` exporter and the fleet's reader, against real decisions.db files and a real PostgreSQL server.

Every record arrives once (also across a crash between a batch's insert and its cursor update), a store that goes
away delays records without losing one, and the store answers every query as the sidecar's own log does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.conftest import wait_for
from tests.pg import PostgresServer
from tollgate.clock import ManualClock
from tollgate.decisionlog import (
    DECISIONS_STEPS,
    DecisionLog,
    DecisionRecord,
    ExportRow,
    ExportState,
    LogConfig,
    LogReadError,
    LogShipping,
    PgTransport,
    Query,
    ShippingConfig,
    SqliteDecisionStore,
    UploadError,
    migrate_decisions,
    open_reader,
)
from tollgate.encoding import format_time
from tollgate.ids import new_decision_id
from tollgate.state import StateError
from tollgate.state.postgres import PgOptions, PgStore

BASE = datetime(2026, 11, 21, 9, 0, tzinfo=UTC)
AGENTS = ("code-reviewer", "deployer")
TOOLS = (("github", "get_pull_request"), ("github", "merge_pull_request"), ("slack", "post_message"))


def _record(i: int, *, at: datetime | None = None, **principal: Any) -> dict[str, Any]:
    """A varied record: three kinds, two agents, three sessions, two instances, all three decisions."""
    kind = ("tool", "tool", "model", "budget")[i % 4]
    actions: dict[str, dict[str, Any]] = {
        "tool": {"server": TOOLS[i % 3][0], "name": TOOLS[i % 3][1], "arguments": {"n": i * 1.5}},
        "model": {"provider": "anthropic", "model": "claude-x", "input_tokens": 1200},
        "budget": {"amount": 0.25, "unit": "usd", "category": "model"},
    }
    action = actions[kind]
    decision = ("allow", "deny", "require_approval")[i % 3]
    return {
        "decision_id": new_decision_id(), "timestamp": format_time(at or BASE + timedelta(milliseconds=i)),
        "input": {"kind": kind, kind: action, "context": {},
                  "principal": {"agent_id": AGENTS[i % 2], "session_id": f"run-{i % 3}",
                                "instance_id": f"i-{i % 2 + 1}", **principal}},
        "result": {"decision": decision}, "decision": decision,
        "reasons": [{"code": "tool_not_in_manifest", "message": "no"}] if decision == "deny" else [],
        "bundle_revision": "r1", "policy_path": "tollgate/decision", "latency_us": 42,
    }


def _fill(path: Path, records: list[dict[str, Any]]) -> list[str]:
    """Append records through the real writer; returns their decision IDs in seq order."""
    log = DecisionLog(LogConfig(path=path, synchronous="normal"))

    async def run() -> None:
        log.start(asyncio.get_running_loop())
        for r in records:
            await log.append(DecisionRecord.from_dict(r))

    asyncio.run(run())
    log.close()
    return [r["decision_id"] for r in records]


def _migrate(url: str) -> int:
    async def run() -> int:
        store = PgStore(PgOptions(url))
        await store.open()
        try:
            return await migrate_decisions(store, upgrade=True)
        finally:
            await store.close()

    return asyncio.run(run())


def _shipped(url: str) -> list[tuple[str, str, int, str, str]]:
    """(decision_id, sidecar_id, seq, record text, hash) of every row in the store, by sidecar and seq."""
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT decision_id, sidecar_id, seq, record::text, hash FROM fleet_decisions "
                            "ORDER BY sidecar_id, seq").fetchall()
    return [(str(a), str(b), int(c), str(d), str(e)) for a, b, c, d, e in rows]


def _count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM fleet_decisions").fetchone()
    assert row is not None
    return int(row[0])


def _shipping(path: Path, url: str, **overrides: Any) -> LogShipping:
    settings: dict[str, Any] = {"postgresql_url": url, "sidecar_id": "sidecar-a", "min_delay": 0.05,
                                "max_delay": 0.2, "batch_records": 200, **overrides}
    clock = settings.pop("clock", None)
    return LogShipping(path, ShippingConfig(**settings), **({"clock": clock} if clock else {}))


def _local(path: Path) -> list[tuple[str, int, str, str]]:
    with SqliteDecisionStore.open(path) as store:
        return [(r.decision_id, r.seq, r.record_json, r.hash) for r in store.find(Query())]


@pytest.fixture
def shipping_stops() -> Iterator[list[LogShipping]]:
    started: list[LogShipping] = []
    yield started
    for shipping in started:
        shipping.stop(0.2)


def test_every_record_arrives_once_as_stored_and_hashed_with_the_sidecar_and_its_seq(
        tmp_path: Path, pg_url: str, shipping_stops: list[LogShipping]) -> None:
    path = tmp_path / "decisions.db"
    assert _migrate(pg_url) == len(DECISIONS_STEPS)
    _fill(path, [_record(i) for i in range(1100)])
    shipping = _shipping(path, pg_url, batch_records=500)
    shipping.start()
    shipping_stops.append(shipping)
    (exporter,) = shipping.exporters
    wait_for(lambda: exporter.status.cursor == 1100)

    assert [(d, s, text, h) for d, s, _, text, h in _shipped(pg_url)] == [
        (d, "sidecar-a", text, h) for d, _, text, h in _local(path)]  # byte for byte: the hash still proves it
    assert [seq for _, _, seq, _, _ in _shipped(pg_url)] == list(range(1, 1101))
    status = exporter.status
    assert (status.name, status.state, status.uploads_ok, status.records_exported, status.lag_records) == (
        "postgresql", ExportState.OK, 3, 1100, 0)
    assert status.url == pg_url  # the test URL has no password; see the redaction test
    assert SqliteDecisionStore.open(path).cursor("postgresql") == 1100


def test_a_batch_stored_but_not_acknowledged_is_absorbed_when_the_exporter_starts_again(
        tmp_path: Path, pg_url: str, shipping_stops: list[LogShipping]) -> None:
    # What a crash between the batch's INSERT and the cursor update leaves: the rows in the store, cursor 0.
    path = tmp_path / "decisions.db"
    _migrate(pg_url)
    ids = _fill(path, [_record(i) for i in range(300)])
    with SqliteDecisionStore.open(path) as store:
        stored = [ExportRow(r.seq, r.record_json, r.timestamp, r.hash) for r in store.page(Query(), limit=120)]
    crashed = PgTransport(pg_url, sidecar_id="sidecar-a")
    crashed.send(stored, (), timeout=5)
    crashed.close()
    assert _count(pg_url) == 120 and SqliteDecisionStore.open(path).cursor("postgresql") == 0

    shipping = _shipping(path, pg_url, batch_records=100)
    shipping.start()
    shipping_stops.append(shipping)
    wait_for(lambda: shipping.exporters[0].status.cursor == 300)
    assert [d for d, *_ in _shipped(pg_url)] == ids  # once each: the re-sent 120 were absorbed
    assert shipping.exporters[0].status.records_exported == 300  # at least once: the re-sent ones count again


_EXPORTER = textwrap.dedent("""
    import sys, threading
    from pathlib import Path
    from tollgate.decisionlog import LogShipping, ShippingConfig
    shipping = LogShipping(Path(sys.argv[1]), ShippingConfig(postgresql_url=sys.argv[2], sidecar_id="sidecar-a",
                                                             batch_records=7, min_delay=0.05))
    shipping.start()
    threading.Event().wait()  # until killed
""")


def test_an_exporter_killed_mid_run_loses_and_doubles_nothing_after_a_restart(
        tmp_path: Path, pg_url: str, shipping_stops: list[LogShipping]) -> None:
    path = tmp_path / "decisions.db"
    _migrate(pg_url)
    ids = _fill(path, [_record(i) for i in range(1500)])
    child = subprocess.Popen([sys.executable, "-c", _EXPORTER, str(path), pg_url])
    try:
        wait_for(lambda: _count(pg_url) >= 300, what="the child to ship a few batches")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(10)
    left_at = SqliteDecisionStore.open(path).cursor("postgresql")
    assert left_at < 1500

    shipping = _shipping(path, pg_url, batch_records=50)
    shipping.start()
    shipping_stops.append(shipping)
    wait_for(lambda: shipping.exporters[0].status.cursor == 1500)
    assert [d for d, *_ in _shipped(pg_url)] == ids


def test_a_store_that_goes_away_delays_records_locally_past_the_lag_limit_and_they_catch_up(
        tmp_path: Path, shipping_stops: list[LogShipping]) -> None:
    server = PostgresServer()  # its own server: this test stops it
    try:
        url = server.database()
        _migrate(url)
        path = tmp_path / "decisions.db"
        clock = ManualClock(BASE)
        first = _fill(path, [_record(i, at=BASE) for i in range(40)])
        shipping = _shipping(path, url, clock=clock, max_lag=60.0, postgresql_timeout=1.0)
        shipping.start()
        shipping_stops.append(shipping)
        (exporter,) = shipping.exporters
        wait_for(lambda: exporter.status.cursor == 40)

        server.stop()
        later = _fill(path, [_record(i, at=BASE + timedelta(seconds=1)) for i in range(40, 100)])
        wait_for(lambda: exporter.status.state is ExportState.ERROR and exporter.status.lag_records == 60)
        assert "cannot store" in exporter.status.last_error and exporter.status.cursor == 40
        assert not shipping.lagging()
        clock.advance(120)  # the oldest waiting record is now 119 s old, past max_lag
        wait_for(lambda: exporter.status.lag_seconds > 60)
        assert [s.name for s in shipping.lagging()] == ["postgresql"]
        assert "decision log export postgresql is 119s (60 records) behind" in shipping.refusal()
        assert _local(path)[-1][0] == later[-1]  # every record is still on the sidecar's disk

        server.start()
        wait_for(lambda: exporter.status.cursor == 100)
        wait_for(lambda: exporter.status.state is ExportState.OK)
        assert [d for d, *_ in _shipped(url)] == first + later and not shipping.lagging()
    finally:
        server.close()


def _server_processes(server: PostgresServer) -> list[int]:
    """The postmaster and every process it started (backends, writers)."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            children.append(int(stat.parent.name))
    return [postmaster, *children]


def test_a_store_that_stops_answering_mid_batch_is_cut_off_and_the_lag_keeps_growing(
        tmp_path: Path, shipping_stops: list[LogShipping]) -> None:
    # A paused server (or a network that drops packets silently) keeps the TCP connection open and enforces no
    # statement_timeout: the exporter must cut the batch itself, or its status freezes and no lag limit trips.
    server = PostgresServer()
    paused: list[int] = []
    try:
        url = server.database()
        _migrate(url)
        path = tmp_path / "decisions.db"
        clock = ManualClock(BASE)
        _fill(path, [_record(i, at=BASE) for i in range(10)])
        shipping = _shipping(path, url, clock=clock, max_lag=60.0, postgresql_timeout=1.0)
        shipping.start()
        shipping_stops.append(shipping)
        (exporter,) = shipping.exporters
        wait_for(lambda: exporter.status.cursor == 10)

        paused = _server_processes(server)
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)
        ids = _fill(path, [_record(i, at=BASE) for i in range(10, 30)])
        wait_for(lambda: exporter.status.state is ExportState.ERROR, timeout=30, what="the stuck batch to be cut")
        # The lag counted at the cut is what was committed when that batch began; the next try counts all 20.
        wait_for(lambda: exporter.status.lag_records == 20, timeout=30, what="the lag to count every record")
        assert exporter.status.cursor == 10  # nothing shipped while the store answers nothing
        clock.advance(120)
        wait_for(lambda: [s.name for s in shipping.lagging()] == ["postgresql"], timeout=30)

        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        paused = []
        wait_for(lambda: exporter.status.cursor == 30)
        assert [d for d, *_ in _shipped(url)][10:] == ids
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        server.close()


def test_a_store_never_migrated_holds_the_export_with_the_hint_and_it_ships_once_migrated(
        tmp_path: Path, pg_url: str, shipping_stops: list[LogShipping]) -> None:
    path = tmp_path / "decisions.db"
    ids = _fill(path, [_record(i) for i in range(10)])
    shipping = _shipping(path, pg_url)
    shipping.start()
    shipping_stops.append(shipping)
    (exporter,) = shipping.exporters
    wait_for(lambda: "decisions schema is version 0" in exporter.status.last_error)
    assert "tollgate state migrate --state-store URL" in exporter.status.last_error
    assert exporter.status.cursor == 0
    _migrate(pg_url)
    wait_for(lambda: exporter.status.cursor == 10)
    assert [d for d, *_ in _shipped(pg_url)] == ids


def test_a_newer_decisions_schema_is_refused_by_the_exporter_and_by_migrate(tmp_path: Path, pg_url: str) -> None:
    _migrate(pg_url)
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE tollgate_schema SET version = 9 WHERE component = 'decisions'")
    with pytest.raises(StateError, match="decisions schema is version 9, newer than this tollgate knows"):
        _migrate(pg_url)
    path = tmp_path / "decisions.db"
    _fill(path, [_record(0)])
    transport = PgTransport(pg_url, sidecar_id="sidecar-a")
    with SqliteDecisionStore.open(path) as store:
        rows = [ExportRow(r.seq, r.record_json, r.timestamp, r.hash) for r in store.find(Query())]
    with pytest.raises(UploadError, match=r"version 9, this tollgate writes version 1 \(hint: run the newer tollgate"):
        transport.send(rows, (), timeout=5)


def test_another_record_under_the_same_decision_id_is_kept_and_reported_and_shipping_goes_on(
        tmp_path: Path, pg_url: str, shipping_stops: list[LogShipping], caplog: pytest.LogCaptureFixture) -> None:
    # A row planted in the store (or another sidecar's record) under one of our IDs: the store keeps the first,
    # the exporter says so and moves on; our record is still in the sidecar's log.
    path = tmp_path / "decisions.db"
    _migrate(pg_url)
    ids = _fill(path, [_record(i) for i in range(20)])
    other = tmp_path / "other.db"
    _fill(other, [{**_record(99), "decision_id": ids[5]}])
    with SqliteDecisionStore.open(other) as store:
        planted = [ExportRow(r.seq, r.record_json, r.timestamp, r.hash) for r in store.find(Query())]
    PgTransport(pg_url, sidecar_id="sidecar-b").send(planted, (), timeout=5)

    shipping = _shipping(path, pg_url)
    shipping.start()
    shipping_stops.append(shipping)
    wait_for(lambda: shipping.exporters[0].status.cursor == 20)
    rows = {d: s for d, s, *_ in _shipped(pg_url)}
    assert len(rows) == 20 and rows[ids[5]] == "sidecar-b"
    assert f"{ids[5]} (held from sidecar 'sidecar-b')" in caplog.text
    assert shipping.exporters[0].status.state is ExportState.OK


def test_nul_characters_and_huge_principal_fields_ship_and_are_found(
        tmp_path: Path, pg_url: str, shipping_stops: list[LogShipping]) -> None:
    # A caller chooses these: a NUL (PostgreSQL text cannot hold one) or a 10,000-character agent (past btree's
    # entry limit) must neither stop the shipping nor hide the record from a query for it.
    path = tmp_path / "decisions.db"
    _migrate(pg_url)
    long_agent = "a" * 10_000
    ids = _fill(path, [_record(0, agent_id="nul\x00agent", session_id="s\x00"), _record(1, agent_id=long_agent),
                       _record(2, agent_id=long_agent[:-1] + "b")])
    shipping = _shipping(path, pg_url)
    shipping.start()
    shipping_stops.append(shipping)
    wait_for(lambda: shipping.exporters[0].status.cursor == 3)
    found = _reader_find(pg_url, Query(agent=long_agent))
    assert [r.decision_id for r in found] == [ids[1]]
    (nul,) = _reader_find(pg_url, Query(agent="nul\x00agent"))
    assert nul.decision_id == ids[0] and nul.record()["input"]["principal"]["session_id"] == "s\x00"
    assert _shipped(pg_url)[0][3] == _local(path)[0][2]


def _reader_find(url: str, query: Query) -> list[Any]:
    async def run() -> list[Any]:
        async with open_reader(url) as reader:
            return list(await reader.find(query))

    return asyncio.run(run())


def _reader_get(url: str, decision_id: str) -> DecisionRecord | None:
    async def run() -> DecisionRecord | None:
        async with open_reader(url) as reader:
            return await reader.get(decision_id)

    return asyncio.run(run())


# -- the reader: the same answers as the sidecar's own log -----------------------------------------------------


@pytest.fixture(scope="module")
def shipped_log(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> tuple[Path, str, list[str]]:
    """One local log of 400 varied records, shipped whole into a store of its own."""
    path = tmp_path_factory.mktemp("parity") / "decisions.db"
    url = postgres.database()
    _migrate(url)
    ids = _fill(path, [_record(i) for i in range(400)])
    shipping = _shipping(path, url)
    shipping.start()
    try:
        wait_for(lambda: shipping.exporters[0].status.cursor == 400)
    finally:
        shipping.stop(1)
    return path, url, ids


PARITY = {
    "everything": Query(),
    "agent": Query(agent="deployer"),
    "session": Query(session="run-2"),
    "instance": Query(instance="i-1"),
    "decision": Query(decision="require_approval"),
    "tool name on any server": Query(tool="merge_pull_request"),
    "server/tool": Query(tool="slack/post_message"),
    "server/tool no match": Query(tool="slack/merge_pull_request"),
    "since": Query(since=BASE + timedelta(milliseconds=250)),
    "until": Query(until=BASE + timedelta(milliseconds=37)),
    "window and agent": Query(agent="code-reviewer", since=BASE + timedelta(milliseconds=100),
                              until=BASE + timedelta(milliseconds=200)),
    "limit": Query(limit=25),
    "limit and session and decision": Query(session="run-1", decision="deny", limit=7),
    "no match": Query(agent="nobody"),
    "agent and instance and tool": Query(agent="code-reviewer", instance="i-1", tool="github/get_pull_request"),
}


@pytest.mark.parametrize("query", PARITY.values(), ids=PARITY.keys())
def test_the_store_answers_each_query_as_the_sidecars_own_log(
        shipped_log: tuple[Path, str, list[str]], query: Query) -> None:
    path, url, _ = shipped_log
    with SqliteDecisionStore.open(path) as store:
        local = [(r.decision_id, r.seq, r.record_json, r.hash, r.timestamp) for r in store.find(query)]
    fleet = [(r.decision_id, r.seq, r.record_json, r.hash, r.timestamp) for r in _reader_find(url, query)]
    assert fleet == local
    assert local or query in (PARITY["no match"], PARITY["server/tool no match"])  # the filters do select


def test_get_finds_a_shipped_record_and_says_none_for_an_unknown_id(shipped_log: tuple[Path, str, list[str]]) -> None:
    path, url, ids = shipped_log
    found = _reader_get(url, ids[17])
    with SqliteDecisionStore.open(path) as store:
        assert found == store.get(ids[17])
    assert _reader_get(url, new_decision_id()) is None


def test_the_session_read_from_the_store_is_the_local_timeline(shipped_log: tuple[Path, str, list[str]]) -> None:
    from tollgate.decisionlog import session_timeline, timeline

    path, url, _ = shipped_log

    async def run() -> list[DecisionRecord]:
        async with open_reader(url) as reader:
            return await reader.session("run-0")

    with SqliteDecisionStore.open(path) as store:
        local = timeline(store, "run-0")
    assert session_timeline("run-0", asyncio.run(run())) == local and len(local.steps) == 134


def test_a_store_without_the_decisions_table_is_a_read_error_with_the_hint(pg_url: str) -> None:
    with pytest.raises(LogReadError, match=r"holds no decision log \(hint: run `tollgate state migrate"):
        _reader_find(pg_url, Query())


def test_an_unreachable_store_fails_within_the_timeout() -> None:
    from tests.pg import free_port

    async def run() -> None:
        async with open_reader(f"postgresql://nobody@127.0.0.1:{free_port()}/x", timeout=0.5):
            pass

    with pytest.raises(StateError, match="cannot connect"):
        asyncio.run(run())


def test_the_status_and_messages_never_show_the_password(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    _fill(path, [_record(0)])
    shipping = LogShipping(path, ShippingConfig(postgresql_url="postgresql://u:hunter2@127.0.0.1:1/db",
                                                sidecar_id="sidecar-a", min_delay=0.05))
    assert shipping.exporters[0].status.url == "postgresql://u:***@127.0.0.1:1/db"


def test_shipping_to_postgresql_needs_a_sidecar_id(tmp_path: Path, pg_url: str) -> None:
    with pytest.raises(ValueError, match="a sidecar_id is required"):
        LogShipping(tmp_path / "decisions.db", ShippingConfig(postgresql_url=pg_url))
    for wrong in ("x" * 129, "-starts-with-a-dash", "has space", "nul\x00"):
        with pytest.raises(ValueError, match="is not a sidecar id"):
            LogShipping(tmp_path / "decisions.db", ShippingConfig(postgresql_url=pg_url, sidecar_id=wrong))
