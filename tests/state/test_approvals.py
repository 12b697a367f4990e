"""The Approvals unit: open/reuse, who may decide, expiry, and single use under concurrency."""

from __future__ import annotations

import threading
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tollgate.clock import ManualClock
from tollgate.state import StateStore
from tollgate.state.approvals import (
    APPROVED,
    DENIED,
    EXPIRED,
    MISMATCH,
    PENDING,
    USED,
    ApprovalError,
    ApprovalNotFound,
    Approvals,
    NotAnApprover,
)

pytestmark = pytest.mark.clock

PRINCIPAL = {"agent_id": "release-bot", "session_id": "s-1", "user": "bob"}
ACTION = {"server": "github", "name": "merge_pull_request", "arguments": {"pr": 7}}


@pytest.fixture
def approvals(tmp_path: Path) -> Approvals:
    return Approvals(StateStore(tmp_path / "state.db"), approver_groups={"sre": ["carol", "dave"]})


def _open(approvals: Approvals, **overrides: Any) -> Any:
    args: dict[str, Any] = {"request_digest": "d1", "kind": "tool", "principal": PRINCIPAL, "action": ACTION,
                            "approvers": ["alice", "group:sre"], "ttl_seconds": 60, "opened_by": "dec-1"}
    return approvals.open(**{**args, **overrides})


def test_open_is_pending_and_reused_for_the_same_request_in_the_same_session(approvals: Approvals) -> None:
    first = _open(approvals)
    assert first.status == PENDING and first.id.startswith("apr_")
    assert _open(approvals, opened_by="dec-2").id == first.id
    assert _open(approvals, principal={**PRINCIPAL, "session_id": "s-2"}).id != first.id
    assert _open(approvals, request_digest="d2").id != first.id


def test_approve_then_consume_succeeds_exactly_once(approvals: Approvals) -> None:
    opened = _open(approvals)
    decided = approvals.decide(opened.id, approve=True, by="alice", reason="looks fine")
    assert decided.status == APPROVED and decided.decided_by == "alice"
    assert approvals.consume(opened.id, request_digest="d1", decision_id="dec-9")
    assert not approvals.consume(opened.id, request_digest="d1", decision_id="dec-10")
    used = approvals.get(opened.id)
    assert used is not None and used.status == USED and used.used_by == "dec-9"


def test_consume_of_another_request_fails_and_the_policy_sees_mismatch(approvals: Approvals) -> None:
    opened = _open(approvals)
    approved = approvals.decide(opened.id, approve=True, by="alice", reason="ok")
    assert approved.policy_state("other") == {"id": opened.id, "status": MISMATCH, "approver": "alice"}
    assert not approvals.consume(opened.id, request_digest="other", decision_id="dec-9")
    assert approvals.consume(opened.id, request_digest="d1", decision_id="dec-9")


def test_concurrent_consumes_have_exactly_one_winner(approvals: Approvals) -> None:
    opened = _open(approvals)
    approvals.decide(opened.id, approve=True, by="alice", reason="ok")
    wins: list[bool] = []
    start = threading.Barrier(20)

    def use(n: int) -> None:
        start.wait()
        wins.append(approvals.consume(opened.id, request_digest="d1", decision_id=f"dec-{n}"))

    threads = [threading.Thread(target=use, args=(n,)) for n in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1


def test_denied_approval_cannot_be_consumed_or_decided_again(approvals: Approvals) -> None:
    opened = _open(approvals)
    assert approvals.decide(opened.id, approve=False, by="carol", reason="not today").status == DENIED
    assert not approvals.consume(opened.id, request_digest="d1", decision_id="dec-9")
    with pytest.raises(ApprovalError, match="is denied, not pending"):
        approvals.decide(opened.id, approve=True, by="alice", reason="changed my mind")


def test_expired_approval_reads_expired_and_cannot_be_decided_or_used(approvals: Approvals) -> None:
    past = datetime.now(UTC) - timedelta(seconds=120)
    opened = _open(approvals, now=past)
    got = approvals.get(opened.id)
    assert got is not None and got.status == EXPIRED
    with pytest.raises(ApprovalError, match="is expired"):
        approvals.decide(opened.id, approve=True, by="alice", reason="late")
    # Approved in time, used too late.
    second = _open(approvals, request_digest="d2", now=past)
    approvals.decide(second.id, approve=True, by="alice", reason="ok", now=past + timedelta(seconds=1))
    assert not approvals.consume(second.id, request_digest="d2", decision_id="dec-9")
    assert approvals.list(status=EXPIRED)[0].id in {opened.id, second.id}


DECIDERS = [
    pytest.param("alice", "", id="named-directly"),
    pytest.param("carol", "", id="member-of-a-named-group"),
    pytest.param("mallory", "mallory is not an approver", id="not-named"),
    pytest.param("release-bot", r"or for itself \(principal agent_id\)", id="own-agent"),
    pytest.param("bob", r"or for itself \(principal user\)", id="own-user"),
    pytest.param("", "identity is required", id="no-identity"),
]


@pytest.mark.parametrize(("identity", "refusal"), DECIDERS)
def test_who_may_decide(approvals: Approvals, identity: str, refusal: str) -> None:
    opened = _open(approvals, approvers=["alice", "group:sre", "release-bot", "bob"] if identity in
                   ("release-bot", "bob") else ["alice", "group:sre"])
    if refusal:
        with pytest.raises(NotAnApprover, match=refusal):
            approvals.decide(opened.id, approve=True, by=identity, reason="r")
        assert approvals.get(opened.id).status == PENDING  # type: ignore[union-attr]
    else:
        assert approvals.decide(opened.id, approve=True, by=identity, reason="r").status == APPROVED


def test_decide_needs_a_reason_and_an_existing_approval(approvals: Approvals) -> None:
    opened = _open(approvals)
    with pytest.raises(ApprovalError, match="reason: required"):
        approvals.decide(opened.id, approve=True, by="alice", reason=" ")
    with pytest.raises(ApprovalNotFound):
        approvals.decide("apr_nope", approve=True, by="alice", reason="r")


def test_list_filters_by_approver_agent_session_and_status(approvals: Approvals) -> None:
    a = _open(approvals)
    b = _open(approvals, request_digest="d2", approvers=["erin"],
              principal={"agent_id": "data-analyst", "session_id": "s-9"})
    approvals.decide(b.id, approve=True, by="erin", reason="ok")
    assert [x.id for x in approvals.list(approver="dave")] == [a.id]
    assert [x.id for x in approvals.list(approver="erin")] == [b.id]
    assert [x.id for x in approvals.list(agent="data-analyst")] == [b.id]
    assert [x.id for x in approvals.list(session="s-1")] == [a.id]
    assert [x.id for x in approvals.list(status=PENDING)] == [a.id]
    with pytest.raises(ApprovalError, match="status: 'open'"):
        approvals.list(status="open")


def test_approvals_survive_a_restart(tmp_path: Path) -> None:
    first = Approvals(StateStore(tmp_path / "state.db"))
    opened = _open(first)
    first.decide(opened.id, approve=True, by="alice", reason="ok")
    again = Approvals(StateStore(tmp_path / "state.db"))
    assert again.consume(opened.id, request_digest="d1", decision_id="dec-9")


def test_every_change_bumps_the_generation_a_watcher_polls(approvals: Approvals) -> None:
    start = approvals.generation
    opened = _open(approvals)
    _open(approvals)  # reused: nothing changed
    approvals.decide(opened.id, approve=True, by="alice", reason="ok")
    assert approvals.consume(opened.id, request_digest="d1", decision_id="dec-9")
    assert not approvals.consume(opened.id, request_digest="d1", decision_id="dec-10")
    assert approvals.generation == start + 3


def test_times_and_expiry_come_from_the_approvals_clock(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC))
    approvals = Approvals(StateStore(tmp_path / "state.db"), clock=clock)
    opened = _open(approvals)  # ttl 60 s: expires in the next year
    assert (opened.created_at, opened.expires_at) == ("2026-12-31T23:59:30.000000Z", "2027-01-01T00:00:30.000000Z")
    assert uuid.UUID(opened.id.removeprefix("apr_")).int >> 80 == int(clock.time() * 1000)
    clock.advance(10)
    decided = approvals.decide(opened.id, approve=True, by="alice", reason="ok")
    assert decided.decided_at == "2026-12-31T23:59:40.000000Z"
    clock.advance(50)  # exactly at expires_at: no longer usable
    assert approvals.get(opened.id).status == EXPIRED  # type: ignore[union-attr]
    assert not approvals.consume(opened.id, request_digest="d1", decision_id="dec-9")
    assert [a.id for a in approvals.list(status=EXPIRED)] == [opened.id]
