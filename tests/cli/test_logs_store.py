"""`tollgate logs query` and `logs timeline` with --state-store: the fleet's log, shipped by two sidecars into a
real PostgreSQL, answered as a sidecar's own data dir answers."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, TOLLGATE, wait_for
from tests.decisionlog.test_pg_export import _fill, _migrate, _record, _shipping
from tests.pg import PostgresServer, free_port


def logs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOLLGATE, "logs", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> Iterator[dict[str, Any]]:
    """Two sidecars' data dirs (even records answered by A, odd ones by B), both shipped into one store."""
    root = tmp_path_factory.mktemp("fleet")
    url = postgres.database()
    _migrate(url)
    records = [_record(i) for i in range(60)]
    dirs = {"sidecar-a": root / "a", "sidecar-b": root / "b"}
    for index, (sidecar, data_dir) in enumerate(dirs.items()):
        data_dir.mkdir()
        _fill(data_dir / "decisions.db", records[index::2])
        shipping = _shipping(data_dir / "decisions.db", url, sidecar_id=sidecar)
        shipping.start()
        try:
            wait_for(lambda: shipping.exporters[0].status.cursor == 30)  # noqa: B023 - called before the next loop
        finally:
            shipping.stop(1)
    yield {"url": url, "dirs": dirs, "records": records}


def test_query_from_the_store_lists_every_sidecars_records_in_time_order_saying_whose(fleet: dict[str, Any]) -> None:
    done = logs("query", "--state-store", fleet["url"], "--format", "jsonl", "--limit", "1000")
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [r["decision_id"] for r in lines] == [r["decision_id"] for r in fleet["records"]]
    assert [r["sidecar_id"] for r in lines[:4]] == ["sidecar-a", "sidecar-b", "sidecar-a", "sidecar-b"]
    assert [r["seq"] for r in lines[:4]] == [1, 1, 2, 2]  # each sidecar's own seq


@pytest.mark.parametrize("flags", [
    ("--agent", "code-reviewer", "--decision", "allow"),
    ("--session", "run-1", "--decision", "deny"),
    ("--tool", "github/merge_pull_request"),
    ("--limit", "3"),
    ("--since", "2026-11-21T09:00:00.020Z", "--until", "2026-11-21T09:00:00.040Z"),
], ids=["agent", "session+decision", "tool", "limit", "window"])
def test_query_from_the_store_answers_as_the_sidecars_data_dir_does(
        fleet: dict[str, Any], flags: tuple[str, ...]) -> None:
    # Sidecar A answered the even records, all of instance i-1: that filter gives its share of the fleet's log.
    data_dir = fleet["dirs"]["sidecar-a"]
    for fmt in ("table", "jsonl"):
        local = logs("query", "--data-dir", str(data_dir), "--format", fmt, *flags)
        shipped = logs("query", "--state-store", fleet["url"], "--format", fmt, "--instance", "i-1", *flags)
        assert local.returncode == shipped.returncode == 0, local.stderr + shipped.stderr
        if fmt == "table":
            assert shipped.stdout == local.stdout and "(no matching decisions)" not in local.stdout
        else:
            ours = [json.loads(line) for line in shipped.stdout.splitlines()]
            assert ours and {r.pop("sidecar_id") for r in ours} == {"sidecar-a"}
            assert ours == [json.loads(line) for line in local.stdout.splitlines()]


def test_timeline_from_the_store_is_the_session_across_the_fleet(fleet: dict[str, Any]) -> None:
    done = logs("timeline", "run-2", "--state-store", fleet["url"], "--format", "json")
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout)
    expected = [r["decision_id"] for i, r in enumerate(fleet["records"]) if i % 3 == 2]
    assert [s["decision_id"] for s in line["steps"]] == expected  # both sidecars' records, in time order
    assert "state_note" not in line  # no approval or reservation to look up: nothing is missing
    local = logs("timeline", "run-2", "--data-dir", str(fleet["dirs"]["sidecar-a"]), "--format", "json")
    mine = [s for s in line["steps"] if s["decision_id"] in local.stdout]
    assert mine == json.loads(local.stdout)["steps"]
    text = logs("timeline", "run-2", "--state-store", fleet["url"])
    assert text.returncode == 0 and text.stdout.startswith(f"session run-2: {len(expected)} decision(s), ")


def test_a_record_answered_by_either_sidecar_is_found_by_its_id(fleet: dict[str, Any]) -> None:
    answered_by_b = fleet["records"][7]["decision_id"]
    done = logs("query", "--state-store", fleet["url"], "--decision-id", answered_by_b, "--format", "json")
    assert done.returncode == 0, done.stderr
    (found,) = json.loads(done.stdout)
    assert (found["decision_id"], found["sidecar_id"], found["seq"]) == (answered_by_b, "sidecar-b", 4)
    local = logs("query", "--data-dir", str(fleet["dirs"]["sidecar-a"]), "--decision-id", answered_by_b)
    assert "(no matching decisions)" in local.stdout


@pytest.mark.parametrize(("args", "message"), [
    (("--state-store", "postgresql://u:hunter2@127.0.0.1:{port}/x", "--state-store-timeout", "0.5"),
     "cannot connect"),
    (("--state-store", "mysql://u:hunter2@db/x"), "must be a postgresql:// URL, not 'mysql://u:***@db/x'"),
    (("--state-store", "postgresql://u@127.0.0.1:{port}/x", "--state-store-password-file", "/nonexistent"),
     "state_store_password_file: cannot read /nonexistent"),
], ids=["unreachable", "not postgresql", "password file"])
def test_a_store_that_cannot_be_read_exits_2_saying_why_and_never_the_password(
        args: tuple[str, ...], message: str) -> None:
    port = str(free_port())
    for command in (("query",), ("timeline", "run-1")):
        done = logs(*command, *(a.replace("{port}", port) for a in args))
        assert done.returncode == 2, done.stdout
        assert message in done.stderr and "hunter2" not in done.stderr + done.stdout


def test_a_store_never_migrated_says_how_to_fix_it(pg_url: str) -> None:
    done = logs("query", "--state-store", pg_url)
    assert done.returncode == 2
    assert "holds no decision log (hint: run `tollgate state migrate --state-store URL`" in done.stderr


def test_one_source_exactly(tmp_path: Path, pg_url: str) -> None:
    both = logs("query", "--data-dir", str(tmp_path), "--state-store", pg_url)
    neither = logs("timeline", "run-1")
    assert both.returncode == neither.returncode == 2
    assert "not allowed with argument" in both.stderr
    assert "one of the arguments --data-dir --state-store is required" in neither.stderr


def test_timeline_from_the_store_shows_who_approved_and_what_was_spent_from_the_same_store(
        tmp_path: Path, pg_url: str) -> None:
    import asyncio

    from tollgate.state.postgres import PgApprovals, PgBudgets, PgOptions, PgStore

    async def state() -> tuple[str, str]:
        store = PgStore(PgOptions(pg_url))
        await store.open()
        try:
            approvals, budgets = PgApprovals(store), PgBudgets(store)
            await approvals.start(upgrade=True)
            await budgets.start(upgrade=True)
            opened = await approvals.open(request_digest="d" * 64, kind="tool", principal={
                "agent_id": "release-bot", "session_id": "run-9"}, action={"server": "github", "name": "merge"},
                approvers=["rita"], ttl_seconds=600, opened_by="sidecar-a")
            await approvals.decide(opened.id, approve=True, by="rita", reason="release 1.2")
            async with budgets.hold({"session": "run-9"}) as hold:
                reservation = await hold.reserve({"usd": 0.5}, limits={})
            await budgets.report(reservation, amount=0.25, unit="usd")
            return opened.id, reservation
        finally:
            await store.close()

    _migrate(pg_url)
    approval_id, reservation_id = asyncio.run(state())
    asked = {**_record(0, session_id="run-9"), "decision": "require_approval", "approval_id": approval_id}
    used = {**_record(3, session_id="run-9"), "decision": "allow", "approval_id": approval_id,
            "approval_status": "approved"}
    spent = {**_record(6, session_id="run-9"), "decision": "allow", "reservation_id": reservation_id}
    data_dir = tmp_path / "a"
    data_dir.mkdir()
    _fill(data_dir / "decisions.db", [asked, used, spent])
    shipping = _shipping(data_dir / "decisions.db", pg_url)
    shipping.start()
    try:
        wait_for(lambda: shipping.exporters[0].status.cursor == 3)
    finally:
        shipping.stop(1)

    done = logs("timeline", "run-9", "--state-store", pg_url, "--format", "json")
    assert done.returncode == 0, done.stderr
    steps = json.loads(done.stdout)["steps"]
    assert [s["approval"]["event"] for s in steps[:2]] == ["opened", "presented"]
    assert {(s["approval"]["status_now"], s["approval"]["decided_by"], s["approval"]["reason"])
            for s in steps[:2]} == {("approved", "rita", "release 1.2")}
    assert steps[2]["spend"] == {"reservation_id": reservation_id, "units": [
        {"unit": "usd", "reserved": 0.5, "committed": 0.25, "status": "committed", "over_reported": False}]}
    text = logs("timeline", "run-9", "--state-store", pg_url).stdout
    assert "decided by rita" in text and "usd reserved 0.5, committed 0.25 (committed)" in text


def test_timeline_from_a_store_without_approvals_or_budgets_shows_the_decisions_and_says_what_is_missing(
        tmp_path: Path, pg_url: str) -> None:
    _migrate(pg_url)  # the decisions component only
    linked = {**_record(0, session_id="run-5"), "decision": "require_approval", "approval_id": "apr_1"}
    data_dir = tmp_path / "a"
    data_dir.mkdir()
    ids = _fill(data_dir / "decisions.db", [linked, _record(3, session_id="run-5")])
    shipping = _shipping(data_dir / "decisions.db", pg_url)
    shipping.start()
    try:
        wait_for(lambda: shipping.exporters[0].status.cursor == 2)
    finally:
        shipping.stop(1)
    done = logs("timeline", "run-5", "--state-store", pg_url, "--format", "json")
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout)
    assert [s["decision_id"] for s in line["steps"]] == ids
    assert "approvals" in line["state_note"] and line["state_note"].endswith(
        "approval decisions and spend are not shown")
    assert "status_now" not in line["steps"][0]["approval"]
