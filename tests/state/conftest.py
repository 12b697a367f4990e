"""The store a contract test runs against: each test module under tests/state/ that asks for `where` runs once
on SQLite and once on PostgreSQL."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    """Which store, and where: a state.db path, or a new database's URL."""
    if request.param == "sqlite":
        return "sqlite", tmp_path / "state.db"
    return "postgresql", request.getfixturevalue("pg_url")
