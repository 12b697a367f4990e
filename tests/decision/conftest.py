"""Fixtures of the in-process decision path tests (tests/decision/inprocess.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.decision.inprocess import DecisionPath


@pytest.fixture
def decision_path(tmp_path: Path) -> Iterator[DecisionPath]:
    built = DecisionPath(tmp_path)
    yield built
    built.close()
