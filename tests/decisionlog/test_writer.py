"""The SQLite decision log: group commit, the hash chain, reads, and failing loudly."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tollgate.decisionlog import DecisionLog, DecisionLogError, DecisionRecord, LogConfig
from tollgate.decisionlog._sqlite import record_hash
from tollgate.encoding import canonical_json
from tollgate.ids import new_decision_id


def _record(i: int, request_id: str = "") -> DecisionRecord:
    return DecisionRecord(
        decision_id=new_decision_id(), timestamp="2026-11-21T00:00:00.000000Z",
        input={"kind": "tool", "principal": {"agent_id": f"a{i}", "session_id": "s"}, "tool": {"name": "t"}},
        decision="allow", reasons=(), request_id=request_id, bundle_revision="r1",
    )


async def _append_all(log: DecisionLog, records: list[DecisionRecord]) -> None:
    log.start(asyncio.get_running_loop())
    await asyncio.gather(*(log.append(r) for r in records))


def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    log = DecisionLog(LogConfig(path=tmp_path / "d.db"))
    records = [_record(i) for i in range(2000)]
    asyncio.run(_append_all(log, records))
    log.close()
    assert log.records == 2000
    assert log.commits < 2000 / 4  # many records per fsync
    db = sqlite3.connect(tmp_path / "d.db")
    assert db.execute("SELECT count(*) FROM decisions").fetchone()[0] == 2000
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_records_form_a_hash_chain_that_continues_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    first = DecisionLog(LogConfig(path=path))
    asyncio.run(_append_all(first, [_record(i) for i in range(10)]))
    first.close()
    second = DecisionLog(LogConfig(path=path))
    asyncio.run(_append_all(second, [_record(i) for i in range(10)]))
    second.close()
    rows = sqlite3.connect(path).execute("SELECT record, prev_hash, hash FROM decisions ORDER BY seq").fetchall()
    prev = "0" * 64
    for body, prev_hash, digest in rows:
        assert prev_hash == prev
        assert digest == record_hash(prev_hash, body)
        assert body == canonical_json(__import__("json").loads(body))
        prev = digest


def test_get_and_latest_for_request(tmp_path: Path) -> None:
    log = DecisionLog(LogConfig(path=tmp_path / "d.db"))
    a, b = _record(1, "req"), _record(2, "req")
    asyncio.run(_append_all(log, [a]))
    log.close()
    log = DecisionLog(LogConfig(path=tmp_path / "d.db"))
    asyncio.run(_append_all(log, [b]))
    got = log.get(a.decision_id)
    assert got is not None and got.input["principal"]["agent_id"] == "a1"
    latest = log.latest_for_request("req")
    assert latest is not None and latest.decision_id == b.decision_id
    assert log.get("nope") is None
    log.close()


def test_a_failed_commit_fails_the_append_and_later_ones(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    log = DecisionLog(LogConfig(path=path))

    async def scenario() -> None:
        log.start(asyncio.get_running_loop())
        await log.append(_record(1))
        sqlite3.connect(path).execute("DROP TABLE decisions")  # the store breaks underneath
        with pytest.raises(DecisionLogError):
            await log.append(_record(2))
        with pytest.raises(DecisionLogError):
            await log.append(_record(3))

    asyncio.run(scenario())
    log.close()


def test_a_full_disk_says_the_disk_is_full_and_the_log_recovers_when_there_is_room(tmp_path: Path) -> None:
    # No tiny tmpfs or loop mount here (no privileges), so the writer's own connection is capped with SQLite's
    # max_page_count: a commit past it fails with SQLITE_FULL, the error a full disk gives.
    path = tmp_path / "d.db"
    log = DecisionLog(LogConfig(path=path))
    pages = log._db.execute("PRAGMA page_count").fetchone()[0]
    log._db.execute(f"PRAGMA max_page_count = {pages + 1}")
    big = DecisionRecord(decision_id=new_decision_id(), timestamp="2026-11-21T00:00:00.000000Z",
                         input={"kind": "tool", "principal": {"agent_id": "a", "session_id": "s"},
                                "tool": {"name": "t", "arguments": {"text": "x" * 64 * 1024}}},
                         decision="allow")

    async def scenario() -> None:
        log.start(asyncio.get_running_loop())
        with pytest.raises(DecisionLogError) as failed:
            await log.append(big)
        message = str(failed.value)
        assert f"decision log DISK is full: {path}" in message and "free space" in message
        assert "no transaction is active" not in message
        log._db.execute("PRAGMA max_page_count = 1073741823")  # space freed: the next commit goes in
        await log.append(_record(1))

    asyncio.run(scenario())
    log.close()
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM decisions").fetchone()[0] == 1


def test_appends_past_max_pending_wait_for_room_and_all_commit(tmp_path: Path) -> None:
    log = DecisionLog(LogConfig(path=tmp_path / "d.db", max_pending=3, max_batch=2))
    most = 0

    async def scenario() -> None:
        nonlocal most
        log.start(asyncio.get_running_loop())
        appends = [asyncio.ensure_future(log.append(_record(i))) for i in range(60)]
        while not all(a.done() for a in appends):
            most = max(most, log._pending)
            await asyncio.sleep(0)
        await asyncio.gather(*appends)

    asyncio.run(scenario())
    log.close()
    assert log.records == 60 and most <= 3
    assert sqlite3.connect(tmp_path / "d.db").execute("SELECT count(*) FROM decisions").fetchone()[0] == 60


def test_an_append_cancelled_while_waiting_for_room_passes_the_room_on(tmp_path: Path) -> None:
    log = DecisionLog(LogConfig(path=tmp_path / "d.db", max_pending=1))

    async def scenario() -> None:
        log.start(asyncio.get_running_loop())
        log._pending = 1  # the only room is taken
        waiting = asyncio.ensure_future(log.append(_record(1)))
        doomed = asyncio.ensure_future(log.append(_record(2)))
        after = asyncio.ensure_future(log.append(_record(3)))
        await asyncio.sleep(0)
        waiting.cancel()  # cancelled while it waits: it takes no room
        await asyncio.sleep(0)
        log._pending = 0  # the room comes back and is given to doomed, which is cancelled before it runs
        log._let_in()
        doomed.cancel()
        await asyncio.wait_for(after, 10)
        for cancelled in (waiting, doomed):
            with pytest.raises(asyncio.CancelledError):
                await cancelled

    asyncio.run(scenario())
    log.close()
    assert log.records == 1


def test_synchronous_setting_is_validated(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous"):
        DecisionLog(LogConfig(path=tmp_path / "d.db", synchronous="off"))


@pytest.mark.parametrize("record", [
    {"a": 1, "z": [2], "m": {"x": None}},
    {"z": 1},
    {"a": "é"},
    {},
], ids=["keys-both-sides", "only-after", "only-before", "empty"])
def test_spliced_canonical_json_equals_a_full_serialisation(record: dict[str, Any]) -> None:
    from tollgate.encoding import canonical_json_with

    value = {"kind": "tool", "nested": {"b": 1, "a": [1.5, "x"]}}
    assert canonical_json_with(record, "input", canonical_json(value)) == canonical_json({**record, "input": value})
