"""The Rego test runner reports passes, failures, errors and skips, with locations."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, TOLLGATE
from tollgate.authoring.policytest import PolicyTestError, run_tests


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


def _small_library(root: Path, *, failing: bool = False) -> Path:
    _write(root, "p/p.rego", """package p

allow if {
    input.role == "admin"
}

label := "admin" if input.role == "admin"

label := "other" if input.role != "admin"

auditor if {
    input.role == "auditor"
}
""")
    _write(root, "p/p_test.rego", f"""package p_test

import data.p

test_admin if p.allow with input as {{"role": "admin"}}

test_label if p.label == "admin" with input as {{"role": "admin"}}

test_wrong if {"p.allow with input as {}" if failing else "true"}
""")
    return root


def test_coverage_counts_lines_no_test_evaluated(tmp_path: Path) -> None:
    report = run_tests([_small_library(tmp_path)], coverage=True)
    assert report.coverage is not None
    (policy,) = report.coverage  # test files are not counted
    assert policy.file.endswith("p/p.rego")
    assert {11, 12} <= policy.not_covered  # no test evaluates `auditor`
    assert {3, 4, 7, 9} <= policy.covered
    assert 0 < report.coverage_percent < 100


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOLLGATE, "test", *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_cli_exit_codes_threshold_json_and_fail_on_empty(tmp_path: Path) -> None:
    good = _small_library(tmp_path / "good")
    bad = _small_library(tmp_path / "bad", failing=True)
    assert _cli(str(good)).returncode == 0
    failing = _cli(str(bad))
    assert failing.returncode == 1
    assert "FAIL p_test.test_wrong" in failing.stdout
    assert "p/p_test.rego:" in failing.stdout
    assert _cli(str(good), "--threshold", "100").returncode == 1
    assert _cli(str(good), "--threshold", "50").returncode == 0
    doc = json.loads(_cli(str(good), "--coverage", "--format", "json").stdout)
    assert doc["summary"] == {"pass": 3, "fail": 0, "error": 0, "skip": 0}
    assert 0 < doc["coverage"]["percent"] < 100
    assert _cli(str(good), "--run", "no-such-test").returncode == 0
    empty = _cli(str(good), "--run", "no-such-test", "--fail-on-empty")
    assert empty.returncode == 1 and "no tests ran" in empty.stdout
