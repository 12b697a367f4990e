"""Every Rego test in rego/ runs through the embedded OPA engine; any failing Rego test fails the suite."""

from __future__ import annotations

import pytest

from tests.conftest import REGO
from tollgate.authoring.policytest import RegoTestResult, run_tests

REPORT = run_tests([REGO])


def test_the_library_has_tests() -> None:
    assert len(REPORT.results) >= 50


@pytest.mark.parametrize("result", REPORT.results, ids=[f"{r.package}.{r.name}" for r in REPORT.results])
def test_rego(result: RegoTestResult) -> None:
    if result.outcome == "SKIP":
        pytest.skip(f"{result.location}: todo")
    assert result.outcome == "PASS", f"{result.location}: {result.outcome} {result.detail}"
