"""The Budgets ledger: spend by scope and window, reservations checked against limits, usage reports, expiry."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tollgate.clock import ManualClock
from tollgate.state import StateStore
from tollgate.state.budgets import (
    BudgetExceeded,
    Budgets,
    LedgerInvalid,
    ReservationClosed,
    ReservationNotFound,
    ReservationNotYours,
    ScopeSpend,
    principal_scopes,
)

pytestmark = pytest.mark.clock

ALICE = {"session": "s1", "agent": "code-reviewer", "team": "platform", "workflow": "review"}
LIMITS = {"session": {"usd": 1.0}, "team": {"usd": 10.0, "tokens": 1000}}
NOON = datetime(2026, 3, 10, 12, tzinfo=UTC).timestamp()
DAY = 86400.0


@pytest.fixture
def budgets(tmp_path: Path) -> Budgets:
    return Budgets(StateStore(tmp_path / "state.db"), ttl=60)


def test_principal_scopes_read_session_agent_team_and_workflow() -> None:
    principal = {"agent_id": "a", "session_id": "s", "team": "t", "workflow": "w", "user": "u"}
    assert principal_scopes(principal) == {"session": "s", "agent": "a", "team": "t", "workflow": "w"}


def test_spend_counts_live_reservations_in_every_scope(budgets: Budgets) -> None:
    budgets.reserve(ALICE, {"usd": 0.25, "tokens": 100}, limits=LIMITS, now=NOON)
    budgets.reserve({**ALICE, "session": "s2"}, {"usd": 0.5}, limits=LIMITS, now=NOON)
    spend = budgets.spend(ALICE, now=NOON + 1).by_scope
    assert spend["session"] == {"usd": 0.25, "tokens": 100}
    assert spend["team"] == {"usd": 0.75, "tokens": 100}


def test_reservation_past_a_limit_is_refused_and_reserves_nothing(budgets: Budgets) -> None:
    budgets.reserve(ALICE, {"usd": 0.75}, limits=LIMITS, now=NOON)
    with pytest.raises(BudgetExceeded, match=r"session spend 0\.75 usd plus this request's 0\.5 would pass the "
                                             r"session limit of 1 usd"):
        budgets.reserve(ALICE, {"usd": 0.5}, limits=LIMITS, now=NOON)
    with pytest.raises(BudgetExceeded, match="team limit of 1000 tokens"):
        budgets.reserve(ALICE, {"usd": 0.1, "tokens": 1001}, limits=LIMITS, now=NOON)
    assert budgets.spend(ALICE, now=NOON).by_scope["session"] == {"usd": 0.75}
    budgets.reserve(ALICE, {"usd": 0.25}, limits=LIMITS, now=NOON)  # exactly up to the limit fits


def test_expired_reservation_releases_its_amount(budgets: Budgets) -> None:
    rid = budgets.reserve(ALICE, {"usd": 1.0}, limits=LIMITS, now=NOON)
    with pytest.raises(BudgetExceeded):
        budgets.reserve(ALICE, {"usd": 0.1}, limits=LIMITS, now=NOON + 59)
    assert budgets.spend(ALICE, now=NOON + 60).by_scope["session"] == {"usd": 0.0}
    assert budgets.expire(now=NOON + 60) == 1
    assert [r.status for r in budgets.get(rid)] == ["expired"]
    with pytest.raises(ReservationClosed, match="expired"):
        budgets.report(rid, amount=0.5, now=NOON + 61)
    budgets.reserve(ALICE, {"usd": 1.0}, limits=LIMITS, now=NOON + 61)


def test_report_commits_part_and_releases_the_rest(budgets: Budgets) -> None:
    rid = budgets.reserve(ALICE, {"usd": 0.8}, limits=LIMITS, now=NOON)
    reported = budgets.report(rid, amount=0.3, now=NOON + 1)
    assert (reported.status, reported.committed, reported.over_reported) == ("committed", 0.3, False)
    # Committed spend is a fact: it does not expire.
    assert budgets.spend(ALICE, now=NOON + 3600).by_scope["session"] == {"usd": 0.3}
    with pytest.raises(ReservationClosed, match="already committed"):
        budgets.report(rid, amount=0.3, now=NOON + 2)


def test_report_over_the_reservation_commits_the_actual_amount_and_flags_it(budgets: Budgets) -> None:
    rid = budgets.reserve(ALICE, {"usd": 0.5}, limits=LIMITS, now=NOON)
    reported = budgets.report(rid, amount=1.5, unit="usd", now=NOON + 1)
    assert (reported.committed, reported.over_reported) == (1.5, True)
    assert budgets.spend(ALICE, now=NOON + 1).by_scope["session"] == {"usd": 1.5}


def test_report_of_several_units_needs_the_unit(budgets: Budgets) -> None:
    rid = budgets.reserve(ALICE, {"usd": 0.5, "tokens": 100}, limits=LIMITS, now=NOON)
    with pytest.raises(ValueError, match="unit: required"):
        budgets.report(rid, amount=0.1, now=NOON)
    with pytest.raises(ReservationNotFound, match="holds no eur"):
        budgets.report(rid, amount=0.1, unit="eur", now=NOON)
    assert budgets.report(rid, amount=80, unit="tokens", now=NOON).committed == 80
    assert budgets.spend(ALICE, now=NOON).by_scope["session"] == {"usd": 0.5, "tokens": 80}


def test_report_of_an_unknown_reservation_is_not_found(budgets: Budgets) -> None:
    with pytest.raises(ReservationNotFound):
        budgets.report("rsv-nope", amount=1)


def test_agent_team_and_workflow_spend_is_per_utc_day_and_session_spend_is_the_whole_run(budgets: Budgets) -> None:
    budgets.reserve(ALICE, {"usd": 0.5}, limits=LIMITS, now=NOON)
    rid = budgets.reserve(ALICE, {"usd": 0.25}, limits=LIMITS, now=NOON)
    budgets.report(rid, amount=0.25, now=NOON)
    tomorrow = budgets.spend(ALICE, now=NOON + DAY).by_scope
    assert tomorrow["session"] == {"usd": 0.25}
    assert tomorrow["team"] == {} and tomorrow["agent"] == {}


def test_monthly_spend_counts_every_day_of_the_utc_month_and_starts_again_next_month(budgets: Budgets) -> None:
    # 2026-03-10 noon, the next day, and 2026-04-01 just after midnight UTC.
    budgets.reserve(ALICE, {"usd": 0.5}, limits=LIMITS, now=NOON)
    rid = budgets.reserve({**ALICE, "session": "s2"}, {"usd": 0.25}, limits=LIMITS, now=NOON + DAY)
    budgets.report(rid, amount=0.2, now=NOON + DAY)
    next_day = budgets.spend(ALICE, now=NOON + DAY + 1)
    assert next_day.by_scope["agent"] == {"usd": 0.2}  # the day's: only the reported 0.2 of 2026-03-11
    assert next_day.monthly["agent"] == {"usd": 0.2}  # the first reservation (unreported) expired
    assert set(next_day.monthly) == {"agent", "team", "workflow"}  # a session has no month
    april = datetime(2026, 4, 1, 0, 0, 1, tzinfo=UTC).timestamp()
    assert budgets.spend(ALICE, now=april).monthly == {"agent": {}, "team": {}, "workflow": {}}


def test_a_monthly_limit_is_checked_across_days(tmp_path: Path) -> None:
    budgets = Budgets(StateStore(tmp_path / "state.db"), ttl=10 * DAY)
    monthly = {"agent": {"usd": 1.0}}
    budgets.reserve(ALICE, {"usd": 0.75}, limits=LIMITS, monthly_limits=monthly, now=NOON)
    with pytest.raises(BudgetExceeded, match=r"agent monthly spend 0\.75 usd plus this request's 0\.5 would "
                                             r"pass the agent monthly limit of 1 usd"):
        budgets.reserve({**ALICE, "session": "s9"}, {"usd": 0.5}, limits=LIMITS, monthly_limits=monthly,
                        now=NOON + 3 * DAY)
    # The daily limit alone would have let it through; the next month has room again.
    budgets.reserve({**ALICE, "session": "s9"}, {"usd": 0.5}, limits=LIMITS, now=NOON + 3 * DAY)
    april = datetime(2026, 4, 2, tzinfo=UTC).timestamp()
    budgets.reserve({**ALICE, "session": "s10"}, {"usd": 0.9}, limits=LIMITS, monthly_limits=monthly, now=april)


def test_spend_survives_a_restart(tmp_path: Path) -> None:
    first = Budgets(StateStore(tmp_path / "state.db"))
    first.reserve(ALICE, {"usd": 0.5}, limits=LIMITS)
    assert Budgets(StateStore(tmp_path / "state.db")).spend(ALICE).by_scope["session"] == {"usd": 0.5}


def test_concurrent_reservations_never_pass_the_limit(budgets: Budgets) -> None:
    granted: list[str] = []

    def ask() -> None:
        try:
            granted.append(budgets.reserve(ALICE, {"usd": 0.1}, limits={"session": {"usd": 1.0}}))
        except BudgetExceeded:
            pass

    threads = [threading.Thread(target=ask) for _ in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(granted) == 10
    assert budgets.spend(ALICE).by_scope["session"]["usd"] == pytest.approx(1.0)


def test_usage_shows_committed_and_reserved_by_scope_and_window(budgets: Budgets) -> None:
    rid = budgets.reserve(ALICE, {"usd": 0.5}, limits=LIMITS, now=NOON)
    budgets.report(rid, amount=0.2, now=NOON)
    budgets.reserve(ALICE, {"usd": 0.25}, limits=LIMITS, now=NOON)
    assert budgets.usage({"session": "s1", "team": "platform"}, now=NOON) == [
        ScopeSpend("session", "s1", "run", {"usd": (0.2, 0.25)}),
        ScopeSpend("team", "platform", "day 2026-03-10", {"usd": (0.2, 0.25)}),
        ScopeSpend("team", "platform", "month 2026-03", {"usd": (0.2, 0.25)}),
    ]
    with pytest.raises(ValueError, match="user: not a budget scope"):
        budgets.usage({"user": "bob"})


def test_a_year_end_on_the_ledger_clock_starts_a_new_day_and_month_and_keeps_the_run(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC))
    budgets = Budgets(StateStore(tmp_path / "state.db"), ttl=60, clock=clock)
    monthly = {"agent": {"usd": 1.0}}
    budgets.reserve(ALICE, {"usd": 0.75}, limits=LIMITS, monthly_limits=monthly)
    assert [s.window for s in budgets.usage({"agent": "code-reviewer"})] == ["day 2026-12-31", "month 2026-12"]
    with pytest.raises(BudgetExceeded, match="agent monthly"):
        budgets.reserve({**ALICE, "session": "s2"}, {"usd": 0.75}, limits={}, monthly_limits=monthly)
    clock.advance(2)  # 2027-01-01T00:00:01Z, the reservation still live
    spend = budgets.spend(ALICE)
    assert spend.by_scope["session"] == {"usd": 0.75}
    assert spend.by_scope["agent"] == {} and spend.monthly["agent"] == {}
    assert [s.window for s in budgets.usage({"agent": "code-reviewer"})] == ["day 2027-01-01", "month 2027-01"]
    # The new month has room for what December's limit refused a second ago.
    budgets.reserve({**ALICE, "session": "s2"}, {"usd": 0.75}, limits={}, monthly_limits=monthly)


def test_reservations_expire_when_the_ledger_clock_passes_their_ttl(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 3, 10, 12, tzinfo=UTC))
    budgets = Budgets(StateStore(tmp_path / "state.db"), ttl=60, clock=clock)
    rid = budgets.reserve(ALICE, {"usd": 1.0}, limits=LIMITS)
    clock.advance(59)
    assert budgets.expire() == 0 and budgets.spend(ALICE).by_scope["session"] == {"usd": 1.0}
    clock.advance(1)
    assert budgets.spend(ALICE).by_scope["session"] == {"usd": 0.0}
    assert budgets.expire() == 1
    with pytest.raises(ReservationClosed):
        budgets.report(rid, amount=0.5)


def test_an_empty_scope_value_is_no_scope(budgets: Budgets) -> None:
    assert principal_scopes({"agent_id": "a", "session_id": "", "team": None}) == {"agent": "a"}
    # Two agents with no team: neither is limited by, nor counted in, a team of "".
    budgets.reserve({"agent": "a"}, {"usd": 9.0}, limits={"team": {"usd": 10.0}}, now=NOON)
    budgets.reserve({"agent": "b"}, {"usd": 9.0}, limits={"team": {"usd": 10.0}}, now=NOON)
    assert budgets.spend({"agent": "b"}, now=NOON).by_scope == {"agent": {"usd": 9.0}}


@pytest.mark.parametrize("amount", [float("inf"), float("nan"), -1.0, 1e13], ids=["inf", "nan", "negative", "huge"])
def test_amounts_outside_0_to_the_maximum_are_refused(budgets: Budgets, amount: float) -> None:
    with pytest.raises(ValueError, match="amount"):
        budgets.reserve(ALICE, {"usd": amount}, limits=LIMITS, now=NOON)
    rid = budgets.reserve(ALICE, {"usd": 0.5}, limits=LIMITS, now=NOON)
    with pytest.raises(ValueError, match="amount: must be a number from 0 to 1e"):
        budgets.report(rid, amount=amount, now=NOON)
    assert budgets.report(rid, amount=0.25, now=NOON).committed == 0.25


def test_only_the_caller_that_got_the_reservation_reports_it(budgets: Budgets) -> None:
    rid = budgets.reserve(ALICE, {"usd": 0.5}, limits=LIMITS, requested_by="jwt:alice", now=NOON)
    with pytest.raises(ReservationNotYours, match="made for caller jwt:alice; caller jwt:mallory may not"):
        budgets.report(rid, amount=0.1, reported_by="jwt:mallory", now=NOON)
    with pytest.raises(ReservationNotYours, match="an unauthenticated caller may not"):
        budgets.report(rid, amount=0.1, reported_by="", now=NOON)
    assert budgets.report(rid, amount=0.1, reported_by="jwt:alice", now=NOON).committed == 0.1


@pytest.mark.parametrize("planted", ["9e999", "-9e999", "-1", "'nan'", "1e300"])
def test_a_planted_bad_row_fails_its_scopes_and_usage_shows_it(tmp_path: Path, planted: str) -> None:
    budgets = Budgets(StateStore(tmp_path / "state.db"), ttl=60)
    rid = budgets.reserve(ALICE, {"usd": 0.5}, limits=LIMITS, now=NOON)
    with sqlite3.connect(tmp_path / "state.db") as db:
        db.execute(f"UPDATE budget_reservations SET amount = {planted} WHERE id = ?", (rid,))
    with pytest.raises(LedgerInvalid, match="invalid usd amount for session 's1'"):
        budgets.spend(ALICE, now=NOON)
    with pytest.raises(LedgerInvalid):
        budgets.reserve(ALICE, {"usd": 0.1}, limits=LIMITS, now=NOON)
    # Other scopes are untouched.
    assert budgets.spend({"agent": "other"}, now=NOON).by_scope == {"agent": {}}
    shown = budgets.usage({"session": "s1"}, now=NOON)
    assert "invalid usd amount for session 's1'" in shown[0].invalid


def test_upgrading_a_ledger_keeps_its_spend_in_the_running_totals(tmp_path: Path) -> None:
    from tollgate.state import budgets as module

    store = StateStore(tmp_path / "state.db")
    store.migrate(Budgets.COMPONENT, module._SCHEMA[:3])  # a ledger as schema 3 left it: spend summed from rows
    with store.lock, store.transaction("seed") as db:
        db.executemany(
            "INSERT INTO budget_reservations (id, session, agent, team, workflow, unit, amount, committed, status, "
            "day, month, created_at, expires_at, decision_id) VALUES (?, 's1', 'code-reviewer', ?, 'review', 'usd', "
            "1, ?, ?, '2026-03-10', '2026-03', ?, ?, '')",
            [("r1", "platform", 0.75, "committed", NOON, NOON + 60),
             ("r2", "", 0.5, "committed", NOON, NOON + 60),  # no team: counted in no team
             ("r3", "platform", 0, "reserved", NOON, NOON + 60)])
    budgets = Budgets(store, ttl=60)
    spend = budgets.spend(ALICE, now=NOON + 1)
    assert spend.by_scope == {"session": {"usd": 2.25}, "agent": {"usd": 2.25}, "team": {"usd": 1.75},
                              "workflow": {"usd": 2.25}}
    assert spend.monthly["team"] == {"usd": 1.75}
    assert budgets.spend(ALICE, now=NOON + DAY).by_scope["agent"] == {}  # the next day starts at nothing


def test_spend_reads_running_totals_and_open_reservations_through_indexes(budgets: Budgets) -> None:
    """The spend queries never scan a scope's day: totals by primary key, open rows by a partial index of the
    scope (the figures with 200,000 rows are in docs/BENCHMARKS.md; this holds the plan that makes them)."""
    budgets.reserve(ALICE, {"usd": 0.25}, limits=LIMITS, now=NOON)
    db = budgets._store.db
    statements: list[str] = []
    db.set_trace_callback(statements.append)  # the statements as run, with their values bound in
    try:
        budgets.spend(ALICE, now=NOON + 1)
    finally:
        db.set_trace_callback(None)
    plans = [" ".join(str(row[-1]) for row in db.execute(f"EXPLAIN QUERY PLAN {sql}"))
             for sql in statements if sql.lstrip().upper().startswith("SELECT")]
    assert len(plans) == 14  # 7 scope windows: their totals, and their open reservations
    for plan in plans:
        assert "USING PRIMARY KEY" in plan or "USING INDEX budget_live_" in plan, plan
        assert "SCAN" not in plan, plan
