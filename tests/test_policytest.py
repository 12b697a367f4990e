"""The Rego test runner reports passes, failures, errors and skips, with locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollgate.policytest import PolicyTestError, run_tests


def _write(root: Path, name: str, text: str) -> None:
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)


def test_outcomes_and_locations(tmp_path: Path) -> None:
    _write(tmp_path, "p/p.rego", "package p\n\nadd(a, b) := a + b\n")
    _write(tmp_path, "p/p_test.rego", """package p_test

import data.p

test_adds if p.add(1, 2) == 3

test_wrong if p.add(1, 2) == 4

two(_) := 1

two(_) := 2

test_errors if two(1) == 1

todo_test_later if false
""")
    report = run_tests([tmp_path])
    by_name = {r.name: r for r in report.results}
    assert by_name["test_adds"].outcome == "PASS"
    assert by_name["test_wrong"].outcome == "FAIL"
    assert by_name["test_wrong"].location.endswith("p/p_test.rego:7")
    assert by_name["test_errors"].outcome == "ERROR"
    assert "conflict" in by_name["test_errors"].detail
    assert by_name["todo_test_later"].outcome == "SKIP"
    assert not report.ok
    assert report.summary().splitlines()[0] == "PASS: 1/3"
    assert [r.name for r in run_tests([tmp_path], pattern="adds").results] == ["test_adds"]


def test_compile_errors_stop_the_run_with_their_location(tmp_path: Path) -> None:
    _write(tmp_path, "p/p.rego", "package p\n\nx := undefined_function(1)\n")
    with pytest.raises(PolicyTestError, match=r"p/p\.rego:3"):
        run_tests([tmp_path])
