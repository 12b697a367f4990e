"""The fleet's spend ledger on PostgreSQL: every replica's budget steps held per scope, so no limit is passed.

The same ledger as state/budgets.py (reservations, committed running totals per scope value, unit and period,
the same windows, limits, refusals and words), shared by every sidecar of a fleet. A budget step (`hold`) is one
transaction on one pooled connection that first takes a transaction-scoped advisory lock per (scope, value) it
counts under, in one sorted order, so read spend → the policy evaluates → reserve runs with no other request of
those scopes in between on any replica, and two steps never deadlock. Unrelated scopes never wait for each
other. Every lock wait and statement is cut at the store's timeout (StateError: the authorizer denies
state_unavailable).

Amounts are double precision, deliberately: they arrive as doubles (the protobuf request, the policy's JSON
numbers as Python floats), the SQLite ledger keeps REAL, and the contract tests hold both stores to the same
sums; the limit re-check already allows float drift (_TOLERANCE in budgets.py). NUMERIC would sum exactly, but
every amount would still be a float before and after. CHECK constraints refuse at write what the ledger never
writes (NaN, infinities, negatives, a row above MAX_AMOUNT), and every read still checks the values it sums, so
a value planted by hand (a constraint dropped, a restore from elsewhere) fails its scope closed (LedgerInvalid).
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import math
from collections.abc import AsyncIterator, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import psycopg

from tollgate.clock import Clock, SystemClock
from tollgate.contract import MAX_AMOUNT
from tollgate.state._live_totals import pg_step
from tollgate.state._store import StateError
from tollgate.state.budgets import (
    DEFAULT_TTL,
    MONTHLY_SCOPES,
    WINDOWS,
    LedgerInvalid,
    Reservation,
    ReservationNotFound,
    ScopeSpend,
    SpendSnapshot,
    check_amounts,
    check_limits,
    check_report_amount,
    check_reporter,
    closed,
    expired_now,
    limit_checks,
    live_spend,
    new_reservation_id,
    report_unit,
    reservation_scopes,
    window_period,
)
from tollgate.state.postgres._store import PgStore, _why

_VALID_AMOUNT = f"amount >= 0 AND amount <= {MAX_AMOUNT:.0f}"  # false for NaN too: PostgreSQL sorts NaN highest
_VALID_TOTAL = "committed >= 0 AND committed < 'Infinity'"  # a total may pass MAX_AMOUNT (many reports), finitely

_SCHEMA = (
    f"""
    CREATE TABLE budget_reservations (
        id TEXT NOT NULL,
        session TEXT NOT NULL,
        agent TEXT NOT NULL,
        team TEXT NOT NULL,
        workflow TEXT NOT NULL,
        unit TEXT NOT NULL,
        amount DOUBLE PRECISION NOT NULL CONSTRAINT budget_amount_valid CHECK ({_VALID_AMOUNT}),
        committed DOUBLE PRECISION NOT NULL DEFAULT 0
            CONSTRAINT budget_committed_valid CHECK (committed >= 0 AND committed <= {MAX_AMOUNT:.0f}),
        status TEXT NOT NULL CHECK (status IN ('reserved', 'committed', 'expired')),
        day TEXT NOT NULL,
        month TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        decision_id TEXT NOT NULL,
        over_reported BOOLEAN NOT NULL DEFAULT false,
        -- The caller that may report the usage ("" an unauthenticated one).
        requested_by TEXT,
        PRIMARY KEY (id, unit)
    );
    -- Live reservations only: a step's spend follows the open rows of its scopes, not the day's rows.
    CREATE INDEX budget_live_session ON budget_reservations (session, unit) WHERE status = 'reserved';
    CREATE INDEX budget_live_agent ON budget_reservations (agent, unit, day) WHERE status = 'reserved';
    CREATE INDEX budget_live_agent_month ON budget_reservations (agent, unit, month) WHERE status = 'reserved';
    CREATE INDEX budget_live_team ON budget_reservations (team, unit, day) WHERE status = 'reserved';
    CREATE INDEX budget_live_team_month ON budget_reservations (team, unit, month) WHERE status = 'reserved';
    CREATE INDEX budget_live_workflow ON budget_reservations (workflow, unit, day) WHERE status = 'reserved';
    CREATE INDEX budget_live_workflow_month ON budget_reservations (workflow, unit, month)
        WHERE status = 'reserved';
    -- The sweep (expire) reads the open rows by expiry.
    CREATE INDEX budget_live_expiry ON budget_reservations (expires_at) WHERE status = 'reserved';
    CREATE TABLE budget_totals (
        scope TEXT NOT NULL,
        value TEXT NOT NULL,
        unit TEXT NOT NULL,
        period TEXT NOT NULL,
        committed DOUBLE PRECISION NOT NULL DEFAULT 0 CONSTRAINT budget_total_valid CHECK ({_VALID_TOTAL}),
        PRIMARY KEY (scope, value, unit, period)
    );
    """,
    # 2: the open reservations are running totals too, kept by triggers (state/_live_totals.py): a step's
    # spend read is one primary-key row per scope window plus the few rows past expiry not swept yet.
    pg_step(),
)

#: The condition that keeps a window's rows and its value's format: the current UTC day or month; a run is
#: everything the scope value (a session id) ever spent.
_WINDOW_ROWS = {"day": (" AND day = %s", "%Y-%m-%d"), "month": (" AND month = %s", "%Y-%m")}
#: (scope, window) → unit → (committed, live reserved, whether a value of it is invalid)
_Windows = dict[tuple[str, str], dict[str, tuple[float, float, bool]]]


def lock_key(scope: str, value: str) -> int:
    """The advisory-lock key of one scope value: 64 bits of a hash every replica computes alike (hashtext's
    32 bits would make unrelated sessions share a lock far more often)."""
    digest = hashlib.blake2b(f"tollgate.budget\0{scope}\0{value}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PgBudgets:
    """The spend ledger on the shared store (BudgetStore). `await start(upgrade=...)` migrates its tables
    before first use; windows and expiry are read from `clock`, once per budget step."""

    COMPONENT = "budgets"
    #: Its migration steps (`tollgate state migrate` applies every component's).
    STEPS = _SCHEMA

    def __init__(self, store: PgStore, *, ttl: float = DEFAULT_TTL, clock: Clock = SystemClock()) -> None:
        self._store = store
        self.ttl = ttl
        self.clock = clock

    async def start(self, *, upgrade: bool = False) -> None:
        """Check (and with upgrade, bring) the budgets schema to this code's version (StateError if not)."""
        await self._store.migrate(self.COMPONENT, self.STEPS, upgrade=upgrade)

    @contextlib.asynccontextmanager
    async def hold(self, scopes: Mapping[str, str]) -> AsyncIterator[_PgHold]:
        """The budget step on these scopes: their advisory locks, in one transaction committed at the end of
        the block (rolled back on an exception). No scopes: no lock."""
        held = {scope: str(value) for scope, value in scopes.items() if scope in WINDOWS}
        keys = sorted({lock_key(scope, value) for scope, value in held.items()})
        async with self._store.transaction("take the budget step") as conn:
            if keys:
                # One statement for every lock, so the store's statement_timeout bounds the whole wait; unnest
                # yields the sorted array in its order, which is what keeps two steps from deadlocking.
                # A statement of its own: in READ COMMITTED each statement reads the data committed when it
                # starts, so spend is read by the next one, after every lock was granted.
                await conn.execute("SELECT pg_advisory_xact_lock(key) FROM unnest(%s::bigint[]) AS key", (keys,))
            yield _PgHold(self, conn, held, self.clock.time())

    async def report(self, reservation_id: str, *, amount: float, unit: str = "",
                     reported_by: str | None = None) -> Reservation:
        """Commit the actual amount in unit and release the rest, as Budgets.report; the rows are taken FOR
        UPDATE, so of two concurrent reports of one reservation one commits and the other finds it closed."""
        now = self.clock.time()
        check_report_amount(amount)
        expired = False
        async with self._store.transaction("report usage") as conn:
            rows = await (await conn.execute(
                "SELECT unit, session, agent, team, workflow, amount, status, expires_at, requested_by, day, month "
                "FROM budget_reservations WHERE id = %s ORDER BY unit FOR UPDATE", (reservation_id,))).fetchall()
            if not rows:
                raise ReservationNotFound(f"reservation {reservation_id!r} does not exist")
            check_reporter(reservation_id, rows[0][8], reported_by)
            unit = report_unit(reservation_id, [r[0] for r in rows], unit)
            (_, session, agent, team, workflow, reserved, status, expires_at, _,
             day, month) = next(r for r in rows if r[0] == unit)
            if status == "reserved" and expires_at <= now:
                await conn.execute("UPDATE budget_reservations SET status = 'expired' WHERE id = %s AND unit = %s",
                                   (reservation_id, unit))
                expired = True  # raised once the expiry is committed
            elif status != "reserved":
                raise closed(reservation_id, unit, status)
            else:
                over = amount > reserved
                await conn.execute("UPDATE budget_reservations SET status = 'committed', committed = %s, "
                                   "over_reported = %s WHERE id = %s AND unit = %s",
                                   (float(amount), over, reservation_id, unit))
                scopes = {"session": session, "agent": agent, "team": team, "workflow": workflow}
                await _add_totals(conn, scopes, unit, float(amount), day=f"day {day}", month=f"month {month}")
        if expired:
            raise expired_now(reservation_id, unit)
        return Reservation(reservation_id, scopes, unit, reserved, float(amount), "committed", expires_at, over)

    async def expire(self) -> int:
        """Mark reservations past their expiry as expired (they already count as nothing); returns how many.
        Replicas sweeping at once each mark a row at most once: the second re-checks the status it waited on."""
        now = self.clock.time()
        async with self._store.connection("expire reservations") as conn:
            cursor = await conn.execute("UPDATE budget_reservations SET status = 'expired' "
                                        "WHERE status = 'reserved' AND expires_at <= %s", (now,))
            return cursor.rowcount

    async def get(self, reservation_id: str) -> builtins.list[Reservation]:
        """The reservation's rows, one per unit (ReservationNotFound when there are none)."""
        async with self._store.connection("read the reservation") as conn:
            rows = await (await conn.execute(
                "SELECT id, session, agent, team, workflow, unit, amount, committed, status, expires_at, "
                "over_reported FROM budget_reservations WHERE id = %s ORDER BY unit", (reservation_id,))).fetchall()
        if not rows:
            raise ReservationNotFound(f"reservation {reservation_id!r} does not exist")
        return [Reservation(r[0], dict(zip(WINDOWS, r[1:5], strict=True)), r[5], r[6], r[7], r[8], r[9], bool(r[10]))
                for r in rows]

    async def usage(self, scopes: Mapping[str, str]) -> builtins.list[ScopeSpend]:
        """Committed and reserved spend of each scope named, over its default window (and the month)."""
        for scope in scopes:
            if scope not in WINDOWS:
                raise ValueError(f"{scope}: not a budget scope (scopes: {', '.join(WINDOWS)})")
        now = self.clock.time()
        async with self._store.connection("read spend") as conn:
            windows = await self._windows(conn, scopes, now)
        found = []
        for scope, value in scopes.items():
            for window in _windows_of(scope):
                units = windows.get((scope, window), {})
                invalid = [str(self._invalid(scope, value, unit)) for unit, (_, _, bad) in units.items() if bad]
                found.append(ScopeSpend(scope, value, window_period(window, now),
                                        {unit: (c, r) for unit, (c, r, _) in sorted(units.items())},
                                        invalid="; ".join(invalid)))
        return found

    async def _windows(self, conn: psycopg.AsyncConnection[Any], scopes: Mapping[str, str], now: float) -> _Windows:
        """Every window of every scope named, in one statement: committed and live reserved from the running
        totals (by primary key), less the open rows past their expiry the sweep has not marked yet (through the
        scope's partial index by expiry): the cost follows neither the day's rows nor the open reservations."""
        parts: list[str] = []
        params: list[Any] = []
        stamp = datetime.fromtimestamp(now, UTC)
        for scope, value in scopes.items():
            for window in _windows_of(scope):
                parts.append("SELECT %s::text, %s::text, unit, committed, reserved, live, invalid, "
                             f"NOT ({_VALID_TOTAL}) FROM budget_totals WHERE scope = %s AND value = %s AND period = %s")
                params += [scope, window, scope, value, window_period(window, now)]
                where, extra = _WINDOW_ROWS.get(window, ("", ""))
                # The scope's name is one of WINDOWS' keys (checked above), never a caller's string.
                parts.append(f"SELECT %s::text, %s::text, unit, 0::float8, -SUM(amount), -COUNT(*), "
                             f"-SUM(CASE WHEN {_VALID_AMOUNT} THEN 0 ELSE 1 END), false "
                             f"FROM budget_reservations WHERE {scope} = %s AND status = 'reserved' "
                             f"AND expires_at <= %s{where} GROUP BY unit")
                params += [scope, window, value, now, *([f"{stamp:{extra}}"] if extra else [])]
        if not parts:
            return {}
        with self._failing("read spend"):
            rows = await (await conn.execute(" UNION ALL ".join(parts), params)).fetchall()
        sums: dict[tuple[str, str, str], list[Any]] = {}
        for scope, window, unit, committed, reserved, live, invalid, bad in rows:
            row = sums.setdefault((scope, window, unit), [0.0, 0.0, 0, 0, False])
            row[0] += _number(committed)
            row[1] += math.nan if reserved is None else float(reserved)
            row[2], row[3], row[4] = row[2] + int(live), row[3] + int(invalid), row[4] or bool(bad)
        found: _Windows = {}
        for (scope, window, unit), (committed, reserved, live, invalid, bad) in sums.items():
            committed, reserved, wrong = live_spend(committed, reserved, live, invalid)
            found.setdefault((scope, window), {})[unit] = (committed, reserved, wrong or bad)
        return found

    def _invalid(self, scope: str, value: str, unit: str) -> LedgerInvalid:
        return LedgerInvalid(scope, value, unit, store=f"the state store {self._store.name}")

    @contextlib.contextmanager
    def _failing(self, doing: str) -> Iterator[None]:
        """A database failure inside a budget step becomes StateError here: the step's caller sees it at once,
        not only when the step ends."""
        try:
            yield
        except psycopg.Error as exc:
            raise StateError(f"state store {self._store.name}: cannot {doing} ({_why(exc)})") from exc


class _PgHold:
    """One budget step's view of the ledger: spend and one reservation, in the step's transaction, at its now."""

    def __init__(self, budgets: PgBudgets, conn: psycopg.AsyncConnection[Any], scopes: Mapping[str, str],
                 now: float) -> None:
        self._budgets, self._conn, self._scopes, self._now = budgets, conn, scopes, now
        self._reserved = False
        #: What spend() read: under the step's locks no other step of these scopes can add to it, expiry is
        #: fixed by the step's now, and a report only turns a reservation into what was spent, so reserve()
        #: re-checks the limits against it without a second read (one round trip less while the locks are held).
        self._read: _Windows | None = None

    async def spend(self) -> SpendSnapshot:
        windows = self._read = await self._budgets._windows(self._conn, self._scopes, self._now)
        return SpendSnapshot(
            {scope: self._sums(windows, scope, value, WINDOWS[scope]) for scope, value in self._scopes.items()},
            {scope: self._sums(windows, scope, value, "month") for scope, value in self._scopes.items()
             if scope in MONTHLY_SCOPES})

    async def reserve(self, amounts: Mapping[str, float], *, limits: Mapping[str, Any],
                      monthly_limits: Mapping[str, Any] | None = None, decision_id: str = "",
                      requested_by: str = "") -> str:
        if self._reserved:
            raise RuntimeError("a budget step reserves at most once")
        check_amounts(amounts)
        scopes = reservation_scopes(self._scopes)
        checks = limit_checks(scopes, limits, monthly_limits)
        if checks:
            # The policy may have decided on no spend() at all: then read it now, still under the locks.
            windows = self._read
            if windows is None:
                windows = await self._budgets._windows(self._conn, {s: scopes[s] for s, _, _ in checks}, self._now)
            check_limits(checks, amounts, lambda scope, unit, window: self._sums(
                windows, scope, scopes[scope], window).get(unit, 0.0))
        reservation_id = new_reservation_id()
        stamp = datetime.fromtimestamp(self._now, UTC)
        units = sorted(amounts)
        totals = _total_keys(scopes, day=window_period("day", self._now), month=window_period("month", self._now))
        with self._budgets._failing("reserve"):
            # The rows and the totals' 0 rows (a unit once reserved in a period shows there) in one statement.
            # Adding 0 needs no row lock: DO NOTHING leaves a busy team's total row to the reports that change it.
            await self._conn.execute(
                "WITH reserved AS (INSERT INTO budget_reservations (id, session, agent, team, workflow, unit, "
                "amount, status, day, month, created_at, expires_at, decision_id, requested_by) "
                "SELECT %s, %s, %s, %s, %s, unit, amount, 'reserved', %s, %s, %s, %s, %s, %s "
                "FROM unnest(%s::text[], %s::float8[]) AS reserving(unit, amount) RETURNING unit) "
                "INSERT INTO budget_totals (scope, value, unit, period, committed) "
                "SELECT totals.scope, totals.value, reserved.unit, totals.period, 0 FROM reserved "
                "CROSS JOIN unnest(%s::text[], %s::text[], %s::text[]) AS totals(scope, value, period) "
                "ON CONFLICT (scope, value, unit, period) DO NOTHING",
                (reservation_id, scopes["session"], scopes["agent"], scopes["team"], scopes["workflow"],
                 f"{stamp:%Y-%m-%d}", f"{stamp:%Y-%m}", self._now, self._now + self._budgets.ttl, decision_id,
                 requested_by, units, [float(amounts[u]) for u in units], *totals))
        self._reserved = True
        return reservation_id

    def _sums(self, windows: _Windows, scope: str, value: str, window: str) -> dict[str, float]:
        """Spend of one scope value over one window, by unit; LedgerInvalid when a value of it is invalid."""
        found = {}
        for unit, (committed, reserved, bad) in windows.get((scope, window), {}).items():
            if bad:
                raise self._budgets._invalid(scope, value, unit)
            found[unit] = committed + reserved
        return found


async def _add_totals(conn: psycopg.AsyncConnection[Any], scopes: Mapping[str, str], unit: str, amount: float, *,
                      day: str, month: str) -> None:
    """Add a report's committed amount to the running totals of every scope the reservation was counted under,
    in the day and month it was made in."""
    await conn.execute(
        "INSERT INTO budget_totals (scope, value, unit, period, committed) "
        "SELECT scope, value, %s, period, %s "
        "FROM unnest(%s::text[], %s::text[], %s::text[]) AS totals(scope, value, period) "
        "ON CONFLICT (scope, value, unit, period) DO UPDATE SET committed = budget_totals.committed + "
        "excluded.committed", (unit, amount, *_total_keys(scopes, day=day, month=month)))


def _total_keys(scopes: Mapping[str, str], *, day: str, month: str) -> tuple[list[str], list[str], list[str]]:
    """The running totals a reservation counts in, as (scopes, values, periods) arrays: each scope with a value,
    over its default window and, for the monthly scopes, the month."""
    keys = [(scope, value, period) for scope, value in scopes.items() if value
            for period in ({"run": "run", "day": day}[WINDOWS[scope]],
                           *((month,) if scope in MONTHLY_SCOPES else ()))]
    return [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys]


def _windows_of(scope: str) -> tuple[str, ...]:
    return (WINDOWS[scope], "month") if scope in MONTHLY_SCOPES else (WINDOWS[scope],)


def _number(value: Any) -> float:
    return 0.0 if value is None else float(value)
