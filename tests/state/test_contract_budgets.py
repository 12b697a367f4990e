"""The spend ledger's contract, held against both stores: SQLite (LocalBudgets) and PostgreSQL (PgBudgets).

Each test runs once per store with a ManualClock. The PostgreSQL runs add what only a shared store can show:
three processes, each its own pool (stand-ins for three replicas), spending in one session at once; the
store going away and coming back.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest

from tests.conftest import ROOT
from tests.pg import PostgresServer
from tollgate.clock import ManualClock
from tollgate.state import BudgetStore, LocalBudgets, StateError, StateStore
from tollgate.state.budgets import (
    BudgetExceeded,
    Budgets,
    LedgerInvalid,
    ReservationClosed,
    ReservationNotFound,
    ReservationNotYours,
    ScopeSpend,
    SpendSnapshot,
)
from tollgate.state.postgres import PgBudgets, PgOptions, PgStore

pytestmark = pytest.mark.clock

ALICE = {"session": "s1", "agent": "code-reviewer", "team": "platform", "workflow": "review"}
LIMITS = {"session": {"usd": 1.0}, "team": {"usd": 10.0, "tokens": 1000}}
NOON = datetime(2026, 3, 10, 12, tzinfo=UTC)
DAY = 86400.0
T = TypeVar("T")


@dataclass
class Ledger:
    """One store's ledger in a test, with what the test needs beside the protocol."""

    kind: str
    budgets: BudgetStore
    clock: ManualClock
    #: Run one statement on the store as an operator would, outside the ledger.
    sql: Callable[[str], Awaitable[list[tuple[Any, ...]]]]

    async def reserve(self, scopes: dict[str, str], amounts: dict[str, float], **kwargs: Any) -> str:
        """One budget step that only reserves (the policy passes its limits)."""
        async with self.budgets.hold(scopes) as hold:
            return await hold.reserve(amounts, **{"limits": LIMITS, **kwargs})

    async def spend(self, scopes: dict[str, str]) -> Any:
        async with self.budgets.hold(scopes) as hold:
            return await hold.spend()

    async def plant(self, table: str, column: str, value: str, where: str) -> None:
        """Write a value the ledger never writes (on PostgreSQL past its CHECK constraints, as a restore from
        elsewhere or a constraint dropped by hand would)."""
        if self.kind == "postgresql":
            for name in ("budget_amount_valid", "budget_committed_valid", "budget_total_valid"):
                await self.sql(f"ALTER TABLE {table} DROP CONSTRAINT IF EXISTS {name}")
        await self.sql(f"UPDATE {table} SET {column} = {value} WHERE {where}")


class Stores:
    """Opens the ledger of the test's store kind inside the test's event loop (a pool belongs to one loop)."""

    def __init__(self, kind: str, tmp_path: Path, url: str) -> None:
        self.kind, self.tmp_path, self.url = kind, tmp_path, url

    @contextlib.asynccontextmanager
    async def open(self, *, ttl: float = 60, clock: ManualClock | None = None,
                   timeout: float = 5.0) -> AsyncIterator[Ledger]:
        clock = clock or ManualClock(NOON)
        if self.kind == "sqlite":
            path = self.tmp_path / "state.db"
            store = StateStore(path)
            try:
                yield Ledger(self.kind, LocalBudgets(Budgets(store, ttl=ttl, clock=clock)), clock,
                             lambda statement: _sqlite(path, statement))
            finally:
                store.close()
            return
        pg = PgStore(PgOptions(self.url, timeout=timeout))
        await pg.open()
        try:
            budgets = PgBudgets(pg, ttl=ttl, clock=clock)
            await budgets.start(upgrade=True)
            yield Ledger(self.kind, budgets, clock, lambda statement: _pg(self.url, statement))
        finally:
            await pg.close()

    def run(self, body: Callable[[Ledger], Awaitable[T]], **options: Any) -> T:
        async def main() -> T:
            async with self.open(**options) as ledger:
                return await body(ledger)
        return asyncio.run(main())


async def _sqlite(path: Path, statement: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as db:
        return db.execute(statement).fetchall()


async def _pg(url: str, statement: str) -> list[tuple[Any, ...]]:
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        cursor = await conn.execute(statement)
        return await cursor.fetchall() if cursor.description else []


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    return Stores(request.param, tmp_path, url)


def test_spend_counts_live_reservations_in_every_scope_and_window(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        await ledger.reserve(ALICE, {"usd": 0.25, "tokens": 100})
        await ledger.reserve({**ALICE, "session": "s2"}, {"usd": 0.5})
        ledger.clock.advance(1)
        spend = await ledger.spend(ALICE)
        assert spend.by_scope["session"] == {"usd": 0.25, "tokens": 100}
        assert spend.by_scope["team"] == {"usd": 0.75, "tokens": 100}
        assert spend.monthly["agent"] == {"usd": 0.75, "tokens": 100}
        assert set(spend.monthly) == {"agent", "team", "workflow"}  # a session has no month

    stores.run(body)


def test_a_reservation_past_a_limit_is_refused_and_leaves_nothing(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        await ledger.reserve(ALICE, {"usd": 0.75})
        with pytest.raises(BudgetExceeded, match=r"session spend 0\.75 usd plus this request's 0\.5 would pass "
                                                 r"the session limit of 1 usd"):
            await ledger.reserve(ALICE, {"usd": 0.5})
        with pytest.raises(BudgetExceeded, match="team limit of 1000 tokens"):
            await ledger.reserve(ALICE, {"usd": 0.1, "tokens": 1001})  # usd fits; tokens do not: neither held
        assert (await ledger.spend(ALICE)).by_scope["session"] == {"usd": 0.75}
        assert await ledger.sql("SELECT COUNT(*) FROM budget_reservations") == [(1,)]
        await ledger.reserve(ALICE, {"usd": 0.25})  # exactly up to the limit fits

    stores.run(body)


def test_a_step_that_fails_after_reserving_leaves_nothing(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        with pytest.raises(RuntimeError, match="log went away"):
            async with ledger.budgets.hold(ALICE) as hold:
                await hold.reserve({"usd": 0.5}, limits=LIMITS)
                raise RuntimeError("log went away")
        # SQLite withdraws the row (its running total keeps a 0); PostgreSQL rolls the step back whole.
        assert (await ledger.spend(ALICE)).by_scope["session"].get("usd", 0.0) == 0.0
        assert await ledger.sql("SELECT COUNT(*) FROM budget_reservations") == [(0,)]
        async with ledger.budgets.hold(ALICE) as hold:
            await hold.reserve({"usd": 0.5}, limits=LIMITS)
            with pytest.raises(RuntimeError, match="at most once"):
                await hold.reserve({"usd": 0.1}, limits=LIMITS)

    stores.run(body)


def test_a_policy_that_reads_spend_and_reserves_without_limits(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        async with ledger.budgets.hold(ALICE) as hold:
            assert (await hold.spend()).by_scope["session"] == {}
            await hold.reserve({"usd": 5.0}, limits={})
        assert (await ledger.spend(ALICE)).by_scope["session"] == {"usd": 5.0}

    stores.run(body)


def test_an_expired_reservation_releases_its_amount_and_cannot_be_reported(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        rid = await ledger.reserve(ALICE, {"usd": 1.0})
        ledger.clock.advance(59)
        assert await ledger.budgets.expire() == 0
        with pytest.raises(BudgetExceeded):
            await ledger.reserve(ALICE, {"usd": 0.1})
        ledger.clock.advance(1)
        assert (await ledger.spend(ALICE)).by_scope["session"] == {"usd": 0.0}
        assert await ledger.budgets.expire() == 1
        assert await ledger.budgets.expire() == 0  # a second sweep marks nothing twice
        assert [r.status for r in await ledger.budgets.get(rid)] == ["expired"]
        with pytest.raises(ReservationClosed, match="is already expired"):
            await ledger.budgets.report(rid, amount=0.5)
        await ledger.reserve(ALICE, {"usd": 1.0})

    stores.run(body)


def test_a_report_past_expiry_marks_it_expired(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        rid = await ledger.reserve(ALICE, {"usd": 1.0})
        ledger.clock.advance(60)
        with pytest.raises(ReservationClosed, match=r"\(usd\) expired; its amount was released"):
            await ledger.budgets.report(rid, amount=0.5)
        assert [r.status for r in await ledger.budgets.get(rid)] == ["expired"]

    stores.run(body)


def test_report_commits_part_releases_the_rest_and_only_once(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        rid = await ledger.reserve(ALICE, {"usd": 0.8})
        ledger.clock.advance(1)
        reported = await ledger.budgets.report(rid, amount=0.3)
        assert (reported.status, reported.committed, reported.over_reported) == ("committed", 0.3, False)
        assert reported.scopes == ALICE
        ledger.clock.advance(3600)  # committed spend is a fact: it does not expire
        assert (await ledger.spend(ALICE)).by_scope["session"] == {"usd": 0.3}
        with pytest.raises(ReservationClosed, match="already committed"):
            await ledger.budgets.report(rid, amount=0.3)
        over = await ledger.reserve(ALICE, {"usd": 0.5})
        assert (await ledger.budgets.report(over, amount=1.5, unit="usd")).over_reported
        assert (await ledger.spend(ALICE)).by_scope["session"] == {"usd": 1.8}
        assert [(r.committed, r.over_reported) for r in await ledger.budgets.get(over)] == [(1.5, True)]

    stores.run(body)


def test_report_names_its_unit_its_reservation_and_its_caller(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        rid = await ledger.reserve(ALICE, {"usd": 0.5, "tokens": 100}, requested_by="jwt:alice")
        with pytest.raises(ValueError, match=r"unit: required, reservation .* holds tokens and usd"):
            await ledger.budgets.report(rid, amount=0.1)
        with pytest.raises(ReservationNotFound, match="holds no eur"):
            await ledger.budgets.report(rid, amount=0.1, unit="eur")
        with pytest.raises(ReservationNotFound):
            await ledger.budgets.report("rsv-nope", amount=1)
        with pytest.raises(ReservationNotFound):
            await ledger.budgets.get("rsv-nope")
        with pytest.raises(ReservationNotYours, match="made for caller jwt:alice; caller jwt:mallory may not"):
            await ledger.budgets.report(rid, amount=0.1, unit="usd", reported_by="jwt:mallory")
        for amount in (float("inf"), float("nan"), -1.0, 1e13):
            with pytest.raises(ValueError, match="amount: must be a number from 0 to 1e"):
                await ledger.budgets.report(rid, amount=amount, unit="usd")
            with pytest.raises(ValueError, match="amount"):
                await ledger.reserve({**ALICE, "session": "s2"}, {"usd": amount})
        assert (await ledger.budgets.report(rid, amount=80, unit="tokens", reported_by="jwt:alice")).committed == 80
        assert (await ledger.spend(ALICE)).by_scope["session"] == {"usd": 0.5, "tokens": 80}
        assert [r.unit for r in await ledger.budgets.get(rid)] == ["tokens", "usd"]

    stores.run(body)


def test_day_month_and_run_windows_follow_the_ledger_clock(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        monthly = {"agent": {"usd": 1.0}}
        await ledger.reserve(ALICE, {"usd": 0.75}, monthly_limits=monthly)
        rid = await ledger.reserve({**ALICE, "session": "s2"}, {"usd": 0.25})
        await ledger.budgets.report(rid, amount=0.2)
        ledger.clock.advance(3 * DAY)
        with pytest.raises(BudgetExceeded, match=r"agent monthly spend 0\.95 usd plus this request's 0\.5 would "
                                                 r"pass the agent monthly limit of 1 usd"):
            await ledger.reserve({**ALICE, "session": "s9"}, {"usd": 0.5}, monthly_limits=monthly)
        spend = await ledger.spend(ALICE)
        assert spend.by_scope["session"] == {"usd": 0.75}  # the run: the reservation, still live (ttl 10 days)
        assert spend.by_scope["agent"] == {}  # a new day
        assert spend.monthly["agent"] == {"usd": 0.95}
        ledger.clock.set(datetime(2026, 4, 1, 0, 0, 1, tzinfo=UTC))
        assert (await ledger.spend(ALICE)).monthly == {"agent": {}, "team": {}, "workflow": {}}
        await ledger.reserve({**ALICE, "session": "s10"}, {"usd": 0.9}, monthly_limits=monthly)

    stores.run(body, ttl=30 * DAY)


def test_an_empty_scope_value_is_no_scope(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        await ledger.reserve({"agent": "a"}, {"usd": 9.0}, limits={"team": {"usd": 10.0}})
        await ledger.reserve({"agent": "b"}, {"usd": 9.0}, limits={"team": {"usd": 10.0}})
        assert (await ledger.spend({"agent": "b"})).by_scope == {"agent": {"usd": 9.0}}

    stores.run(body)


def test_usage_shows_committed_and_reserved_by_scope_and_window(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        rid = await ledger.reserve(ALICE, {"usd": 0.5})
        await ledger.budgets.report(rid, amount=0.2)
        await ledger.reserve(ALICE, {"usd": 0.25})
        assert await ledger.budgets.usage({"session": "s1", "team": "platform"}) == [
            ScopeSpend("session", "s1", "run", {"usd": (0.2, 0.25)}),
            ScopeSpend("team", "platform", "day 2026-03-10", {"usd": (0.2, 0.25)}),
            ScopeSpend("team", "platform", "month 2026-03", {"usd": (0.2, 0.25)}),
        ]
        with pytest.raises(ValueError, match="user: not a budget scope"):
            await ledger.budgets.usage({"user": "bob"})

    stores.run(body)


#: A value no ledger writes, spelt for SQLite and for PostgreSQL.
PLANTED = {
    "inf": ("9e999", "'Infinity'::float8"),
    "minus-inf": ("-9e999", "'-Infinity'::float8"),
    "negative": ("-1", "-1"),
    "nan": ("'nan'", "'NaN'::float8"),
    "above-the-maximum": ("1e300", "1e300"),
}


@pytest.mark.parametrize("planted", sorted(PLANTED))
def test_a_planted_reservation_amount_fails_its_scopes_closed(stores: Stores, planted: str) -> None:
    async def body(ledger: Ledger) -> None:
        rid = await ledger.reserve(ALICE, {"usd": 0.5})
        value = PLANTED[planted][ledger.kind == "postgresql"]
        await ledger.plant("budget_reservations", "amount", value, f"id = '{rid}'")
        with pytest.raises(LedgerInvalid, match="invalid usd amount for session 's1'"):
            await ledger.spend(ALICE)
        with pytest.raises(LedgerInvalid):
            await ledger.reserve(ALICE, {"usd": 0.1})
        assert (await ledger.spend({"agent": "other"})).by_scope == {"agent": {}}  # other scopes: untouched
        shown = await ledger.budgets.usage({"session": "s1"})
        assert "invalid usd amount for session 's1'" in shown[0].invalid

    stores.run(body)


@pytest.mark.parametrize("planted", ["inf", "negative", "nan"])
def test_a_planted_running_total_fails_its_scope_closed(stores: Stores, planted: str) -> None:
    async def body(ledger: Ledger) -> None:
        rid = await ledger.reserve(ALICE, {"usd": 0.5})
        await ledger.budgets.report(rid, amount=0.5)
        value = PLANTED[planted][ledger.kind == "postgresql"]
        await ledger.plant("budget_totals", "committed", value, "scope = 'team' AND period = 'day 2026-03-10'")
        with pytest.raises(LedgerInvalid, match="invalid usd amount for team 'platform'"):
            await ledger.spend(ALICE)
        with pytest.raises(LedgerInvalid, match="team 'platform'"):
            await ledger.reserve(ALICE, {"usd": 0.1})
        assert (await ledger.spend({"session": "s1"})).by_scope == {"session": {"usd": 0.5}}

    stores.run(body)


def test_postgresql_refuses_at_write_what_the_ledger_never_writes(pg_url: str) -> None:
    async def body(ledger: Ledger) -> None:
        rid = await ledger.reserve(ALICE, {"usd": 0.5})
        for table, column, value in [("budget_reservations", "amount", "'NaN'::float8"),
                                     ("budget_reservations", "amount", "-1"),
                                     ("budget_reservations", "amount", "1e13"),
                                     ("budget_reservations", "committed", "'Infinity'::float8"),
                                     ("budget_totals", "committed", "'NaN'::float8"),
                                     ("budget_totals", "committed", "-0.5")]:
            with pytest.raises(psycopg.errors.CheckViolation):
                await ledger.sql(f"UPDATE {table} SET {column} = {value}")
        assert [r.amount for r in await ledger.budgets.get(rid)] == [0.5]

    Stores("postgresql", Path(), pg_url).run(body)


def test_a_year_end_starts_a_new_day_and_month_and_keeps_the_run(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        monthly = {"agent": {"usd": 1.0}}
        await ledger.reserve(ALICE, {"usd": 0.75}, monthly_limits=monthly)
        assert [s.window for s in await ledger.budgets.usage({"agent": "code-reviewer"})] == \
            ["day 2026-12-31", "month 2026-12"]
        with pytest.raises(BudgetExceeded, match="agent monthly"):
            await ledger.reserve({**ALICE, "session": "s2"}, {"usd": 0.75}, limits={}, monthly_limits=monthly)
        ledger.clock.advance(2)  # 2027-01-01T00:00:01Z, the reservation still live
        spend = await ledger.spend(ALICE)
        assert spend.by_scope["session"] == {"usd": 0.75}
        assert spend.by_scope["agent"] == {} and spend.monthly["agent"] == {}
        await ledger.reserve({**ALICE, "session": "s2"}, {"usd": 0.75}, limits={}, monthly_limits=monthly)

    stores.run(body, clock=ManualClock(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)))


def test_holds_on_different_sessions_do_not_wait_for_each_other(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        alice_in, bob_in = asyncio.Event(), asyncio.Event()

        async def step(scopes: dict[str, str], mine: asyncio.Event, other: asyncio.Event) -> None:
            async with ledger.budgets.hold(scopes) as hold:
                await hold.spend()
                mine.set()
                await other.wait()  # only possible while the other holds its step at the same time
                await hold.reserve({"usd": 0.5}, limits=LIMITS)

        await asyncio.wait_for(asyncio.gather(step({"session": "alice"}, alice_in, bob_in),
                                              step({"session": "bob"}, bob_in, alice_in)), 20)

    stores.run(body)


def test_a_hold_with_no_scopes_waits_for_none(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        async with ledger.budgets.hold(ALICE), ledger.budgets.hold({}) as bare:  # one task: no wait, or a hang
            assert await bare.spend() == SpendSnapshot({}, {})

    stores.run(body)


def _spend_concurrently(budgets: BudgetStore, holds: int, *, policy: str) -> Awaitable[list[str]]:
    """holds concurrent 1-usd budget steps of one session against a limit of 20: with the limit passed to
    reserve (policy "limits"), or decided on spend() alone (policy "reads-spend": reserve gets no limit)."""
    async def one() -> str:
        try:
            async with budgets.hold({"session": "shared", "agent": "a"}) as hold:
                if policy == "limits":
                    await hold.reserve({"usd": 1.0}, limits={"session": {"usd": 20}})
                    return "granted"
                spent = (await hold.spend()).by_scope["session"].get("usd", 0.0)
                await asyncio.sleep(0)  # the evaluation: other steps run meanwhile, none of this session
                if spent + 1.0 > 20:
                    return "refused"
                await hold.reserve({"usd": 1.0}, limits={})
                return "granted"
        except BudgetExceeded:
            return "refused"

    async def every() -> list[str]:
        return list(await asyncio.gather(*(one() for _ in range(holds))))
    return every()


def replica(url: str, policy: str, holds: int) -> None:
    """A stand-in for one sidecar (a process, its own pool): ready, wait for go, spend, print the outcomes."""
    async def main() -> list[str]:
        store = PgStore(PgOptions(url, timeout=30.0, max_connections=10))
        await store.open()
        try:
            budgets = PgBudgets(store, clock=ManualClock(NOON))
            await budgets.start()  # a replica checks the schema; the test migrated it
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            return await _spend_concurrently(budgets, holds, policy=policy)
        finally:
            await store.close()
    print(json.dumps(asyncio.run(main())), flush=True)


@pytest.mark.parametrize("policy", ["limits", "reads-spend"])
def test_300_concurrent_steps_of_one_session_never_pass_its_limit(stores: Stores, policy: str) -> None:
    async def migrated(ledger: Ledger) -> None:
        """Opening the ledger once migrates the store: the replicas only open theirs."""

    stores.run(migrated)
    if stores.kind == "sqlite":
        outcomes = stores.run(lambda ledger: _spend_concurrently(ledger.budgets, 300, policy=policy))
    else:
        outcomes = _replicas(stores.url, policy, [100, 100, 100])

    async def check(ledger: Ledger) -> None:
        assert await ledger.sql("SELECT COUNT(*), SUM(amount) FROM budget_reservations") == [(20, 20.0)]
        assert (await ledger.spend({"session": "shared"})).by_scope["session"] == {"usd": 20.0}

    assert (outcomes.count("granted"), outcomes.count("refused")) == (20, 280)
    stores.run(check)


def _replicas(url: str, policy: str, holds: list[int]) -> list[str]:
    """Run one replica process per entry (that many holds each), all let go at once; every outcome."""
    code = ("import sys; from tests.state.test_contract_budgets import replica; "
            "replica(sys.argv[1], sys.argv[2], int(sys.argv[3]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, url, policy, str(n)], cwd=ROOT, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for n in holds]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        outcomes: list[str] = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            outcomes += json.loads(out.strip().splitlines()[-1])
        return outcomes
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_a_second_replica_waits_for_the_step_of_the_same_session_and_sees_its_reservation(pg_url: str) -> None:
    async def body(first: Ledger) -> None:
        second_store = PgStore(PgOptions(pg_url, timeout=10.0))
        await second_store.open()
        second = PgBudgets(second_store, ttl=60, clock=first.clock)
        try:
            async with first.budgets.hold({"session": "s1"}) as hold:
                await hold.reserve({"usd": 0.75}, limits={"session": {"usd": 1.0}})

                async def other() -> None:
                    async with second.hold({"session": "s1", "team": "t"}) as waiting:
                        await waiting.reserve({"usd": 0.5}, limits={"session": {"usd": 1.0}})
                waiter = asyncio.ensure_future(other())
                # The other replica's step is queued on the session's advisory lock, not merely slow.
                while not await first.sql("SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"):
                    assert not waiter.done(), waiter
                    await asyncio.sleep(0.01)
            with pytest.raises(BudgetExceeded, match=r"session spend 0\.75 usd"):
                await waiter
        finally:
            await second_store.close()

    Stores("postgresql", Path(), pg_url).run(body)


def test_concurrent_reports_of_one_reservation_on_two_replicas_commit_once(pg_url: str) -> None:
    async def body(first: Ledger) -> None:
        other_store = PgStore(PgOptions(pg_url, timeout=10.0))
        await other_store.open()
        try:
            other = PgBudgets(other_store, ttl=60, clock=first.clock)
            for _ in range(10):
                rid = await first.reserve(ALICE, {"usd": 0.5}, limits={})
                results = await asyncio.gather(first.budgets.report(rid, amount=0.5),
                                               other.report(rid, amount=0.5), return_exceptions=True)
                assert sorted(type(r).__name__ for r in results) == ["Reservation", "ReservationClosed"], results
                sweeps = await asyncio.gather(first.budgets.expire(), other.expire())
                assert sum(sweeps) == 0
            assert (await first.spend(ALICE)).by_scope["session"] == {"usd": 5.0}
        finally:
            await other_store.close()

    Stores("postgresql", Path(), pg_url).run(body)


def test_replicas_sweeping_at_once_expire_each_reservation_once(pg_url: str) -> None:
    async def body(first: Ledger) -> None:
        other_store = PgStore(PgOptions(pg_url, timeout=10.0))
        await other_store.open()
        try:
            other = PgBudgets(other_store, ttl=60, clock=first.clock)
            for n in range(50):  # a crashed sidecar's reservations
                await first.reserve({"session": f"s{n}"}, {"usd": 1.0, "tokens": 10}, limits={})
            first.clock.advance(60)
            sweeps = await asyncio.gather(*(store.expire() for store in (first.budgets, other) * 3))
            assert sum(sweeps) == 100
            assert await first.sql("SELECT status, COUNT(*) FROM budget_reservations GROUP BY status") == \
                [("expired", 100)]
        finally:
            await other_store.close()

    Stores("postgresql", Path(), pg_url).run(body)


def test_a_store_that_goes_away_fails_steps_within_the_timeout_then_recovers(own_postgres: PostgresServer) -> None:
    url = own_postgres.database()
    timeout = 1.0

    async def body(ledger: Ledger) -> None:
        before = [await ledger.reserve({"session": f"s{n}"}, {"usd": 1.0}, limits={}) for n in range(5)]
        made: list[str] = []  # what steps in flight while the store goes and comes back were told was reserved
        failed: list[StateError] = []
        done = asyncio.Event()

        async def spender(name: str) -> None:
            for n in range(1_000_000):
                if done.is_set():
                    return
                try:
                    made.append(await ledger.reserve({"session": f"{name}-{n}"}, {"usd": 1.0}))
                except StateError as exc:
                    failed.append(exc)
                    await asyncio.sleep(0.01)

        spenders = [asyncio.ensure_future(spender(f"busy{k}")) for k in range(4)]
        await asyncio.to_thread(own_postgres.stop)  # the spenders keep going meanwhile
        for _ in range(3):
            started = time.monotonic()
            with pytest.raises(StateError, match="cannot take the budget step"):
                await ledger.reserve({"session": "s-down"}, {"usd": 1.0}, limits={})
            assert time.monotonic() - started < timeout + 1.5
        with pytest.raises(StateError):
            await ledger.budgets.report(before[0], amount=1.0)
        await asyncio.to_thread(own_postgres.start)
        deadline = time.monotonic() + 30
        while True:  # the pool reconnects in the background
            try:
                after = await ledger.reserve({"session": "s-up"}, {"usd": 1.0}, limits={})
                break
            except StateError:
                assert time.monotonic() < deadline, "the ledger did not recover"
                await asyncio.sleep(0.05)
        done.set()
        await asyncio.gather(*spenders)
        assert made and failed  # the spenders spent, and ran into the outage
        print(f"steps in flight around the outage: {len(made)} reserved, {len(failed)} failed (StateError)")
        await ledger.budgets.report(before[0], amount=1.0)
        rows = await ledger.sql("SELECT id FROM budget_reservations")
        # None lost (every step told it reserved is there), none doubled or left by a failed step.
        assert sorted(r[0] for r in rows) == sorted([*before, *made, after])
        assert (await ledger.spend({"session": "s0"})).by_scope["session"] == {"usd": 1.0}

    Stores("postgresql", Path(), url).run(body, timeout=timeout)


def test_postgresql_reads_spend_through_the_totals_key_and_the_live_indexes(pg_url: str) -> None:
    """With 20,000 of the day's closed rows beside a few live ones, the one spend statement of a step reads the
    running totals by primary key and the live rows through each scope's partial index: no scan of the day."""
    async def body(ledger: Ledger) -> None:
        assert isinstance(ledger.budgets, PgBudgets)
        await ledger.reserve(ALICE, {"usd": 0.25})
        await ledger.sql(
            "INSERT INTO budget_reservations (id, session, agent, team, workflow, unit, amount, committed, status, "
            "day, month, created_at, expires_at, decision_id) SELECT 'old-' || n, 's-' || n, 'code-reviewer', "
            "'platform', 'review', 'usd', 0.01, 0.01, CASE WHEN n % 2 = 0 THEN 'committed' ELSE 'expired' END, "
            f"'2026-03-10', '2026-03', {NOON.timestamp()}, {NOON.timestamp()}, '' FROM generate_series(1, 20000) n")
        await ledger.sql("INSERT INTO budget_totals SELECT 'session', 's-' || n, 'usd', 'run', 0.01 "
                         "FROM generate_series(1, 20000) n")
        await ledger.sql("ANALYZE budget_reservations")
        await ledger.sql("ANALYZE budget_totals")
        statements: list[tuple[str, Any]] = []

        class Recording:
            async def execute(self, statement: str, params: Any = ()) -> Any:
                statements.append((statement, params))
                return await conn.execute(statement, params)

        async with ledger.budgets._store.connection("explain") as conn:
            await ledger.budgets._windows(Recording(), ALICE, ledger.clock.time())  # type: ignore[arg-type]
            assert len(statements) == 1  # every window of every scope in one round trip
            statement, params = statements[0]
            plan = "\n".join(row[0] for row in await (await conn.execute("EXPLAIN " + statement, params)).fetchall())
        assert "Seq Scan" not in plan, plan
        assert plan.count("using budget_totals_pkey") == 7, plan
        # Each scope's open rows through a partial index of live rows (for a day the planner may take the
        # scope's month index: it holds the same live rows).
        assert plan.count("using budget_live_") == 7, plan
        assert "using budget_live_session " in plan, plan

    Stores("postgresql", Path(), pg_url).run(body)
