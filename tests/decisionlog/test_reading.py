"""`tollgate logs verify|query|export` over real SQLite decision logs written by DecisionLog, then tampered with."""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import signal
import sqlite3
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, TOLLGATE, wait_for
from tollgate.decisionlog import (
    DecisionLog,
    DecisionRecord,
    FileExport,
    LogConfig,
    Query,
    Rotation,
    open_read_only,
    read_export,
    verify,
)
from tollgate.decisionlog._sqlite import record_hash
from tollgate.decisionlog._sqlite_store import query_sql
from tollgate.ids import new_decision_id
from tollgate_cli.main import main

PRUNED = """CREATE TABLE decisions_pruned (upto_seq INTEGER PRIMARY KEY, last_hash TEXT NOT NULL,
            pruned_at TEXT NOT NULL)"""


def _record(i: int, *, agent: str = "code-reviewer", session: str = "s1", instance: str = "cr-1",
            decision: str = "allow", server: str = "github", name: str = "get_pull_request",
            timestamp: str = "") -> dict[str, Any]:
    """A record shaped as the authorizer writes it."""
    reasons = [] if decision == "allow" else [{"code": f"{decision}_reason", "message": "why"}]
    return {
        "decision_id": new_decision_id(), "timestamp": timestamp or f"2026-11-21T10:{i // 60:02d}:{i % 60:02d}.000000Z",
        "input": {"kind": "tool", "principal": {"agent_id": agent, "instance_id": instance, "session_id": session},
                  "tool": {"server": server, "name": name, "arguments": {"pr": i}, "resources": []}},
        "result": {"decision": decision, "reasons": reasons}, "decision": decision, "reasons": reasons,
        "obligations": {}, "bundle_revision": "rev-1", "policy_path": "tollgate/decision", "request_id": "",
        "request_digest": "d" * 64, "approval_id": "", "approval_status": "", "reservation_id": "",
        "previous_decision_id": "", "error": "", "latency_us": 250,
    }


def write_log(data_dir: Path, records: list[dict[str, Any]]) -> None:
    """Append records through the server's own DecisionLog (group commit, hash chain), in order (as the typed
    records the authorizer appends: fields a dict leaves out are written empty)."""
    log = DecisionLog(LogConfig(path=data_dir / "decisions.db"))

    async def run() -> None:
        log.start(asyncio.get_running_loop())
        for record in records:
            await log.append(DecisionRecord.from_dict(record))

    asyncio.run(run())
    log.close()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    write_log(d, [_record(i) for i in range(1, 11)])
    return d


def _db(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(data_dir / "decisions.db", isolation_level=None)


def _verify(data_dir: Path, *args: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["logs", "verify", "--data-dir", str(data_dir), *args])
    out, err = capsys.readouterr()
    return code, out, err


def _head(data_dir: Path) -> str:
    return str(_db(data_dir).execute("SELECT hash FROM decisions ORDER BY seq DESC LIMIT 1").fetchone()[0])


# -- verify -----------------------------------------------------------------------------------------------------


def test_verify_an_intact_log_prints_one_line_and_exits_0(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _verify(data_dir, capsys=capsys)
    assert code == 0
    assert out == f"verified 10 records, seq 1..10, head hash {_head(data_dir)} (from genesis)\n"


def test_verify_names_an_edited_record(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _db(data_dir).execute("UPDATE decisions SET record = replace(record, '\"allow\"', '\"deny\"') WHERE seq = 4")
    code, _, err = _verify(data_dir, capsys=capsys)
    decision_id = _db(data_dir).execute("SELECT decision_id FROM decisions WHERE seq = 4").fetchone()[0]
    assert code == 1
    assert f"seq 4 ({decision_id}): edited: the record does not hash to its stored hash" in err
    assert "the 3 record(s) before it (seq 1..3) hold" in err


def test_verify_names_a_column_edited_beside_its_hashed_record(data_dir: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    _db(data_dir).execute("UPDATE decisions SET decision = 'deny' WHERE seq = 6")  # what queries filter on
    code, _, err = _verify(data_dir, capsys=capsys)
    assert code == 1
    assert "seq 6 (" in err and "edited: column decision is 'deny' but the hashed record says 'allow'" in err


def test_verify_names_the_record_after_a_deleted_one(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _db(data_dir).execute("DELETE FROM decisions WHERE seq IN (5, 6)")
    code, _, err = _verify(data_dir, capsys=capsys)
    assert code == 1
    assert "seq 7 (" in err and "deleted: seq 5..6 missing after seq 4: records were deleted" in err


def test_verify_names_a_reordered_record(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _db(data_dir)
    # Swap the contents of seq 5 and 6 (each row keeps a self-consistent hash): only the links betray it.
    db.execute("UPDATE decisions SET seq = -5 WHERE seq = 5")
    db.execute("UPDATE decisions SET seq = 5 WHERE seq = 6")
    db.execute("UPDATE decisions SET seq = 6 WHERE seq = -5")
    code, _, err = _verify(data_dir, capsys=capsys)
    assert code == 1
    assert "seq 5 (" in err and "relinked: prev_hash" in err and "is not the hash of seq 4" in err


def test_verify_catches_an_edit_that_was_re_hashed_at_the_next_record(data_dir: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    db = _db(data_dir)
    body, prev = db.execute("SELECT record, prev_hash FROM decisions WHERE seq = 3").fetchone()
    forged = body.replace('"latency_us":250', '"latency_us":1')
    db.execute("UPDATE decisions SET record = ?, hash = ? WHERE seq = 3", (forged, record_hash(prev, forged)))
    code, _, err = _verify(data_dir, capsys=capsys)
    assert code == 1
    assert "seq 4 (" in err and "relinked" in err and "(or edited and re-hashed)" in err


def test_deleting_the_newest_records_is_only_seen_against_a_head_kept_elsewhere(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    head = _head(data_dir)
    _db(data_dir).execute("DELETE FROM decisions WHERE seq >= 9")
    code, out, _ = _verify(data_dir, capsys=capsys)
    assert code == 0 and out.startswith("verified 8 records, seq 1..8")  # a shorter chain is still a chain
    code, _, err = _verify(data_dir, "--expect-head", head, capsys=capsys)
    assert code == 1
    assert f"truncated: no record hashes the expected head {head}: records after this one were deleted" in err


def test_verify_sees_the_newest_records_deleted_past_what_an_exporter_delivered(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _db(data_dir)
    db.execute("CREATE TABLE export_cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_at TEXT NOT NULL)")
    db.execute("INSERT INTO export_cursors VALUES ('opa', 9, '2026-11-21T12:00:00.000000Z')")
    assert _verify(data_dir, capsys=capsys)[0] == 0  # delivered up to 9 of 10: nothing missing
    db.execute("DELETE FROM decisions WHERE seq >= 9")
    code, _, err = _verify(data_dir, capsys=capsys)
    assert code == 1
    assert "seq 8 (" in err and "truncated: the opa exporter delivered up to seq 9, but the log ends here" in err


def test_verify_accepts_a_head_that_is_still_in_the_log(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    older = _db(data_dir).execute("SELECT hash FROM decisions WHERE seq = 7").fetchone()[0]
    assert _verify(data_dir, "--expect-head", older, capsys=capsys)[0] == 0


def test_verify_a_range_by_seq_or_decision_id(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = _db(data_dir)
    db.execute("UPDATE decisions SET record = record || ' ' WHERE seq = 9")  # outside the range
    code, out, _ = _verify(data_dir, "--from", "3", "--to", "6", capsys=capsys)
    assert code == 0
    assert out.startswith("verified 4 records, seq 3..6, head hash ") and out.endswith("(from seq 2)\n")
    first = db.execute("SELECT decision_id FROM decisions WHERE seq = 8").fetchone()[0]
    code, _, err = _verify(data_dir, "--from", first, capsys=capsys)
    assert code == 1 and "seq 9 (" in err and "edited" in err
    code, _, err = _verify(data_dir, "--from", "dec_unknown", capsys=capsys)
    assert code == 2 and "no record with decision ID 'dec_unknown'" in err


def test_verify_a_range_checks_its_link_to_the_record_before(data_dir: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    _db(data_dir).execute("DELETE FROM decisions WHERE seq = 4")
    code, _, err = _verify(data_dir, "--from", "5", capsys=capsys)
    assert code == 1 and "seq 5 (" in err and "seq 4 missing after seq 3" in err


def _prune(data_dir: Path, upto: int, *, last_hash: str | None = None) -> None:
    db = _db(data_dir)
    real = db.execute("SELECT hash FROM decisions WHERE seq = ?", (upto,)).fetchone()[0]
    db.execute(PRUNED)
    db.execute("INSERT INTO decisions_pruned VALUES (?, ?, '2026-11-21T12:00:00.000000Z')", (upto, last_hash or real))
    db.execute("DELETE FROM decisions WHERE seq <= ?", (upto,))


def test_verify_starts_at_the_retention_anchor(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _prune(data_dir, 4)
    code, out, _ = _verify(data_dir, capsys=capsys)
    assert code == 0
    assert out.startswith("verified 6 records, seq 5..10") and out.endswith("(from pruning anchor at seq 4)\n")


def test_verify_refuses_an_anchor_that_does_not_lead_to_the_first_record(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _prune(data_dir, 4, last_hash="f" * 64)
    code, _, err = _verify(data_dir, capsys=capsys)
    assert code == 1 and "seq 5 (" in err and "is not the hash of pruning anchor at seq 4" in err


def test_verify_names_records_deleted_from_the_start_without_an_anchor(
        data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _db(data_dir).execute("DELETE FROM decisions WHERE seq <= 3")
    code, _, err = _verify(data_dir, capsys=capsys)
    assert code == 1 and "seq 4 (" in err and "deleted: seq 1..3 missing after genesis" in err


def test_verify_without_a_log_says_where_it_looked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = _verify(tmp_path, capsys=capsys)
    assert code == 2 and f"no decision log at {tmp_path}/decisions.db" in err and "--data-dir" in err


def test_verify_reads_without_writing(data_dir: Path) -> None:
    path = data_dir / "decisions.db"
    os.chmod(path, 0o444)  # a read-write open would still succeed as root, so also check nothing changed
    before = path.read_bytes()
    with open_read_only(data_dir) as db:
        assert verify(db).intact
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            db.connection.execute("DELETE FROM decisions")
    assert path.read_bytes() == before


# -- query ------------------------------------------------------------------------------------------------------


@pytest.fixture
def mixed(tmp_path: Path) -> Path:
    d = tmp_path / "mixed"
    write_log(d, [
        _record(1, agent="code-reviewer", session="s1", instance="cr-1"),
        _record(2, agent="code-reviewer", session="s1", instance="cr-1", decision="deny", name="merge_pull_request"),
        _record(3, agent="release-bot", session="s2", instance="rb-1", server="slack", name="post_message"),
        _record(4, agent="release-bot", session="s2", instance="rb-2", decision="require_approval",
                name="merge_pull_request"),
        _record(5, agent="code-reviewer", session="s3", instance="cr-1"),
    ])
    return d


def _agents(data_dir: Path, query: Query) -> list[tuple[int, str]]:
    with open_read_only(data_dir) as db:
        return [(r.seq, r.agent_id) for r in db.find(query)]


@pytest.mark.parametrize(("query", "seqs"), [
    (Query(agent="release-bot"), [3, 4]),
    (Query(session="s1"), [1, 2]),
    (Query(instance="cr-1"), [1, 2, 5]),
    (Query(decision="deny"), [2]),
    (Query(tool="github/merge_pull_request"), [2, 4]),
    (Query(tool="post_message"), [3]),
    (Query(tool="github/post_message"), []),
    (Query(agent="code-reviewer", limit=2), [2, 5]),
], ids=["agent", "session", "instance", "decision", "tool", "tool-name-only", "tool-other-server", "limit-newest"])
def test_query_filters(mixed: Path, query: Query, seqs: list[int]) -> None:
    assert [s for s, _ in _agents(mixed, query)] == seqs


def test_query_by_time_window(mixed: Path) -> None:
    from tollgate.encoding import parse_time

    window = Query(since=parse_time("2026-11-21T10:00:02Z"), until=parse_time("2026-11-21T10:00:04Z"))
    assert [s for s, _ in _agents(mixed, window)] == [2, 3]


def test_query_refuses_an_unknown_decision() -> None:
    with pytest.raises(ValueError, match="decision 'maybe' is not one of allow, deny, require_approval"):
        Query(decision="maybe")


def test_query_uses_indexes_for_agent_session_and_time(mixed: Path) -> None:
    with open_read_only(mixed) as db:
        for query in (Query(agent="a"), Query(session="s"), Query(since=datetime.now(UTC))):
            where, params = query_sql(query)
            plan = " ".join(r[3] for r in db.connection.execute(
                f"EXPLAIN QUERY PLAN SELECT seq FROM decisions WHERE {where}", params))
            assert "INDEX decisions_" in plan, (query, plan)


def test_a_log_written_before_the_query_indexes_gains_them_when_opened(data_dir: Path) -> None:
    db = _db(data_dir)
    for name in ("decisions_agent_id", "decisions_session_id", "decisions_timestamp"):
        db.execute(f"DROP INDEX {name}")
    DecisionLog(LogConfig(path=data_dir / "decisions.db")).close()
    names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert {"decisions_agent_id", "decisions_session_id", "decisions_timestamp"} <= names


def test_query_table_and_json(mixed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["logs", "query", "--data-dir", str(mixed), "--agent", "release-bot"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["TIME", "DECISION", "ID", "AGENT", "SESSION", "KIND", "TARGET", "DECISION", "REASON"]
    assert len(lines) == 3
    assert lines[1].split()[2:] == ["release-bot", "s2", "tool", "slack/post_message", "allow", "-"]
    assert lines[2].split()[2:] == ["release-bot", "s2", "tool", "github/merge_pull_request", "require_approval",
                                    "require_approval_reason"]
    assert main(["logs", "query", "--data-dir", str(mixed), "--decision", "deny", "--format", "json"]) == 0
    [record] = json.loads(capsys.readouterr().out)
    assert record["seq"] == 2 and len(record["hash"]) == 64 and record["input"]["tool"]["name"] == "merge_pull_request"


def test_query_rejects_a_bad_time(mixed: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["logs", "query", "--data-dir", str(mixed), "--since", "yesterday"])
    assert "neither an RFC 3339 time" in capsys.readouterr().err


# -- export -----------------------------------------------------------------------------------------------------


def test_export_opa_events_to_gzip(data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "events.jsonl.gz"
    assert main(["logs", "export", "--data-dir", str(data_dir), "--format", "opa", "-o", str(out)]) == 0
    assert "exported 10 record(s)" in capsys.readouterr().err
    events = [json.loads(line) for line in gzip.decompress(out.read_bytes()).splitlines()]
    assert [e["tollgate"]["seq"] for e in events] == list(range(1, 11))
    assert events[-1]["tollgate"]["hash"] == _head(data_dir)
    assert events[0]["labels"]["id"] == "cr-1" and events[0]["path"] == "tollgate/decision"
    assert events[0]["timestamp"] == "2026-11-21T10:00:01.000000000Z"


def test_export_jsonl_to_stdout_re_checks_as_a_chain(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tollgate.encoding import canonical_json

    assert main(["logs", "export", "--data-dir", str(data_dir), "--format", "jsonl", "-o", "-",
                 "--since", "2026-11-21T10:00:05Z"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["seq"] for r in records] == list(range(5, 11))
    for record in records:  # the file alone proves its records: hash = sha256(prev_hash + "\n" + record)
        digest, body = record.pop("hash"), {k: v for k, v in record.items() if k != "seq"}
        assert record_hash(body["prev_hash"], canonical_json(body)) == digest


def test_export_flags_that_do_not_fit(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["logs", "export", "--data-dir", str(data_dir)]
    assert main([*base, "-o", "-", "--rotate-bytes", "10"]) == 2
    assert "--rotate-bytes needs a file and a cursor" in capsys.readouterr().err
    assert main([*base, "-o", "x.jsonl", "--follow", "--until", "1h"]) == 2
    assert "--until cannot be combined with --follow" in capsys.readouterr().err


def _exported_seqs(path: Path) -> list[int]:
    files = sorted(path.parent.glob(path.name + ".*[0-9]"), key=lambda p: -int(p.name.rsplit(".", 1)[1]))
    return [e["tollgate"]["seq"] for f in [*files, path] if f.exists() for e in read_export(f)]


def test_file_export_rotates_and_keeps_k_files(tmp_path: Path) -> None:
    d = tmp_path / "data"
    write_log(d, [_record(i) for i in range(1, 4)])
    out = tmp_path / "out" / "decisions.jsonl"
    out.parent.mkdir()
    with open_read_only(d) as db:
        export = FileExport(db, out, fmt="opa", cursor_path=tmp_path / "out" / "cursor",
                            rotation=Rotation(max_bytes=1, keep=2), batch=2)
        assert export.step() == 3  # batches of 2 and 1: the second batch found the file past 1 byte
        for i in range(4, 8):
            write_log(d, [_record(i)])
            assert export.step() == 1
    names = sorted(p.name for p in out.parent.iterdir())
    assert names == ["cursor", "decisions.jsonl", "decisions.jsonl.1", "decisions.jsonl.2"]
    assert [e["tollgate"]["seq"] for e in read_export(out)] == [7]
    assert [e["tollgate"]["seq"] for e in read_export(out.with_name("decisions.jsonl.1"))] == [6]
    assert [e["tollgate"]["seq"] for e in read_export(out.with_name("decisions.jsonl.2"))] == [5]
    assert json.loads((tmp_path / "out" / "cursor").read_text())["seq"] == 7


def test_file_export_resumes_after_a_crash_without_loss_or_duplicates(tmp_path: Path) -> None:
    d = tmp_path / "data"
    write_log(d, [_record(i) for i in range(1, 6)])
    out, cursor = tmp_path / "e.jsonl.gz", tmp_path / "e.cursor"
    with open_read_only(d) as db:
        assert FileExport(db, out, fmt="jsonl", cursor_path=cursor).step() == 5
    # A crash after a batch reached the file but before the cursor said so: the batch is in the file twice
    # unless the restart cuts it off.
    unacknowledged = gzip.compress(b'{"seq": 6}\n')
    with out.open("ab") as fh:
        fh.write(unacknowledged)
    write_log(d, [_record(i) for i in range(6, 9)])
    with open_read_only(d) as db:
        assert FileExport(db, out, fmt="jsonl", cursor_path=cursor).step() == 3
    assert [r["seq"] for r in read_export(out)] == list(range(1, 9))


def test_file_export_refuses_a_cursor_from_another_log(tmp_path: Path) -> None:
    from tollgate.decisionlog import FileExportError

    first, second = tmp_path / "a", tmp_path / "b"
    write_log(first, [_record(i) for i in range(1, 3)])
    write_log(second, [_record(i) for i in range(1, 3)])
    with open_read_only(first) as db:
        FileExport(db, tmp_path / "e.jsonl", fmt="jsonl", cursor_path=tmp_path / "c").step()
    with open_read_only(second) as db, pytest.raises(FileExportError, match="belongs to another log"):
        FileExport(db, tmp_path / "e.jsonl", fmt="jsonl", cursor_path=tmp_path / "c")


def test_file_export_says_when_retention_deleted_records_it_had_not_written(tmp_path: Path) -> None:
    d = tmp_path / "data"
    write_log(d, [_record(i) for i in range(1, 4)])
    lost: list[str] = []
    with open_read_only(d) as db:
        export = FileExport(db, tmp_path / "e.jsonl", fmt="jsonl", cursor_path=tmp_path / "c", on_loss=lost.append)
        assert export.step() == 3
        write_log(d, [_record(i) for i in range(4, 9)])
        _prune(d, 6)  # retention does not wait for a file export
        assert export.step() == 2
        assert export.step() == 0  # said once per range
    assert lost == ["seq 4..6 were deleted by retention before this export wrote them (export more often than "
                    "decision_log_retention, or keep records longer)"]
    assert [r["seq"] for r in read_export(tmp_path / "e.jsonl")] == [1, 2, 3, 7, 8]


def _follower(data_dir: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen([*TOLLGATE, "logs", "export", "--data-dir", str(data_dir), "-o", str(out), "--follow",
                             "--rotate-bytes", "2000", "--keep", "50", "--interval", "0.05"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_follow_exports_new_records_and_a_restarted_follower_resumes(tmp_path: Path) -> None:
    d = tmp_path / "data"
    write_log(d, [_record(i) for i in range(1, 4)])
    out = tmp_path / "export" / "decisions.jsonl"
    out.parent.mkdir()
    cursor = out.with_name("decisions.jsonl.cursor")

    def exported_upto() -> int:
        return int(json.loads(cursor.read_text())["seq"]) if cursor.exists() else 0

    def exported(seq: int) -> Any:
        return lambda: exported_upto() == seq

    for batch in (range(4, 15), range(15, 30)):
        follower = _follower(d, out)
        try:
            wait_for(exported(batch.start - 1))
            for i in batch:  # committed while the follower runs
                write_log(d, [_record(i)])
            wait_for(exported(batch.stop - 1))
        finally:
            follower.send_signal(signal.SIGTERM)
            _, err = follower.communicate(timeout=30)
        assert follower.returncode == 0, err
    assert _exported_seqs(out) == list(range(1, 30))
    assert len(list(out.parent.glob("decisions.jsonl.[0-9]*"))) >= 2  # ~450 bytes per event: it rotated
