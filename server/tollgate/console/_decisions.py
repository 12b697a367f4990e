"""The decision log as the console reads it: the sidecar's own decisions.db on SQLite (read-only, beside the
sidecar that writes it), or the fleet's shipped copy on PostgreSQL (decisionlog.PgDecisionReader)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Protocol, TypeVar

from tollgate.decisionlog import (
    ActiveSessions,
    DecisionRecord,
    LogReadError,
    Query,
    SqliteDecisionStore,
    StoredRecord,
    matching,
    open_read_only,
)

_T = TypeVar("_T")


class DecisionReader(Protocol):
    """What the console's pages read of the decision log (LogReadError when it cannot be read now)."""

    async def get(self, decision_id: str) -> DecisionRecord | None:
        ...

    async def find(self, query: Query) -> Sequence[StoredRecord]:
        """Matching records, oldest first; with query.limit, the most recent that many."""
        ...

    async def session(self, session_id: str) -> Sequence[DecisionRecord]:
        """The session's records in order, typed."""
        ...

    async def sessions(self, since: datetime, *, limit: int = 50) -> ActiveSessions:
        """The sessions with decisions at or after since, most recently active first (bounded reads)."""
        ...


class LocalDecisions:
    """DATA_DIR/decisions.db, opened read-only for each read in a worker thread (the file may appear only once
    the sidecar first runs; a read before that is a LogReadError naming it)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir

    async def _read(self, read: Callable[[SqliteDecisionStore], _T]) -> _T:
        def run() -> _T:
            with open_read_only(self.data_dir) as store:
                return read(store)

        return await asyncio.to_thread(run)

    async def get(self, decision_id: str) -> DecisionRecord | None:
        return await self._read(lambda store: store.get(decision_id))

    async def find(self, query: Query) -> Sequence[StoredRecord]:
        return await self._read(lambda store: store.find(query))

    async def session(self, session_id: str) -> Sequence[DecisionRecord]:
        def read(store: SqliteDecisionStore) -> list[DecisionRecord]:
            try:
                with store.snapshot():
                    return [row.decision_record() for row in matching(store, Query(session=session_id))]
            except ValueError as exc:
                raise LogReadError(f"cannot read decision log: {exc}") from exc

        return await self._read(read)

    async def sessions(self, since: datetime, *, limit: int = 50) -> ActiveSessions:
        return await self._read(lambda store: store.sessions(since, limit=limit))
