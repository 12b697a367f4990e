"""The fleet's notification outbox on PostgreSQL: every replica writes events, exactly one sends each.

The same outbox as state/_outbox.py (columns, statuses, words) shared by the fleet. A sender's claim is one
UPDATE over the rows a `FOR UPDATE SKIP LOCKED` subquery picked: two replicas claiming at once take disjoint
rows, without waiting for each other, and the lease each row carries keeps it from the others while it is sent
(the send itself holds no transaction and no lock: a slow receiver costs no connection).
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import psycopg

from tollgate.clock import Clock, SystemClock
from tollgate.encoding import canonical_json, format_time
from tollgate.ids import DecisionIds
from tollgate.state._outbox import (
    COLUMNS,
    COMPONENT,
    DEAD,
    DELIVERED,
    EXPIRED,
    EXPIRY_LOOKBACK,
    INSERT_COLUMNS,
    MAX_ERROR,
    PENDING,
    OutboxBacklog,
    OutboxEvent,
    check_status,
    event_from_row,
    event_values,
    settlement,
)
from tollgate.state.postgres._store import PgStore

if TYPE_CHECKING:
    from tollgate.state.approvals import Approval

_SCHEMA = (
    f"""
    CREATE TABLE outbox (
        id TEXT COLLATE "C" PRIMARY KEY,
        type TEXT NOT NULL,
        approval_id TEXT NOT NULL,
        -- RFC 3339 in one fixed width (encoding.format_time), compared byte by byte as in state/approvals.
        created_at TEXT COLLATE "C" NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT '{PENDING}' CHECK (status IN ('{PENDING}', '{DELIVERED}', '{DEAD}')),
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT COLLATE "C" NOT NULL,
        claimed_by TEXT NOT NULL DEFAULT '',
        claimed_until TEXT COLLATE "C" NOT NULL DEFAULT '',
        delivered TEXT NOT NULL DEFAULT '[]',
        last_error TEXT NOT NULL DEFAULT '',
        done_at TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX outbox_due ON outbox (next_attempt_at) WHERE status = '{PENDING}';
    CREATE INDEX outbox_approval ON outbox (approval_id);
    CREATE UNIQUE INDEX outbox_expired_once ON outbox (approval_id) WHERE type = '{EXPIRED}'
    """,
)


async def record(conn: psycopg.AsyncConnection[Any], event_id: str, event_type: str, approval: Approval,
                 now: Any) -> None:
    """Write one event inside the caller's transaction (the one that changed the approval)."""
    await conn.execute(f"INSERT INTO outbox ({INSERT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                       event_values(event_id, event_type, approval, now))


class PgOutbox:
    """The outbox on the shared store (OutboxStore). `await start(upgrade=...)` migrates its table."""

    COMPONENT = COMPONENT
    #: Its migration steps (`tollgate state migrate` applies every component's).
    STEPS = _SCHEMA

    def __init__(self, store: PgStore, *, clock: Clock = SystemClock()) -> None:
        self._store = store
        self.clock = clock
        self._ids = DecisionIds(clock)

    async def start(self, *, upgrade: bool = False) -> None:
        await self._store.migrate(self.COMPONENT, self.STEPS, upgrade=upgrade)

    async def claim(self, *, owner: str, limit: int, lease_seconds: float) -> builtins.list[OutboxEvent]:
        now = self.clock.now()
        moment, until = format_time(now), format_time(now + timedelta(seconds=lease_seconds))
        async with self._store.transaction("claim notifications") as conn:
            rows = await (await conn.execute(
                "UPDATE outbox SET claimed_by = %s, claimed_until = %s WHERE id IN (SELECT id FROM outbox "
                "WHERE status = %s AND next_attempt_at <= %s AND claimed_until <= %s ORDER BY next_attempt_at, id "
                f"LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING {COLUMNS}",
                (owner, until, PENDING, moment, moment, limit))).fetchall()
        return sorted((event_from_row(r) for r in rows), key=lambda e: e.id)

    async def settle(self, event_id: str, *, owner: str, delivered: Sequence[str], error: str = "",
                     retry_in: float | None = None) -> bool:
        status, next_at, done = settlement(delivered=delivered, error=error, retry_in=retry_in, now=self.clock.now())
        async with self._store.connection("record a notification attempt") as conn:
            cursor = await conn.execute(
                "UPDATE outbox SET status = %s, attempts = attempts + 1, next_attempt_at = %s, done_at = %s, "
                "delivered = %s, last_error = %s, claimed_by = '', claimed_until = '' "
                "WHERE id = %s AND claimed_by = %s AND status = %s",
                (status, next_at, done, canonical_json(sorted(delivered)), error[:MAX_ERROR], event_id, owner,
                 PENDING))
        return cursor.rowcount == 1

    async def release(self, owner: str) -> int:
        async with self._store.connection("release notification claims") as conn:
            cursor = await conn.execute("UPDATE outbox SET claimed_by = '', claimed_until = '' WHERE claimed_by = %s "
                                        "AND status = %s", (owner, PENDING))
        return cursor.rowcount

    async def sweep_expired(self) -> int:
        """Every replica sweeps: the unique index on (approval_id) of expiry events keeps one event per approval
        when two find the same one at once."""
        from tollgate.state.approvals import COLUMNS as APPROVAL_COLUMNS
        from tollgate.state.approvals import PENDING as APPROVAL_PENDING

        now = self.clock.now()
        recorded = 0
        async with self._store.transaction("record expired approvals") as conn:
            rows = await (await conn.execute(
                f"SELECT {APPROVAL_COLUMNS} FROM approvals a WHERE status = %s AND expires_at <= %s "
                "AND expires_at > %s AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.approval_id = a.id AND "
                "o.type = %s) LIMIT 1000",
                (APPROVAL_PENDING, format_time(now), format_time(now - EXPIRY_LOOKBACK), EXPIRED))).fetchall()
            for row in rows:
                cursor = await conn.execute(
                    f"INSERT INTO outbox ({INSERT_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                    event_values("evt_" + self._ids.new(), EXPIRED, _expired(row, now), now))
                recorded += cursor.rowcount
        return recorded

    async def events(self, *, status: str = "", limit: int = 100) -> builtins.list[OutboxEvent]:
        check_status(status)
        where, args = ("WHERE status = %s ", (status,)) if status else ("", ())
        async with self._store.connection("read the outbox") as conn:
            rows = await (await conn.execute(f"SELECT {COLUMNS} FROM outbox {where}ORDER BY id LIMIT %s",
                                             (*args, limit))).fetchall()
        return [event_from_row(r) for r in rows]

    async def backlog(self) -> OutboxBacklog:
        async with self._store.connection("read the outbox") as conn:
            row = await (await conn.execute(
                "SELECT COUNT(*) FILTER (WHERE status = %s), COUNT(*) FILTER (WHERE status = %s), "
                "COALESCE(MIN(created_at) FILTER (WHERE status = %s), '') FROM outbox",
                (PENDING, DEAD, PENDING))).fetchone()
        assert row is not None  # an aggregate always answers one row
        return OutboxBacklog(int(row[0]), int(row[1]), str(row[2]))


def _expired(row: Sequence[Any], now: Any) -> Approval:
    from tollgate.state.approvals import approval_from_row

    return approval_from_row(row, (), now)
