"""The running totals of live reservations (state/_live_totals.py), held against both stores on a ManualClock:
spend read from them is what summing the open rows gave, at every moment, expiry included, and an existing
store migrates with its open reservations counted."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import pytest

from tests.state.test_contract_budgets import ALICE, NOON, Ledger, Stores
from tollgate.clock import ManualClock
from tollgate.state import StateStore
from tollgate.state.budgets import Budgets, ReservationClosed
from tollgate.state.postgres import PgBudgets, PgOptions, PgStore

pytestmark = pytest.mark.clock


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    return Stores(request.param, tmp_path, url)

#: Spend as the ledger read it before the totals: every open row not past its expiry, summed per unit.
FRESH_SUM = ("SELECT unit, SUM(amount) FROM budget_reservations WHERE session = 's1' AND status = 'reserved' "
             "AND expires_at > {now} GROUP BY unit ORDER BY unit")


async def _fresh(ledger: Ledger) -> dict[str, float]:
    rows = await ledger.sql(FRESH_SUM.format(now=ledger.clock.time()))
    return {str(unit): float(total) for unit, total in rows}


async def _reserved(ledger: Ledger) -> dict[str, float]:
    """The session's live reserved spend by unit, from the ledger (nothing is committed in these tests)."""
    usage = await ledger.budgets.usage({"session": "s1"})
    return {unit: reserved for unit, (_, reserved) in usage[0].units.items() if reserved}


def test_an_unswept_reservation_leaves_spend_at_the_moment_of_its_expiry(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        await ledger.reserve(ALICE, {"usd": 0.25})
        ledger.clock.advance(30)
        await ledger.reserve(ALICE, {"usd": 0.5})
        ledger.clock.advance(29.999)  # the first has 1 ms left
        assert (await ledger.spend(ALICE)).by_scope["session"] == {"usd": 0.75}
        ledger.clock.advance(0.001)  # exactly its expiry: the old query's expires_at > now left it out here
        spend = await ledger.spend(ALICE)
        assert spend.by_scope["session"] == {"usd": 0.5}
        assert spend.by_scope["team"] == {"usd": 0.5} and spend.monthly["agent"] == {"usd": 0.5}
        ledger.clock.advance(30)  # the second's expiry: nothing left, and nothing swept yet
        assert (await ledger.spend(ALICE)).by_scope["session"] == {"usd": 0.0}
        assert await ledger.budgets.expire() == 2  # the sweep changes no figure
        assert (await ledger.spend(ALICE)).by_scope["session"] == {"usd": 0.0}
        assert (await ledger.spend(ALICE)).by_scope["team"] == {"usd": 0.0}
        totals = await ledger.sql("SELECT SUM(live), SUM(reserved), SUM(invalid) FROM budget_totals")
        assert [tuple(float(v) for v in row) for row in totals] == [(0.0, 0.0, 0.0)]

    stores.run(body, ttl=60)


def test_the_totals_follow_every_write_as_summing_the_rows_did(stores: Stores) -> None:
    """Reserve, report, a report past expiry, the sweep and a failed step's withdrawal in a random order, with
    the clock moving: after each, the ledger's spend is the old query's sum over the open rows."""
    async def body(ledger: Ledger) -> None:
        rng = random.Random(15)
        open_ids: list[str] = []
        for _ in range(120):
            ledger.clock.advance(rng.choice([0.0, 0.5, 3.0, 11.0]))
            action = rng.random()
            if action < 0.5 or not open_ids:
                amounts = {"usd": rng.choice([0.1, 0.2, 0.3, 1e-7])}
                if rng.random() < 0.3:
                    amounts["tokens"] = float(rng.randint(1, 50))
                open_ids.append(await ledger.reserve(ALICE, amounts, limits={}))
            elif action < 0.75:
                rid = open_ids.pop(rng.randrange(len(open_ids)))
                for unit in ("usd", "tokens"):
                    try:
                        await ledger.budgets.report(rid, amount=0.0, unit=unit)
                    except (ReservationClosed, LookupError):
                        pass  # expired by now, or no such unit
            elif action < 0.85:
                await ledger.budgets.expire()
            else:
                with pytest.raises(RuntimeError):  # a step failing after its reservation withdraws it
                    async with ledger.budgets.hold(ALICE) as hold:
                        await hold.reserve({"usd": 0.3}, limits={})
                        raise RuntimeError("the decision could not be logged")
            fresh = await _fresh(ledger)
            reserved = await _reserved(ledger)
            assert reserved.keys() == fresh.keys()
            for unit, total in fresh.items():
                assert reserved[unit] == pytest.approx(total, abs=1e-9)

    stores.run(body, ttl=40)


def test_many_unreported_reservations_are_counted_and_released(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        await asyncio.gather(*(ledger.reserve({**ALICE, "session": "s1"}, {"usd": 0.001}, limits={})
                               for _ in range(400)))
        assert (await ledger.spend(ALICE)).by_scope["session"]["usd"] == pytest.approx(0.4)
        ledger.clock.advance(60)
        assert (await ledger.spend(ALICE)).by_scope["session"] == {"usd": 0.0}  # all past expiry, unswept
        assert await ledger.budgets.expire() == 400
        assert (await ledger.spend(ALICE)).by_scope["session"] == {"usd": 0.0}

    stores.run(body, ttl=60)


_ROWS = [("r1", "platform", "usd", 1.0, "reserved", 60), ("r2", "platform", "usd", 0.5, "reserved", 5),
         ("r3", "", "usd", 0.25, "reserved", 60), ("r4", "platform", "usd", 2.0, "committed", 60)]


def _insert(rows: list[tuple[str, str, str, float, str, int]]) -> str:
    values = ", ".join(f"('{rid}', 's1', 'code-reviewer', '{team}', 'review', '{unit}', {amount}, 0, '{status}', "
                       f"'2026-03-10', '2026-03', {NOON.timestamp()}, {NOON.timestamp() + ttl}, '')"
                       for rid, team, unit, amount, status, ttl in rows)
    return ("INSERT INTO budget_reservations (id, session, agent, team, workflow, unit, amount, committed, status, "
            f"day, month, created_at, expires_at, decision_id) VALUES {values}")


def test_an_existing_sqlite_ledger_migrates_its_open_reservations_into_the_totals(tmp_path: Path) -> None:
    from tollgate.state import budgets as module

    store = StateStore(tmp_path / "state.db")
    store.migrate(Budgets.COMPONENT, module._SCHEMA[:4])  # as schema 4 left it: live rows summed on each read
    with store.lock, store.transaction("seed") as db:
        db.execute(_insert(_ROWS))
    budgets = Budgets(store, ttl=60)
    assert budgets.spend(ALICE, now=NOON.timestamp() + 1).by_scope == {
        "session": {"usd": 1.75}, "agent": {"usd": 1.75}, "team": {"usd": 1.5}, "workflow": {"usd": 1.75}}
    assert budgets.spend(ALICE, now=NOON.timestamp() + 5).by_scope["team"] == {"usd": 1.0}  # r2's expiry
    store.close()


def test_an_existing_postgresql_ledger_migrates_its_open_reservations_into_the_totals(pg_url: str) -> None:
    async def body() -> None:
        from tests.state.test_contract_budgets import _pg

        pg = PgStore(PgOptions(pg_url, timeout=5.0))
        await pg.open()
        try:
            await pg.migrate(PgBudgets.COMPONENT, PgBudgets.STEPS[:1], upgrade=True)
            await _pg(pg_url, _insert(_ROWS))
            clock = ManualClock(NOON)
            budgets = PgBudgets(pg, ttl=60, clock=clock)
            await budgets.start(upgrade=True)
            clock.advance(1)
            async with budgets.hold(ALICE) as hold:
                spend = await hold.spend()
            assert spend.by_scope == {"session": {"usd": 1.75}, "agent": {"usd": 1.75}, "team": {"usd": 1.5},
                                      "workflow": {"usd": 1.75}}
            clock.advance(4)
            async with budgets.hold(ALICE) as hold:
                assert (await hold.spend()).by_scope["team"] == {"usd": 1.0}
        finally:
            await pg.close()

    asyncio.run(body())
