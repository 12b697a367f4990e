"""The store a contract test runs against: each test module under tests/state/ that asks for `where` runs once
on SQLite and once on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.pg import PostgresServer


@pytest.fixture(params=["sqlite", "postgresql"])
def where(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    """Which store, and where: a state.db path, or a new database's URL."""
    if request.param == "sqlite":
        return "sqlite", tmp_path / "state.db"
    return "postgresql", request.getfixturevalue("pg_url")


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own: stopping the run's shared one would fail every other test."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()
