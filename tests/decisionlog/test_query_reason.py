"""The console's queries on the decision log: by reason code and kind, and the sessions active in a window.

Each answers the same on a sidecar's decisions.db (SqliteDecisionStore) and on the fleet's shipped copy
(PgDecisionReader, a real PostgreSQL server); the SQLite reason search reads only the window the timestamp index
gives it.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import wait_for
from tests.decisionlog.test_pg_export import BASE, _fill, _migrate, _record, _shipping
from tests.pg import PostgresServer
from tollgate.decisionlog import ActiveSessions, Query, SqliteDecisionStore, open_reader


def _varied(i: int) -> dict[str, Any]:
    """_record's mix, with two reasons on some denials and a needle inside an argument of some allows."""
    record = _record(i, user=f"user-{i % 5}", team="platform" if i % 2 else "data", workflow=f"wf-{i % 3}")
    if record["decision"] == "deny" and i % 4 == 1:
        record["reasons"] = [{"code": "budget_exceeded", "message": "over"},
                             {"code": "kill_switch", "message": "stopped"}]
    if record["decision"] == "allow" and record["input"]["kind"] == "tool":
        # The reason's canonical text inside an argument: the substring test finds it, the exact test refuses it.
        record["input"]["tool"]["arguments"] = {"note": {"code": "kill_switch"}}
    return record


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> tuple[Path, str]:
    """300 varied records in a local log, shipped whole into a store of their own."""
    path = tmp_path_factory.mktemp("reason") / "decisions.db"
    url = postgres.database()
    _migrate(url)
    _fill(path, [_varied(i) for i in range(300)])
    shipping = _shipping(path, url)
    shipping.start()
    try:
        wait_for(lambda: shipping.exporters[0].status.cursor == 300)
    finally:
        shipping.stop(1)
    return path, url


QUERIES = {
    "reason": Query(reason="tool_not_in_manifest"),
    "second reason": Query(reason="kill_switch"),
    "reason and window": Query(reason="budget_exceeded", since=BASE + timedelta(milliseconds=50),
                               until=BASE + timedelta(milliseconds=200)),
    "reason and agent and limit": Query(reason="tool_not_in_manifest", agent="deployer", limit=5),
    "reason nobody gave": Query(reason="policy_contract"),
    "reason since, to now": Query(reason="kill_switch", since=BASE + timedelta(milliseconds=120), limit=9),
    "kind and decision since, to now": Query(kind="budget", decision="allow", since=BASE + timedelta(milliseconds=7),
                                             limit=11),
    "tool since, to now, nothing after": Query(tool="post_message", since=BASE + timedelta(hours=1)),
    "kind": Query(kind="budget"),
    "kind and decision": Query(kind="model", decision="allow"),
}


def _fleet_find(url: str, query: Query) -> list[Any]:
    async def run() -> list[Any]:
        async with open_reader(url) as reader:
            return list(await reader.find(query))

    return asyncio.run(run())


@pytest.mark.parametrize("query", QUERIES.values(), ids=QUERIES.keys())
def test_reason_and_kind_find_the_same_records_in_both_logs(logs: tuple[Path, str], query: Query) -> None:
    path, url = logs
    with SqliteDecisionStore.open(path) as store:
        local = store.find(query)
    assert [(r.decision_id, r.seq) for r in _fleet_find(url, query)] == [(r.decision_id, r.seq) for r in local]
    for row in local:
        record = row.record()
        if query.reason:
            assert query.reason in [r["code"] for r in record["reasons"]]
        if query.kind:
            assert record["input"]["kind"] == query.kind
    assert bool(local) == (query not in (QUERIES["reason nobody gave"], QUERIES["tool since, to now, nothing after"]))


def test_a_reason_inside_an_argument_is_no_reason(logs: tuple[Path, str]) -> None:
    path, _ = logs
    with SqliteDecisionStore.open(path) as store:
        found = store.find(Query(reason="kill_switch"))
        needle = store.connection.execute(
            "SELECT count(*) FROM decisions WHERE instr(record, '\"code\":\"kill_switch\"') > 0").fetchone()[0]
    assert found and all(r.decision == "deny" for r in found)
    assert needle > len(found)  # the allowed tool calls hold it in an argument


@pytest.mark.parametrize("query", [Query(reason="kill_switch", since=BASE), Query(kind="budget", since=BASE),
                                   Query(tool="merge_pull_request", decision="deny", since=BASE)],
                         ids=["reason", "kind", "tool"])
def test_a_window_to_now_is_walked_newest_first_from_its_first_seq(logs: tuple[Path, str], query: Query) -> None:
    # Not read whole through the timestamp index and sorted: the rowid range from the window's first seq (found in
    # the index) is read newest first, so a page stops at its limit.
    from tollgate.decisionlog._sqlite_store import query_sql

    path, _ = logs
    where, params = query_sql(query)
    with SqliteDecisionStore.open(path) as store:
        plan = " | ".join(str(r[-1]) for r in store.connection.execute(
            f"EXPLAIN QUERY PLAN SELECT seq FROM decisions WHERE {where} ORDER BY seq DESC LIMIT 50", params))
    assert plan.startswith("SEARCH decisions USING INTEGER PRIMARY KEY (rowid>?)"), plan
    assert "COVERING INDEX decisions_timestamp" in plan and "TEMP B-TREE" not in plan, plan


def test_a_reason_query_is_refused_for_an_unknown_kind() -> None:
    with pytest.raises(ValueError, match="kind 'tools' is not one of tool, model, budget"):
        Query(kind="tools")


def _fleet_sessions(url: str, **kwargs: Any) -> ActiveSessions:
    async def run() -> ActiveSessions:
        async with open_reader(url) as reader:
            return await reader.sessions(**kwargs)

    return asyncio.run(run())


def test_active_sessions_count_each_sessions_decisions_in_the_window(logs: tuple[Path, str]) -> None:
    path, url = logs
    since = BASE + timedelta(milliseconds=100)
    with SqliteDecisionStore.open(path) as store:
        local = store.sessions(since)
        every = [r.record() for r in store.find(Query(since=since))]
    fleet = _fleet_sessions(url, since=since)
    assert local == fleet
    assert (local.scanned, local.capped) == (200, False)
    assert [s.session for s in local.sessions] == ["run-2", "run-1", "run-0"]  # record 299 is run-2's
    for active in local.sessions:
        mine = [r for r in every if r["input"]["principal"]["session_id"] == active.session]
        newest = mine[-1]["input"]["principal"]
        assert (active.decisions, active.denials, active.approvals_asked) == (
            len(mine), sum(r["decision"] == "deny" for r in mine),
            sum(r["decision"] == "require_approval" for r in mine))
        assert (active.agent, active.user, active.team, active.workflow) == (
            newest["agent_id"], newest["user"], newest["team"], newest["workflow"])
        assert (active.first, active.last) == (mine[0]["timestamp"], mine[-1]["timestamp"])


def test_active_sessions_are_bounded_by_the_scan_and_the_limit(logs: tuple[Path, str]) -> None:
    path, url = logs
    with SqliteDecisionStore.open(path) as store:
        local = store.sessions(BASE, limit=2, scan=30)
    fleet = _fleet_sessions(url, since=BASE, limit=2, scan=30)
    assert local == fleet
    assert (len(local.sessions), local.scanned, local.capped) == (2, 30, True)
    assert sum(s.decisions for s in local.sessions) == 20  # of the newest 30: 10 a session
    with SqliteDecisionStore.open(path) as store:
        assert store.sessions(BASE + timedelta(hours=1)).sessions == ()
