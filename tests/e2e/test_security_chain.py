"""Attacks on a real server's decision log (issue 12, item 9): rewriting what the hash chain is meant to prove.

A server writes a few decisions and stops; each test tampers with a copy of its data directory the way someone
with write access to the file would, then asks `tollgate logs verify` (or a restarted server) about it.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT, TOLLGATE, start_server, tool_request

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
