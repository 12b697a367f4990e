"""Approvals: a require_approval decision's request held open for a named approver, used at most once."""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tollgate.clock import Clock, SystemClock
from tollgate.contract import MAX_REQUIRED_APPROVALS
from tollgate.encoding import canonical_json, format_time
from tollgate.ids import DecisionIds
from tollgate.state import _outbox as outbox
from tollgate.state._store import StateError, StateStore

#: Stored statuses. `expired` is never stored: a pending or approved approval past its expiry reads as expired.
PENDING, APPROVED, DENIED, EXPIRED, USED = "pending", "approved", "denied", "expired", "used"
#: The stored statuses an approval of each status (as read) may have: expired is pending or approved past expiry.
STORED_AS = {PENDING: (PENDING,), APPROVED: (APPROVED,), DENIED: (DENIED,), EXPIRED: (PENDING, APPROVED),
             USED: (USED,)}
#: What input.state.approval.status can also be: the approval was granted for a different request.
MISMATCH = "mismatch"
STATUSES = (PENDING, APPROVED, DENIED, EXPIRED, USED)
#: An approvers entry naming a group of identities from the approver_groups configuration.
GROUP_PREFIX = "group:"
#: Principal fields whose value may never decide the request: an agent (or the user it acts for)
#: cannot approve its own request. An approval keeps them as asked, even where the log's mask hid them.
SELF_FIELDS = ("agent_id", "instance_id", "user")
#: The one of SELF_FIELDS a policy may let decide (approval.allow_requester): the person the agent acts for.
#: The agent and its instance never may.
REQUESTER_FIELD = "user"

_SCHEMA = (
    """
    CREATE TABLE approvals (
        id TEXT PRIMARY KEY,
        request_digest TEXT NOT NULL,
        kind TEXT NOT NULL,
        principal TEXT NOT NULL,
        action TEXT NOT NULL,
        agent_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        approvers TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL,
        status TEXT NOT NULL,
        decided_by TEXT NOT NULL DEFAULT '',
        decided_at TEXT NOT NULL DEFAULT '',
        reason TEXT NOT NULL DEFAULT '',
        opened_by TEXT NOT NULL,
        used_by TEXT
    );
    CREATE INDEX approvals_open ON approvals (request_digest, session_id, status)
    """,
    # The pointers of the parts of the shown principal and action the decision-log mask replaced or erased.
    "ALTER TABLE approvals ADD COLUMN masked TEXT NOT NULL DEFAULT '[]'",
    # Quorum and separation of duties (the policy's approval.required and approval.allow_requester), and each
    # person's say: one row per approval and voter, so a person who approves twice counts once.
    """
    ALTER TABLE approvals ADD COLUMN required INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE approvals ADD COLUMN allow_requester INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE approval_votes (
        approval_id TEXT NOT NULL,
        voter TEXT NOT NULL,
        approve INTEGER NOT NULL,
        reason TEXT NOT NULL,
        voted_at TEXT NOT NULL,
        PRIMARY KEY (approval_id, voter)
    )
    """,
)


class ApprovalError(ValueError):
    """A decision on an approval that cannot be carried out as asked; the message says why."""


class ApprovalNotFound(LookupError):
    """No approval has this id."""


class NotAnApprover(PermissionError):
    """The identity may not decide this approval (not named by its approvers, or its own request)."""


@dataclass(frozen=True)
class Vote:
    """One person's say on an approval: approve or deny, why, when (RFC 3339, UTC)."""

    voter: str
    approve: bool
    reason: str
    voted_at: str


@dataclass(frozen=True)
class Approval:
    """One approval as stored, with `status` as of when it was read (expired past `expires_at`)."""

    id: str
    request_digest: str
    kind: str
    principal: Mapping[str, Any]
    action: Mapping[str, Any]
    approvers: tuple[str, ...]
    created_at: str  # RFC 3339, UTC
    expires_at: str
    status: str
    decided_by: str = ""
    decided_at: str = ""
    reason: str = ""
    #: The decision that opened it (require_approval) and the one that used it (the single ALLOW).
    opened_by: str = ""
    used_by: str = ""
    #: JSON pointers into the request's input ("/input/tool/arguments/command") of the parts of the principal
    #: and action shown here that the decision-log mask replaced or erased: what the approver does not see.
    masked: tuple[str, ...] = ()
    #: How many distinct people must approve (the policy's approval.required; 1 unless it asks for a quorum).
    required: int = 1
    #: Whether the user the agent acts for may be one of them (the policy's approval.allow_requester).
    allow_requester: bool = False
    #: Every say recorded, oldest first: approvals and the deny that closed it, if one did.
    votes: tuple[Vote, ...] = ()

    @property
    def agent_id(self) -> str:
        return str(self.principal.get("agent_id") or "")

    @property
    def session_id(self) -> str:
        return str(self.principal.get("session_id") or "")

    @property
    def approved_by(self) -> tuple[str, ...]:
        """The distinct people who approved it so far, in the order they did ("1 of 2": len() of required)."""
        return tuple(v.voter for v in self.votes if v.approve)

    def closed(self) -> bool:
        """Decided for good: nothing will change it any more (approved still waits to be used or expire)."""
        return self.status in (DENIED, EXPIRED, USED)

    def policy_state(self, digest: str) -> dict[str, str]:
        """input.state.approval for a request with this digest that presents this approval."""
        status = self.status if digest == self.request_digest else MISMATCH
        return {"id": self.id, "status": status, "approver": self.decided_by}


class Approvals:
    """open / decide / consume / list approvals in the state store.

    Unlike kill switches, nothing is cached: every read goes to SQLite, because consuming an approval
    must be one atomic UPDATE that two concurrent re-asks cannot both win. Each change bumps
    `generation`, so a watcher (WatchApproval) re-reads only after something changed. Creation, expiry and
    decision times are read from `clock` unless a call passes `now`.
    """

    COMPONENT = "approvals"

    def __init__(self, store: StateStore, *, approver_groups: Mapping[str, Sequence[str]] | None = None,
                 clock: Clock = SystemClock()) -> None:
        self._store = store
        self.clock = clock
        self._ids = DecisionIds(clock)  # an approval id is time-ordered like the decision that opened it
        store.migrate(self.COMPONENT, _SCHEMA)
        store.migrate(outbox.COMPONENT, outbox.SCHEMA)  # each change records its notification event there
        #: group name (without "group:") → identities; from the approver_groups configuration key.
        self.approver_groups = {g: frozenset(m) for g, m in (approver_groups or {}).items()}
        self._generation_lock = threading.Lock()
        self._generation = 0

    def open(self, *, request_digest: str, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any],
             approvers: Sequence[str], ttl_seconds: int, opened_by: str, masked: Sequence[str] = (),
             required: int = 1, allow_requester: bool = False, now: datetime | None = None) -> Approval:
        """A new pending approval for this request, or the pending one already open for it in this session.

        principal and action are stored as given: the caller gives them masked as the decision record is
        (the request stays bound by request_digest), and names in `masked` what the mask took out."""
        moment = now or self.clock.now()
        approval = new_approval(
            "apr_" + self._ids.new(), request_digest=request_digest, kind=kind, principal=principal, action=action,
            approvers=approvers, ttl_seconds=ttl_seconds, opened_by=opened_by, masked=masked, required=required,
            allow_requester=allow_requester, now=moment)
        with self._store.lock:
            row = self._query(
                "SELECT id FROM approvals WHERE request_digest = ? AND session_id = ? AND status = ? "
                "AND expires_at > ? ORDER BY created_at DESC LIMIT 1",
                (request_digest, approval.session_id, PENDING, format_time(moment))).fetchone()
            pending = self._read(row[0], moment) if row is not None else None
            if pending is not None:
                return pending
            with self._store.transaction("record the approval") as db:  # the approval and its event, or neither
                db.execute(f"INSERT INTO approvals ({INSERT_COLUMNS}) VALUES ({', '.join('?' * len(INSERT_ORDER))})",
                           insert_values(approval))
                outbox.record(db, "evt_" + self._ids.new(), outbox.OPENED, approval, moment)
        self._notify()
        return approval

    def get(self, approval_id: str, *, now: datetime | None = None) -> Approval | None:
        with self._store.lock:
            return self._read(approval_id, now or self.clock.now())

    def _read(self, approval_id: str, moment: datetime) -> Approval | None:
        """The approval with its votes (the caller holds the store's lock)."""
        row = self._query(f"SELECT {COLUMNS} FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        if row is None:
            return None
        votes = self._query(f"SELECT {VOTE_COLUMNS} FROM approval_votes WHERE approval_id = ? "
                            "ORDER BY voted_at, voter", (approval_id,)).fetchall()
        return approval_from_row(row, votes, moment)

    def may_decide(self, approval: Approval, identity: str, *, groups: Sequence[str] = ()) -> str:
        """Why identity (a member of groups, as its sign-in says) may not decide this approval; "" when it may."""
        return may_decide(approval, identity, self.approver_groups, groups=groups)

    def decide(self, approval_id: str, *, approve: bool, by: str, reason: str, groups: Sequence[str] = (),
               now: datetime | None = None) -> Approval:
        """Record `by`'s say on a pending approval (by a member of groups, as its sign-in says); NotAnApprover,
        ApprovalNotFound or ApprovalError if it cannot be."""
        moment = now or self.clock.now()
        check_reason(reason)
        approval = self.get(approval_id, now=moment)
        if approval is None:
            raise ApprovalNotFound(f"approval {approval_id} does not exist")
        refusal = self.may_decide(approval, by, groups=groups)
        if refusal:
            raise NotAnApprover(refusal)
        at = format_time(moment)
        with self._store.lock:
            # BEGIN IMMEDIATE holds the file's write lock: votes from another process (a console beside the
            # sidecar) wait for this one, so each counts the other's.
            with self._store.transaction("record the decision") as db:
                found = db.execute("SELECT status, expires_at, required FROM approvals WHERE id = ?",
                                   (approval_id,)).fetchone()
                voted = found is not None and found[0] == PENDING and found[1] > at
                if voted:
                    db.execute(_VOTE, vote_values(approval_id, approve=approve, by=by, reason=reason, at=at))
                    approving = [r[0] for r in db.execute(_APPROVING, (approval_id,))]
                    closing = tally(approve=approve, by=by, approving=approving, required=found[2])
                    if closing is not None:
                        db.execute(_CLOSE, (*closing, at, reason, approval_id))
                        closed = self._read(approval_id, moment)  # this transaction's own write
                        assert closed is not None
                        outbox.record(db, "evt_" + self._ids.new(), outbox.DECIDED, closed, moment)
            decided = self._read(approval_id, moment)
        if not voted:
            raise not_pending(approval_id, decided)
        self._notify()
        assert decided is not None  # voted on it a moment ago, in this transaction
        return decided

    def consume(self, approval_id: str, *, request_digest: str, decision_id: str,
                now: datetime | None = None) -> bool:
        """Use an approved approval for the ALLOW decision_id: True for exactly one caller, ever.

        One UPDATE with every condition in its WHERE: of two concurrent re-asks, one changes the row
        and the other finds it used (rowcount 0).
        """
        moment = now or self.clock.now()
        with self._store.lock:
            changed = self._write(
                "UPDATE approvals SET status = ?, used_by = ? WHERE id = ? AND status = ? AND used_by IS NULL "
                "AND request_digest = ? AND expires_at > ?",
                (USED, decision_id, approval_id, APPROVED, request_digest, format_time(moment)))
        if changed:
            self._notify()
        return changed

    def list(self, *, approver: str = "", agent: str = "", session: str = "", status: str = "",
             now: datetime | None = None) -> builtins.list[Approval]:
        """Approvals, newest first, filtered; approver: those the identity may decide."""
        moment = now or self.clock.now()
        check_status(status)
        clauses, args = [], []
        if agent:
            clauses.append("agent_id = ?")
            args.append(agent)
        if session:
            clauses.append("session_id = ?")
            args.append(session)
        if status:  # what can read as the status asked: the inbox's pending ones are not found among every one
            stored = STORED_AS[status]
            clauses.append(f"approvals.status IN ({', '.join('?' * len(stored))})")
            args.extend(stored)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._store.lock:
            rows = self._query(f"SELECT {COLUMNS} FROM approvals{where} ORDER BY created_at DESC",
                               tuple(args)).fetchall()
            votes = self._query(f"SELECT v.approval_id, {VOTE_COLUMNS_OF_V} FROM approval_votes v JOIN approvals "
                                f"ON approvals.id = v.approval_id{where} ORDER BY v.voted_at, v.voter",
                                tuple(args)).fetchall()
        return listed(approvals_from_rows(rows, votes, moment), status=status, approver=approver,
                      approver_groups=self.approver_groups)

    @property
    def generation(self) -> int:
        """A counter every committed change increments."""
        return self._generation

    def changed(self) -> None:
        """Another process committed to the file (the change watch heard it): watchers here re-read."""
        self._notify()

    def _notify(self) -> None:
        with self._generation_lock:
            self._generation += 1

    def _query(self, sql: str, args: tuple[Any, ...]) -> sqlite3.Cursor:
        try:
            return self._store.db.execute(sql, args)
        except sqlite3.Error as exc:
            raise StateError(f"state store {self._store.path}: cannot read approvals ({exc})") from exc

    def _write(self, sql: str, args: tuple[Any, ...]) -> bool:
        """One statement in its own transaction (fsynced on commit); True if it changed a row."""
        with self._store.transaction("record the approval") as db:
            changed: bool = db.execute(sql, args).rowcount == 1
        return changed


# What an approval store checks, stores and reads, whichever store holds it: the SQLite class above and
# PgApprovals (state/postgres/_approvals.py) call these, so both decide the same way in the same words.

#: The columns an approval is read from, in approval_from_row's order.
COLUMNS = ("id, request_digest, kind, principal, action, approvers, created_at, expires_at, status, decided_by, "
           "decided_at, reason, opened_by, used_by, masked, required, allow_requester")
#: The columns open() writes, in insert_values' order.
INSERT_ORDER = ("id", "request_digest", "kind", "principal", "action", "agent_id", "session_id", "approvers",
                "created_at", "expires_at", "status", "opened_by", "masked", "required", "allow_requester")
INSERT_COLUMNS = ", ".join(INSERT_ORDER)
#: A vote as read, in Vote's order.
VOTE_COLUMNS = "voter, approve, reason, voted_at"
#: The same, of approval_votes joined as v (the approvals table has a reason of its own).
VOTE_COLUMNS_OF_V = "v.voter, v.approve, v.reason, v.voted_at"
#: Record one person's say (the statements below are written with %s; SQLite's callers use ?): an approval
#: again by the same person changes nothing (it counts once), a deny replaces their approval.
VOTE_SQL = ("INSERT INTO approval_votes (approval_id, voter, approve, reason, voted_at) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (approval_id, voter) DO UPDATE SET approve = excluded.approve, reason = excluded.reason, "
            "voted_at = excluded.voted_at WHERE NOT excluded.approve")
#: The distinct people who approved, in the order they did.
APPROVING_SQL = "SELECT voter FROM approval_votes WHERE approval_id = %s AND approve ORDER BY voted_at, voter"
#: Close a pending approval: (status, decided_by, decided_at, reason, id).
CLOSE_SQL = "UPDATE approvals SET status = %s, decided_by = %s, decided_at = %s, reason = %s WHERE id = %s"
# The same statements in SQLite's placeholders.
_VOTE, _APPROVING, _CLOSE = (sql.replace("%s", "?") for sql in (VOTE_SQL, APPROVING_SQL, CLOSE_SQL))


def new_approval(approval_id: str, *, request_digest: str, kind: str, principal: Mapping[str, Any],
                 action: Mapping[str, Any], approvers: Sequence[str], ttl_seconds: int, opened_by: str,
                 masked: Sequence[str], now: datetime, required: int = 1, allow_requester: bool = False) -> Approval:
    """The pending approval open() stores (ApprovalError for a ttl under a second, or a quorum out of bounds)."""
    if ttl_seconds < 1:
        raise ApprovalError(f"ttl_seconds: must be at least 1, got {ttl_seconds}")
    if not 1 <= required <= MAX_REQUIRED_APPROVALS:
        raise ApprovalError(f"required: must be from 1 to {MAX_REQUIRED_APPROVALS}, got {required}")
    return Approval(
        id=approval_id, request_digest=request_digest, kind=kind, principal=dict(principal), action=dict(action),
        approvers=tuple(approvers), created_at=format_time(now),
        expires_at=format_time(now + timedelta(seconds=ttl_seconds)), status=PENDING, opened_by=opened_by,
        masked=tuple(masked), required=required, allow_requester=allow_requester)


def insert_values(approval: Approval) -> tuple[Any, ...]:
    return (approval.id, approval.request_digest, approval.kind, canonical_json(approval.principal),
            canonical_json(approval.action), approval.agent_id, approval.session_id,
            canonical_json(list(approval.approvers)), approval.created_at, approval.expires_at, PENDING,
            approval.opened_by, canonical_json(list(approval.masked)), approval.required, approval.allow_requester)


def vote_values(approval_id: str, *, approve: bool, by: str, reason: str, at: str) -> tuple[Any, ...]:
    return (approval_id, by, approve, reason, at)


def tally(*, approve: bool, by: str, approving: Sequence[str], required: int) -> tuple[str, str] | None:
    """What a say just recorded does: (status, decided_by) to close the approval with, or None while it waits
    for more approvals. One deny denies; it is approved once `required` distinct people approved, and
    decided_by names them all, in the order they did ("alice, carol")."""
    if not approve:
        return DENIED, by
    if len(approving) >= required:
        return APPROVED, ", ".join(approving)
    return None


def may_decide(approval: Approval, identity: str, approver_groups: Mapping[str, frozenset[str]], *,
               groups: Sequence[str] = ()) -> str:
    """Why identity may not decide this approval; "" when it may. approver_groups: group name (without
    "group:") → its members (the approver_groups configuration); groups: the groups the person's sign-in
    gives (a console's local account, OpenID Connect claim or trusted proxy), which count the same."""
    if not identity.strip():
        return "the approver's identity is required"
    for name in SELF_FIELDS:
        if name == REQUESTER_FIELD and approval.allow_requester:
            continue  # the policy said so, explicitly, for this request
        if approval.principal.get(name) == identity:
            hint = (" (a policy may allow the user an agent acts for with approval.allow_requester)"
                    if name == REQUESTER_FIELD else "")
            return f"{identity} cannot decide a request made by or for itself (principal {name}){hint}"
    if identity.startswith(GROUP_PREFIX):
        # An approvers entry group:NAME stands for the members listed under NAME; the string is no one.
        return (f"{identity} names a group, not a person: decide as one of its members (listed under "
                f"approver_groups in the sidecar's configuration)")
    if identity in approval.approvers:
        return ""
    for entry in approval.approvers:
        group = entry[len(GROUP_PREFIX):] if entry.startswith(GROUP_PREFIX) else None
        if group is not None and (group in groups or identity in approver_groups.get(group, ())):
            return ""
    return f"{identity} is not an approver of {approval.id} (approvers: {', '.join(approval.approvers) or 'none'})"


def check_reason(reason: str) -> None:
    if not reason.strip():
        raise ApprovalError("reason: required (say why)")


def check_status(status: str) -> None:
    if status and status not in STATUSES:
        raise ApprovalError(f"status: {status!r} is not an approval status ({', '.join(STATUSES)})")


def not_pending(approval_id: str, current: Approval | None) -> ApprovalError:
    """The refusal of a decision that lost to a concurrent decision or to the expiry."""
    state = current.status if current else "gone"
    return ApprovalError(f"approval {approval_id} is {state}, not pending: it can no longer be decided")


def listed(found: builtins.list[Approval], *, status: str, approver: str,
           approver_groups: Mapping[str, frozenset[str]]) -> builtins.list[Approval]:
    """The approvals list() shows: of the status asked (as of now), those the approver may decide."""
    return [a for a in found if (not status or a.status == status)
            and (not approver or not may_decide(a, approver, approver_groups))]


def approval_from_row(row: Sequence[Any], votes: Sequence[Sequence[Any]], now: datetime) -> Approval:
    """An approval read in COLUMNS order with its votes (VOTE_COLUMNS order), with its status as of now (pending
    or approved past expiry: expired)."""
    (id_, digest, kind, principal, action, approvers, created, expires, status, decided_by, decided_at, reason,
     opened_by, used_by, masked, required, allow_requester) = row
    if status in (PENDING, APPROVED) and expires <= format_time(now):
        status = EXPIRED
    return Approval(id=id_, request_digest=digest, kind=kind, principal=json.loads(principal),
                    action=json.loads(action), approvers=tuple(json.loads(approvers)), created_at=created,
                    expires_at=expires, status=status, decided_by=decided_by, decided_at=decided_at, reason=reason,
                    opened_by=opened_by, used_by=used_by or "", masked=tuple(json.loads(masked)),
                    required=int(required), allow_requester=bool(allow_requester),
                    votes=tuple(Vote(str(v), bool(a), str(r), str(t)) for v, a, r, t in votes))


def approvals_from_rows(rows: Sequence[Sequence[Any]], votes: Sequence[Sequence[Any]],
                        now: datetime) -> builtins.list[Approval]:
    """Approvals read in COLUMNS order, with the votes read as (approval_id, *VOTE_COLUMNS) rows."""
    by_approval: dict[str, builtins.list[Sequence[Any]]] = {}
    for vote in votes:
        by_approval.setdefault(vote[0], []).append(vote[1:])
    return [approval_from_row(r, by_approval.get(r[0], ()), now) for r in rows]
