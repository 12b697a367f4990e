"""Outcomes on the shared store: what every harness of the fleet reported, one row per (session, task).

The rules are the SQLite store's (state/_outcomes.py: `checked_report`, `settle`); a report is one transaction
that locks the (session, task) row it reads (or, when there is none yet, inserts it and lets a concurrent
insert of the same key wait on the primary key), so two replicas given two reports at once store one and refuse
or replace with the other exactly as one store would.
"""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from tollgate.clock import Clock, SystemClock
from tollgate.contract import MAX_IDENTIFIER
from tollgate.encoding import format_time, parse_time
from tollgate.state._outcomes import (
    COLUMNS,
    COMPONENT,
    MAX_READ,
    MAX_SUMMARY,
    Outcome,
    OutcomeReport,
    Reported,
    SessionCost,
    add_costs,
    checked_report,
    from_row,
    row_values,
    settle,
    spent,
)
from tollgate.state.postgres._store import PgStore

#: The outcomes component's migrations (`tollgate state migrate`).
OUTCOMES_STEPS = (
    f"""
    CREATE TABLE outcomes (
        session_id text NOT NULL CHECK (length(session_id) BETWEEN 1 AND {MAX_IDENTIFIER}),
        task_id text NOT NULL CHECK (length(task_id) <= {MAX_IDENTIFIER}),
        outcome text NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'abandoned')),
        labels text NOT NULL,
        summary text NOT NULL CHECK (length(summary) <= {MAX_SUMMARY}),
        agent_id text NOT NULL,
        team text NOT NULL,
        workflow text NOT NULL,
        principal_user text NOT NULL,
        reported_by text NOT NULL,
        reported_from text NOT NULL,
        reported_at timestamptz NOT NULL,
        first_reported_at timestamptz NOT NULL,
        revision integer NOT NULL CHECK (revision >= 1),
        PRIMARY KEY (session_id, task_id)
    );
    CREATE INDEX outcomes_reported_at ON outcomes (reported_at);
    """,
)
_PLACES = ", ".join(["%s"] * 14)
_UPSERT = (f"INSERT INTO outcomes ({COLUMNS}) VALUES ({_PLACES}) ON CONFLICT (session_id, task_id) DO UPDATE SET "
           + ", ".join(f"{c.strip()} = excluded.{c.strip()}" for c in COLUMNS.split(",")[2:]))


def _row(row: Sequence[Any]) -> Outcome:
    return from_row(row, reported_at=format_time(row[11]), first_reported_at=format_time(row[12]))


class PgOutcomes:
    """Outcomes in the shared store's outcomes table (OutcomeStore)."""

    COMPONENT = COMPONENT
    STEPS = OUTCOMES_STEPS

    def __init__(self, store: PgStore, *, clock: Clock = SystemClock()) -> None:
        self._store = store
        self.clock = clock

    async def migrate(self, *, upgrade: bool) -> int:
        """Check (or with upgrade, bring) the outcomes schema to this code's version; the steps applied."""
        return await self._store.migrate(COMPONENT, OUTCOMES_STEPS, upgrade=upgrade)

    async def report(self, report: OutcomeReport, *, replace: bool = False) -> Reported:
        checked = checked_report(report)
        async with self._store.transaction("record an outcome") as conn:
            # The row, locked; none yet: take the key (a concurrent report of it waits here, then reads ours).
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7314))",
                               (f"{checked.session_id}\x1f{checked.task_id}",))  # ids hold no control characters
            cursor = await conn.execute(f"SELECT {COLUMNS} FROM outcomes WHERE session_id = %s AND task_id = %s",
                                        (checked.session_id, checked.task_id))
            row = await cursor.fetchone()
            done = settle(checked, None if row is None else _row(row), now=format_time(self.clock.now()),
                          replace_it=replace)
            if not done.unchanged:
                values = list(row_values(done.outcome))
                values[11:13] = parse_time(done.outcome.reported_at), parse_time(done.outcome.first_reported_at)
                await conn.execute(_UPSERT, values)
        return done

    async def get(self, session_id: str, task_id: str = "") -> Outcome | None:
        async with self._store.connection("read an outcome") as conn:
            cursor = await conn.execute(f"SELECT {COLUMNS} FROM outcomes WHERE session_id = %s AND task_id = %s",
                                        (session_id, task_id))
            row = await cursor.fetchone()
        return None if row is None else _row(row)

    async def for_sessions(self, session_ids: Sequence[str]) -> builtins.list[Outcome]:
        wanted = sorted(set(session_ids))
        async with self._store.connection("read outcomes") as conn:
            cursor = await conn.execute(f"SELECT {COLUMNS} FROM outcomes WHERE session_id = ANY(%s) "
                                        "ORDER BY session_id, task_id LIMIT %s", (wanted, MAX_READ))
            rows = await cursor.fetchall()
        return [_row(r) for r in rows]


    async def costs(self, session_ids: Sequence[str], *, unit: str = "usd") -> dict[str, SessionCost]:
        wanted = sorted(set(session_ids))
        found: dict[str, SessionCost] = {}
        async with self._store.connection("read the sessions' spend") as conn, conn.transaction():
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # the totals and open rows agree
            cursor = await conn.execute(
                "SELECT value, committed FROM budget_totals WHERE scope = 'session' AND period = 'run' AND unit = %s "
                "AND value = ANY(%s)", (unit, wanted))
            add_costs(found, await cursor.fetchall(), live=False)
            cursor = await conn.execute(
                "SELECT session, SUM(amount) FROM budget_reservations WHERE status = 'reserved' AND unit = %s "
                "AND expires_at > %s AND session = ANY(%s) GROUP BY session", (unit, self.clock.time(), wanted))
            add_costs(found, await cursor.fetchall(), live=True)
        return spent(found)

if TYPE_CHECKING:
    from tollgate.state._outcomes import OutcomeReader, OutcomeStore

    _outcomes: type[OutcomeStore] = PgOutcomes  # mypy holds the class to the protocols
    _reader: type[OutcomeReader] = PgOutcomes
