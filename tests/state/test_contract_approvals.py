"""The approvals' contract, held against both stores: SQLite (LocalApprovals) and PostgreSQL (PgApprovals).

Each test runs once per store with a ManualClock. The PostgreSQL runs add what only a shared store can show:
replicas (separate pools, separate processes) opening, deciding and using one approval, exactly once, and the
notification every change sends to the other replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
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
from tollgate.state import ApprovalStore, LocalApprovals, StateError, StateStore
from tollgate.state.approvals import (
    APPROVED,
    DENIED,
    EXPIRED,
    MISMATCH,
    PENDING,
    USED,
    Approval,
    ApprovalError,
    ApprovalNotFound,
    Approvals,
    NotAnApprover,
)
from tollgate.state.postgres import APPROVALS_CHANNEL, PgApprovals, PgOptions, PgStore

pytestmark = pytest.mark.clock

PRINCIPAL = {"agent_id": "release-bot", "session_id": "s-1", "user": "bob"}
ACTION = {"server": "github", "name": "merge_pull_request", "arguments": {"pr": 7}}
GROUPS = {"sre": ["carol", "dave"]}
START = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)
T = TypeVar("T")


@dataclass
class Store:
    kind: str
    approvals: ApprovalStore
    clock: ManualClock

    async def open(self, **overrides: Any) -> Approval:
        args: dict[str, Any] = {"request_digest": "d1", "kind": "tool", "principal": PRINCIPAL, "action": ACTION,
                                "approvers": ["alice", "group:sre"], "ttl_seconds": 60, "opened_by": "dec-1"}
        opened = await self.approvals.open(**{**args, **overrides})
        assert opened is not None
        return opened


class Stores:
    """Opens the approvals of the test's store kind inside the test's event loop (a pool belongs to one loop)."""

    def __init__(self, kind: str, tmp_path: Path, url: str) -> None:
        self.kind, self.tmp_path, self.url = kind, tmp_path, url

    @contextlib.asynccontextmanager
    async def open(self, *, clock: ManualClock | None = None, timeout: float = 5.0) -> AsyncIterator[Store]:
        clock = clock or ManualClock(START)
        if self.kind == "sqlite":
            state = StateStore(self.tmp_path / "state.db")
            try:
                yield Store(self.kind, LocalApprovals(Approvals(state, approver_groups=GROUPS, clock=clock)), clock)
            finally:
                state.close()
            return
        async with replica(self.url, clock=clock, timeout=timeout, upgrade=True) as approvals:
            yield Store(self.kind, approvals, clock)

    def run(self, body: Callable[[Store], Awaitable[T]], **options: Any) -> T:
        async def main() -> T:
            async with self.open(**options) as store:
                return await body(store)
        return asyncio.run(main())


@contextlib.asynccontextmanager
async def replica(url: str, *, clock: ManualClock, timeout: float = 5.0,
                  upgrade: bool = False) -> AsyncIterator[PgApprovals]:
    """One replica's approvals: a pool of its own on the shared store."""
    pg = PgStore(PgOptions(url, timeout=timeout))
    await pg.open()
    try:
        approvals = PgApprovals(pg, approver_groups=GROUPS, clock=clock)
        await approvals.start(upgrade=upgrade)
        yield approvals
    finally:
        await pg.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    return Stores(request.param, tmp_path, url)


def test_open_is_pending_and_reused_for_the_same_request_in_the_same_session(stores: Stores) -> None:
    async def body(store: Store) -> None:
        first = await store.open()
        assert first.status == PENDING and first.id.startswith("apr_")
        assert (first.created_at, first.expires_at) == ("2026-12-31T23:59:30.000000Z", "2027-01-01T00:00:30.000000Z")
        assert await store.approvals.get(first.id) == first
        assert (await store.open(opened_by="dec-2")).id == first.id
        assert (await store.open(principal={**PRINCIPAL, "session_id": "s-2"})).id != first.id
        assert (await store.open(request_digest="d2")).id != first.id
        store.clock.advance(60)  # the pending one expired: a new one opens
        assert (await store.open()).id != first.id
        with pytest.raises(ApprovalError, match="ttl_seconds: must be at least 1"):
            await store.open(request_digest="d3", ttl_seconds=0)

    stores.run(body)


def test_approve_then_consume_succeeds_exactly_once(stores: Stores) -> None:
    async def body(store: Store) -> None:
        opened = await store.open()
        store.clock.advance(10)
        decided = await store.approvals.decide(opened.id, approve=True, by="alice", reason="looks fine")
        assert (decided.status, decided.decided_by, decided.decided_at) == (APPROVED, "alice",
                                                                            "2026-12-31T23:59:40.000000Z")
        assert decided.policy_state("other") == {"id": opened.id, "status": MISMATCH, "approver": "alice"}
        assert not await store.approvals.consume(opened.id, request_digest="other", decision_id="dec-8")
        assert await store.approvals.consume(opened.id, request_digest="d1", decision_id="dec-9")
        assert not await store.approvals.consume(opened.id, request_digest="d1", decision_id="dec-10")
        used = await store.approvals.get(opened.id)
        assert used is not None and (used.status, used.used_by) == (USED, "dec-9")

    stores.run(body)


def test_concurrent_consumes_have_exactly_one_winner(stores: Stores) -> None:
    async def body(store: Store) -> None:
        opened = await store.open()
        await store.approvals.decide(opened.id, approve=True, by="alice", reason="ok")
        wins = await asyncio.gather(*(store.approvals.consume(opened.id, request_digest="d1", decision_id=f"dec-{n}")
                                      for n in range(20)))
        assert wins.count(True) == 1

    stores.run(body)


def test_a_denied_approval_cannot_be_used_or_decided_again(stores: Stores) -> None:
    async def body(store: Store) -> None:
        opened = await store.open()
        assert (await store.approvals.decide(opened.id, approve=False, by="carol", reason="no")).status == DENIED
        assert not await store.approvals.consume(opened.id, request_digest="d1", decision_id="dec-9")
        with pytest.raises(ApprovalError, match="is denied, not pending"):
            await store.approvals.decide(opened.id, approve=True, by="alice", reason="changed my mind")

    stores.run(body)


def test_expiry_follows_the_approvals_clock(stores: Stores) -> None:
    async def body(store: Store) -> None:
        late = await store.open()
        store.clock.advance(60)  # exactly at expires_at: no longer pending
        assert (await store.approvals.get(late.id)).status == EXPIRED  # type: ignore[union-attr]
        with pytest.raises(ApprovalError, match="is expired"):
            await store.approvals.decide(late.id, approve=True, by="alice", reason="late")
        used_late = await store.open(request_digest="d2")
        store.clock.advance(1)
        await store.approvals.decide(used_late.id, approve=True, by="alice", reason="ok")
        store.clock.advance(59)
        assert not await store.approvals.consume(used_late.id, request_digest="d2", decision_id="dec-9")
        assert [a.id for a in await store.approvals.list(status=EXPIRED)] == [used_late.id, late.id]

    stores.run(body)


DECIDERS = [
    pytest.param("alice", "", id="named-directly"),
    pytest.param("carol", "", id="member-of-a-named-group"),
    pytest.param("mallory", "mallory is not an approver", id="not-named"),
    pytest.param("release-bot", r"or for itself \(principal agent_id\)", id="own-agent"),
    pytest.param("bob", r"or for itself \(principal user\)", id="own-user"),
    pytest.param("group:sre", "names a group, not a person", id="a-group"),
    pytest.param("", "identity is required", id="no-identity"),
]


@pytest.mark.parametrize(("identity", "refusal"), DECIDERS)
def test_who_may_decide(stores: Stores, identity: str, refusal: str) -> None:
    async def body(store: Store) -> None:
        opened = await store.open(approvers=["alice", "group:sre", "release-bot", "bob"])
        assert bool(store.approvals.may_decide(opened, identity)) == bool(refusal)
        if refusal:
            with pytest.raises(NotAnApprover, match=refusal):
                await store.approvals.decide(opened.id, approve=True, by=identity, reason="r")
            assert (await store.approvals.get(opened.id)).status == PENDING  # type: ignore[union-attr]
        else:
            assert (await store.approvals.decide(opened.id, approve=True, by=identity, reason="r")).status == APPROVED

    stores.run(body)


def test_decide_needs_a_reason_and_an_existing_approval(stores: Stores) -> None:
    async def body(store: Store) -> None:
        opened = await store.open()
        with pytest.raises(ApprovalError, match="reason: required"):
            await store.approvals.decide(opened.id, approve=True, by="alice", reason=" ")
        with pytest.raises(ApprovalNotFound):
            await store.approvals.decide("apr_nope", approve=True, by="alice", reason="r")
        assert await store.approvals.get("apr_nope") is None

    stores.run(body)


def test_list_filters_by_approver_agent_session_and_status(stores: Stores) -> None:
    async def body(store: Store) -> None:
        a = await store.open()
        store.clock.advance(1)
        b = await store.open(request_digest="d2", approvers=["erin"],
                             principal={"agent_id": "data-analyst", "session_id": "s-9"})
        await store.approvals.decide(b.id, approve=True, by="erin", reason="ok")
        assert [x.id for x in await store.approvals.list()] == [b.id, a.id]  # newest first
        assert [x.id for x in await store.approvals.list(approver="dave")] == [a.id]
        assert [x.id for x in await store.approvals.list(approver="erin")] == [b.id]
        assert [x.id for x in await store.approvals.list(agent="data-analyst")] == [b.id]
        assert [x.id for x in await store.approvals.list(session="s-1")] == [a.id]
        assert [x.id for x in await store.approvals.list(status=PENDING)] == [a.id]
        with pytest.raises(ApprovalError, match="status: 'open'"):
            await store.approvals.list(status="open")

    stores.run(body)


def test_every_change_moves_the_generation_and_nothing_else_does(stores: Stores) -> None:
    async def body(store: Store) -> None:
        start = store.approvals.generation
        opened = await store.open()
        await store.open()  # reused: nothing changed
        await store.approvals.decide(opened.id, approve=True, by="alice", reason="ok")
        assert await store.approvals.consume(opened.id, request_digest="d1", decision_id="dec-9")
        assert not await store.approvals.consume(opened.id, request_digest="d1", decision_id="dec-10")
        await store.approvals.get(opened.id)
        await store.approvals.list()
        assert store.approvals.generation == start + 3

    stores.run(body)


def test_every_change_notifies_the_other_replicas_and_changed_moves_the_generation(pg_url: str) -> None:
    async def body(store: Store) -> None:
        assert isinstance(store.approvals, PgApprovals)
        async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as listener:
            await listener.execute(f"LISTEN {APPROVALS_CHANNEL}")
            opened = await store.open()
            await store.open()  # reused: no change, no notification
            await store.approvals.decide(opened.id, approve=True, by="alice", reason="ok")
            assert not await store.approvals.consume(opened.id, request_digest="other", decision_id="dec-8")
            assert await store.approvals.consume(opened.id, request_digest="d1", decision_id="dec-9")
            heard = [n.payload async for n in listener.notifies(timeout=2.0, stop_after=3)]
            assert heard == [opened.id] * 3
            assert [n async for n in listener.notifies(timeout=0.2)] == []  # and nothing more
        before = store.approvals.generation
        store.approvals.changed()  # what the listener calls for another replica's notification
        assert store.approvals.generation == before + 1

    Stores("postgresql", Path(), pg_url).run(body)


def test_opened_at_one_replica_decided_at_another_used_once_at_a_third(pg_url: str) -> None:
    async def body(a: Store) -> None:
        async with replica(pg_url, clock=a.clock) as b, replica(pg_url, clock=a.clock) as c:
            opened = await a.open()
            assert [x.id for x in await b.list(approver="carol")] == [opened.id]
            await b.decide(opened.id, approve=True, by="carol", reason="ok")
            with pytest.raises(ApprovalError, match="is approved, not pending"):
                await c.decide(opened.id, approve=False, by="alice", reason="too late")
            assert await c.consume(opened.id, request_digest="d1", decision_id="dec-c")
            assert not await a.approvals.consume(opened.id, request_digest="d1", decision_id="dec-a")
            seen = await a.approvals.get(opened.id)
            assert seen is not None and (seen.status, seen.decided_by, seen.used_by) == (USED, "carol", "dec-c")

    Stores("postgresql", Path(), pg_url).run(body)


def test_replicas_opening_for_one_request_at_once_open_one(pg_url: str) -> None:
    async def body(a: Store) -> None:
        async with replica(pg_url, clock=a.clock) as b, replica(pg_url, clock=a.clock) as c:
            replicas = [a, Store("postgresql", b, a.clock), Store("postgresql", c, a.clock)] * 4
            for round_ in range(5):
                opened = await asyncio.gather(*(r.open(request_digest=f"d-{round_}", opened_by=f"dec-{n}")
                                                for n, r in enumerate(replicas)))
                assert len({x.id for x in opened}) == 1, opened
            assert len(await a.approvals.list()) == 5

    Stores("postgresql", Path(), pg_url).run(body)


def consumer(url: str, approval_id: str, tries: int) -> None:
    """A stand-in for one sidecar (a process, its own pool): ready, wait for go, re-ask tries times at once."""
    async def main() -> list[bool]:
        async with replica(url, clock=ManualClock(START)) as approvals:
            print("ready", flush=True)
            await asyncio.to_thread(sys.stdin.readline)
            return list(await asyncio.gather(*(approvals.consume(approval_id, request_digest="d1",
                                                                 decision_id=f"dec-{n}") for n in range(tries))))
    print(json.dumps(asyncio.run(main())), flush=True)


def test_an_approval_is_used_once_across_replica_processes(pg_url: str) -> None:
    async def approve(store: Store) -> str:
        opened = await store.open()
        await store.approvals.decide(opened.id, approve=True, by="alice", reason="ok")
        return opened.id

    approval_id = Stores("postgresql", Path(), pg_url).run(approve)
    code = ("import sys; from tests.state.test_contract_approvals import consumer; "
            "consumer(sys.argv[1], sys.argv[2], int(sys.argv[3]))")
    procs = [subprocess.Popen([sys.executable, "-c", code, pg_url, approval_id, "10"], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", proc.stderr
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        wins: list[bool] = []
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
            wins += json.loads(out.strip().splitlines()[-1])
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert (wins.count(True), len(wins)) == (1, 30)


def test_a_store_that_goes_away_fails_calls_within_the_timeout_then_recovers(own_postgres: PostgresServer) -> None:
    url = own_postgres.database()
    timeout = 1.0

    async def body(store: Store) -> None:
        opened = await store.open()
        await store.approvals.decide(opened.id, approve=True, by="alice", reason="ok")
        generation = store.approvals.generation
        own_postgres.stop()
        for call in (lambda: store.approvals.get(opened.id),
                     lambda: store.approvals.consume(opened.id, request_digest="d1", decision_id="dec-9"),
                     lambda: store.open(request_digest="d2")):
            started = time.monotonic()
            with pytest.raises(StateError, match="cannot"):
                await call()
            assert time.monotonic() - started < timeout + 1.5
        assert store.approvals.generation == generation  # nothing changed
        own_postgres.start()
        deadline = time.monotonic() + 30
        while True:  # the pool reconnects in the background
            try:
                assert await store.approvals.consume(opened.id, request_digest="d1", decision_id="dec-9")
                break
            except StateError:
                assert time.monotonic() < deadline, "the approvals did not recover"
                await asyncio.sleep(0.05)
        assert not await store.approvals.consume(opened.id, request_digest="d1", decision_id="dec-10")

    Stores("postgresql", Path(), url).run(body, timeout=timeout)


# -- quorum and separation of duties ------------------------------------------------------------------------------

def test_a_quorum_of_two_is_approved_by_the_second_distinct_approver_only(stores: Stores) -> None:
    async def body(store: Store) -> None:
        opened = await store.open(required=2)
        assert (opened.required, opened.approved_by) == (2, ())
        first = await store.approvals.decide(opened.id, approve=True, by="alice", reason="diff reviewed")
        assert (first.status, first.approved_by, first.decided_by) == (PENDING, ("alice",), "")
        again = await store.approvals.decide(opened.id, approve=True, by="alice", reason="really")
        assert (again.status, again.approved_by) == (PENDING, ("alice",))  # a person twice counts once
        assert [v.reason for v in again.votes] == ["diff reviewed"]
        assert not await store.approvals.consume(opened.id, request_digest="d1", decision_id="dec-8")
        store.clock.advance(5)
        done = await store.approvals.decide(opened.id, approve=True, by="carol", reason="on call, fine")
        assert (done.status, done.decided_by, done.reason) == (APPROVED, "alice, carol", "on call, fine")
        assert done.decided_at == "2026-12-31T23:59:35.000000Z"
        assert [(v.voter, v.approve) for v in done.votes] == [("alice", True), ("carol", True)]
        assert await store.approvals.get(opened.id) == done
        assert [a.votes for a in await store.approvals.list()] == [done.votes]
        assert await store.approvals.consume(opened.id, request_digest="d1", decision_id="dec-9")

    stores.run(body)


def test_one_deny_denies_a_quorum(stores: Stores) -> None:
    async def body(store: Store) -> None:
        opened = await store.open(required=3)
        await store.approvals.decide(opened.id, approve=True, by="alice", reason="ok")
        denied = await store.approvals.decide(opened.id, approve=False, by="carol", reason="not during the freeze")
        assert (denied.status, denied.decided_by, denied.reason) == (DENIED, "carol", "not during the freeze")
        assert [(v.voter, v.approve) for v in denied.votes] == [("alice", True), ("carol", False)]
        with pytest.raises(ApprovalError, match="is denied, not pending"):
            await store.approvals.decide(opened.id, approve=True, by="dave", reason="late")

    stores.run(body)


def test_a_quorum_is_bounded(stores: Stores) -> None:
    async def body(store: Store) -> None:
        for required in (0, 11):
            with pytest.raises(ApprovalError, match="required: must be from 1 to 10"):
                await store.open(request_digest=f"d-{required}", required=required)
        assert (await store.open(required=10)).required == 10

    stores.run(body)


def test_concurrent_votes_of_a_quorum_all_count(stores: Stores) -> None:
    async def body(store: Store) -> None:
        for round_ in range(5):
            opened = await store.open(request_digest=f"d-{round_}", required=2)
            await asyncio.gather(*(store.approvals.decide(opened.id, approve=True, by=who, reason="ok")
                                   for who in ("alice", "carol")))
            done = await store.approvals.get(opened.id)
            assert done is not None and done.status == APPROVED and sorted(done.approved_by) == ["alice", "carol"]

    stores.run(body)


def test_the_user_an_agent_acts_for_decides_only_where_the_policy_allows_it(stores: Stores) -> None:
    async def body(store: Store) -> None:
        approvers = ["alice", "bob", "release-bot"]
        refused = await store.open(approvers=approvers)
        assert not refused.allow_requester
        with pytest.raises(NotAnApprover, match=r"\(principal user\).*approval.allow_requester"):
            await store.approvals.decide(refused.id, approve=True, by="bob", reason="mine")
        allowed = await store.open(request_digest="d2", approvers=approvers, allow_requester=True)
        assert allowed.allow_requester and store.approvals.may_decide(allowed, "bob") == ""
        # The agent itself never decides, whatever the policy says.
        assert "principal agent_id" in store.approvals.may_decide(allowed, "release-bot")
        assert (await store.approvals.decide(allowed.id, approve=True, by="bob", reason="mine")).status == APPROVED
        assert [a.id for a in await store.approvals.list(approver="bob")] == [allowed.id]

    stores.run(body)


def test_two_connections_on_one_sqlite_file_count_each_others_votes(tmp_path: Path) -> None:
    """A console beside the sidecar: its own connection on state.db, votes at once with the sidecar's."""
    async def body() -> None:
        clock = ManualClock(START)
        one, two = StateStore(tmp_path / "state.db"), StateStore(tmp_path / "state.db")
        try:
            a = LocalApprovals(Approvals(one, approver_groups=GROUPS, clock=clock))
            b = LocalApprovals(Approvals(two, approver_groups=GROUPS, clock=clock))
            for round_ in range(5):
                opened = await Store("sqlite", a, clock).open(request_digest=f"d-{round_}", required=2)
                await asyncio.gather(a.decide(opened.id, approve=True, by="alice", reason="ok"),
                                     b.decide(opened.id, approve=True, by="carol", reason="ok"))
                assert (await b.get(opened.id)).status == APPROVED  # type: ignore[union-attr]
        finally:
            one.close()
            two.close()

    asyncio.run(body())


def test_votes_at_two_replicas_at_once_both_count(pg_url: str) -> None:
    async def body(a: Store) -> None:
        async with replica(pg_url, clock=a.clock) as b:
            for round_ in range(5):
                opened = await a.open(request_digest=f"d-{round_}", required=2)
                await asyncio.gather(a.approvals.decide(opened.id, approve=True, by="alice", reason="ok"),
                                     b.decide(opened.id, approve=True, by="carol", reason="ok"))
                done = await b.get(opened.id)
                assert done is not None and done.status == APPROVED, done

    Stores("postgresql", Path(), pg_url).run(body)


def test_a_group_the_persons_sign_in_gives_counts_as_the_configured_members_do(stores: Stores) -> None:
    async def body(store: Store) -> None:
        opened = await store.open(approvers=["group:release-managers"])
        assert "not an approver" in store.approvals.may_decide(opened, "rita")
        assert "not an approver" in store.approvals.may_decide(opened, "rita", groups=["other"])
        assert store.approvals.may_decide(opened, "rita", groups=["release-managers"]) == ""
        with pytest.raises(NotAnApprover):
            await store.approvals.decide(opened.id, approve=True, by="rita", reason="r")
        decided = await store.approvals.decide(opened.id, approve=True, by="rita", reason="r",
                                               groups=["release-managers"])
        assert decided.status == APPROVED
        own = await store.open(request_digest="d2", approvers=["group:release-managers"])
        # A group never lifts the separation of duties: the user the agent acts for is still refused.
        assert "principal user" in store.approvals.may_decide(own, "bob", groups=["release-managers"])

    stores.run(body)
