"""Run Rego tests (`test_*` rules) through the embedded OPA engine, as `opa test` does, with coverage."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tollgate.bundle import BundleError, load_bundle
from tollgate.engine import UNDEFINED, EmbeddedOpa, EngineError


class PolicyTestError(Exception):
    """The policy could not be loaded or compiled, so no test could run."""


@dataclass(frozen=True)
class RegoTestResult:
    package: str
    name: str
    location: str  # file:line
    outcome: str  # PASS | FAIL | ERROR | SKIP
    detail: str = ""
    duration_us: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {"package": self.package, "name": self.name, "location": self.location,
                "outcome": self.outcome, "detail": self.detail, "duration_us": self.duration_us}


@dataclass(frozen=True)
class FileCoverage:
    """Which lines of one policy file the tests evaluated."""

    file: str
    covered: frozenset[int]
    not_covered: frozenset[int]

    @property
    def percent(self) -> float:
        total = len(self.covered) + len(self.not_covered)
        return 100.0 * len(self.covered) / total if total else 100.0


@dataclass(frozen=True)
class RegoTestReport:
    results: tuple[RegoTestResult, ...] = field(default_factory=tuple)
    coverage: tuple[FileCoverage, ...] | None = None  # None when coverage was not asked for

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    @property
    def ok(self) -> bool:
        return self.count("FAIL") == 0 and self.count("ERROR") == 0

    @property
    def coverage_percent(self) -> float:
        """Lines covered over coverable lines, across every non-test policy file."""
        files = self.coverage or ()
        covered = sum(len(f.covered) for f in files)
        total = covered + sum(len(f.not_covered) for f in files)
        return 100.0 * covered / total if total else 100.0

    def summary(self) -> str:
        ran = len(self.results) - self.count("SKIP")
        parts = [f"PASS: {self.count('PASS')}/{ran}"]
        for outcome in ("FAIL", "ERROR"):
            if self.count(outcome):
                parts.append(f"{outcome}: {self.count(outcome)}/{ran}")
        if self.count("SKIP"):
            parts.append(f"SKIPPED: {self.count('SKIP')}/{len(self.results)} (todo_)")
        return "\n".join(parts)

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "results": [r.as_dict() for r in self.results],
            "summary": {o.lower(): self.count(o) for o in ("PASS", "FAIL", "ERROR", "SKIP")},
        }
        if self.coverage is not None:
            doc["coverage"] = {
                "percent": round(self.coverage_percent, 2),
                "files": {f.file: {"percent": round(f.percent, 2), "covered_lines": len(f.covered),
                                   "not_covered": sorted(f.not_covered)} for f in self.coverage},
            }
        return doc


_PARSE = "m := rego.parse_module(input.name, input.source)"


def run_tests(paths: Iterable[str | Path], *, pattern: str = "", coverage: bool = False) -> RegoTestReport:
    """Load each path (modules, tests and data) into one engine and evaluate every test rule."""
    selector = re.compile(pattern) if pattern else None
    results: list[RegoTestResult] = []
    lines: dict[str, tuple[set[int], set[int]]] = {}
    for path in paths:
        try:
            bundle = load_bundle(path, include_tests=True)
        except BundleError as exc:
            raise PolicyTestError(str(exc)) from exc
        try:
            engine = EmbeddedOpa(bundle.modules, bundle.data)
            engine.compile()  # surface compile errors before any test runs
        except EngineError as exc:
            raise PolicyTestError(f"{path}: {exc.message}") from exc
        tests: list[_Test] = []
        with engine, EmbeddedOpa({}, {}) as parser:
            for name, source in sorted(bundle.modules.items()):
                for package, rule, line in _test_rules(parser, name, source):
                    if not selector or selector.search(f"{package}.{rule}"):
                        tests.append(_Test(package, rule, f"{Path(path) / name}:{line}"))
            for result, report in _run_all(engine, tests, coverage):
                results.append(result)
                _merge_coverage(lines, Path(path), report)
    files = None
    if coverage:
        files = tuple(
            FileCoverage(name, frozenset(covered), frozenset(coverable - covered))
            for name, (covered, coverable) in sorted(lines.items())
            if not name.endswith("_test.rego")
        )
    return RegoTestReport(tuple(results), files)


@dataclass(frozen=True)
class _Test:
    package: str
    rule: str
    location: str


def _run_all(engine: EmbeddedOpa, tests: list[_Test],
             coverage: bool) -> Iterable[tuple[RegoTestResult, dict[str, Any]]]:
    """Evaluate the tests a whole package at a time: the engine prepares every new query from scratch (tens
    of milliseconds), so one query per package, not per test. A package whose evaluation raises an error is
    run again one test at a time, so the error lands on the test that caused it."""
    by_package: dict[str, list[_Test]] = {}
    for t in tests:
        by_package.setdefault(t.package, []).append(t)
    for package, members in by_package.items():
        runnable = [t for t in members if not t.rule.startswith("todo_")]
        for t in members:
            if t.rule.startswith("todo_"):
                yield RegoTestResult(t.package, t.rule, t.location, "SKIP"), {}
        if not runnable:
            continue
        started = time.perf_counter_ns()
        try:
            document, report = _evaluate(engine, package, coverage)
        except EngineError:
            for t in runnable:
                yield _run_one(engine, t, coverage)
            continue
        each = _since(started) // len(runnable)
        yield _package_result(runnable[0], document, each), report  # the package's coverage, once
        for t in runnable[1:]:
            yield _package_result(t, document, each), {}


def _evaluate(engine: EmbeddedOpa, path: str, coverage: bool) -> tuple[Any, dict[str, Any]]:
    if coverage:
        return engine.evaluate_with_coverage(path)
    return engine.evaluate(path), {}


def _package_result(test: _Test, document: Any, duration_us: int) -> RegoTestResult:
    value = document.get(test.rule, UNDEFINED) if isinstance(document, dict) else UNDEFINED
    return _result(test, value, duration_us)


def _result(test: _Test, value: Any, duration_us: int) -> RegoTestResult:
    if value is True:
        return RegoTestResult(test.package, test.rule, test.location, "PASS", "", duration_us)
    detail = "undefined" if value is UNDEFINED else f"got {value!r}"
    return RegoTestResult(test.package, test.rule, test.location, "FAIL", detail, duration_us)


def _merge_coverage(lines: dict[str, tuple[set[int], set[int]]], root: Path, report: dict[str, Any]) -> None:
    for name, ranges in (report.get("files") or {}).items():
        covered, coverable = lines.setdefault(str(root / name), (set(), set()))
        for key, target in (("covered", covered), ("not_covered", None)):
            for r in ranges.get(key) or ():
                rows = range(r["start"]["row"], r["end"]["row"] + 1)
                coverable.update(rows)
                if target is not None:
                    target.update(rows)


def _test_rules(engine: EmbeddedOpa, name: str, source: str) -> list[tuple[str, str, int]]:
    try:
        module = engine.query(_PARSE, {"name": name, "source": source})[0]["m"]
    except (EngineError, IndexError, KeyError) as exc:
        raise PolicyTestError(f"{name}: does not parse ({exc})") from exc
    package = ".".join(str(t["value"]) for t in module["package"]["path"][1:])
    seen: dict[str, int] = {}
    for rule in module.get("rules", []):
        head = rule.get("head", {})
        rule_name = head.get("name") or ""
        if (rule_name.startswith("test_") or rule_name.startswith("todo_test_")) and rule_name not in seen:
            match = re.search(rf"^[ \t]*{re.escape(rule_name)}\b", source, re.MULTILINE)
            seen[rule_name] = source.count("\n", 0, match.start()) + 1 if match else 0
    return [(package, rule_name, line) for rule_name, line in seen.items()]


def _run_one(engine: EmbeddedOpa, test: _Test, coverage: bool) -> tuple[RegoTestResult, dict[str, Any]]:
    started = time.perf_counter_ns()
    try:
        value, report = _evaluate(engine, f"{test.package}.{test.rule}", coverage)
    except EngineError as exc:
        return RegoTestResult(test.package, test.rule, test.location, "ERROR", exc.message, _since(started)), {}
    return _result(test, value, _since(started)), report


def _since(started: int) -> int:
    return (time.perf_counter_ns() - started) // 1000
