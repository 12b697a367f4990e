"""Hand-written code passes ruff and mypy --strict (the generated package is excluded)."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT

CODE = ["server", "tools/tollgate_cli", "tools/gen_proto.py", "tools/bench.py", "tools/benchkit",
        "tools/bench_fleet.py", "tools/bench_budgets.py", "tools/bench_budget_step.py", "tools/bench_log.py",
        "tools/bench_path.py", "tools/bench_engine.py", "tools/bench_manifests.py", "tools/rego_cost.py",
        "tools/make_decision_sample.py"]


def test_ruff() -> None:
    result = subprocess.run([sys.executable, "-m", "ruff", "check", *CODE, "tests"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = subprocess.run([sys.executable, "-m", "mypy", *CODE], cwd=ROOT,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
