"""Attacks on a real server's decision log (issue 12, item 9): rewriting what the hash chain is meant to prove.

A server writes a few decisions and stops; each test tampers with a copy of its data directory the way someone
with write access to the file would, then asks `tollgate logs verify` (or a restarted server) about it.
"""

from __future__ import annotations

import json
import secrets
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REGO, ROOT, TOLLGATE, start_server, tool_request, wait_for
from tests.log_receiver import LogReceiver
from tollgate.decisionlog import SqliteDecisionStore
from tollgate.decisionlog._checkpoint import Checkpoint, checkpoint_problems, load_key
from tollgate.decisionlog._sqlite import record_hash
from tollgate.encoding import canonical_json

RECORDS = 6


def verify(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOLLGATE, "logs", "verify", "--data-dir", str(data_dir), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The data directory of a server that answered RECORDS decisions (each with a request_id) and stopped."""
    data_dir = tmp_path_factory.mktemp("chain") / "data"
    server = start_server(data_dir)
    try:
        for i in range(RECORDS):
            request = tool_request("code-reviewer", "github", "get_pull_request", {"pullNumber": i})
            request.request_id = f"req-{i}"
            server.authorize(request)
    finally:
        assert server.terminate() == 0
    return data_dir


@pytest.fixture
def log_copy(written: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the written data directory to tamper with."""
    copy = tmp_path / "data"
    shutil.copytree(written, copy)
    yield copy


def tamper(data_dir: Path, *statements: str) -> None:
    db = sqlite3.connect(data_dir / "decisions.db", isolation_level=None)
    try:
        for statement in statements:
            db.execute(statement)
    finally:
        db.close()


def test_an_untouched_log_verifies(log_copy: Path) -> None:
    result = verify(log_copy)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"verified {RECORDS} records, seq 1..{RECORDS}")


@pytest.mark.parametrize(("column", "value"), [("request_id", "req-forged"), ("bundle_revision", "rev-forged")])
def test_verify_names_the_seq_and_column_of_an_edited_indexed_column(log_copy: Path, column: str,
                                                                      value: str) -> None:
    tamper(log_copy, f"UPDATE decisions SET {column} = '{value}' WHERE seq = 3")
    result = verify(log_copy)
    assert result.returncode == 1, result.stdout
    assert "chain broken at seq 3 (" in result.stderr
    assert f"column {column} is {value!r} but the hashed record says" in result.stderr


# -- checkpoints: a key the data directory does not hold ------------------------------------------------------


@dataclass(frozen=True)
class Signed:
    """A stopped server's data directory, its checkpoint key and the checkpoint file it appended to."""

    data_dir: Path
    key: Path
    checkpoints: Path

    def config(self) -> dict[str, str]:
        return {"decision_log_checkpoint_key_file": str(self.key),
                "decision_log_checkpoint_file": str(self.checkpoints)}


@pytest.fixture(scope="module")
def signed_run(tmp_path_factory: pytest.TempPathFactory) -> Signed:
    root = tmp_path_factory.mktemp("signed")
    key = root / "checkpoint.key"
    key.write_text(secrets.token_urlsafe(32) + "\n")
    run = Signed(root / "data", key, root / "checkpoints.jsonl")
    server = start_server(run.data_dir, config=run.config())
    try:
        for i in range(RECORDS):
            server.authorize(tool_request("code-reviewer", "github", "get_pull_request", {"pullNumber": i}))
    finally:
        assert server.terminate() == 0
    return run


@pytest.fixture
def signed(signed_run: Signed, tmp_path: Path) -> Signed:
    """A copy of the signed run to tamper with (the key and checkpoint file are the attacker's out of reach)."""
    copy = Signed(tmp_path / "data", signed_run.key, signed_run.checkpoints)
    shutil.copytree(signed_run.data_dir, copy.data_dir)
    return copy


def rehash_from(data_dir: Path, seq: int) -> None:
    """Edit record `seq` (a field no column copies) and re-hash it and every record after it, as a forger would."""
    db = sqlite3.connect(data_dir / "decisions.db", isolation_level=None)
    try:
        rows = db.execute("SELECT seq, record, prev_hash FROM decisions WHERE seq >= ? ORDER BY seq",
                          (seq,)).fetchall()
        prev = rows[0][2]
        db.execute("BEGIN")
        for number, body, _ in rows:
            record = json.loads(body)
            if number == seq:
                record["policy_path"] = "forged/path"
            record["prev_hash"] = prev
            text = canonical_json(record)
            digest = record_hash(prev, text)
            db.execute("UPDATE decisions SET record = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                       (text, prev, digest, number))
            prev = digest
        db.execute("COMMIT")
    finally:
        db.close()


def forge_anchor(data_dir: Path, upto: int) -> None:
    """Delete records 1..upto and write the retention anchor that would explain it."""
    db = sqlite3.connect(data_dir / "decisions.db", isolation_level=None)
    try:
        (link,) = db.execute("SELECT prev_hash FROM decisions WHERE seq = ?", (upto + 1,)).fetchone()
        db.execute("DELETE FROM decisions WHERE seq <= ?", (upto,))
        db.execute("DELETE FROM decisions_checkpoints WHERE seq <= ?", (upto,))
        db.execute("INSERT INTO decisions_pruned (upto_seq, last_hash, pruned_at) VALUES (?, ?, ?)",
                   (upto, link, "2026-01-01T00:00:00.000000Z"))
    finally:
        db.close()


def test_the_sidecar_publishes_signed_checkpoints_of_the_head_to_the_log_and_its_file(signed: Signed) -> None:
    lines = [json.loads(line) for line in signed.checkpoints.read_text().splitlines()]
    assert lines and lines[-1]["seq"] == RECORDS and lines[-1]["type"] == "tollgate.checkpoint"
    assert lines[-1]["key_id"].startswith("hmac:") and lines[-1]["signature"]
    result = verify(signed.data_dir, "--checkpoints", str(signed.checkpoints), "--key", str(signed.key))
    assert result.returncode == 0, result.stderr


def test_a_re_hashed_chain_fails_against_a_checkpoint(signed: Signed) -> None:
    rehash_from(signed.data_dir, 3)
    assert verify(signed.data_dir).returncode == 0  # the chain alone cannot show it
    result = verify(signed.data_dir, "--checkpoints", str(signed.checkpoints))
    assert result.returncode == 1, result.stdout
    assert f"seq {RECORDS}: hashes " in result.stderr and "the chain was rewritten" in result.stderr
    assert verify(signed.data_dir, "--key", str(signed.key)).returncode == 1  # the log's own checkpoints


def test_a_prefix_deleted_behind_a_forged_anchor_fails_with_the_key(signed: Signed) -> None:
    forge_anchor(signed.data_dir, 2)
    head = verify(signed.data_dir).stdout.split("head hash ")[1].split()[0]
    assert verify(signed.data_dir, "--expect-head", head).returncode == 0  # the chain alone cannot show it
    result = verify(signed.data_dir, "--key", str(signed.key))
    assert result.returncode == 1, result.stdout
    assert "the retention anchor at seq 2 is not signed by key hmac:" in result.stderr


def test_a_forged_checkpoint_fails(signed: Signed, tmp_path: Path) -> None:
    forged = tmp_path / "forged.jsonl"
    line = json.loads(signed.checkpoints.read_text().splitlines()[-1])
    forged.write_text(json.dumps({**line, "hash": "f" * 64}) + "\n")
    result = verify(signed.data_dir, "--checkpoints", str(forged), "--key", str(signed.key))
    assert result.returncode == 1 and "not signed by key" in result.stderr


@pytest.mark.parametrize("attack", ["edited", "re-hashed", "forged anchor"])
def test_a_server_refuses_to_start_on_a_tampered_log(signed: Signed, attack: str) -> None:
    if attack == "edited":
        tamper(signed.data_dir, f"UPDATE decisions SET record = record || ' ' WHERE seq = {RECORDS}")
    elif attack == "re-hashed":
        rehash_from(signed.data_dir, 2)
    else:
        forge_anchor(signed.data_dir, 2)
    config = signed.data_dir.with_name("data.yaml")
    config.write_text(json.dumps(signed.config()))
    started = subprocess.run([*TOLLGATE, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(signed.data_dir),
                              "--bundle", str(REGO), "--config", str(config)], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert started.returncode != 0
    assert f"decision log {signed.data_dir}/decisions.db was tampered with: " in started.stderr
    assert "--accept-log-tamper" in started.stderr


def test_a_server_refuses_an_edited_tail_without_a_key_and_starts_when_told_to(log_copy: Path) -> None:
    tamper(log_copy, f"UPDATE decisions SET record = record || ' ' WHERE seq = {RECORDS}")
    started = subprocess.run([*TOLLGATE, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(log_copy),
                              "--bundle", str(REGO)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert started.returncode != 0
    assert f"chain broken at seq {RECORDS} (" in started.stderr
    server = start_server(log_copy, extra=["--accept-log-tamper"])
    try:
        assert "TAMPERED WITH" in server.stderr
    finally:
        server.terminate()


def test_a_jsonl_export_carries_the_checkpoints_and_proves_the_log_later(signed: Signed, tmp_path: Path) -> None:
    shipped = tmp_path / "shipped.jsonl"
    exported = subprocess.run([*TOLLGATE, "logs", "export", "--data-dir", str(signed.data_dir), "--format", "jsonl",
                               "-o", str(shipped)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in shipped.read_text().splitlines()]
    marks = [line for line in lines if line.get("type") == "tollgate.checkpoint"]
    assert marks and marks[-1]["seq"] == RECORDS and len(lines) == RECORDS + len(marks)
    assert verify(signed.data_dir, "--checkpoints", str(shipped)).returncode == 0
    rehash_from(signed.data_dir, 1)
    result = verify(signed.data_dir, "--checkpoints", str(shipped))
    assert result.returncode == 1 and "the chain was rewritten" in result.stderr


def test_a_server_refuses_a_re_hashed_log_whose_checkpoint_table_was_wiped(signed: Signed) -> None:
    rehash_from(signed.data_dir, 2)
    tamper(signed.data_dir, "DELETE FROM decisions_checkpoints")  # the copy outside the data dir still holds
    config = signed.data_dir.with_name("data.yaml")
    config.write_text(json.dumps(signed.config()))
    started = subprocess.run([*TOLLGATE, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(signed.data_dir),
                              "--bundle", str(REGO), "--config", str(config)], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
    assert started.returncode != 0
    assert "was tampered with: " in started.stderr and "the chain was rewritten" in started.stderr


def _otlp_records(receiver: LogReceiver) -> list[dict[str, Any]]:
    """Every log record the receiver accepted, in arrival order, with its attributes as plain values."""
    out = []
    for body in receiver.accepted():
        for record in body["resourceLogs"][0]["scopeLogs"][0]["logRecords"]:
            attrs = {a["key"]: next(iter(a["value"].values())) for a in record["attributes"]}
            out.append({"event": record["eventName"], **attrs})
    return out


def _checkpointed(receiver: LogReceiver, head: int) -> bool:
    return any(r["event"] == "tollgate.checkpoint" and int(r["tollgate.checkpoint.seq"]) == head
               for r in _otlp_records(receiver))


def test_the_otlp_export_carries_each_signed_checkpoint_once_after_its_records(tmp_path: Path) -> None:
    key = tmp_path / "checkpoint.key"
    key.write_text(secrets.token_urlsafe(32) + "\n")
    receiver = LogReceiver(answer=lambda body, index: 500 if index < 2 else 200).start()  # retried, not doubled
    config = {"decision_log_checkpoint_key_file": str(key), "decision_log_checkpoint_interval": 0.2,
              "otlp_endpoint": receiver.url, "decision_log_min_delay": 0.05, "decision_log_max_delay": 0.2}
    try:
        for run in range(2):  # the second server resumes from the first one's cursor
            server = start_server(tmp_path / "data", config=config)
            try:
                for i in range(RECORDS):
                    server.authorize(tool_request("code-reviewer", "github", "get_pull_request", {"pullNumber": i}))
                wait_for(partial(_checkpointed, receiver, RECORDS * (run + 1)))  # sent while serving
            finally:
                assert server.terminate() == 0
    finally:
        receiver.stop()
    records = _otlp_records(receiver)
    decisions = [int(r["tollgate.seq"]) for r in records if r["event"] == "tollgate.decision"]
    assert decisions == list(range(1, 2 * RECORDS + 1))  # each once, in order
    with SqliteDecisionStore.open(tmp_path / "data" / "decisions.db") as store:
        kept = store.checkpoints()
    marks = [r for r in records if r["event"] == "tollgate.checkpoint"]
    assert [int(m["tollgate.checkpoint.seq"]) for m in marks] == [c.seq for c in kept]  # each once, none skipped
    signer = load_key(key)
    seen, shipped = 0, []
    for position, record in enumerate(records):
        if record["event"] == "tollgate.decision":
            seen = int(record["tollgate.seq"])
            continue
        checkpoint = Checkpoint(int(record["tollgate.checkpoint.seq"]), record["tollgate.checkpoint.hash"],
                                record["tollgate.checkpoint.time"], record["tollgate.checkpoint.key_id"],
                                record["tollgate.checkpoint.signature"])
        assert checkpoint.seq <= seen, f"checkpoint of seq {checkpoint.seq} came before its record ({position})"
        assert signer.check(checkpoint.statement(), checkpoint.signature)
        assert record["tollgate.checkpoint.algorithm"] == signer.algorithm == "hmac-sha256"
        assert checkpoint in kept
        shipped.append(checkpoint)
    with SqliteDecisionStore.open(tmp_path / "data" / "decisions.db") as store:
        assert checkpoint_problems(store, shipped, key=signer) == []  # the collector's copy proves the log
