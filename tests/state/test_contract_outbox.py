"""The notification outbox's contract, held against both stores: SQLite (LocalOutbox) and PostgreSQL (PgOutbox).

Events are written by the approval changes themselves (in their transaction), claimed under a lease that keeps
them from every other sender, settled as delivered, retried or dead; the expiry sweep records approvals that
expired undecided, once. The PostgreSQL runs add replicas claiming at once: each event goes to one of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tollgate.clock import ManualClock
from tollgate.state import ApprovalStore, LocalApprovals, StateStore
from tollgate.state._outbox import DEAD, DECIDED, DELIVERED, EXPIRED, OPENED, PENDING, LocalOutbox, Outbox
from tollgate.state._protocol import OutboxStore
from tollgate.state.approvals import Approval, Approvals
from tollgate.state.postgres import PgApprovals, PgOptions, PgStore
from tollgate.state.postgres._outbox import PgOutbox

pytestmark = pytest.mark.clock

PRINCIPAL = {"agent_id": "release-bot", "session_id": "s-1", "user": "bob"}
ACTION = {"server": "github", "name": "merge_pull_request", "arguments": {"pullNumber": 7}}
START = datetime(2026, 12, 31, 23, 59, 30, tzinfo=UTC)


@dataclass
class Store:
    approvals: ApprovalStore
    outbox: OutboxStore
    clock: ManualClock

    async def open(self, digest: str = "d1", ttl: int = 60) -> Approval:
        opened = await self.approvals.open(request_digest=digest, kind="tool", principal=PRINCIPAL, action=ACTION,
                                           approvers=["alice", "group:sre"], ttl_seconds=ttl, opened_by="dec-1")
        assert opened is not None
        return opened


@contextlib.asynccontextmanager
async def pg_replica(url: str, clock: ManualClock) -> AsyncIterator[Store]:
    """One replica's approvals and outbox on a pool of its own."""
    pg = PgStore(PgOptions(url, timeout=5.0))
    await pg.open()
    try:
        approvals, outbox = PgApprovals(pg, clock=clock), PgOutbox(pg, clock=clock)
        await approvals.start(upgrade=True)
        await outbox.start(upgrade=True)
        yield Store(approvals, outbox, clock)
    finally:
        await pg.close()


class Stores:
    def __init__(self, kind: str, tmp_path: Path, url: str) -> None:
        self.kind, self.tmp_path, self.url = kind, tmp_path, url

    @contextlib.asynccontextmanager
    async def open(self, clock: ManualClock) -> AsyncIterator[Store]:
        if self.kind == "sqlite":
            state = StateStore(self.tmp_path / "state.db")
            try:
                yield Store(LocalApprovals(Approvals(state, clock=clock)), LocalOutbox(Outbox(state, clock=clock)),
                            clock)
            finally:
                state.close()
            return
        async with pg_replica(self.url, clock) as store:
            yield store

    def run(self, body: Callable[[Store], Awaitable[Any]]) -> None:
        async def main() -> None:
            async with self.open(ManualClock(START)) as store:
                await body(store)
        asyncio.run(main())


@pytest.fixture(params=["sqlite", "postgresql"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Stores:
    url = request.getfixturevalue("pg_url") if request.param == "postgresql" else ""
    return Stores(request.param, tmp_path, url)


def test_opening_and_deciding_an_approval_each_write_one_event_with_the_approval_as_it_became(stores: Stores) -> None:
    async def body(store: Store) -> None:
        opened = await store.open()
        assert (await store.open()).id == opened.id  # the pending one reused: no second event
        store.clock.advance(5)
        await store.approvals.decide(opened.id, approve=True, by="alice", reason="ok")
        events = await store.outbox.events()
        assert [(e.type, e.approval_id, e.status) for e in events] == [(OPENED, opened.id, PENDING),
                                                                       (DECIDED, opened.id, PENDING)]
        assert events[0].id < events[1].id and events[0].id.startswith("evt_")
        assert events[0].payload["status"] == "pending" and events[0].payload["action"] == ACTION
        assert events[0].created_at == "2026-12-31T23:59:30.000000Z"
        assert (events[1].payload["status"], events[1].payload["decided_by"]) == ("approved", "alice")
        assert events[1].payload["votes"] == [{"voter": "alice", "approve": True, "reason": "ok",
                                               "voted_at": "2026-12-31T23:59:35.000000Z"}]
        assert events[1].payload["required"] == 1
        assert (await store.outbox.backlog()).pending == 2

    stores.run(body)


def test_a_claimed_event_is_held_by_its_lease_then_free_for_the_next_sender(stores: Stores) -> None:
    async def body(store: Store) -> None:
        await store.open()
        claimed = await store.outbox.claim(owner="a", limit=10, lease_seconds=30)
        assert [e.type for e in claimed] == [OPENED]
        assert await store.outbox.claim(owner="b", limit=10, lease_seconds=30) == []
        store.clock.advance(31)  # a died holding it: its lease ran out
        assert [e.id for e in await store.outbox.claim(owner="b", limit=10, lease_seconds=30)] == [claimed[0].id]
        assert not await store.outbox.settle(claimed[0].id, owner="a", delivered=["r1"])  # no longer a's
        assert await store.outbox.settle(claimed[0].id, owner="b", delivered=["r1"])
        (event,) = await store.outbox.events()
        assert (event.status, event.attempts, event.delivered) == (DELIVERED, 1, ("r1",))
        assert await store.outbox.claim(owner="c", limit=10, lease_seconds=30) == []

    stores.run(body)


def test_a_failed_attempt_is_due_again_after_its_delay_and_dead_when_given_up(stores: Stores) -> None:
    async def body(store: Store) -> None:
        await store.open()
        (event,) = await store.outbox.claim(owner="a", limit=10, lease_seconds=30)
        assert await store.outbox.settle(event.id, owner="a", delivered=["slack"], error="hook: HTTP 503",
                                         retry_in=4)
        assert await store.outbox.claim(owner="a", limit=10, lease_seconds=30) == []  # not due yet
        store.clock.advance(4)
        (again,) = await store.outbox.claim(owner="a", limit=10, lease_seconds=30)
        assert (again.attempts, again.delivered, again.last_error) == (1, ("slack",), "hook: HTTP 503")
        assert await store.outbox.settle(again.id, owner="a", delivered=["slack"], error="x" * 5000)
        (dead,) = await store.outbox.events(status=DEAD)
        assert (dead.attempts, len(dead.last_error), dead.done_at) == (2, 500, "2026-12-31T23:59:34.000000Z")
        assert await store.outbox.backlog() == type(await store.outbox.backlog())(0, 1, "")

    stores.run(body)


def test_release_gives_a_stopping_senders_claims_back_at_once(stores: Stores) -> None:
    async def body(store: Store) -> None:
        await store.open()
        await store.open("d2")
        assert len(await store.outbox.claim(owner="a", limit=10, lease_seconds=300)) == 2
        assert await store.outbox.release("a") == 2
        assert len(await store.outbox.claim(owner="b", limit=1, lease_seconds=300)) == 1  # limit holds
        assert len(await store.outbox.claim(owner="c", limit=10, lease_seconds=300)) == 1

    stores.run(body)


def test_the_sweep_records_an_approval_that_expired_undecided_once(stores: Stores) -> None:
    async def body(store: Store) -> None:
        waiting = await store.open(ttl=60)
        decided = await store.open("d2", ttl=60)
        await store.approvals.decide(decided.id, approve=False, by="alice", reason="no")
        assert await store.outbox.sweep_expired() == 0  # nothing expired yet
        store.clock.advance(60)
        assert await store.outbox.sweep_expired() == 1
        assert await store.outbox.sweep_expired() == 0
        expired = [e for e in await store.outbox.events() if e.type == EXPIRED]
        assert [(e.approval_id, e.payload["status"]) for e in expired] == [(waiting.id, "expired")]
        backlog = await store.outbox.backlog()
        assert (backlog.pending, backlog.oldest_pending) == (4, "2026-12-31T23:59:30.000000Z")

    stores.run(body)


def test_replicas_claiming_at_once_take_each_event_once(pg_url: str) -> None:
    async def main() -> None:
        clock = ManualClock(START)
        async with pg_replica(pg_url, clock) as one, pg_replica(pg_url, clock) as two:
            for number in range(30):
                await one.open(f"d{number}")
            taken: list[str] = []

            async def drain(store: Store, owner: str) -> None:
                while batch := await store.outbox.claim(owner=owner, limit=3, lease_seconds=60):
                    taken.extend(e.id for e in batch)
                    for event in batch:
                        assert await store.outbox.settle(event.id, owner=owner, delivered=[])

            await asyncio.gather(drain(one, "one"), drain(two, "two"), drain(one, "three"))
            assert len(taken) == 30 and len(set(taken)) == 30
            assert (await one.outbox.backlog()).pending == 0

    asyncio.run(main())


def test_replicas_sweeping_at_once_record_one_expiry_each(pg_url: str) -> None:
    async def main() -> None:
        clock = ManualClock(START)
        async with pg_replica(pg_url, clock) as one, pg_replica(pg_url, clock) as two:
            for number in range(5):
                await one.open(f"d{number}", ttl=10)
            clock.advance(11)
            await asyncio.gather(*(store.outbox.sweep_expired() for store in (one, two, one, two)))
            expired = [e for e in await two.outbox.events() if e.type == EXPIRED]
            assert len(expired) == len({e.approval_id for e in expired}) == 5

    asyncio.run(main())


def test_a_quorum_writes_its_decided_event_when_the_last_vote_needed_is_in(stores: Stores) -> None:
    async def body(store: Store) -> None:
        opened = await store.approvals.open(request_digest="dq", kind="tool", principal=PRINCIPAL, action=ACTION,
                                            approvers=["alice", "carol"], ttl_seconds=60, opened_by="dec-1",
                                            required=2)
        assert opened is not None
        await store.approvals.decide(opened.id, approve=True, by="alice", reason="one")
        assert [e.type for e in await store.outbox.events()] == [OPENED]  # 1 of 2: nothing decided yet
        await store.approvals.decide(opened.id, approve=True, by="carol", reason="two")
        decided = (await store.outbox.events())[-1]
        assert decided.type == DECIDED and decided.payload["decided_by"] == "alice, carol"
        assert [v["voter"] for v in decided.payload["votes"]] == ["alice", "carol"]

    stores.run(body)
