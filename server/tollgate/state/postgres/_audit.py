"""The audit trail on the shared store: state/_audit.py's table and bounds, appended to by every console and
sidecar of a fleet."""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

from tollgate.clock import Clock, SystemClock
from tollgate.encoding import format_time
from tollgate.state._audit import COLUMNS, COMPONENT, AuditEntry, bounded, entry_from_row, listing_sql
from tollgate.state.postgres._store import PgStore

#: The same table as on SQLite, with a bigint identity for the id (its order is the order entries were added).
STEPS = (
    """
    CREATE TABLE audit_log (
        id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at text NOT NULL,
        actor text NOT NULL,
        via text NOT NULL,
        action text NOT NULL,
        target text NOT NULL,
        detail text NOT NULL,
        source_address text NOT NULL
    );
    CREATE INDEX audit_log_actor ON audit_log (actor, id);
    CREATE INDEX audit_log_action ON audit_log (action, id);
    """,
)


class PgAudit:
    """AuditLog on the shared store's audit_log table."""

    COMPONENT = COMPONENT
    STEPS = STEPS

    def __init__(self, store: PgStore, *, clock: Clock = SystemClock()) -> None:
        self._store = store
        self.clock = clock

    async def migrate(self, *, upgrade: bool) -> int:
        return await self._store.migrate(COMPONENT, STEPS, upgrade=upgrade)

    async def record(self, actor: str, via: str, action: str, target: str = "", detail: str = "",
                     source_address: str = "") -> AuditEntry:
        fields = bounded(actor, via, action, target, detail, source_address)
        at = format_time(self.clock.now())
        async with self._store.connection("record an audit entry") as conn:
            row = await (await conn.execute(
                "INSERT INTO audit_log (at, actor, via, action, target, detail, source_address) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) RETURNING id", (at, *fields.values()))).fetchone()
        assert row is not None  # RETURNING gives one row
        return AuditEntry(int(row[0]), at, **fields)

    async def entries(self, *, limit: int = 100, before: int | None = None, actor: str = "",
                      action: str = "") -> builtins.list[AuditEntry]:
        tail, params = listing_sql(limit=limit, before=before, actor=actor, action=action, mark="%s")
        async with self._store.connection("read the audit log") as conn:
            rows = await (await conn.execute(f"SELECT {COLUMNS} FROM audit_log {tail}", params)).fetchall()
        return [entry_from_row(r) for r in rows]


if TYPE_CHECKING:
    from tollgate.state._audit import AuditLog

    _audit: type[AuditLog] = PgAudit  # mypy holds the class to the protocol
