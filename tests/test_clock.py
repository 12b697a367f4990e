"""The one clock: a manual clock moves only when told, a shifted one runs at real speed, the testing aids are
read from the environment only, refuse bad values, and say loudly that they are on."""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tollgate.clock import SHIFT_ENV, START_ENV, ManualClock, OffsetClock, ShiftFileClock, SystemClock, from_environment

pytestmark = pytest.mark.clock

NEW_YEAR = datetime(2027, 1, 1, tzinfo=UTC)


def test_a_manual_clock_moves_only_when_advanced_or_set() -> None:
    clock = ManualClock(NEW_YEAR - timedelta(seconds=3))
    assert clock.now() == clock.now() == NEW_YEAR - timedelta(seconds=3)
    assert clock.advance(3.5) == NEW_YEAR + timedelta(seconds=0.5)
    assert clock.now() == NEW_YEAR + timedelta(seconds=0.5)
    assert clock.time() == NEW_YEAR.timestamp() + 0.5
    clock.set(datetime(2027, 1, 1, 2, tzinfo=UTC).astimezone(datetime.now().astimezone().tzinfo))
    assert clock.now() == datetime(2027, 1, 1, 2, tzinfo=UTC) and clock.now().tzinfo == UTC


def test_an_offset_clock_starts_where_told_and_runs_at_real_speed() -> None:
    clock = OffsetClock(NEW_YEAR - timedelta(seconds=2))
    first = clock.time()
    assert abs(first - (NEW_YEAR.timestamp() - 2)) < 1
    time_before = time.time()
    second = clock.time()
    # Both move by the same real time, whatever the offset.
    assert second - first == pytest.approx(time.time() - time_before, abs=0.5)
    assert clock.now().tzinfo == UTC
    assert abs(clock.now().timestamp() - clock.time()) < 1


def test_the_system_clock_is_the_system_time() -> None:
    assert abs(SystemClock().time() - time.time()) < 1
    assert SystemClock().now().tzinfo == UTC


def test_a_shift_file_moves_the_clock_when_it_changes(tmp_path: Path) -> None:
    base = ManualClock(NEW_YEAR)
    path = tmp_path / "shift"
    clock = ShiftFileClock(base, path)
    assert clock.now() == NEW_YEAR  # no file: no shift
    _write_whole(path, "61.5\n")
    assert clock.now() == NEW_YEAR + timedelta(seconds=61.5)
    base.advance(1)
    assert clock.time() == NEW_YEAR.timestamp() + 62.5
    _write_whole(path, "-1")
    assert clock.now() == NEW_YEAR
    path.unlink()
    assert clock.now() == NEW_YEAR + timedelta(seconds=1)


def test_a_shift_file_that_is_not_a_number_keeps_the_last_shift(tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "shift"
    clock = ShiftFileClock(ManualClock(NEW_YEAR), path)
    _write_whole(path, "30")
    assert clock.shift() == 30
    _write_whole(path, "thirty seconds")
    with caplog.at_level(logging.ERROR, logger="tollgate.clock"):
        assert clock.shift() == 30
    assert "not a number of seconds" in caplog.text and str(path) in caplog.text


def test_without_the_testing_variables_the_process_reads_the_system_clock() -> None:
    assert isinstance(from_environment({}), SystemClock)
    assert isinstance(from_environment({START_ENV: " ", SHIFT_ENV: ""}), SystemClock)


def test_the_start_variable_starts_the_clock_there_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="tollgate.clock"):
        clock = from_environment({START_ENV: "2026-12-31T23:59:57Z"})
    assert isinstance(clock, OffsetClock)
    assert abs(clock.time() - (NEW_YEAR.timestamp() - 3)) < 1
    assert "TESTING CLOCK" in caplog.text and "never set it outside tests" in caplog.text


def test_the_shift_variable_wraps_the_started_clock(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "shift"
    _write_whole(path, "3600")
    with caplog.at_level(logging.WARNING, logger="tollgate.clock"):
        clock = from_environment({START_ENV: "2026-12-31T23:59:57Z", SHIFT_ENV: str(path)})
    assert isinstance(clock, ShiftFileClock)
    assert abs(clock.time() - (NEW_YEAR.timestamp() + 3597)) < 1
    assert caplog.text.count("TESTING CLOCK") == 2


@pytest.mark.parametrize("start", ["yesterday", "2026-13-01", "1767225597", "2026-12-31 23:59:57 UTC+"],
                         ids=["words", "no-such-month", "epoch-seconds", "garbled"])
def test_a_start_that_is_not_an_rfc3339_time_stops_the_process(start: str) -> None:
    with pytest.raises(SystemExit, match=START_ENV):
        from_environment({START_ENV: start})


def test_a_shift_file_in_a_missing_directory_stops_the_process(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match=f"{SHIFT_ENV}: .*no such directory"):
        from_environment({SHIFT_ENV: str(tmp_path / "nowhere" / "shift")})


def test_the_process_environment_is_read_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(START_ENV, "2026-12-31T23:59:57Z")
    assert isinstance(from_environment(), OffsetClock)
    monkeypatch.delenv(START_ENV)
    monkeypatch.delenv(SHIFT_ENV, raising=False)
    assert isinstance(from_environment(), SystemClock)


def _write_whole(path: Path, text: str) -> None:
    """As a test moving a server's clock writes it: whole, then renamed into place (a new inode each time)."""
    part = path.with_suffix(".part")
    part.write_text(text)
    os.replace(part, path)
