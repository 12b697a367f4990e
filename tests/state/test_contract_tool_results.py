"""The tool-results store's contract, on both stores: SQLite in the data dir and PostgreSQL (the same tests on each).

One result per decision: the same report again is answered unchanged, a different one is refused; replicas racing
on one decision store one; a result for a decision whose approval is still pending closes that approval (it reads
as expired, with the reason, and can no longer be approved nor used), and leaves a decided one as it was; what a
harness writes is bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest

from tollgate.clock import ManualClock
from tollgate.state import LocalApprovals, StateStore
from tollgate.state._protocol import ApprovalStore
from tollgate.state._toolresults import (
    MAX_DURATION_MS,
    LocalToolResults,
    ToolResultError,
    ToolResultExists,
    ToolResultReport,
    ToolResultStore,
)
from tollgate.state.approvals import ApprovalError, Approvals
from tollgate.state.postgres import PgApprovals, PgOptions, PgStore
from tollgate.state.postgres._toolresults import PgToolResults

START = datetime(2026, 11, 21, 18, 0, 0, tzinfo=UTC)
REASON = "answered at the keyboard in Claude Code; not decided in Tollgate"


@dataclass
class Replica:
    results: ToolResultStore
    approvals: ApprovalStore
    changed: list[int]


def _report(decision: str = "dec-1", result: str = "ok", **changes: Any) -> ToolResultReport:
    fields: dict[str, Any] = {"decision_id": decision, "result": result, "duration_ms": 1200,
                              "request_id": "claude-code:toolu_1", "session_id": "s-1", "agent_id": "claude-code",
                              "tool": "Bash", "reported_by": "", "reported_from": "ipv4:127.0.0.1:5000"}
    fields.update(changes)
    return ToolResultReport(**fields)


@contextlib.asynccontextmanager
async def stores(where: tuple[str, Any], clock: ManualClock, replicas: int) -> AsyncIterator[list[Replica]]:
    kind, target = where
    if kind == "sqlite":
        local = StateStore(target)
        try:
            approvals = Approvals(local, clock=clock)
            found = []
            for _ in range(replicas):
                changed: list[int] = []
                found.append(Replica(LocalToolResults.open(local, clock=clock,
                                                           approvals_changed=lambda c=changed: c.append(1)),
                                     LocalApprovals(approvals), changed))
            yield found
        finally:
            local.close()
        return
    pools = [PgStore(PgOptions(target, timeout=5.0, max_connections=4)) for _ in range(replicas)]
    try:
        found = []
        for pool in pools:
            await pool.open()
            changed = []
            results = PgToolResults(pool, clock=clock, approvals_changed=lambda c=changed: c.append(1))
            approvals = PgApprovals(pool, clock=clock)
            await approvals.start(upgrade=True)
            await results.migrate(upgrade=True)
            found.append(Replica(results, approvals, changed))
        yield found
    finally:
        for pool in pools:
            await pool.close()


def run(where: tuple[str, Any], body: Callable[[list[Replica], ManualClock], Any], *, replicas: int = 1) -> Any:
    clock = ManualClock(START)

    async def main() -> Any:
        async with stores(where, clock, replicas) as found:
            return await body(found, clock)

    return asyncio.run(main())


async def _open(approvals: ApprovalStore, digest: str = "d-1") -> str:
    approval = await approvals.open(request_digest=digest, kind="tool", principal={"agent_id": "claude-code",
                                                                                   "session_id": "s-1"},
                                    action={"tool": {"name": "Bash"}}, approvers=["paula"], ttl_seconds=3600,
                                    opened_by="dec-1")
    assert approval is not None
    return approval.id


def test_a_result_is_stored_once_the_same_again_is_unchanged_a_different_one_refused(where: tuple[str, Any]) -> None:
    async def body(found: list[Replica], clock: ManualClock) -> list[Any]:
        (replica,) = found
        first = await replica.results.report(_report())
        clock.advance(30)
        again = await replica.results.report(_report())
        with pytest.raises(ToolResultExists, match=r"already has the result ok \(in 1\.2 s, .*reported once"):
            await replica.results.report(_report(result="error"))
        with pytest.raises(ToolResultExists):
            await replica.results.report(_report(duration_ms=1300))
        measured = await replica.results.report(_report("dec-2", duration_ms=500, duration_measured=True))
        clock.advance(30)
        # A measured duration is what the sidecar saw when it was asked: a retry measures later, and is the same.
        retried = await replica.results.report(_report("dec-2", duration_ms=30500, duration_measured=True))
        return [first, again, measured, retried, await replica.results.for_decisions(["dec-1", "dec-2", "nope"])]

    first, again, measured, retried, listed = run(where, body)
    assert not first.unchanged and again.unchanged and again.run == first.run
    run_ = first.run
    assert (run_.decision_id, run_.result, run_.duration_ms, run_.duration_measured, run_.tool, run_.session_id) == (
        "dec-1", "ok", 1200, False, "Bash", "s-1")
    assert (run_.reported_at, run_.approval_closed) == ("2026-11-21T18:00:00.000000Z", "")
    assert retried.unchanged and retried.run == measured.run and retried.run.duration_ms == 500
    assert set(listed) == {"dec-1", "dec-2"} and listed["dec-1"] == first.run


def test_a_result_closes_the_pending_approval_of_its_decision_which_can_then_never_allow(
        where: tuple[str, Any]) -> None:
    async def body(found: list[Replica], clock: ManualClock) -> list[Any]:
        (replica,) = found
        approval_id = await _open(replica.approvals)
        clock.advance(5)
        done = await replica.results.report(_report(approval_id=approval_id, close_reason=REASON))
        again = await replica.results.report(_report(approval_id=approval_id, close_reason=REASON))
        closed = await replica.approvals.get(approval_id)
        with pytest.raises(ApprovalError, match="is expired, not pending"):
            await replica.approvals.decide(approval_id, approve=True, by="paula", reason="ok")
        used = await replica.approvals.consume(approval_id, request_digest="d-1", decision_id="dec-9")
        reopened = await _open(replica.approvals)  # the same request asked again: a new approval, not the closed one
        pending = await replica.approvals.list(status="pending")
        expired = await replica.approvals.list(status="expired")
        return [done, again, closed, used, pending, expired, reopened, list(replica.changed)]

    done, again, closed, used, pending, expired, reopened, changed = run(where, body)
    assert done.run.approval_closed == closed.id and again.unchanged and again.run.approval_closed == closed.id
    assert (closed.status, closed.reason, closed.decided_by) == ("expired", REASON, "")
    assert closed.expires_at == closed.decided_at == "2026-11-21T18:00:05.000000Z"
    assert not used
    assert [a.id for a in pending] == [reopened] and [a.id for a in expired] == [closed.id]
    assert reopened != closed.id
    assert changed == [1]  # watchers were told once: the retry changed nothing


def test_an_approval_already_decided_is_left_as_it_was(where: tuple[str, Any]) -> None:
    async def body(found: list[Replica], clock: ManualClock) -> list[Any]:
        (replica,) = found
        approval_id = await _open(replica.approvals)
        await replica.approvals.decide(approval_id, approve=True, by="paula", reason="fine")
        done = await replica.results.report(_report(approval_id=approval_id, close_reason=REASON))
        return [done, await replica.approvals.get(approval_id)]

    done, approval = run(where, body)
    assert done.run.approval_closed == ""
    assert (approval.status, approval.reason) == ("approved", "fine")


def test_two_replicas_reporting_one_decision_at_once_store_one(where: tuple[str, Any]) -> None:
    async def body(found: list[Replica], clock: ManualClock) -> list[Any]:
        async def report(replica: Replica, result: str) -> Any:
            try:
                return await replica.results.report(_report(result=result))
            except ToolResultExists as exc:
                return exc

        answers = await asyncio.gather(report(found[0], "ok"), report(found[1], "error"))
        return [answers, await found[0].results.for_decisions(["dec-1"])]

    answers, stored = run(where, body, replicas=2)
    kept = [a for a in answers if not isinstance(a, ToolResultExists)]
    assert len(kept) == 1 and stored["dec-1"] == kept[0].run
    assert sum(isinstance(a, ToolResultExists) for a in answers) == 1


@pytest.mark.parametrize(("changes", "message"), [
    ({"decision_id": ""}, "decision_id: required"),
    ({"decision_id": "d" * 513}, "decision_id: at most 512"),
    ({"decision_id": "dec\x1b[31m"}, "decision_id: control characters"),
    ({"request_id": "r" * 513}, "request_id: at most 512"),
    ({"result": "great"}, "result: must be one of ok, error, interrupted"),
    ({"duration_ms": -1}, "duration_ms: must be from 0"),
    ({"duration_ms": MAX_DURATION_MS + 1}, "duration_ms: must be from 0"),
], ids=["no-id", "long-id", "escape", "long-request", "result", "negative", "too-long"])
def test_what_breaks_the_rules_is_refused_naming_the_field(where: tuple[str, Any], changes: dict[str, Any],
                                                          message: str) -> None:
    async def body(found: list[Replica], clock: ManualClock) -> None:
        with pytest.raises(ToolResultError, match=message):
            await found[0].results.report(_report(**changes))
        assert await found[0].results.for_decisions(["dec-1", ""]) == {}

    run(where, body)
