"""The outcomes store's contract, on both stores: SQLite in the data dir and PostgreSQL (the same tests on each).

One outcome per (session, task): the same report again is answered unchanged, a different one is refused unless
it replaces (revision counted up, the first report's time kept), replicas racing on one key store one; what a
harness writes is bounded, and a row written by hand is shown no differently.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from tollgate.clock import ManualClock
from tollgate.encoding import format_time
from tollgate.state import (
    LocalOutcomes,
    OutcomeError,
    OutcomeExists,
    OutcomeReport,
    OutcomeStore,
    Reported,
    StateStore,
)
from tollgate.state.postgres import PgOptions, PgOutcomes, PgStore

START = datetime(2026, 11, 21, 18, 0, 0, tzinfo=UTC)
PRINCIPAL = {"agent_id": "code-reviewer", "team": "payments", "workflow": "pr-review", "user": "rita"}


def _report(session: str = "s-1", outcome: str = "succeeded", **changes: Any) -> OutcomeReport:
    fields: dict[str, Any] = {"session_id": session, "outcome": outcome, "principal": PRINCIPAL,
                              "reported_by": "spiffe://example.org/harness", "reported_from": "ipv4:127.0.0.1:5000"}
    fields.update(changes)
    return OutcomeReport(**fields)


@contextlib.asynccontextmanager
async def stores(where: tuple[str, Any], clock: ManualClock, replicas: int) -> AsyncIterator[list[OutcomeStore]]:
    kind, target = where
    if kind == "sqlite":
        local = StateStore(target)
        try:
            yield [LocalOutcomes.open(local, clock=clock) for _ in range(replicas)]
        finally:
            local.close()
        return
    pools = [PgStore(PgOptions(target, timeout=5.0, max_connections=4)) for _ in range(replicas)]
    try:
        for pool in pools:
            await pool.open()
        found = [PgOutcomes(pool, clock=clock) for pool in pools]
        await found[0].migrate(upgrade=True)
        yield list(found)
    finally:
        for pool in pools:
            await pool.close()


def run(where: tuple[str, Any], body: Callable[[list[OutcomeStore], ManualClock], Any], *, replicas: int = 1) -> Any:
    clock = ManualClock(START)

    async def main() -> Any:
        async with stores(where, clock, replicas) as found:
            return await body(found, clock)

    return asyncio.run(main())


def test_a_report_is_stored_with_who_from_where_and_the_sessions_principal(where: tuple[str, Any]) -> None:
    async def body(found: list[OutcomeStore], clock: ManualClock) -> tuple[Reported, Any, Any]:
        (outcomes,) = found
        done = await outcomes.report(_report(labels=("pr_merged", "ci_passed", "ci_passed"), summary="PR #4123\n"))
        return done, await outcomes.get("s-1"), await outcomes.get("s-1", "task-9")

    done, stored, missing = run(where, body)
    assert not done.unchanged
    assert stored == done.outcome
    assert (stored.outcome, stored.labels, stored.summary, stored.revision) == (
        "succeeded", ("ci_passed", "pr_merged"), "PR #4123\n", 1)
    assert (stored.agent_id, stored.team, stored.workflow, stored.user) == (
        "code-reviewer", "payments", "pr-review", "rita")
    assert (stored.reported_by, stored.reported_from) == ("spiffe://example.org/harness", "ipv4:127.0.0.1:5000")
    assert stored.reported_at == stored.first_reported_at == format_time(START)
    assert missing is None


def test_the_same_report_again_is_unchanged_a_different_one_refused_unless_it_replaces(
        where: tuple[str, Any]) -> None:
    async def body(found: list[OutcomeStore], clock: ManualClock) -> list[Any]:
        (outcomes,) = found
        first = await outcomes.report(_report(labels=("pr_merged",)))
        clock.advance(60)
        again = await outcomes.report(_report(labels=("pr_merged",)))
        with pytest.raises(OutcomeExists, match=r"already has the outcome succeeded .*replace"):
            await outcomes.report(_report(outcome="failed"))
        clock.advance(60)
        replaced = await outcomes.report(_report(labels=("pr_merged", "reverted"), outcome="failed"), replace=True)
        task = await outcomes.report(_report(task_id="lint", outcome="abandoned"))
        return [first, again, replaced, task, await outcomes.for_sessions(["s-1", "s-2"])]

    first, again, replaced, task, listed = run(where, body)
    assert again.unchanged and again.outcome == first.outcome
    assert (replaced.outcome.outcome, replaced.outcome.labels, replaced.outcome.revision) == (
        "failed", ("pr_merged", "reverted"), 2)
    assert replaced.outcome.first_reported_at == format_time(START)
    assert replaced.outcome.reported_at == format_time(START + timedelta(seconds=120))
    assert listed == [replaced.outcome, task.outcome]
    assert [(o.session_id, o.task_id) for o in listed] == [("s-1", ""), ("s-1", "lint")]


def test_replicas_racing_on_one_key_store_one_and_refuse_the_others(where: tuple[str, Any]) -> None:
    async def body(found: list[OutcomeStore], clock: ManualClock) -> list[Any]:
        reports = [store.report(_report(outcome=kind)) for store, kind in
                   zip(found * 4, ["succeeded", "failed", "abandoned", "failed"] * 2, strict=True)]
        answers = await asyncio.gather(*reports, return_exceptions=True)
        return [answers, await found[0].get("s-1")]

    answers, stored = run(where, body, replicas=2)
    stored_ones = [a for a in answers if isinstance(a, Reported) and not a.unchanged]
    assert len(stored_ones) == 1 and stored_ones[0].outcome == stored
    for answer in answers:
        if isinstance(answer, Reported):
            assert answer.outcome == stored
        else:
            assert isinstance(answer, OutcomeExists)


@pytest.mark.parametrize(("changes", "message"), [
    ({"session_id": ""}, "session_id: required"),
    ({"session_id": "s" * 513}, "session_id: at most 512"),
    ({"task_id": "t\x1b[2J"}, "task_id: control characters"),
    ({"outcome": "won"}, "outcome: must be one of succeeded, failed, abandoned"),
    ({"labels": tuple(f"l{i}" for i in range(17))}, "labels: at most 16"),
    ({"labels": ("CI passed",)}, "labels: 'CI passed' is not a label"),
    ({"labels": ("x" * 65,)}, "is not a label"),
    ({"summary": "s" * 1001}, "summary: at most 1000"),
    ({"summary": "ok\x1b]0;owned\x07"}, "summary: control characters"),
])
def test_a_report_that_breaks_the_rules_is_refused_naming_the_field(
        where: tuple[str, Any], changes: dict[str, Any], message: str) -> None:
    async def body(found: list[OutcomeStore], clock: ManualClock) -> list[Any]:
        with pytest.raises(OutcomeError, match=message):
            await found[0].report(_report(**changes))
        return await found[0].for_sessions(["s-1", ""])

    assert run(where, body) == []


def test_what_a_caller_names_is_cut_and_cleaned_and_a_row_by_hand_reads_no_differently(
        where: tuple[str, Any]) -> None:
    async def body(found: list[OutcomeStore], clock: ManualClock) -> list[Any]:
        (outcomes,) = found
        done = await outcomes.report(_report(principal={"agent_id": "a\x1b[2J", "team": "t" * 600},
                                             reported_by="jwt:" + "x" * 600, reported_from="p" * 400))
        kind, target = where
        bad = ('["ok", "NOT A LABEL", 7]', "x\x1b[2Jy")
        if kind == "sqlite":
            with sqlite3.connect(target) as db:
                db.execute("UPDATE outcomes SET labels = ?, summary = ?", bad)
        else:
            with psycopg.connect(target, autocommit=True) as db:
                db.execute("UPDATE outcomes SET labels = %s, summary = %s", bad)
        return [done, await outcomes.get("s-1")]

    done, planted = run(where, body)
    assert done.outcome.agent_id == "a?[2J" and len(done.outcome.team) == 512 and done.outcome.team.endswith("…")
    assert len(done.outcome.reported_by) == 512 and len(done.outcome.reported_from) == 300
    assert planted.labels == ("ok",) and planted.summary == "x?[2Jy"


def test_the_console_reads_each_sessions_committed_and_live_reserved_spend_from_the_ledger(
        where: tuple[str, Any]) -> None:
    """OutcomeReader.costs: a session's whole run in usd, committed (reported) apart from live reservations; an
    expired reservation is neither; tokens are another unit; a session that spent nothing is absent."""
    from tollgate.state import BudgetStore, LocalBudgets
    from tollgate.state._outcomes import LocalOutcomeReader, OutcomeReader, SessionCost
    from tollgate.state.budgets import Budgets
    from tollgate.state.postgres import PgBudgets

    async def spend(budgets: BudgetStore, session: str, amounts: dict[str, float], report: float | None) -> None:
        async with budgets.hold({"session": session, "agent": "code-reviewer"}) as hold:
            reservation = await hold.reserve(amounts, limits={})
        if report is not None:
            await budgets.report(reservation, amount=report, unit="usd")

    async def body(clock: ManualClock, budgets: BudgetStore, reader: OutcomeReader) -> dict[str, SessionCost]:
        await spend(budgets, "s-1", {"usd": 0.5}, 0.25)
        await spend(budgets, "s-1", {"usd": 1.0}, 0.75)
        await spend(budgets, "s-2", {"usd": 3.0}, None)  # expires below
        clock.advance(61)
        await spend(budgets, "s-1", {"usd": 0.2}, None)  # live
        await spend(budgets, "s-3", {"usd": 0.1, "tokens": 500}, 0.05)
        await spend(budgets, "s-4", {"tokens": 900}, None)
        return await reader.costs(["s-1", "s-2", "s-3", "s-4", "s-5"])

    async def main() -> dict[str, SessionCost]:
        clock = ManualClock(START)
        kind, target = where
        if kind == "sqlite":
            local = StateStore(target)
            try:
                return await body(clock, LocalBudgets(Budgets(local, ttl=60, clock=clock)),
                                  LocalOutcomeReader(target, clock=clock))
            finally:
                local.close()
        pool = PgStore(PgOptions(target, timeout=5.0, max_connections=4))
        await pool.open()
        try:
            budgets = PgBudgets(pool, ttl=60, clock=clock)
            await budgets.start(upgrade=True)
            return await body(clock, budgets, PgOutcomes(pool, clock=clock))
        finally:
            await pool.close()

    costs = asyncio.run(main())
    assert costs["s-1"] == SessionCost("s-1", committed=pytest.approx(1.0), reserved=0.2)  # type: ignore[arg-type]
    assert costs["s-3"] == SessionCost("s-3", committed=pytest.approx(0.05))  # type: ignore[arg-type]
    assert set(costs) == {"s-1", "s-3"}
