"""The fleet's approvals on PostgreSQL: opened by any replica, decided through any, used once across all of them.

The same approvals as state/approvals.py (columns, statuses, who may decide, the words), shared by every sidecar
of a fleet. Using an approval is one UPDATE with every condition in its WHERE: of N re-asks on N replicas the
first to change the row wins and the others, re-checking the WHERE on the row it left, change nothing. Opening
one takes a transaction-scoped advisory lock on (request digest, session) before it looks for the pending one to
reuse, so two replicas opening for the same request at once open one. Every change notifies the channel
APPROVALS_CHANNEL (its id as payload) in its own transaction: the sidecar's listener calls `changed()` on
each notification, so watchers on every replica (WatchApproval, WaitForApproval) wake, not only this one's.
"""

from __future__ import annotations

import builtins
import hashlib
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import psycopg

from tollgate.clock import Clock, SystemClock
from tollgate.contract import MAX_REQUIRED_APPROVALS
from tollgate.encoding import format_time
from tollgate.ids import DecisionIds
from tollgate.state._outbox import DECIDED as DECIDED_EVENT
from tollgate.state._outbox import OPENED
from tollgate.state.approvals import (
    APPROVED,
    APPROVING_SQL,
    CLOSE_SQL,
    COLUMNS,
    DENIED,
    INSERT_COLUMNS,
    INSERT_ORDER,
    PENDING,
    STORED_AS,
    USED,
    VOTE_COLUMNS,
    VOTE_COLUMNS_OF_V,
    VOTE_SQL,
    Approval,
    ApprovalNotFound,
    NotAnApprover,
    approval_from_row,
    approvals_from_rows,
    check_reason,
    check_status,
    insert_values,
    listed,
    may_decide,
    new_approval,
    not_pending,
    tally,
    vote_values,
)
from tollgate.state.postgres import _outbox as outbox
from tollgate.state.postgres._listener import APPROVALS_CHANNEL
from tollgate.state.postgres._store import PgStore

_SCHEMA = (
    f"""
    CREATE TABLE approvals (
        id TEXT PRIMARY KEY,
        request_digest TEXT NOT NULL,
        kind TEXT NOT NULL,
        principal TEXT NOT NULL,
        action TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        approvers TEXT NOT NULL,
        -- RFC 3339 in one fixed width (encoding.format_time): compared as text, byte by byte whatever the
        -- database's collation, so they sort as the times they spell.
        created_at TEXT COLLATE "C" NOT NULL,
        expires_at TEXT COLLATE "C" NOT NULL,
        -- expired is never stored: a pending or approved approval past expires_at reads as expired.
        status TEXT NOT NULL CHECK (status IN ('{PENDING}', '{APPROVED}', '{DENIED}', '{USED}')),
        decided_by TEXT NOT NULL DEFAULT '',
        decided_at TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '',
        opened_by TEXT NOT NULL,
        used_by TEXT,
        masked TEXT NOT NULL DEFAULT '[]'
    );
    CREATE INDEX approvals_open ON approvals (request_digest, session_id) WHERE status = '{PENDING}';
    CREATE INDEX approvals_created ON approvals (created_at);
    CREATE INDEX approvals_agent ON approvals (agent_id, created_at);
    CREATE INDEX approvals_session ON approvals (session_id, created_at)
    """,
    # Quorum and separation of duties (the policy's approval.required and approval.allow_requester), and each
    # person's say: one row per approval and voter, so a person who approves twice counts once.
    f"""
    ALTER TABLE approvals ADD COLUMN required INTEGER NOT NULL DEFAULT 1
        CHECK (required BETWEEN 1 AND {MAX_REQUIRED_APPROVALS});
    ALTER TABLE approvals ADD COLUMN allow_requester BOOLEAN NOT NULL DEFAULT FALSE;
    CREATE TABLE approval_votes (
        approval_id TEXT NOT NULL REFERENCES approvals (id) ON DELETE CASCADE,
        voter TEXT NOT NULL,
        approve BOOLEAN NOT NULL,
        reason TEXT NOT NULL,
        voted_at TEXT COLLATE "C" NOT NULL,
        PRIMARY KEY (approval_id, voter)
    )
    """,
)


def open_lock_key(request_digest: str, session_id: str) -> int:
    """The advisory-lock key under which one request's approval is looked for and opened (64 bits, alike on
    every replica)."""
    digest = hashlib.blake2b(f"tollgate.approval\0{request_digest}\0{session_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PgApprovals:
    """open / decide / consume / list approvals on the shared store (ApprovalStore). `await start(upgrade=...)`
    migrates its table before first use; creation, expiry and decision times are read from `clock`."""

    COMPONENT = "approvals"
    #: Its migration steps (`tollgate state migrate` applies every component's).
    STEPS = _SCHEMA

    def __init__(self, store: PgStore, *, approver_groups: Mapping[str, Sequence[str]] | None = None,
                 clock: Clock = SystemClock()) -> None:
        self._store = store
        self.clock = clock
        self._ids = DecisionIds(clock)
        #: group name (without "group:") → identities; from the approver_groups configuration key.
        self.approver_groups = {g: frozenset(m) for g, m in (approver_groups or {}).items()}
        self._generation_lock = threading.Lock()
        self._generation = 0

    async def start(self, *, upgrade: bool = False) -> None:
        """Check (and with upgrade, bring) the approvals schema, and the outbox's its changes write to, to this
        code's version (StateError if not)."""
        await self._store.migrate(self.COMPONENT, self.STEPS, upgrade=upgrade)
        await self._store.migrate(outbox.PgOutbox.COMPONENT, outbox.PgOutbox.STEPS, upgrade=upgrade)

    @property
    def generation(self) -> int:
        """Moves after every change this process committed or heard of (changed())."""
        return self._generation

    def changed(self) -> None:
        """Another replica changed an approval (its notification arrived): watchers here re-read."""
        with self._generation_lock:
            self._generation += 1

    def may_decide(self, approval: Approval, identity: str, *, groups: Sequence[str] = ()) -> str:
        return may_decide(approval, identity, self.approver_groups, groups=groups)

    async def open(self, *, request_digest: str, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any],
                   approvers: Sequence[str], ttl_seconds: int, opened_by: str, masked: Sequence[str] = (),
                   required: int = 1, allow_requester: bool = False) -> Approval:
        """A new pending approval for this request, or the pending one already open for it in this session, on
        any replica."""
        moment = self.clock.now()
        approval = new_approval(
            "apr_" + self._ids.new(), request_digest=request_digest, kind=kind, principal=principal, action=action,
            approvers=approvers, ttl_seconds=ttl_seconds, opened_by=opened_by, masked=masked, required=required,
            allow_requester=allow_requester, now=moment)
        async with self._store.transaction("open the approval") as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (open_lock_key(request_digest,
                                                                                  approval.session_id),))
            row = await (await conn.execute(
                "SELECT id FROM approvals WHERE request_digest = %s AND session_id = %s AND status = %s "
                "AND expires_at > %s ORDER BY created_at DESC LIMIT 1",
                (request_digest, approval.session_id, PENDING, format_time(moment)))).fetchone()
            pending = await _read(conn, row[0], moment) if row is not None else None
            if pending is not None:
                return pending
            await conn.execute(f"INSERT INTO approvals ({INSERT_COLUMNS}) VALUES "
                               f"({', '.join(['%s'] * len(INSERT_ORDER))})", insert_values(approval))
            await outbox.record(conn, "evt_" + self._ids.new(), OPENED, approval, moment)  # the same transaction
            await _notify(conn, approval.id)
        self.changed()
        return approval

    async def get(self, approval_id: str) -> Approval | None:
        moment = self.clock.now()
        async with self._store.connection("read the approval") as conn:
            return await _read(conn, approval_id, moment)

    async def decide(self, approval_id: str, *, approve: bool, by: str, reason: str,
                     groups: Sequence[str] = ()) -> Approval:
        """Approve or deny a pending approval as `by`; NotAnApprover, ApprovalNotFound or ApprovalError if not."""
        moment = self.clock.now()
        check_reason(reason)
        approval = await self.get(approval_id)
        if approval is None:
            raise ApprovalNotFound(f"approval {approval_id} does not exist")
        refusal = self.may_decide(approval, by, groups=groups)
        if refusal:
            raise NotAnApprover(refusal)
        at = format_time(moment)
        async with self._store.transaction("record the decision") as conn:
            # The row lock orders the votes on one approval, whichever replica records them: each counts the
            # ones committed before it, so two approvers of a quorum of two, voting at once, approve it.
            found = await (await conn.execute("SELECT status, expires_at, required FROM approvals WHERE id = %s "
                                              "FOR UPDATE", (approval_id,))).fetchone()
            voted = found is not None and found[0] == PENDING and found[1] > at
            if voted:
                assert found is not None
                await conn.execute(VOTE_SQL, vote_values(approval_id, approve=approve, by=by, reason=reason, at=at))
                approving = [r[0] for r in await (await conn.execute(APPROVING_SQL, (approval_id,))).fetchall()]
                closing = tally(approve=approve, by=by, approving=approving, required=found[2])
                if closing is not None:
                    await conn.execute(CLOSE_SQL, (*closing, at, reason, approval_id))
                    closed = await _read(conn, approval_id, moment)
                    assert closed is not None
                    await outbox.record(conn, "evt_" + self._ids.new(), DECIDED_EVENT, closed, moment)
                await _notify(conn, approval_id)
            decided = await _read(conn, approval_id, moment)
        if not voted:
            raise not_pending(approval_id, decided)
        self.changed()
        assert decided is not None  # voted on it a moment ago, in this transaction
        return decided

    async def consume(self, approval_id: str, *, request_digest: str, decision_id: str) -> bool:
        """Use an approved approval for the ALLOW decision_id: True for exactly one caller, ever, on any replica."""
        moment = self.clock.now()
        async with self._store.transaction("use the approval") as conn:
            cursor = await conn.execute(
                "UPDATE approvals SET status = %s, used_by = %s WHERE id = %s AND status = %s AND used_by IS NULL "
                "AND request_digest = %s AND expires_at > %s",
                (USED, decision_id, approval_id, APPROVED, request_digest, format_time(moment)))
            used = cursor.rowcount == 1
            if used:
                await _notify(conn, approval_id)
        if used:
            self.changed()
        return used

    async def list(self, *, approver: str = "", agent: str = "", session: str = "",
                   status: str = "") -> builtins.list[Approval]:
        """Approvals, newest first, filtered; approver: those the identity may decide."""
        moment = self.clock.now()
        check_status(status)
        clauses: list[str] = []
        args: list[Any] = []
        if agent:
            clauses.append("agent_id = %s")
            args.append(agent)
        if session:
            clauses.append("session_id = %s")
            args.append(session)
        if status:  # what can read as the status asked (listed() keeps those that do, as of now)
            clauses.append("approvals.status = ANY(%s)")
            args.append(list(STORED_AS[status]))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        async with self._store.connection("list approvals") as conn:
            rows = await (await conn.execute(f"SELECT {COLUMNS} FROM approvals{where} ORDER BY created_at DESC",
                                             args)).fetchall()
            votes = await (await conn.execute(
                f"SELECT v.approval_id, {VOTE_COLUMNS_OF_V} FROM approval_votes v JOIN approvals "
                f"ON approvals.id = v.approval_id{where} ORDER BY v.voted_at, v.voter", args)).fetchall()
        return listed(approvals_from_rows(rows, votes, moment), status=status, approver=approver,
                      approver_groups=self.approver_groups)


async def _read(conn: psycopg.AsyncConnection[Any], approval_id: str, moment: datetime) -> Approval | None:
    """The approval with its votes, as of moment."""
    row = await (await conn.execute(f"SELECT {COLUMNS} FROM approvals WHERE id = %s", (approval_id,))).fetchone()
    if row is None:
        return None
    votes = await (await conn.execute(f"SELECT {VOTE_COLUMNS} FROM approval_votes WHERE approval_id = %s "
                                      "ORDER BY voted_at, voter", (approval_id,))).fetchall()
    return approval_from_row(row, votes, moment)


async def _notify(conn: psycopg.AsyncConnection[Any], approval_id: str) -> None:
    """Tell every listening replica, when this transaction commits (PostgreSQL sends nothing if it rolls back)."""
    await conn.execute("SELECT pg_notify(%s, %s)", (APPROVALS_CHANNEL, approval_id))
