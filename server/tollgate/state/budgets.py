"""Budgets: a spend ledger of reservations and committed spend per session, agent, team and workflow."""

from __future__ import annotations

import math
import sqlite3
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tollgate.clock import Clock, SystemClock
from tollgate.contract import MAX_AMOUNT, is_amount
from tollgate.state._live_totals import sqlite_step
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

#: The running totals (budget_totals) worked out from the rows (budget_reservations): committed spend per scope
#: value, unit and period. Schema 4 runs them once over the rows already there.
TOTALS_FROM_ROWS = tuple(
    f"INSERT INTO budget_totals SELECT '{scope}', {scope}, unit, {period}, "
    f"SUM(CASE WHEN status = 'committed' THEN committed ELSE 0 END) FROM budget_reservations "
    f"WHERE {scope} != '' GROUP BY {scope}, unit, {period}"
    for scope, period in (("session", "'run'"), ("agent", "'day ' || day"), ("agent", "'month ' || month"),
                          ("team", "'day ' || day"), ("team", "'month ' || month"),
                          ("workflow", "'day ' || day"), ("workflow", "'month ' || month")))

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
    # 3: usage is reported by the caller that got the reservation. NULL: made before this column existed
    # (any caller may report it; such a reservation lives one TTL at most).
    """
    ALTER TABLE budget_reservations ADD COLUMN requested_by TEXT
    """,
    # 4: committed spend is kept as running totals per scope value, unit and period, and live reservations are
    # read through partial indexes that hold only open rows: a decision's spend costs the same with 200,000 of
    # the day's rows as with none (the full indexes made it scan every row of the scope's day, twice a scope).
    """
    CREATE TABLE budget_totals (
        scope TEXT NOT NULL,
        value TEXT NOT NULL,
        unit TEXT NOT NULL,
        period TEXT NOT NULL,
        committed REAL NOT NULL DEFAULT 0,
        PRIMARY KEY (scope, value, unit, period)
    ) WITHOUT ROWID;
    """ + ";".join(TOTALS_FROM_ROWS) + """;
    DROP INDEX budget_reservations_session;
    DROP INDEX budget_reservations_agent;
    DROP INDEX budget_reservations_team;
    DROP INDEX budget_reservations_workflow;
    DROP INDEX budget_reservations_agent_month;
    DROP INDEX budget_reservations_team_month;
    DROP INDEX budget_reservations_workflow_month;
    CREATE INDEX budget_live_session ON budget_reservations (session, unit) WHERE status = 'reserved';
    CREATE INDEX budget_live_agent ON budget_reservations (agent, unit, day) WHERE status = 'reserved';
    CREATE INDEX budget_live_agent_month ON budget_reservations (agent, unit, month) WHERE status = 'reserved';
    CREATE INDEX budget_live_team ON budget_reservations (team, unit, day) WHERE status = 'reserved';
    CREATE INDEX budget_live_team_month ON budget_reservations (team, unit, month) WHERE status = 'reserved';
    CREATE INDEX budget_live_workflow ON budget_reservations (workflow, unit, day) WHERE status = 'reserved';
    CREATE INDEX budget_live_workflow_month ON budget_reservations (workflow, unit, month) WHERE status = 'reserved'
    """,
    # 5: the open reservations are running totals too (state/_live_totals.py): a decision's spend costs the same
    # with 2,000 unreported reservations of its session as with none.
    sqlite_step(),
)

#: Sums of floats drift (0.1 + 0.2 > 0.3); the policy compares exact decimals, so the re-check allows this much.
_TOLERANCE = 1e-9
#: An open reservation no ledger of ours writes: an amount that is not a number from 0 to MAX_AMOUNT (planted, or
#: a disk fault). SQLite stores NaN as NULL (refused by NOT NULL), so a NaN arrives as text, which typeof() catches.
_INVALID = "CASE WHEN typeof(amount) NOT IN ('integer', 'real') OR amount < 0 OR amount > :max THEN 1 ELSE 0 END"


class BudgetExceeded(Exception):
    """A reservation would pass a limit (the message names the scope)."""


class ReservationNotFound(LookupError):
    """No reservation has this id."""


class ReservationClosed(Exception):
    """The reservation was already committed, released or has expired."""


class ReservationNotYours(PermissionError):
    """Usage was reported by a caller other than the one whose decision got the reservation."""


class LedgerInvalid(StateError):
    """A scope's rows hold a value the ledger never writes: that scope fails closed (the message names it)."""

    def __init__(self, scope: str, value: str, unit: str, *, store: str = "state.db") -> None:
        self.scope, self.value, self.unit = scope, value, unit
        super().__init__(
            f"the spend ledger holds an invalid {unit} amount for {scope} {value!r} (not a number from 0 to "
            f"{MAX_AMOUNT:g}); spending in this {scope} is denied until an operator repairs {store} "
            f"(tollgate spend --{scope} {value} shows it)")


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
    #: Why this scope's spend cannot be trusted (a row holds an invalid amount), "" when it can.
    invalid: str = ""


@dataclass(frozen=True)
class SpendSnapshot:
    """The spend one decision reads: {scope: {unit: amount}} over the default windows, and over the month."""

    by_scope: Mapping[str, Mapping[str, float]]
    monthly: Mapping[str, Mapping[str, float]]


def principal_scopes(principal: Mapping[str, Any]) -> dict[str, str]:
    """The (scope → value) pairs a principal is counted under: only the scopes it names. An empty value is no
    scope (requests with no team are not one team that every agent shares)."""
    return {scope: value for scope, field in BUDGET_SCOPES.items() if (value := str(principal.get(field) or ""))}


# What a ledger checks and says, whichever store holds it: the SQLite class below and PgBudgets
# (state/postgres/_budgets.py) call these, so both refuse the same requests with the same words.

def new_reservation_id() -> str:
    return f"rsv-{uuid.uuid4().hex}"


def reservation_scopes(scopes: Mapping[str, str]) -> dict[str, str]:
    """Every scope column of a reservation row: the value given, or "" (no scope)."""
    return {s: str(scopes.get(s, "")) for s in WINDOWS}


def check_amounts(amounts: Mapping[str, float]) -> None:
    """ValueError unless every unit's amount is one a ledger may hold."""
    for unit, amount in amounts.items():
        if not is_amount(amount):
            raise ValueError(f"amount: {amount!r} {unit} is not a number from 0 to {MAX_AMOUNT:g}")


def check_report_amount(amount: float) -> None:
    if not is_amount(amount):
        raise ValueError(f"amount: must be a number from 0 to {MAX_AMOUNT:g}, not {amount!r}")


def limit_checks(scopes: Mapping[str, str], limits: Mapping[str, Any],
                 monthly_limits: Mapping[str, Any] | None) -> list[tuple[str, str, Any]]:
    """(scope, window, that scope's limits by unit) for each limit a reservation is checked against: the
    default window's and the month's, of the scopes with a value (an empty value is no scope)."""
    checks = [(scope, WINDOWS[scope], scope_limits) for scope, scope_limits in sorted(limits.items())
              if scope in WINDOWS and scopes.get(scope)]
    checks += [(scope, "month", scope_limits) for scope, scope_limits in sorted((monthly_limits or {}).items())
               if scope in MONTHLY_SCOPES and scopes.get(scope)]
    return checks


def check_limits(checks: list[tuple[str, str, Any]], amounts: Mapping[str, float],
                 spent: Callable[[str, str, str], float]) -> None:
    """BudgetExceeded naming the first limit (units sorted, then checks in order) the amounts would pass;
    spent(scope, unit, window) is what the scope has spent there (LedgerInvalid when it cannot be trusted)."""
    for unit, amount in sorted(amounts.items()):
        for scope, window, scope_limits in checks:
            limit = scope_limits.get(unit) if isinstance(scope_limits, Mapping) else None
            if not isinstance(limit, int | float):
                continue
            used = spent(scope, unit, window)
            # Every row is at most MAX_AMOUNT, so the sum and this addition stay finite.
            if used + amount > limit + _TOLERANCE:
                what = f"{scope} monthly" if window == "month" else scope
                raise BudgetExceeded(f"{what} spend {used:g} {unit} plus this request's {amount:g} would pass "
                                     f"the {what} limit of {limit:g} {unit}")


def report_unit(reservation_id: str, units: list[str], unit: str) -> str:
    """The unit a report commits: the one asked for, or the reservation's only one (ValueError when it holds
    several, ReservationNotFound when it holds no such unit)."""
    if not unit:
        if len(units) > 1:
            raise ValueError(f"unit: required, reservation {reservation_id} holds {' and '.join(units)}")
        return units[0]
    if unit not in units:
        raise ReservationNotFound(f"reservation {reservation_id} holds no {unit} (it holds {', '.join(units)})")
    return unit


def closed(reservation_id: str, unit: str, status: str) -> ReservationClosed:
    """The refusal of a report on a reservation already committed or expired (status: as stored)."""
    return ReservationClosed(f"reservation {reservation_id} ({unit}) is already {status}; usage is reported "
                             "once, before the reservation expires")


def expired_now(reservation_id: str, unit: str) -> ReservationClosed:
    """The refusal of a report that came after the reservation's expiry, which it has just recorded."""
    return ReservationClosed(f"reservation {reservation_id} ({unit}) expired; its amount was released")


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
                decision_id: str = "", requested_by: str = "", now: float | None = None) -> str:
        """Hold each unit's amount against every scope under one new id, re-checking every limit (over each
        scope's default window) and every monthly limit in the same IMMEDIATE transaction; BudgetExceeded
        (nothing reserved) when one would be passed. A scope whose value is empty is no scope: its limits are
        not checked (the row stores "" in its column, which no spend query reads). requested_by is the caller
        that may report the usage."""
        now = self.clock.time() if now is None else now
        check_amounts(amounts)
        scopes = reservation_scopes(scopes)
        reservation_id = new_reservation_id()
        stamp = datetime.fromtimestamp(now, UTC)
        checks = limit_checks(scopes, limits, monthly_limits)
        with self._store.lock, self._store.transaction("reserve") as db:
            check_limits(checks, amounts, lambda scope, unit, window: self._sum(scope, scopes[scope], unit, window,
                                                                                now))
            for unit, amount in sorted(amounts.items()):
                db.execute(
                    "INSERT INTO budget_reservations (id, session, agent, team, workflow, unit, amount, "
                    "status, day, month, created_at, expires_at, decision_id, requested_by) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, 'reserved', ?, ?, ?, ?, ?, ?)",
                    (reservation_id, scopes["session"], scopes["agent"], scopes["team"],
                     scopes["workflow"], unit, float(amount), stamp.strftime("%Y-%m-%d"),
                     stamp.strftime("%Y-%m"), now, now + self.ttl, decision_id, requested_by))
                # Its triggers add it to the running totals of its scopes (state/_live_totals.py).
        return reservation_id

    def report(self, reservation_id: str, *, amount: float, unit: str = "", reported_by: str | None = None,
               now: float | None = None) -> Reservation:
        """Commit the actual amount in unit and release the rest; more than reserved is committed and flagged
        (the spend happened: refusing it would hide real spend from every limit; the caller logs why).

        ValueError for an amount that is not a number from 0 to MAX_AMOUNT, or when unit is needed (the id
        holds several units); ReservationNotFound for an unknown id (or a unit it does not hold);
        ReservationNotYours when reported_by (None: not checked) is not the caller the reservation was made
        for; ReservationClosed when it was already reported or has expired.
        """
        now = self.clock.time() if now is None else now
        check_report_amount(amount)
        db = self._store.db
        with self._store.lock:
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    rows = db.execute(
                        "SELECT unit, session, agent, team, workflow, amount, status, expires_at, requested_by, "
                        "day, month "
                        "FROM budget_reservations WHERE id = ? ORDER BY unit", (reservation_id,)).fetchall()
                    if not rows:
                        raise ReservationNotFound(f"reservation {reservation_id!r} does not exist")
                    check_reporter(reservation_id, rows[0][8], reported_by)
                    units = [r[0] for r in rows]
                    unit = report_unit(reservation_id, units, unit)
                    (_, session, agent, team, workflow, reserved, status, expires_at, _,
                     day, month) = rows[units.index(unit)]
                    if status == "reserved" and expires_at <= now:
                        db.execute("UPDATE budget_reservations SET status = 'expired' WHERE id = ? AND unit = ?",
                                   (reservation_id, unit))
                        db.execute("COMMIT")
                        raise expired_now(reservation_id, unit)
                    if status != "reserved":
                        raise closed(reservation_id, unit, status)
                    over = amount > reserved
                    db.execute("UPDATE budget_reservations SET status = 'committed', committed = ?, "
                               "over_reported = ? WHERE id = ? AND unit = ?",
                               (float(amount), int(over), reservation_id, unit))
                    _add_committed(db, {"session": session, "agent": agent, "team": team, "workflow": workflow},
                                   unit, float(amount), periods={"run": "run", "day": f"day {day}",
                                                                 "month": f"month {month}"})
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

    def withdraw(self, reservation_id: str) -> int:
        """Delete the open rows of a reservation whose decision was never answered (its budget step failed after
        reserving), as if it had never been made; returns how many. A reported unit stays as it is."""
        with self._store.lock, self._store.transaction("withdraw a reservation") as db:
            withdrawn: int = db.execute("DELETE FROM budget_reservations WHERE id = ? AND status = 'reserved'",
                                        (reservation_id,)).rowcount
        return withdrawn

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
                        units = self._window_spend(scope, value, window, now)
                        invalid = [str(LedgerInvalid(scope, value, unit)) for unit, (_, _, bad) in units.items() if bad]
                        found.append(ScopeSpend(scope, value, window_period(window, now),
                                                {unit: (c, r) for unit, (c, r, _) in sorted(units.items())},
                                                invalid="; ".join(invalid)))
            except sqlite3.Error as exc:
                raise StateError(f"state store {self._store.path}: cannot read spend ({exc})") from exc
        return found

    def _sums(self, scope: str, value: str, window: str, now: float) -> dict[str, float]:
        """Spend of one scope value over one window, by unit; LedgerInvalid when a value of it is invalid."""
        found = {}
        for unit, (committed, reserved, bad) in self._window_spend(scope, value, window, now).items():
            if bad:
                raise LedgerInvalid(scope, value, unit)
            found[unit] = committed + reserved  # both finite and at most what the ledger holds: no overflow
        return found

    def _sum(self, scope: str, value: str, unit: str, window: str, now: float) -> float:
        return self._sums(scope, value, window, now).get(unit, 0.0)

    def _window_spend(self, scope: str, value: str, window: str, now: float) -> dict[str, tuple[float, float, bool]]:
        """(committed, live reserved, whether a value of it is invalid) by unit, for one scope value over one
        window: both from the running totals (a row per unit), less the open rows past their expiry that the
        sweep has not marked yet (the scope's partial index by expiry), so the cost follows neither the day's
        rows nor the open reservations (state/_live_totals.py)."""
        db = self._store.db
        totals: dict[str, list[Any]] = {}
        for unit, committed, reserved, live, invalid in db.execute(
                "SELECT unit, committed, reserved, live, invalid FROM budget_totals WHERE scope = ? AND value = ? "
                "AND period = ?", (scope, value, window_period(window, now))):
            totals[unit] = [_number(committed), math.nan if reserved is None else _number(reserved), live, invalid]
        where, params = self._window(window, now)
        # INDEXED BY: left to itself the planner takes (status, expires_at), every open row of every scope.
        index = f"budget_live_{scope}_month" if window == "month" else f"budget_live_{scope}"
        for unit, total, count, invalid in db.execute(
                f"SELECT unit, SUM(amount), COUNT(*), SUM({_INVALID}) FROM budget_reservations INDEXED BY {index} "
                f"WHERE {scope} = :value AND status = 'reserved' AND expires_at <= :now{where} GROUP BY unit",
                {"value": value, "now": now, "max": MAX_AMOUNT, **params}):
            row = totals.setdefault(unit, [0.0, 0.0, 0, 0])
            row[1], row[2], row[3] = row[1] - _number(total), row[2] - count, row[3] - invalid
        return {unit: live_spend(committed, reserved, live, invalid)
                for unit, (committed, reserved, live, invalid) in totals.items()}

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


def window_period(window: str, now: float) -> str:
    """The period a window covers at now, as the totals and `tollgate spend` name it: "run", "day YYYY-MM-DD"
    or "month YYYY-MM" (UTC)."""
    stamp = datetime.fromtimestamp(now, UTC)
    if window == "day":
        return f"day {stamp:%Y-%m-%d}"
    if window == "month":
        return f"month {stamp:%Y-%m}"
    return "run"


def live_spend(committed: float, reserved: float, live: int, invalid: int) -> tuple[float, float, bool]:
    """(committed, reserved, whether a value of it is invalid) of one total, once its rows past expiry are
    taken off: no open row left is exactly 0, and the last bits a running sum drifts below 0 are 0."""
    if live <= 0:
        reserved = 0.0
    elif -_TOLERANCE < reserved < 0:
        reserved = 0.0
    return committed, reserved, invalid > 0 or not fine(committed) or not fine(reserved)


def fine(total: float) -> bool:
    """Whether a sum read from the ledger can be shown to a policy (a bad value makes it NaN, infinite or < 0)."""
    return math.isfinite(total) and total >= 0


def _number(value: Any) -> float:
    """A SUM as a float: NULL (no rows) is 0; a value that is no number (text planted in a REAL column) is NaN."""
    if value is None:
        return 0.0
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def check_reporter(reservation_id: str, requested_by: str | None, reported_by: str | None) -> None:
    """ReservationNotYours unless the reporter is the caller the reservation was made for."""
    if reported_by is None or requested_by is None or requested_by == reported_by:
        return
    owner = f"caller {requested_by}" if requested_by else "an unauthenticated caller"
    reporter = f"caller {reported_by}" if reported_by else "an unauthenticated caller"
    raise ReservationNotYours(f"reservation {reservation_id} was made for {owner}; {reporter} may not report its "
                              "usage (report it with the credential that asked for it)")


def _add_committed(db: sqlite3.Connection, scopes: Mapping[str, str], unit: str, amount: float, *,
                   periods: Mapping[str, str]) -> None:
    """Add a report's committed amount to the running totals of every scope the reservation was counted under,
    in the day and month it was made in (as the rows' own day and month columns said before the totals). A
    reservation adds 0, so that a unit once reserved in a period shows there (as 0 once it expires)."""
    for scope, value in scopes.items():
        if not value:  # an empty value is no scope
            continue
        for window in (WINDOWS[scope], "month") if scope in MONTHLY_SCOPES else (WINDOWS[scope],):
            db.execute("INSERT INTO budget_totals (scope, value, unit, period, committed) VALUES (?, ?, ?, ?, ?) "
                       "ON CONFLICT (scope, value, unit, period) DO UPDATE SET committed = committed + "
                       "excluded.committed", (scope, value, unit, periods[window], amount))
