"""The spend report's contract (state/_spend.py), held against both stores: SQLite (LocalSpend, read-only beside
the ledger's writer) and PostgreSQL (PgSpend): every scope value's committed and live reserved spend in a period,
biggest first, bounded, an invalid total shown as such."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.state.test_contract_budgets import NOON, Ledger, Stores
from tollgate.state._spend import LocalSpend, PgSpend, ScopeTotal, SpendReport

pytestmark = pytest.mark.clock

LIMITS = {"session": {"usd": 100.0}}


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    return Stores(request.param, tmp_path, url)


@contextlib.asynccontextmanager
async def report(stores: Stores, ledger: Ledger) -> AsyncIterator[SpendReport]:
    if stores.kind == "sqlite":
        yield LocalSpend(stores.tmp_path / "state.db", clock=ledger.clock)
        return
    from tollgate.state.postgres import PgOptions, PgStore

    pg = PgStore(PgOptions(stores.url))
    await pg.open()
    try:
        yield PgSpend(pg, clock=ledger.clock)
    finally:
        await pg.close()


async def _spend(ledger: Ledger, team: str, session: str, usd: float, *, report_usd: float | None = None,
                 tokens: float = 0) -> None:
    scopes = {"session": session, "agent": f"agent-{team}", "team": team, "workflow": "review"}
    amounts = {"usd": usd, **({"tokens": tokens} if tokens else {})}
    reservation = await ledger.reserve(scopes, amounts, limits=LIMITS)
    if report_usd is not None:
        await ledger.budgets.report(reservation, amount=report_usd, unit="usd")


def test_teams_today_are_ranked_by_committed_and_live_reserved_spend(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        await _spend(ledger, "platform", "s1", 2.0, report_usd=1.5, tokens=300)
        await _spend(ledger, "platform", "s2", 1.0)  # live: reserved
        await _spend(ledger, "data", "s3", 5.0, report_usd=4.0)
        await _spend(ledger, "web", "s4", 0.25, report_usd=0.25)
        async with report(stores, ledger) as spend:
            day = f"day {NOON:%Y-%m-%d}"
            teams = await spend.totals("team", day)
            assert teams == [ScopeTotal("team", "data", day, "usd", 4.0, 0.0),
                             ScopeTotal("team", "platform", day, "tokens", 0.0, 300.0),
                             ScopeTotal("team", "platform", day, "usd", 1.5, 1.0),
                             ScopeTotal("team", "web", day, "usd", 0.25, 0.0)]
            month = f"month {NOON:%Y-%m}"
            assert [t.value for t in await spend.totals("workflow", month)] == ["review", "review"]
            assert [(t.value, t.committed) for t in await spend.totals("session", "run", limit=2)] == [
                ("s3", 4.0), ("s1", 0.0), ("s1", 1.5)]
            assert await spend.totals("team", "day 2001-01-01") == []
            ledger.clock.advance(3600)  # past the reservations' TTL: the live ones no longer count
            teams = await spend.totals("team", day)
            assert [(t.value, t.unit, t.reserved) for t in teams if t.value == "platform"] == [
                ("platform", "tokens", 0.0), ("platform", "usd", 0.0)]

    stores.run(body)


def test_a_period_or_scope_the_ledger_does_not_count_is_refused(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        async with report(stores, ledger) as spend:
            for scope, period, message in (("user", "run", "not a budget scope"),
                                           ("session", "day 2026-03-10", "counted over its run"),
                                           ("team", "run", "'day YYYY-MM-DD' or 'month YYYY-MM'"),
                                           ("team", "day 2026-3-1", "'day YYYY-MM-DD'"),
                                           ("team", "day 2026-03-10'; --", "'day YYYY-MM-DD'")):
                with pytest.raises(ValueError, match=message):
                    await spend.totals(scope, period)
            with pytest.raises(ValueError, match="limit: from 1 to 500"):
                await spend.totals("team", "month 2026-03", limit=10_000)

    stores.run(body)


def test_an_invalid_total_is_shown_invalid_and_ranked_last(stores: Stores) -> None:
    async def body(ledger: Ledger) -> None:
        await _spend(ledger, "platform", "s1", 1.0, report_usd=1.0)
        await _spend(ledger, "data", "s2", 1.0, report_usd=0.5)
        await ledger.plant("budget_totals", "committed", "-7", "scope = 'team' AND value = 'platform'")
        async with report(stores, ledger) as spend:
            teams = await spend.totals("team", f"day {NOON:%Y-%m-%d}")
        assert [(t.value, t.invalid) for t in teams] == [("data", False), ("platform", True)]

    stores.run(body)
