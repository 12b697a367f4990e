"""Spend by scope for people: every session's, agent's, team's or workflow's spend in a period, biggest first.

A decision reads the spend of the scopes it names (BudgetStore.usage); the console asks the other way round: which
teams spent what today, this month. Both stores answer from the same tables: committed spend from the running
totals (budget_totals, one row per scope value, unit and period), live reservations from the open rows of the
period (budget_reservations, status 'reserved' and not yet expired). Read-only: the SQLite one opens state.db
read-only on a connection of its own, the PostgreSQL one reads through the pool it is given.

Each listing is bounded (`limit` scope values) and reads the totals of one scope and period; the totals' primary
key starts with the scope, so its cost follows the number of (value, unit, period) totals of that scope, never
the reservations.
"""

from __future__ import annotations

import asyncio
import math
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tollgate.clock import Clock, SystemClock
from tollgate.state._store import StateError, StateStore
from tollgate.state.budgets import WINDOWS

if TYPE_CHECKING:
    from tollgate.state.postgres import PgStore

#: Most scope values one listing holds.
MAX_VALUES = 500


@dataclass(frozen=True)
class ScopeTotal:
    """One scope value's spend in one period and unit: committed, and reserved by live reservations."""

    scope: str
    value: str
    period: str  # "run", "day YYYY-MM-DD", "month YYYY-MM"
    unit: str
    committed: float
    reserved: float
    #: A total the ledger never writes (NaN, infinite, negative): shown as invalid, never summed.
    invalid: bool = False


class SpendReport(Protocol):
    """Spend per scope value, for the console's spend page."""

    async def totals(self, scope: str, period: str, *, limit: int = 100) -> list[ScopeTotal]:
        """Every value of scope with spend in period, biggest first (committed plus reserved, over units), at
        most limit values (ValueError: not a scope, or a period the scope is not counted over)."""
        ...


def check_period(scope: str, period: str) -> tuple[str, str]:
    """(the reservations' column, its value) that keeps a period's rows: ("", "") for a session's run."""
    if scope not in WINDOWS:
        raise ValueError(f"{scope}: not a budget scope (scopes: {', '.join(WINDOWS)})")
    if scope == "session":
        if period != "run":
            raise ValueError(f"period: a session is counted over its run, not {period!r}")
        return "", ""
    kind, _, stamp = period.partition(" ")
    width = {"day": 10, "month": 7}.get(kind)
    if width is None or len(stamp) != width or not stamp.replace("-", "").isdigit():
        raise ValueError(f"period: 'day YYYY-MM-DD' or 'month YYYY-MM', not {period!r}")
    return kind, stamp


def ranked(rows: Iterable[tuple[str, str, Any, Any]], *, scope: str, period: str, limit: int) -> list[ScopeTotal]:
    """(value, unit, committed, reserved) rows merged per value and unit, the biggest `limit` values first."""
    merged: dict[tuple[str, str], list[float]] = {}
    for value, unit, committed, reserved in rows:
        entry = merged.setdefault((str(value), str(unit)), [0.0, 0.0])
        entry[0] += _number(committed)
        entry[1] += _number(reserved)
    found = [ScopeTotal(scope, value, period, unit, c, r, invalid=not _fine(c) or not _fine(r))
             for (value, unit), (c, r) in merged.items()]
    # Ranked by money first (usd), then by the other units' sum; an invalid total counts nothing.
    size: dict[str, tuple[float, float]] = {}
    for total in found:
        usd, other = size.get(total.value, (0.0, 0.0))
        amount = 0.0 if total.invalid else total.committed + total.reserved
        size[total.value] = (usd + amount, other) if total.unit == "usd" else (usd, other + amount)
    order = {v: (-usd, -other, v) for v, (usd, other) in size.items()}
    keep = set(sorted(order, key=order.__getitem__)[:limit])
    return sorted((t for t in found if t.value in keep), key=lambda t: (order[t.value], t.unit))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else math.nan


def _fine(total: float) -> bool:
    return math.isfinite(total) and total >= 0


def _bounded(limit: int) -> int:
    if not 1 <= limit <= MAX_VALUES:
        raise ValueError(f"limit: from 1 to {MAX_VALUES}, not {limit}")
    return limit


class LocalSpend:
    """SpendReport on DATA_DIR/state.db, read-only beside the sidecar that writes it: each listing on a connection
    of its own, opened and closed in a worker thread (the file may appear only once the sidecar first runs)."""

    def __init__(self, path: Path, *, clock: Clock = SystemClock()) -> None:
        self.path = path
        self._clock = clock

    async def totals(self, scope: str, period: str, *, limit: int = 100) -> list[ScopeTotal]:
        column, stamp = check_period(scope, period)
        return await asyncio.to_thread(self._totals, scope, period, column, stamp, _bounded(limit))

    def _totals(self, scope: str, period: str, column: str, stamp: str, limit: int) -> list[ScopeTotal]:
        # The scope is one of WINDOWS' keys and column "day" or "month" (checked): never a caller's string.
        where = f" AND {column} = ?" if column else ""
        live = (self._clock.time(), *([stamp] if column else []))
        store = StateStore(self.path, read_only=True)
        try:
            store.db.execute("BEGIN")  # one snapshot: the totals and the open rows agree
            committed = store.db.execute(
                "SELECT value, unit, committed, 0 FROM budget_totals WHERE scope = ? AND period = ? "
                "ORDER BY committed DESC LIMIT ?", (scope, period, limit * 4)).fetchall()
            reserved = store.db.execute(
                f"SELECT {scope}, unit, 0, SUM(amount) FROM budget_reservations WHERE status = 'reserved' "
                f"AND expires_at > ? AND {scope} != ''{where} GROUP BY {scope}, unit LIMIT ?",
                (*live, limit * 4)).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"state store {self.path}: cannot read spend ({exc})") from exc
        finally:
            store.close()
        return ranked([*committed, *reserved], scope=scope, period=period, limit=limit)


class PgSpend:
    """SpendReport on the fleet's PostgreSQL store (its budgets tables, migrated by PgBudgets)."""

    def __init__(self, store: PgStore, *, clock: Clock = SystemClock()) -> None:
        self._store = store
        self._clock = clock

    async def totals(self, scope: str, period: str, *, limit: int = 100) -> list[ScopeTotal]:
        column, stamp = check_period(scope, period)
        limit = _bounded(limit)
        where = f" AND {column} = %s" if column else ""
        live = (self._clock.time(), *([stamp] if column else []))
        async with self._store.connection("read spend") as conn:
            committed = await (await conn.execute(
                "SELECT value, unit, committed, 0 FROM budget_totals WHERE scope = %s AND period = %s "
                "ORDER BY committed DESC LIMIT %s", (scope, period, limit * 4))).fetchall()
            reserved = await (await conn.execute(
                f"SELECT {scope}, unit, 0, SUM(amount) FROM budget_reservations WHERE status = 'reserved' "
                f"AND expires_at > %s AND {scope} <> ''{where} GROUP BY {scope}, unit LIMIT %s",
                (*live, limit * 4))).fetchall()
        return ranked([*committed, *reserved], scope=scope, period=period, limit=limit)


if TYPE_CHECKING:
    _local: type[SpendReport] = LocalSpend
    _pg: type[SpendReport] = PgSpend
