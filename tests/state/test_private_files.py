"""The data dir and the databases in it are for the server's user alone, whatever the umask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tollgate.state import StateStore, private_dir, private_file


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def open_umask() -> Iterator[None]:
    previous = os.umask(0o022)  # files would be world-readable by default
    yield
    os.umask(previous)


def test_a_new_data_dir_and_database_are_0700_and_0600(tmp_path: Path, open_umask: None) -> None:
    data_dir = tmp_path / "a" / "data"
    private_dir(data_dir)
    store = StateStore(data_dir / "state.db")
    store.db.execute("CREATE TABLE t (x)")
    assert _mode(data_dir) == 0o700
    assert {p.name: _mode(p) for p in data_dir.iterdir()} == {"state.db": 0o600, "state.db-wal": 0o600,
                                                            "state.db-shm": 0o600}


def test_an_open_data_dir_and_files_left_by_an_earlier_run_are_tightened(tmp_path: Path, open_umask: None,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    for name in ("decisions.db", "decisions.db-wal"):
        (data_dir / name).touch(mode=0o644)
    private_dir(data_dir)
    private_file(data_dir / "decisions.db")
    assert (_mode(data_dir), _mode(data_dir / "decisions.db"), _mode(data_dir / "decisions.db-wal")) == \
        (0o700, 0o600, 0o600)
    assert "was mode 755, open to other users; it is now 700" in caplog.text
