"""Checkpoint keys, signed retention anchors and the checkpoint publisher, on real logs written by DecisionLog."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tests.decisionlog.test_reading import _record, write_log
from tollgate.clock import ManualClock
from tollgate.decisionlog import FileExport, LogRetention, open_read_only, read_export
from tollgate.decisionlog._checkpoint import (
    Checkpoint,
    CheckpointError,
    checkpoint_problems,
    load_key,
    read_checkpoints,
)
from tollgate.sidecar.checkpoints import CheckpointPublisher, startup_problems
from tollgate_cli.main import main

LATER = datetime(2026, 12, 1, tzinfo=UTC)  # every record of _record is older than a day before this


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    write_log(d, [_record(i) for i in range(1, 11)])
    return d


@pytest.fixture
def hmac_key(tmp_path: Path) -> Path:
    path = tmp_path / "checkpoint.key"
    path.write_text("k" * 40 + "\n")
    return path


def _pem(tmp_path: Path, name: str,
         private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> tuple[Path, Path]:
    secret, public = tmp_path / f"{name}.pem", tmp_path / f"{name}.pub.pem"
    secret.write_bytes(private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption()))
    public.write_bytes(private.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    return secret, public


@pytest.mark.parametrize("make", [ed25519.Ed25519PrivateKey.generate, lambda: ec.generate_private_key(ec.SECP256R1())])
def test_a_checkpoint_signed_by_a_private_key_is_checked_with_its_public_key(tmp_path: Path, make: object) -> None:
    assert callable(make)
    secret, public = _pem(tmp_path, "k", make())
    signer, checker = load_key(secret), load_key(public)
    assert signer.can_sign and not checker.can_sign and signer.key_id == checker.key_id
    checkpoint = Checkpoint(7, "a" * 64, "2026-12-01T00:00:00.000000Z").signed(signer)
    assert checker.check(checkpoint.statement(), checkpoint.signature)
    forged = Checkpoint(8, checkpoint.hash, checkpoint.time, checkpoint.key_id, checkpoint.signature)
    assert not checker.check(forged.statement(), forged.signature)
    with pytest.raises(CheckpointError, match="public key"):
        checker.sign(b"x")


def test_a_short_hmac_secret_is_refused_naming_the_file(tmp_path: Path) -> None:
    short = tmp_path / "short.key"
    short.write_text("too short")
    with pytest.raises(CheckpointError, match=r"short.key: an HMAC secret must be at least 32 bytes \(found 9\)"):
        load_key(short)


def test_retention_signs_its_anchors_so_a_pruned_log_verifies_with_the_key(data_dir: Path, hmac_key: Path,
                                                                            capsys: pytest.CaptureFixture[str]) -> None:
    key = load_key(hmac_key)
    retention = LogRetention(data_dir / "decisions.db", window=timedelta(days=1), clock=ManualClock(LATER), key=key)
    try:
        assert retention.prune() == 9  # never the newest record
    finally:
        retention.stop()
    assert main(["logs", "verify", "--data-dir", str(data_dir), "--key", str(hmac_key)]) == 0
    assert "from pruning anchor at seq 9" in capsys.readouterr().out
    other = hmac_key.with_name("other.key")
    other.write_text("o" * 40)
    assert main(["logs", "verify", "--data-dir", str(data_dir), "--key", str(other)]) == 1
    assert "the retention anchor at seq 9 is not signed by key hmac:" in capsys.readouterr().err


def test_the_publisher_signs_the_head_once_per_move_into_the_log_and_its_file(data_dir: Path, hmac_key: Path,
                                                                              tmp_path: Path) -> None:
    file = tmp_path / "checkpoints.jsonl"
    publisher = CheckpointPublisher(data_dir / "decisions.db", load_key(hmac_key), file=file,
                                    clock=ManualClock(LATER))
    try:
        first = publisher.publish()
        assert first is not None and first.seq == 10 and first.time == "2026-12-01T00:00:00.000000Z"
        assert publisher.publish() is None  # the head did not move
    finally:
        publisher.close()
    assert read_checkpoints(file) == [first]
    assert json.loads(file.read_text())["type"] == "tollgate.checkpoint"
    with open_read_only(data_dir) as store:
        assert store.checkpoints() == [first]
        assert checkpoint_problems(store, [first], key=load_key(hmac_key)) == []
    assert startup_problems(data_dir / "decisions.db", load_key(hmac_key)) == []


def test_a_checkpoint_past_the_end_of_the_log_says_records_were_deleted(data_dir: Path, hmac_key: Path) -> None:
    key = load_key(hmac_key)
    ahead = Checkpoint(12, "b" * 64, "2026-12-01T00:00:00.000000Z").signed(key)
    with open_read_only(data_dir) as store:
        assert checkpoint_problems(store, [ahead], key=key) == [
            "checkpoint of seq 12 at 2026-12-01T00:00:00.000000Z: the log ends at seq 10: records after it were "
            "deleted"]


def test_a_resumed_jsonl_file_export_writes_each_checkpoint_once_after_its_record(data_dir: Path, hmac_key: Path,
                                                                                  tmp_path: Path) -> None:
    publisher = CheckpointPublisher(data_dir / "decisions.db", load_key(hmac_key), clock=ManualClock(LATER))
    try:
        publisher.publish()
        out, cursor = tmp_path / "out.jsonl", tmp_path / "out.cursor"
        with open_read_only(data_dir) as store:
            assert FileExport(store, out, fmt="jsonl", cursor_path=cursor, batch=4).step() == 10
        write_log(data_dir, [_record(11)])
        publisher.publish()
        with open_read_only(data_dir) as store:
            assert FileExport(store, out, fmt="jsonl", cursor_path=cursor).step() == 1
            assert FileExport(store, out, fmt="jsonl", cursor_path=cursor).step() == 0
    finally:
        publisher.close()
    kinds = [(line.get("type", "record"), line["seq"]) for line in read_export(out)]
    assert kinds == [*(("record", i) for i in range(1, 11)), ("tollgate.checkpoint", 10), ("record", 11),
                     ("tollgate.checkpoint", 11)]
