"""People on a test sidecar: their own API tokens, issued into the sidecar's store as `tollgate users token` does,
and the call metadata that carries one (the approver is taken from it, never from a declared name)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from tollgate.clock import SystemClock
from tollgate.state import StateStore
from tollgate.state._tokens import LocalPersonTokens, new_token


def issue_token(data_dir: Path, person: str, *, ttl: timedelta | None = None) -> str:
    """A new token for person in DATA_DIR/state.db (beside a running sidecar: another connection, as the CLI's)."""
    store = StateStore(data_dir / "state.db")
    try:
        # Synchronously (the store's own insert), so that async tests may issue one too.
        issued = new_token(person, now=SystemClock().now(), ttl=ttl)
        LocalPersonTokens(store)._insert(issued)
        return issued.secret
    finally:
        store.close()


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


class People:
    """Each person's token on one sidecar, issued the first time it is asked for."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._tokens: dict[str, str] = {}

    def token(self, person: str) -> str:
        if person not in self._tokens:
            self._tokens[person] = issue_token(self._data_dir, person)
        return self._tokens[person]

    def metadata(self, person: str) -> list[tuple[str, str]]:
        return bearer(self.token(person))


_ISSUED: dict[tuple[str, str], str] = {}


def as_person(server: Any, person: str) -> list[tuple[str, str]]:
    """Call metadata with person's own token on a test sidecar on SQLite (server: tests.conftest.Server), issued
    the first time it is asked for."""
    key = (str(server.data_dir), person)
    if key not in _ISSUED:
        _ISSUED[key] = issue_token(server.data_dir, person)
    return bearer(_ISSUED[key])


def issue_token_pg(url: str, person: str) -> str:
    """A new token for person in a fleet's PostgreSQL store (migrated)."""
    from tollgate.state.postgres import PgOptions, PgStore
    from tollgate.state.postgres._tokens import PgPersonTokens

    async def issue() -> str:
        store = PgStore(PgOptions(url, timeout=5.0, max_connections=1))
        await store.open()
        try:
            return (await PgPersonTokens(store).issue(person)).secret
        finally:
            await store.close()

    return asyncio.run(issue())
