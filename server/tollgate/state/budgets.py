"""Budgets: a spend ledger of reservations and committed spend per session, agent, team and workflow."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tollgate.clock import Clock, SystemClock
from tollgate.state._store import StateError, StateStore

#: The scopes a budget limit can name, and the principal field each one reads.
BUDGET_SCOPES = {"session": "session_id", "agent": "agent_id", "team": "team", "workflow": "workflow"}
#: The window each scope's spend is counted over by default (input.state.spend, budget.limits): a session's
#: whole run; an agent's, team's and workflow's current UTC day.
WINDOWS = {"session": "run", "agent": "day", "team": "day", "workflow": "day"}
#: The scopes also counted over the current UTC calendar month (input.state.spend_month,
#: budget.monthly_limits). A session is one run: a month adds nothing to it.
MONTHLY_SCOPES = ("agent", "team", "workflow")
#: How long a reservation holds its amount when no usage is reported (seconds).
DEFAULT_TTL = 900.0

_SCHEMA = (
    """
    CREATE TABLE budget_reservations (
        id TEXT NOT NULL,
        session TEXT NOT NULL,
        agent TEXT NOT NULL,
        team TEXT NOT NULL,
        workflow TEXT NOT NULL,
        unit TEXT NOT NULL,
        amount REAL NOT NULL,
        committed REAL NOT NULL DEFAULT 0,
        status TEXT NOT NULL,
        day TEXT NOT NULL,
        month TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL NOT NULL,
        decision_id TEXT NOT NULL,
        over_reported INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (id, unit)
    );
    CREATE INDEX budget_reservations_session ON budget_reservations (session, unit);
    CREATE INDEX budget_reservations_agent ON budget_reservations (agent, unit, day);
    CREATE INDEX budget_reservations_team ON budget_reservations (team, unit, day);
    CREATE INDEX budget_reservations_workflow ON budget_reservations (workflow, unit, day);
    CREATE INDEX budget_reservations_open ON budget_reservations (status, expires_at)
    """,
    # 2: monthly limits read each scope's spend over the current month.
    """
    CREATE INDEX budget_reservations_agent_month ON budget_reservations (agent, unit, month);
    CREATE INDEX budget_reservations_team_month ON budget_reservations (team, unit, month);
    CREATE INDEX budget_reservations_workflow_month ON budget_reservations (workflow, unit, month)
    """,
)

#: Sums of floats drift (0.1 + 0.2 > 0.3); the policy compares exact decimals, so the re-check allows this much.
_TOLERANCE = 1e-9
#: What a row counts as spend: a live reservation its amount, anything else what was committed.
_COUNTED = ("CASE WHEN status = 'reserved' AND expires_at > :now THEN amount "
            "WHEN status = 'committed' THEN committed ELSE 0 END")


class BudgetExceeded(Exception):
    """A reservation would pass a limit (the message names the scope)."""


class ReservationNotFound(LookupError):
    """No reservation has this id."""


class ReservationClosed(Exception):
    """The reservation was already committed, released or has expired."""


@dataclass(frozen=True)
class Reservation:
    """One reservation in one unit: the amount held against every scope of one principal.

    A model call reserves under one id in two units (usd and tokens); each is reported on its own.
    """

    id: str
    scopes: Mapping[str, str]
    unit: str
    amount: float
    committed: float
    status: str  # reserved / committed / expired (a reported reservation releases what it did not commit)
    expires_at: float
    over_reported: bool = False


@dataclass(frozen=True)
class ScopeSpend:
    """Spend of one scope value over its window, by unit: (committed, reserved)."""

    scope: str
    value: str
    window: str  # "run", "day YYYY-MM-DD" or "month YYYY-MM" (UTC)
    units: Mapping[str, tuple[float, float]]


@dataclass(frozen=True)
class SpendSnapshot:
    """The spend one decision reads: {scope: {unit: amount}} over the default windows, and over the month."""

    by_scope: Mapping[str, Mapping[str, float]]
    monthly: Mapping[str, Mapping[str, float]]


def principal_scopes(principal: Mapping[str, Any]) -> dict[str, str]:
    """The (scope → value) pairs a principal is counted under."""
    return {scope: str(principal.get(field) or "") for scope, field in BUDGET_SCOPES.items()}


class Budgets:
    """The ledger. The server is its only writer; every check-and-reserve is one IMMEDIATE transaction.

    Windows (the UTC day and month) and reservation expiry are read from `clock` unless a call passes `now`
    (seconds since the epoch), as the decision that reads spend and then reserves does, so both see one moment.
    """

    COMPONENT = "budgets"

    def __init__(self, store: StateStore, *, ttl: float = DEFAULT_TTL, clock: Clock = SystemClock()) -> None:
        self._store = store
        self.ttl = ttl
        self.clock = clock
        store.migrate(self.COMPONENT, _SCHEMA)

    def spend(self, scopes: Mapping[str, str], *, now: float | None = None) -> SpendSnapshot:
        """Current spend (committed + live reservations) of each scope named, over its default window
        (input.state.spend) and, for the monthly scopes, over the current month (input.state.spend_month)."""
        now = self.clock.time() if now is None else now
        with self._store.lock:
            try:
                return SpendSnapshot(
                    {scope: self._sums(scope, value, WINDOWS[scope], now)
                     for scope, value in scopes.items() if scope in WINDOWS},
                    {scope: self._sums(scope, value, "month", now)
                     for scope, value in scopes.items() if scope in MONTHLY_SCOPES})
            except sqlite3.Error as exc:
                raise StateError(f"state store {self._store.path}: cannot read spend ({exc})") from exc

    def reserve(self, scopes: Mapping[str, str], amounts: Mapping[str, float], *,
                limits: Mapping[str, Any], monthly_limits: Mapping[str, Any] | None = None,
                decision_id: str = "", now: float | None = None) -> str:
        """Hold each unit's amount against every scope under one new id, re-checking every limit (over each
        scope's default window) and every monthly limit in the same IMMEDIATE transaction; BudgetExceeded
        (nothing reserved) when one would be passed."""
        now = self.clock.time() if now is None else now
        scopes = {s: str(scopes.get(s, "")) for s in WINDOWS}
        reservation_id = f"rsv-{uuid.uuid4().hex}"
        stamp = datetime.fromtimestamp(now, UTC)
        checks = [(scope, WINDOWS[scope], scope_limits) for scope, scope_limits in sorted(limits.items())
                  if scope in WINDOWS]
        checks += [(scope, "month", scope_limits) for scope, scope_limits in sorted((monthly_limits or {}).items())
                   if scope in MONTHLY_SCOPES]
        with self._store.lock, self._store.transaction("reserve") as db:
            for unit, amount in sorted(amounts.items()):
                for scope, window, scope_limits in checks:
                    limit = scope_limits.get(unit) if isinstance(scope_limits, Mapping) else None
                    if not isinstance(limit, int | float):
                        continue
                    spent = self._sum(scope, scopes[scope], unit, window, now)
                    if spent + amount > limit + _TOLERANCE:
                        what = f"{scope} monthly" if window == "month" else scope
                        raise BudgetExceeded(
                            f"{what} spend {spent:g} {unit} plus this request's {amount:g} would pass "
                            f"the {what} limit of {limit:g} {unit}")
                db.execute(
                    "INSERT INTO budget_reservations (id, session, agent, team, workflow, unit, amount, "
                    "status, day, month, created_at, expires_at, decision_id) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?, ?)",
                    (reservation_id, scopes["session"], scopes["agent"], scopes["team"],
                     scopes["workflow"], unit, float(amount), stamp.strftime("%Y-%m-%d"),
                     stamp.strftime("%Y-%m"), now, now + self.ttl, decision_id))
        return reservation_id

    def report(self, reservation_id: str, *, amount: float, unit: str = "",
               now: float | None = None) -> Reservation:
        """Commit the actual amount in unit and release the rest; more than reserved is committed and flagged.

        ReservationNotFound for an unknown id (or a unit it does not hold); ReservationClosed when it was
        already reported or has expired; ValueError when unit is needed (the id holds several units).
        """
        now = self.clock.time() if now is None else now
        if amount < 0:
            raise ValueError(f"amount: {amount:g} is negative")
        db = self._store.db
        with self._store.lock:
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    rows = db.execute(
                        "SELECT unit, session, agent, team, workflow, amount, status, expires_at "
                        "FROM budget_reservations WHERE id = ? ORDER BY unit", (reservation_id,)).fetchall()
                    if not rows:
                        raise ReservationNotFound(f"reservation {reservation_id!r} does not exist")
                    units = [r[0] for r in rows]
                    if not unit:
                        if len(rows) > 1:
                            raise ValueError(f"unit: required, reservation {reservation_id} holds "
                                             f"{' and '.join(units)}")
                        unit = units[0]
                    if unit not in units:
                        raise ReservationNotFound(f"reservation {reservation_id} holds no {unit} "
                                                  f"(it holds {', '.join(units)})")
                    _, session, agent, team, workflow, reserved, status, expires_at = rows[units.index(unit)]
                    if status == "reserved" and expires_at <= now:
                        db.execute("UPDATE budget_reservations SET status = 'expired' WHERE id = ? AND unit = ?",
                                   (reservation_id, unit))
                        db.execute("COMMIT")
                        raise ReservationClosed(f"reservation {reservation_id} ({unit}) expired; its amount "
                                                "was released")
                    if status != "reserved":
                        raise ReservationClosed(f"reservation {reservation_id} ({unit}) is already {status}; "
                                                "usage is reported once, before the reservation expires")
                    over = amount > reserved
                    db.execute("UPDATE budget_reservations SET status = 'committed', committed = ?, "
                               "over_reported = ? WHERE id = ? AND unit = ?",
                               (float(amount), int(over), reservation_id, unit))
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise StateError(f"state store {self._store.path}: cannot report usage ({exc})") from exc
        return Reservation(reservation_id, {"session": session, "agent": agent, "team": team, "workflow": workflow},
                           unit, reserved, float(amount), "committed", expires_at, over)

    def expire(self, *, now: float | None = None) -> int:
        """Mark reservations past their expiry as expired (they already count as nothing); returns how many."""
        now = self.clock.time() if now is None else now
        with self._store.lock:
            try:
                cursor = self._store.db.execute(
                    "UPDATE budget_reservations SET status = 'expired' WHERE status = 'reserved' AND expires_at <= ?",
                    (now,))
                return cursor.rowcount
            except sqlite3.Error as exc:
                raise StateError(f"state store {self._store.path}: cannot expire reservations ({exc})") from exc

    def get(self, reservation_id: str) -> list[Reservation]:
        """The reservation's rows, one per unit (ReservationNotFound when there are none)."""
        with self._store.lock:
            rows = self._store.db.execute(
                "SELECT id, session, agent, team, workflow, unit, amount, committed, status, expires_at, "
                "over_reported FROM budget_reservations WHERE id = ? ORDER BY unit", (reservation_id,)).fetchall()
        if not rows:
            raise ReservationNotFound(f"reservation {reservation_id!r} does not exist")
        return [Reservation(r[0], dict(zip(WINDOWS, r[1:5], strict=True)), r[5], r[6], r[7], r[8], r[9], bool(r[10]))
                for r in rows]

    def usage(self, scopes: Mapping[str, str], *, now: float | None = None) -> list[ScopeSpend]:
        """Committed and reserved spend of each scope named (scope → value), over its default window and,
        for the monthly scopes, over the current month too."""
        now = self.clock.time() if now is None else now
        found = []
        with self._store.lock:
            try:
                for scope, value in scopes.items():
                    if scope not in WINDOWS:
                        raise ValueError(f"{scope}: not a budget scope (scopes: {', '.join(WINDOWS)})")
                    windows = (WINDOWS[scope], "month") if scope in MONTHLY_SCOPES else (WINDOWS[scope],)
                    for window in windows:
                        where, params = self._window(window, now)
                        rows = self._store.db.execute(
                            "SELECT unit, SUM(CASE WHEN status = 'committed' THEN committed ELSE 0 END), "
                            "SUM(CASE WHEN status = 'reserved' AND expires_at > :now THEN amount ELSE 0 END) "
                            f"FROM budget_reservations WHERE {scope} = :value{where} GROUP BY unit ORDER BY unit",
                            {"value": value, "now": now, **params}).fetchall()
                        label = " ".join((window, *params.values()))
                        found.append(ScopeSpend(scope, value, label,
                                                {unit: (float(c or 0), float(r or 0)) for unit, c, r in rows}))
            except sqlite3.Error as exc:
                raise StateError(f"state store {self._store.path}: cannot read spend ({exc})") from exc
        return found

    def _sums(self, scope: str, value: str, window: str, now: float) -> dict[str, float]:
        where, params = self._window(window, now)
        rows = self._store.db.execute(
            f"SELECT unit, SUM({_COUNTED}) FROM budget_reservations WHERE {scope} = :value{where} GROUP BY unit",
            {"value": value, "now": now, **params}).fetchall()
        return {unit: float(total or 0) for unit, total in rows}

    def _sum(self, scope: str, value: str, unit: str, window: str, now: float) -> float:
        where, params = self._window(window, now)
        row = self._store.db.execute(
            f"SELECT SUM({_COUNTED}) FROM budget_reservations WHERE {scope} = :value AND unit = :unit{where}",
            {"value": value, "unit": unit, "now": now, **params}).fetchone()
        return float(row[0] or 0)

    @staticmethod
    def _window(window: str, now: float) -> tuple[str, dict[str, str]]:
        """The SQL condition and parameters that keep a window's rows: the current UTC day or month; a run is
        everything the scope value (a session id) ever spent."""
        stamp = datetime.fromtimestamp(now, UTC)
        if window == "day":
            return " AND day = :day", {"day": stamp.strftime("%Y-%m-%d")}
        if window == "month":
            return " AND month = :month", {"month": stamp.strftime("%Y-%m")}
        return "", {}
