"""The notification outbox: one row per approval event (opened, decided, expired), written in the transaction that
changed the approval, delivered later by a sender that claims rows, so a receiver never slows a decision.

A row is pending until every receiver it is for has acknowledged it (delivered) or it ran out of attempts (dead).
A sender claims pending rows under a lease (claimed_by, claimed_until): a claim is one atomic UPDATE, so of two
senders on one store only one holds a row, and a sender that died leaves its rows to the next claim once the
lease has run out. Delivery is at least once: a row delivered but not yet settled when its sender died is sent
again, under the same event id (receivers drop repeats by it).

This module holds what both stores share (the event's columns, its document, the words) and the SQLite store;
state/postgres/_outbox.py is the PostgreSQL one.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from tollgate.clock import Clock, SystemClock
from tollgate.encoding import canonical_json, format_time
from tollgate.ids import DecisionIds
from tollgate.state._store import StateError, StateStore

if TYPE_CHECKING:
    from tollgate.state.approvals import Approval

COMPONENT = "outbox"
#: The event types: an approval opened (waits for a person), decided (approved or denied), expired undecided.
OPENED, DECIDED, EXPIRED = "approval.opened", "approval.decided", "approval.expired"
TYPES = (OPENED, DECIDED, EXPIRED)
#: Row statuses: still to deliver; every receiver acknowledged it; given up after the last attempt.
PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
STATUSES = (PENDING, DELIVERED, DEAD)
#: How far back the expiry sweep looks: an approval that expired longer ago (a store with no sender running
#: for a day) is not announced any more, nor is any that expired before the outbox existed.
EXPIRY_LOOKBACK = timedelta(days=1)

SCHEMA = (
    f"""
    CREATE TABLE outbox (
        id TEXT PRIMARY KEY,
        type TEXT NOT NULL,
        approval_id TEXT NOT NULL,
        created_at TEXT NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT '{PENDING}',
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt_at TEXT NOT NULL,
        claimed_by TEXT NOT NULL DEFAULT '',
        claimed_until TEXT NOT NULL DEFAULT '',
        delivered TEXT NOT NULL DEFAULT '[]',
        last_error TEXT NOT NULL DEFAULT '',
        done_at TEXT NOT NULL DEFAULT ''
    );
    CREATE INDEX outbox_due ON outbox (status, next_attempt_at);
    CREATE UNIQUE INDEX outbox_expired_once ON outbox (approval_id) WHERE type = '{EXPIRED}'
    """,
)

#: The columns an event is read from, in event_from_row's order.
COLUMNS = ("id, type, approval_id, created_at, payload, status, attempts, next_attempt_at, delivered, last_error, "
           "done_at")
#: The columns record() writes, in event_values' order.
INSERT_COLUMNS = "id, type, approval_id, created_at, payload, next_attempt_at"


@dataclass(frozen=True)
class OutboxEvent:
    """One event as the outbox holds it."""

    id: str  # evt_ + a time-ordered id: the order events are sent in, and the receivers' dedupe key
    type: str
    approval_id: str
    created_at: str  # RFC 3339, UTC
    #: The approval as it was right after the change (approval_document): masked as the decision log is.
    payload: Mapping[str, Any]
    status: str = PENDING
    attempts: int = 0
    next_attempt_at: str = ""
    #: The receivers (by name) that acknowledged it: a retry goes only to the others.
    delivered: tuple[str, ...] = ()
    last_error: str = ""
    done_at: str = ""


@dataclass(frozen=True)
class OutboxBacklog:
    """What is left to send: the metrics' and the console's view of the outbox."""

    pending: int
    dead: int
    #: created_at of the oldest pending event ("" when none is pending): the lag is now minus it.
    oldest_pending: str


def approval_document(approval: Approval, *, status: str = "") -> dict[str, Any]:
    """The approval as an event carries it (the fields ApprovalService shows; status overridden for expiry)."""
    return {"id": approval.id, "status": status or approval.status, "kind": approval.kind,
            "principal": dict(approval.principal), "action": dict(approval.action),
            "approvers": list(approval.approvers), "created_at": approval.created_at,
            "expires_at": approval.expires_at, "decided_by": approval.decided_by, "decided_at": approval.decided_at,
            "reason": approval.reason, "opened_by": approval.opened_by, "masked": list(approval.masked),
            "required": approval.required,
            "votes": [{"voter": v.voter, "approve": v.approve, "reason": v.reason, "voted_at": v.voted_at}
                      for v in approval.votes]}


def event_values(event_id: str, event_type: str, approval: Approval, now: datetime, *,
                 status: str = "") -> tuple[Any, ...]:
    """The INSERT_COLUMNS values of one event about approval, due at once."""
    moment = format_time(now)
    return (event_id, event_type, approval.id, moment, canonical_json(approval_document(approval, status=status)),
            moment)


def record(db: sqlite3.Connection, event_id: str, event_type: str, approval: Approval, now: datetime) -> None:
    """Write one event inside the caller's SQLite transaction (the one that changed the approval)."""
    db.execute(f"INSERT INTO outbox ({INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
               event_values(event_id, event_type, approval, now))


def event_from_row(row: Sequence[Any]) -> OutboxEvent:
    id_, type_, approval_id, created, payload, status, attempts, next_at, delivered, error, done = row
    return OutboxEvent(id=id_, type=type_, approval_id=approval_id, created_at=created, payload=json.loads(payload),
                       status=status, attempts=int(attempts), next_attempt_at=next_at,
                       delivered=tuple(json.loads(delivered)), last_error=error, done_at=done)


def settlement(*, delivered: Sequence[str], error: str, retry_in: float | None,
               now: datetime) -> tuple[str, str, str]:
    """(status, next_attempt_at, done_at) of a settled attempt: delivered when error is "", retried after
    retry_in seconds, else dead."""
    moment = format_time(now)
    if not error:
        return DELIVERED, moment, moment
    if retry_in is None:
        return DEAD, moment, moment
    return PENDING, format_time(now + timedelta(seconds=max(retry_in, 0.0))), ""


def check_status(status: str) -> None:
    if status and status not in STATUSES:
        raise ValueError(f"status: {status!r} is not an outbox status ({', '.join(STATUSES)})")


#: Longest last_error kept (a receiver's error page is not worth a row's kilobytes).
MAX_ERROR = 500


class Outbox:
    """The outbox in DATA_DIR/state.db (SQLite): claimed, settled and swept in worker threads (LocalOutbox)."""

    def __init__(self, store: StateStore, *, clock: Clock = SystemClock()) -> None:
        self._store = store
        self.clock = clock
        self._ids = DecisionIds(clock)
        store.migrate(COMPONENT, SCHEMA)

    def claim(self, *, owner: str, limit: int, lease_seconds: float) -> list[OutboxEvent]:
        """Up to limit pending events due now and not held by a live lease, oldest first, now held by owner."""
        now = self.clock.now()
        moment, until = format_time(now), format_time(now + timedelta(seconds=lease_seconds))
        with self._store.lock, self._store.transaction("claim notifications") as db:
            rows = db.execute(
                f"UPDATE outbox SET claimed_by = ?, claimed_until = ? WHERE id IN (SELECT id FROM outbox "
                "WHERE status = ? AND next_attempt_at <= ? AND claimed_until <= ? ORDER BY id LIMIT ?) "
                f"RETURNING {COLUMNS}", (owner, until, PENDING, moment, moment, limit)).fetchall()
        return sorted((event_from_row(r) for r in rows), key=lambda e: e.id)

    def settle(self, event_id: str, *, owner: str, delivered: Sequence[str], error: str = "",
               retry_in: float | None = None) -> bool:
        """Record an attempt of owner's claim (see settlement()); False when owner no longer holds it."""
        status, next_at, done = settlement(delivered=delivered, error=error, retry_in=retry_in, now=self.clock.now())
        with self._store.lock, self._store.transaction("record a notification attempt") as db:
            changed: bool = db.execute(
                "UPDATE outbox SET status = ?, attempts = attempts + 1, next_attempt_at = ?, done_at = ?, "
                "delivered = ?, last_error = ?, claimed_by = '', claimed_until = '' "
                "WHERE id = ? AND claimed_by = ? AND status = ?",
                (status, next_at, done, canonical_json(sorted(delivered)), error[:MAX_ERROR], event_id, owner,
                 PENDING)).rowcount == 1
        return changed

    def release(self, owner: str) -> int:
        """Give back every claim of owner (a sender stopping): the rows are due again at once."""
        with self._store.lock, self._store.transaction("release notification claims") as db:
            released: int = db.execute("UPDATE outbox SET claimed_by = '', claimed_until = '' WHERE claimed_by = ? "
                                       "AND status = ?", (owner, PENDING)).rowcount
        return released

    def sweep_expired(self) -> int:
        """Record an approval.expired event for each approval that expired undecided (within EXPIRY_LOOKBACK) and
        has none yet; returns how many were recorded."""
        from tollgate.state.approvals import COLUMNS as APPROVAL_COLUMNS
        from tollgate.state.approvals import PENDING as APPROVAL_PENDING
        from tollgate.state.approvals import approval_from_row

        now = self.clock.now()
        with self._store.lock, self._store.transaction("record expired approvals") as db:
            rows = db.execute(
                f"SELECT {APPROVAL_COLUMNS} FROM approvals a WHERE status = ? AND expires_at <= ? AND expires_at > ? "
                "AND NOT EXISTS (SELECT 1 FROM outbox o WHERE o.approval_id = a.id AND o.type = ?)",
                (APPROVAL_PENDING, format_time(now), format_time(now - EXPIRY_LOOKBACK), EXPIRED)).fetchall()
            for row in rows:
                db.execute(f"INSERT INTO outbox ({INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                           event_values("evt_" + self._ids.new(), EXPIRED, approval_from_row(row, (), now), now))
        return len(rows)

    def events(self, *, status: str = "", limit: int = 100) -> builtins.list[OutboxEvent]:
        """Events oldest first (of one status when given), at most limit."""
        check_status(status)
        where, args = ("WHERE status = ? ", (status,)) if status else ("", ())
        with self._store.lock:
            rows = self._query(f"SELECT {COLUMNS} FROM outbox {where}ORDER BY id LIMIT ?", (*args, limit))
        return [event_from_row(r) for r in rows]

    def backlog(self) -> OutboxBacklog:
        with self._store.lock:
            (pending, dead, oldest), = self._query(
                "SELECT COALESCE(SUM(status = ?), 0), COALESCE(SUM(status = ?), 0), "
                "COALESCE(MIN(CASE WHEN status = ? THEN created_at END), '') FROM outbox", (PENDING, DEAD, PENDING))
        return OutboxBacklog(int(pending), int(dead), str(oldest))

    def _query(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        try:
            return self._store.db.execute(sql, args).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"state store {self._store.path}: cannot read the outbox ({exc})") from exc


class LocalOutbox:
    """Outbox behind OutboxStore: every call in a worker thread."""

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox

    async def claim(self, *, owner: str, limit: int, lease_seconds: float) -> builtins.list[OutboxEvent]:
        return await asyncio.to_thread(self.outbox.claim, owner=owner, limit=limit, lease_seconds=lease_seconds)

    async def settle(self, event_id: str, *, owner: str, delivered: Sequence[str], error: str = "",
                     retry_in: float | None = None) -> bool:
        return await asyncio.to_thread(self.outbox.settle, event_id, owner=owner, delivered=delivered, error=error,
                                       retry_in=retry_in)

    async def release(self, owner: str) -> int:
        return await asyncio.to_thread(self.outbox.release, owner)

    async def sweep_expired(self) -> int:
        return await asyncio.to_thread(self.outbox.sweep_expired)

    async def events(self, *, status: str = "", limit: int = 100) -> builtins.list[OutboxEvent]:
        return await asyncio.to_thread(self.outbox.events, status=status, limit=limit)

    async def backlog(self) -> OutboxBacklog:
        return await asyncio.to_thread(self.outbox.backlog)
