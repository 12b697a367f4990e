"""The running totals of live reservations (budget_totals.reserved, live, invalid), kept by triggers on both stores.

A budget step's spend read used to sum every open reservation of each scope read, so its cost grew with the
reservations a harness never reported (measured on SQLite: 7.9 ms a step after 400, 15.9 ms after 2,000). Now
each (scope, value, unit, period) row of budget_totals also holds what its open reservations reserve (`reserved`),
how many they are (`live`) and how many of them hold an amount no ledger writes (`invalid`). Triggers on
budget_reservations keep them in the same transaction as every write that opens or closes a reservation (reserve,
report, the sweep, a report that finds its reservation expired, withdraw), and a row planted by hand too: no
code path can forget them.

Expiry stays exact without a write on the read: a reservation past its expiry still counts in `reserved` until
the sweep marks it expired, so the read takes off the open rows of the scope whose expiry has passed (`expires_at
<= now`, through the partial index on (scope[, day|month], expires_at) of open rows): those are the few the sweep
has not reached yet, not every open row. What remains is exactly what the old query summed (`expires_at > now`).

Floats: `reserved` is a running sum, so it may differ from a fresh SUM in the last bits (the limit re-check allows
_TOLERANCE); when a total's last open reservation closes it goes back to exactly 0, so drift never outlives the
reservations that caused it.
"""

from __future__ import annotations

from tollgate.contract import MAX_AMOUNT

#: (scope, the SQL of its period over a row named {r}) for every total a reservation counts in.
_PERIODS = (("session", "'run'"), ("agent", "'day ' || {r}.day"), ("agent", "'month ' || {r}.month"),
            ("team", "'day ' || {r}.day"), ("team", "'month ' || {r}.month"),
            ("workflow", "'day ' || {r}.day"), ("workflow", "'month ' || {r}.month"))

#: The partial indexes of open rows by scope and expiry: (name, columns). The read finds a scope's rows past
#: their expiry through them; the names are the ones the live rows were read through before (budget_live_*).
#: The session's comes last: on a store with a handful of open rows every partial index costs PostgreSQL's
#: planner the same, and of equal paths it keeps the index created last.
DUE_INDEXES = (*((f"budget_live_{scope}", f"{scope}, day, expires_at") for scope in ("agent", "team", "workflow")),
               *((f"budget_live_{scope}_month", f"{scope}, month, expires_at")
                 for scope in ("agent", "team", "workflow")),
               ("budget_live_session", "session, expires_at"))


def _invalid_sqlite(row: str) -> str:
    # SQLite stores NaN as NULL (refused by NOT NULL), so a planted NaN arrives as text, which typeof() catches.
    return (f"(CASE WHEN typeof({row}.amount) NOT IN ('integer', 'real') OR {row}.amount < 0 "
            f"OR {row}.amount > {MAX_AMOUNT:.0f} THEN 1 ELSE 0 END)")


_SQLITE_UPSERT = ("ON CONFLICT (scope, value, unit, period) DO UPDATE SET "
                  "reserved = CASE WHEN live + excluded.live = 0 THEN 0 ELSE reserved + excluded.reserved END, "
                  "live = live + excluded.live, invalid = invalid + excluded.invalid")


def _sqlite_moves(row: str, sign: str) -> str:
    """The trigger body that adds (sign "") or takes off (sign "-") one open row in every total it counts in."""
    return "".join(
        f"INSERT INTO budget_totals (scope, value, unit, period, committed, reserved, live, invalid) "
        f"SELECT '{scope}', {row}.{scope}, {row}.unit, {period.format(r=row)}, 0, {sign}{row}.amount, {sign}1, "
        f"{sign}{_invalid_sqlite(row)} WHERE {row}.{scope} != '' {_SQLITE_UPSERT};\n"
        for scope, period in _PERIODS)


def sqlite_step() -> str:
    """SQLite schema step: the columns, the totals computed once from the open rows already there, the indexes
    by expiry, and the triggers."""
    recompute = "".join(
        f"INSERT INTO budget_totals (scope, value, unit, period, committed, reserved, live, invalid) "
        f"SELECT '{scope}', {scope}, unit, {period.format(r='budget_reservations')}, 0, SUM(amount), COUNT(*), "
        f"SUM({_invalid_sqlite('budget_reservations')}) FROM budget_reservations "
        f"WHERE status = 'reserved' AND {scope} != '' GROUP BY 1, 2, 3, 4 ON CONFLICT (scope, value, unit, period) "
        "DO UPDATE SET reserved = excluded.reserved, live = excluded.live, invalid = excluded.invalid;\n"
        for scope, period in _PERIODS)
    indexes = "".join(f"DROP INDEX {name};\nCREATE INDEX {name} ON budget_reservations ({columns}) "
                      "WHERE status = 'reserved';\n" for name, columns in DUE_INDEXES)
    return (
        "ALTER TABLE budget_totals ADD COLUMN reserved REAL DEFAULT 0;\n"  # NULL: inf - inf of planted rows
        "ALTER TABLE budget_totals ADD COLUMN live INTEGER NOT NULL DEFAULT 0;\n"
        "ALTER TABLE budget_totals ADD COLUMN invalid INTEGER NOT NULL DEFAULT 0;\n"
        + recompute + indexes +
        "CREATE TRIGGER budget_live_opened AFTER INSERT ON budget_reservations WHEN NEW.status = 'reserved' BEGIN\n"
        + _sqlite_moves("NEW", "") + "END;\n"
        "CREATE TRIGGER budget_live_closed AFTER DELETE ON budget_reservations WHEN OLD.status = 'reserved' BEGIN\n"
        + _sqlite_moves("OLD", "-") + "END;\n"
        "CREATE TRIGGER budget_live_left AFTER UPDATE ON budget_reservations WHEN OLD.status = 'reserved' BEGIN\n"
        + _sqlite_moves("OLD", "-") + "END;\n"
        "CREATE TRIGGER budget_live_entered AFTER UPDATE ON budget_reservations WHEN NEW.status = 'reserved' "
        "BEGIN\n" + _sqlite_moves("NEW", "") + "END")


_PG_INVALID = f"CASE WHEN amount >= 0 AND amount <= {MAX_AMOUNT:.0f} THEN 0 ELSE 1 END"  # NaN sorts highest


def _pg_apply(moved: str) -> str:
    """Add the net change of `moved` (rows: scope columns, unit, day, month, amount, live, invalid, signed) to
    the totals, one upsert per statement in one sorted order of keys (so two statements never deadlock on
    total rows)."""
    keys = ", ".join(f"('{scope}', m.{scope}, {period.format(r='m')})" for scope, period in _PERIODS)
    return (
        f"WITH m AS ({moved}) "
        "INSERT INTO budget_totals AS t (scope, value, unit, period, committed, reserved, live, invalid) "
        "SELECT k.scope, k.value, m.unit, k.period, 0, SUM(m.amount), SUM(m.live), SUM(m.invalid) FROM m "
        f"CROSS JOIN LATERAL (VALUES {keys}) AS k(scope, value, period) WHERE k.value <> '' "
        "GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4 ON CONFLICT (scope, value, unit, period) DO UPDATE SET "
        "reserved = CASE WHEN t.live + excluded.live = 0 THEN 0 ELSE t.reserved + excluded.reserved END, "
        "live = t.live + excluded.live, invalid = t.invalid + excluded.invalid;")


def _pg_rows(table: str, sign: str) -> str:
    return (f"SELECT session, agent, team, workflow, unit, day, month, {sign}amount AS amount, {sign}1 AS live, "
            f"{sign}({_PG_INVALID}) AS invalid FROM {table} WHERE status = 'reserved'")


def pg_step() -> str:
    """PostgreSQL schema step: as sqlite_step, with statement-level triggers over transition tables (a sweep of
    many rows is one upsert of the totals it changes)."""
    recompute = _pg_apply(_pg_rows("budget_reservations", "")).replace(
        "reserved = CASE WHEN t.live + excluded.live = 0 THEN 0 ELSE t.reserved + excluded.reserved END, "
        "live = t.live + excluded.live, invalid = t.invalid + excluded.invalid",
        "reserved = excluded.reserved, live = excluded.live, invalid = excluded.invalid")
    indexes = "".join(f"DROP INDEX {name};\nCREATE INDEX {name} ON budget_reservations ({columns}) "
                      "WHERE status = 'reserved';\n" for name, columns in DUE_INDEXES)
    triggers = "".join(
        f"CREATE TRIGGER budget_live_{op.lower()} AFTER {op} ON budget_reservations REFERENCING {tables} "
        f"FOR EACH STATEMENT EXECUTE FUNCTION budget_live_totals();\n"
        for op, tables in (("INSERT", "NEW TABLE AS new_rows"), ("DELETE", "OLD TABLE AS old_rows"),
                           ("UPDATE", "OLD TABLE AS old_rows NEW TABLE AS new_rows")))
    return (
        "ALTER TABLE budget_totals ADD COLUMN reserved DOUBLE PRECISION DEFAULT 0, "
        "ADD COLUMN live BIGINT NOT NULL DEFAULT 0, ADD COLUMN invalid BIGINT NOT NULL DEFAULT 0;\n"
        + recompute + "\n" + indexes +
        "CREATE FUNCTION budget_live_totals() RETURNS trigger LANGUAGE plpgsql AS $$\nBEGIN\n"
        f"IF TG_OP = 'INSERT' THEN {_pg_apply(_pg_rows('new_rows', ''))}\n"
        f"ELSIF TG_OP = 'DELETE' THEN {_pg_apply(_pg_rows('old_rows', '-'))}\n"
        f"ELSE {_pg_apply(_pg_rows('old_rows', '-') + ' UNION ALL ' + _pg_rows('new_rows', ''))}\n"
        "END IF;\nRETURN NULL;\nEND\n$$;\n" + triggers)
