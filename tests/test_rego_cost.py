"""The default library's cost for a common request, held by what OPA's trace counts (deterministic), not by time.

OPA spends a few µs per rule it enters (tools/rego_cost.py prints the figures): a request its rule index can
prune evaluates a handful of rules, and no rule may iterate the manifests or the catalogs, so a fleet of agents
costs each request nothing. The sample is the commonest call: a read-only tool in the agent's manifest.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import REGO, ROOT
from tollgate.bundle import load_bundle
from tollgate.engine._opa import EmbeddedOpa

sys.path.insert(0, str(ROOT / "tools"))  # tools/rego_cost.py measures the same request

from rego_cost import SAMPLE

# Measured on the restructured library (the library before it entered 72 rules and took 850 steps for the
# decision); a little headroom so a new rule on another path does not trip it, none for a return to the old cost.
_MAX_DECISION_RULES = 56
_MAX_DECISION_STEPS = 660
_MAX_MASK_RULES = 8


def _engine(agents: int = 0) -> EmbeddedOpa:
    bundle = load_bundle(REGO)
    data = copy.deepcopy(dict(bundle.data))
    manifest = data["agents"]["code-reviewer"]
    for i in range(agents):
        data["agents"][f"agent-{i:05d}"] = manifest
    engine = EmbeddedOpa(bundle.modules, data)
    engine.compile()
    return engine


@pytest.fixture(scope="module")
def engine() -> Iterator[EmbeddedOpa]:
    with _engine() as opa:
        yield opa


def _trace(engine: EmbeddedOpa, path: str) -> tuple[Any, int, int]:
    value, trace = engine.evaluate_with_trace(path, SAMPLE)
    return value, sum(1 for event in trace if event.get("op") == "Enter"), len(trace)


def test_the_sample_request_is_allowed_with_nothing_to_mask(engine: EmbeddedOpa) -> None:
    assert engine.evaluate("tollgate.decision", SAMPLE)["decision"] == "allow"
    assert engine.evaluate("tollgate.log.mask", SAMPLE) == []


def test_the_decision_for_a_common_tool_call_enters_few_rules(engine: EmbeddedOpa) -> None:
    _, entered, steps = _trace(engine, "tollgate.decision")
    assert entered <= _MAX_DECISION_RULES, f"the decision entered {entered} rules (bound {_MAX_DECISION_RULES})"
    assert steps <= _MAX_DECISION_STEPS, f"the decision took {steps} evaluation steps (bound {_MAX_DECISION_STEPS})"


def test_the_mask_for_a_request_without_secrets_enters_few_rules(engine: EmbeddedOpa) -> None:
    _, entered, _ = _trace(engine, "tollgate.log.mask")
    assert entered <= _MAX_MASK_RULES


def test_a_thousand_more_manifests_add_no_evaluation_step(engine: EmbeddedOpa) -> None:
    with _engine(agents=1000) as fleet:
        assert _trace(fleet, "tollgate.decision") == _trace(engine, "tollgate.decision")
        assert _trace(fleet, "tollgate.log.mask") == _trace(engine, "tollgate.log.mask")
