"""Tool results on the shared store: what every harness of the fleet reported of the tool calls it was answered.

The rules are the SQLite store's (state/_toolresults.py: `checked_result`, `settle`); a report is one transaction
that holds a transaction-scoped advisory lock on its decision id while it reads, closes the approval and inserts,
so two replicas given two reports of one decision at once store one and answer the other as one store would. A
closed approval notifies APPROVALS_CHANNEL in the same transaction: watchers on every replica wake.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

from tollgate.clock import Clock, SystemClock
from tollgate.encoding import format_time
from tollgate.state._toolresults import (
    CLOSE_APPROVAL_SQL,
    COLUMN_NAMES,
    COLUMNS,
    COMPONENT,
    MAX_READ,
    Recorded,
    ToolResultReport,
    ToolRun,
    checked_result,
    from_row,
    row_values,
    settle,
    table_sql,
)
from tollgate.state.postgres._listener import APPROVALS_CHANNEL
from tollgate.state.postgres._store import PgStore

#: The tool_results component's migrations (`tollgate state migrate`); times are RFC 3339 text compared bytewise.
TOOL_RESULTS_STEPS = (table_sql(text='text COLLATE "C"', boolean="boolean"),)


class PgToolResults:
    """Tool results in the shared store's tool_results table (ToolResultStore)."""

    COMPONENT = COMPONENT
    STEPS = TOOL_RESULTS_STEPS

    def __init__(self, store: PgStore, *, clock: Clock = SystemClock(),
                 approvals_changed: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self.clock = clock
        self._approvals_changed = approvals_changed

    async def migrate(self, *, upgrade: bool) -> int:
        """Check (or with upgrade, bring) the schema to this code's version; the steps applied."""
        return await self._store.migrate(COMPONENT, TOOL_RESULTS_STEPS, upgrade=upgrade)

    async def report(self, report: ToolResultReport) -> Recorded:
        checked = checked_result(report)
        now = format_time(self.clock.now())
        async with self._store.transaction("record a tool result") as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended(%s, 7315))", (checked.decision_id,))
            cursor = await conn.execute(f"SELECT {COLUMNS} FROM tool_results WHERE decision_id = %s",
                                        (checked.decision_id,))
            row = await cursor.fetchone()
            done = settle(checked, None if row is None else from_row(row), now=now)
            if not done.unchanged:
                closed = False
                if checked.approval_id:
                    cursor = await conn.execute(CLOSE_APPROVAL_SQL,
                                                (now, now, checked.close_reason, checked.approval_id, now))
                    closed = cursor.rowcount == 1
                if closed:
                    await conn.execute("SELECT pg_notify(%s, %s)", (APPROVALS_CHANNEL, checked.approval_id))
                done = Recorded(replace(done.run, approval_closed=checked.approval_id if closed else ""), False)
                await conn.execute(f"INSERT INTO tool_results ({COLUMNS}) VALUES "
                                   f"({', '.join(['%s'] * len(COLUMN_NAMES))})", row_values(done.run))
        if done.run.approval_closed and not done.unchanged:
            self._approvals_changed()
        return done

    async def for_decisions(self, decision_ids: Sequence[str]) -> dict[str, ToolRun]:
        wanted = sorted(set(decision_ids))
        async with self._store.connection("read tool results") as conn:
            cursor = await conn.execute(f"SELECT {COLUMNS} FROM tool_results WHERE decision_id = ANY(%s) LIMIT %s",
                                        (wanted, MAX_READ))
            rows = await cursor.fetchall()
        return {run.decision_id: run for run in map(from_row, rows)}


if TYPE_CHECKING:
    from tollgate.state._toolresults import ToolResultStore

    _results: type[ToolResultStore] = PgToolResults  # mypy holds the class to the protocol
