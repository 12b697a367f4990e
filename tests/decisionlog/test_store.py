"""The DecisionStore protocol on SQLite: what each method promises, on a real log written by DecisionLog.

A PostgreSQL store implements the same protocol; these tests say what it has to do.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tollgate.decisionlog import (
    DecisionLog,
    DecisionRecord,
    DecisionStore,
    LogConfig,
    LogReadError,
    Query,
    SqliteDecisionStore,
    matching,
    open_read_only,
)
from tollgate.decisionlog._sqlite import GENESIS

AGENTS = ["code-reviewer", "release-bot", "code-reviewer", "release-bot", "code-reviewer", "code-reviewer"]


def _record(i: int, agent: str) -> DecisionRecord:
    return DecisionRecord(
        decision_id=f"dec-{i}", timestamp=f"2026-12-31T23:59:5{i}.000000Z",
        input={"kind": "tool", "principal": {"agent_id": agent, "session_id": f"s-{i % 2}"},
               "tool": {"server": "github", "name": "get_pull_request"}},
        decision="allow" if i % 3 else "deny", request_id="req-a" if i in (1, 4) else "",
        bundle_revision="rev-1")


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """Six records, seq 1..6 (dec-1..dec-6)."""
    log = DecisionLog(LogConfig(path=tmp_path / "decisions.db"))

    async def run() -> None:
        log.start(asyncio.get_running_loop())
        for i, agent in enumerate(AGENTS, start=1):
            await log.append(_record(i, agent))

    asyncio.run(run())
    log.close()
    return tmp_path


@pytest.fixture
def store(data_dir: Path) -> Iterator[DecisionStore]:
    with open_read_only(data_dir) as opened:
        yield opened


def test_the_sqlite_store_implements_every_method_of_the_protocol() -> None:
    wanted = {name for name, _ in inspect.getmembers(DecisionStore, inspect.isfunction) if not name.startswith("_")}
    assert wanted >= {"get", "latest_for_request", "page", "find", "span", "position", "snapshot", "bounds",
                      "link_before", "hash_at", "anchors", "pruned_upto", "cursors", "cursor", "save_cursor",
                      "prune", "close"}
    for name in wanted:
        ours = getattr(SqliteDecisionStore, name)
        promised = inspect.signature(getattr(DecisionStore, name)).parameters.keys()
        assert inspect.signature(ours).parameters.keys() == promised, name


def test_get_and_latest_for_request_give_typed_records_with_their_place(store: DecisionStore) -> None:
    got = store.get("dec-3")
    assert got is not None and (got.seq, got.decision, got.principal["agent_id"]) == (3, "deny", "code-reviewer")
    assert got.hash == store.hash_at(3) and got.prev_hash == store.hash_at(2)
    latest = store.latest_for_request("req-a")
    assert latest is not None and latest.decision_id == "dec-4"
    assert store.get("dec-unknown") is None and store.latest_for_request("req-unknown") is None


@pytest.mark.parametrize(("query", "after", "upto", "limit", "seqs"), [
    (Query(), 0, None, 100, [1, 2, 3, 4, 5, 6]),
    (Query(), 2, 5, 100, [3, 4, 5]),
    (Query(), 0, None, 2, [1, 2]),
    (Query(agent="code-reviewer"), 1, None, 100, [3, 5, 6]),
    (Query(agent="code-reviewer", limit=1), 0, None, 100, [1, 3, 5, 6]),
], ids=["all", "after-upto", "page-limit", "query", "query-limit-not-applied"])
def test_page_reads_in_append_order_within_bounds(store: DecisionStore, query: Query, after: int, upto: int | None,
                                                  limit: int, seqs: list[int]) -> None:
    assert [r.seq for r in store.page(query, after=after, upto=upto, limit=limit)] == seqs


def test_matching_reads_every_page(store: DecisionStore) -> None:
    assert [r.seq for r in matching(store, Query(), batch=2)] == [1, 2, 3, 4, 5, 6]
    assert [r.seq for r in matching(store, Query(decision="deny"), after=3, batch=1)] == [6]


def test_find_with_a_limit_gives_the_most_recent_oldest_first(store: DecisionStore) -> None:
    assert [r.seq for r in store.find(Query(agent="code-reviewer", limit=2))] == [5, 6]
    assert [r.seq for r in store.find(Query(agent="release-bot"))] == [2, 4]


def test_span_is_the_range_a_replay_reads(store: DecisionStore) -> None:
    assert store.span(Query()) == (0, 6)
    assert store.span(Query(limit=2)) == (4, 6)
    after, upto = store.span(Query(agent="release-bot", limit=1))
    assert [r.seq for r in matching(store, Query(agent="release-bot"), after=after, upto=upto)] == [4]


def test_position_takes_a_seq_or_a_decision_id(store: DecisionStore) -> None:
    assert (store.position("4"), store.position("dec-5")) == (4, 5)
    with pytest.raises(LogReadError, match="no record with decision ID 'dec-9'"):
        store.position("dec-9")


def test_the_chain_reads(store: DecisionStore) -> None:
    assert store.bounds() == (1, 6)
    before = store.link_before(4)
    assert before == (3, store.hash_at(3))
    assert store.link_before(1) is None and store.hash_at(9) is None
    first = store.page(Query(), limit=1)[0]
    assert first.prev_hash == GENESIS and first.decision_record().seq == 1


def test_a_read_only_store_has_no_cursors_anchors_or_writes(store: DecisionStore) -> None:
    assert (store.cursors(), store.cursor("opa"), store.anchors(), store.pruned_upto()) == ({}, 0, [], 0)
    with pytest.raises(LogReadError, match=r"cannot update decision log .*export_cursors"):
        store.save_cursor("opa", 1)


def test_cursors_and_pruning_on_the_servers_own_store(data_dir: Path) -> None:
    with SqliteDecisionStore.open(data_dir / "decisions.db") as store:
        store.save_cursor("opa", 4)
        store.save_cursor("otlp", 2)
        assert store.cursors() == {"opa": 4, "otlp": 2} and store.cursor("opa") == 4
        # Older than 23:59:54 and at most seq 3: seq 1..3, in batches of 2 (the first sweep may go on).
        assert store.prune(upto=3, before="2026-12-31T23:59:54.000000Z", swept_at="t1", batch=2) == (2, True)
        assert store.prune(upto=3, before="2026-12-31T23:59:54.000000Z", swept_at="t1", batch=2) == (1, False)
        assert store.bounds() == (4, 6)
        [anchor] = store.anchors()  # one anchor per sweep
        assert (anchor.upto_seq, anchor.pruned_at, store.pruned_upto()) == (3, "t1", 3)
        assert store.link_before(4) is None
        # The window stops a sweep at the first record inside it.
        assert store.prune(upto=5, before="2026-12-31T23:59:55.000000Z", swept_at="t2", batch=10) == (1, False)
        assert store.bounds() == (5, 6)


def test_a_snapshot_holds_one_committed_log_while_the_server_writes(data_dir: Path, store: DecisionStore) -> None:
    log = DecisionLog(LogConfig(path=data_dir / "decisions.db"))

    async def append_one() -> None:
        log.start(asyncio.get_running_loop())
        await log.append(_record(7, "release-bot"))

    with store.snapshot():
        assert store.bounds() == (1, 6)
        asyncio.run(append_one())
        assert store.bounds() == (1, 6)
    log.close()
    assert store.bounds() == (1, 7)


def test_a_file_that_is_not_a_log_is_a_read_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "decisions.db").write_bytes(os.urandom(4096))
    with pytest.raises(LogReadError, match=rf"cannot read decision log {tmp_path}/decisions\.db: .*is it a Tollgate"):
        open_read_only(tmp_path)
    with pytest.raises(LogReadError, match="no decision log at"):
        open_read_only(tmp_path / "elsewhere")


def test_a_record_that_is_not_one_is_named_by_its_seq(data_dir: Path) -> None:
    db = sqlite3.connect(data_dir / "decisions.db", isolation_level=None)
    db.execute("UPDATE decisions SET record = '[1]' WHERE seq = 2")
    with open_read_only(data_dir) as store:
        with pytest.raises(ValueError, match=r"^seq 2: not a JSON object$"):
            store.get("dec-2")


#: SQL naming the log's table (case matters: prose says "from decisions" too).
_SQL = re.compile(r"\b(?:FROM|INTO|UPDATE|JOIN)\s+decisions\b|\bdecisions\s+WHERE\b")


def test_sql_against_the_decisions_table_is_only_in_the_sqlite_store_and_writer() -> None:
    package = ROOT / "server" / "tollgate"
    sources = [*package.rglob("*.py"), *(ROOT / "tools").rglob("*.py")]
    speaking = sorted(str(p.relative_to(ROOT)) for p in sources if _SQL.search(p.read_text()))
    assert speaking == ["server/tollgate/decisionlog/_sqlite.py", "server/tollgate/decisionlog/_sqlite_store.py"]
