"""Run Rego tests (`test_*` rules) through the embedded OPA engine, as `opa test` does."""

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


@dataclass(frozen=True)
class RegoTestReport:
    results: tuple[RegoTestResult, ...] = field(default_factory=tuple)

    def count(self, outcome: str) -> int:
        return sum(1 for r in self.results if r.outcome == outcome)

    @property
    def ok(self) -> bool:
        return self.count("FAIL") == 0 and self.count("ERROR") == 0

    def summary(self) -> str:
        ran = len(self.results) - self.count("SKIP")
        parts = [f"PASS: {self.count('PASS')}/{ran}"]
        for outcome in ("FAIL", "ERROR", "SKIP"):
            if self.count(outcome):
                parts.append(f"{outcome}: {self.count(outcome)}/{len(self.results) if outcome == 'SKIP' else ran}")
        return "\n".join(parts)


_PARSE = "m := rego.parse_module(input.name, input.source)"


def run_tests(paths: Iterable[str | Path], *, pattern: str = "") -> RegoTestReport:
    """Load each path (modules, tests and data) into one engine and evaluate every test rule."""
    selector = re.compile(pattern) if pattern else None
    results: list[RegoTestResult] = []
    for path in paths:
        try:
            bundle = load_bundle(path, include_tests=True)
        except BundleError as exc:
            raise PolicyTestError(str(exc)) from exc
        try:
            engine = EmbeddedOpa(bundle.modules, bundle.data)
            engine.query("x := true")  # OPA compiles on first use: surface compile errors before any test
        except EngineError as exc:
            raise PolicyTestError(f"{path}: {exc.message}") from exc
        with engine, EmbeddedOpa({}, {}) as parser:
            for name, source in sorted(bundle.modules.items()):
                for package, rule, line in _test_rules(parser, name, source):
                    if selector and not selector.search(f"{package}.{rule}"):
                        continue
                    results.append(_run_one(engine, Path(path) / name, package, rule, line))
    return RegoTestReport(tuple(results))


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


def _run_one(engine: EmbeddedOpa, file: Path, package: str, rule: str, line: int) -> RegoTestResult:
    location = f"{file}:{line}"
    if rule.startswith("todo_"):
        return RegoTestResult(package, rule, location, "SKIP")
    started = time.perf_counter_ns()
    try:
        value: Any = engine.evaluate(f"{package}.{rule}")
    except EngineError as exc:
        return RegoTestResult(package, rule, location, "ERROR", exc.message, _since(started))
    if value is True:
        return RegoTestResult(package, rule, location, "PASS", "", _since(started))
    detail = "undefined" if value is UNDEFINED else f"got {value!r}"
    return RegoTestResult(package, rule, location, "FAIL", detail, _since(started))


def _since(started: int) -> int:
    return (time.perf_counter_ns() - started) // 1000
