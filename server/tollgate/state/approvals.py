"""Approvals: a require_approval decision's request held open for a named approver, used at most once."""

from __future__ import annotations

import builtins
import json
import sqlite3
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from tollgate.clock import Clock, SystemClock
from tollgate.encoding import canonical_json, format_time
from tollgate.ids import DecisionIds
from tollgate.state._store import StateError, StateStore

#: Stored statuses. `expired` is never stored: a pending or approved approval past its expiry reads as expired.
PENDING, APPROVED, DENIED, EXPIRED, USED = "pending", "approved", "denied", "expired", "used"
#: What input.state.approval.status can also be: the approval was granted for a different request.
MISMATCH = "mismatch"
STATUSES = (PENDING, APPROVED, DENIED, EXPIRED, USED)
#: An approvers entry naming a group of identities from the approver_groups configuration.
GROUP_PREFIX = "group:"
#: Principal fields whose value may never decide the request: an agent (or the user it acts for)
#: cannot approve its own request. An approval keeps them as asked, even where the log's mask hid them.
SELF_FIELDS = ("agent_id", "instance_id", "user")

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
)


class ApprovalError(ValueError):
    """A decision on an approval that cannot be carried out as asked; the message says why."""


class ApprovalNotFound(LookupError):
    """No approval has this id."""


class NotAnApprover(PermissionError):
    """The identity may not decide this approval (not named by its approvers, or its own request)."""


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

    @property
    def agent_id(self) -> str:
        return str(self.principal.get("agent_id") or "")

    @property
    def session_id(self) -> str:
        return str(self.principal.get("session_id") or "")

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
        #: group name (without "group:") → identities; from the approver_groups configuration key.
        self.approver_groups = {g: frozenset(m) for g, m in (approver_groups or {}).items()}
        self._generation_lock = threading.Lock()
        self._generation = 0

    def open(self, *, request_digest: str, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any],
             approvers: Sequence[str], ttl_seconds: int, opened_by: str, masked: Sequence[str] = (),
             now: datetime | None = None) -> Approval:
        """A new pending approval for this request, or the pending one already open for it in this session.

        principal and action are stored as given: the caller gives them masked as the decision record is
        (the request stays bound by request_digest), and names in `masked` what the mask took out."""
        moment = now or self.clock.now()
        approval = new_approval(
            "apr_" + self._ids.new(), request_digest=request_digest, kind=kind, principal=principal, action=action,
            approvers=approvers, ttl_seconds=ttl_seconds, opened_by=opened_by, masked=masked, now=moment)
        with self._store.lock:
            row = self._query(
                f"SELECT {COLUMNS} FROM approvals WHERE request_digest = ? AND session_id = ? AND status = ? "
                "AND expires_at > ? ORDER BY created_at DESC LIMIT 1",
                (request_digest, approval.session_id, PENDING, format_time(moment))).fetchone()
            if row is not None:
                return approval_from_row(row, moment)
            self._write(f"INSERT INTO approvals ({INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        insert_values(approval))
        self._notify()
        return approval

    def get(self, approval_id: str, *, now: datetime | None = None) -> Approval | None:
        with self._store.lock:
            row = self._query(f"SELECT {COLUMNS} FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        return approval_from_row(row, now or self.clock.now()) if row else None

    def may_decide(self, approval: Approval, identity: str) -> str:
        """Why identity may not decide this approval; "" when it may."""
        return may_decide(approval, identity, self.approver_groups)

    def decide(self, approval_id: str, *, approve: bool, by: str, reason: str,
               now: datetime | None = None) -> Approval:
        """Approve or deny a pending approval as `by`; NotAnApprover, ApprovalNotFound or ApprovalError if not."""
        moment = now or self.clock.now()
        check_reason(reason)
        approval = self.get(approval_id, now=moment)
        if approval is None:
            raise ApprovalNotFound(f"approval {approval_id} does not exist")
        refusal = self.may_decide(approval, by)
        if refusal:
            raise NotAnApprover(refusal)
        status = APPROVED if approve else DENIED
        with self._store.lock:
            # The WHERE re-checks what get() saw: a concurrent decision or the expiry wins over this one.
            changed = self._write(
                "UPDATE approvals SET status = ?, decided_by = ?, decided_at = ?, reason = ? "
                "WHERE id = ? AND status = ? AND expires_at > ?",
                (status, by, format_time(moment), reason, approval_id, PENDING, format_time(moment)))
        if not changed:
            raise not_pending(approval_id, self.get(approval_id, now=moment))
        self._notify()
        return replace(approval, status=status, decided_by=by, decided_at=format_time(moment), reason=reason)

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
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        with self._store.lock:
            rows = self._query(f"SELECT {COLUMNS} FROM approvals{where} ORDER BY created_at DESC",
                               tuple(args)).fetchall()
        return listed([approval_from_row(r, moment) for r in rows], status=status, approver=approver,
                      approver_groups=self.approver_groups)

    @property
    def generation(self) -> int:
        """A counter every committed change increments."""
        return self._generation

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
           "decided_at, reason, opened_by, used_by, masked")
#: The columns open() writes, in insert_values' order.
INSERT_COLUMNS = ("id, request_digest, kind, principal, action, agent_id, session_id, approvers, created_at, "
                  "expires_at, status, opened_by, masked")


def new_approval(approval_id: str, *, request_digest: str, kind: str, principal: Mapping[str, Any],
                 action: Mapping[str, Any], approvers: Sequence[str], ttl_seconds: int, opened_by: str,
                 masked: Sequence[str], now: datetime) -> Approval:
    """The pending approval open() stores (ApprovalError for a ttl under a second)."""
    if ttl_seconds < 1:
        raise ApprovalError(f"ttl_seconds: must be at least 1, got {ttl_seconds}")
    return Approval(
        id=approval_id, request_digest=request_digest, kind=kind, principal=dict(principal), action=dict(action),
        approvers=tuple(approvers), created_at=format_time(now),
        expires_at=format_time(now + timedelta(seconds=ttl_seconds)), status=PENDING, opened_by=opened_by,
        masked=tuple(masked))


def insert_values(approval: Approval) -> tuple[Any, ...]:
    return (approval.id, approval.request_digest, approval.kind, canonical_json(approval.principal),
            canonical_json(approval.action), approval.agent_id, approval.session_id,
            canonical_json(list(approval.approvers)), approval.created_at, approval.expires_at, PENDING,
            approval.opened_by, canonical_json(list(approval.masked)))


def may_decide(approval: Approval, identity: str, approver_groups: Mapping[str, frozenset[str]]) -> str:
    """Why identity may not decide this approval; "" when it may. approver_groups: group name (without
    "group:") → its members."""
    if not identity.strip():
        return "the approver's identity is required"
    for name in SELF_FIELDS:
        if approval.principal.get(name) == identity:
            return f"{identity} cannot decide a request made by or for itself (principal {name})"
    if identity.startswith(GROUP_PREFIX):
        # An approvers entry group:NAME stands for the members listed under NAME; the string is no one.
        return (f"{identity} names a group, not a person: decide as one of its members (listed under "
                f"approver_groups in the sidecar's configuration)")
    if identity in approval.approvers:
        return ""
    for entry in approval.approvers:
        if entry.startswith(GROUP_PREFIX) and identity in approver_groups.get(entry[len(GROUP_PREFIX):], ()):
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


def approval_from_row(row: Sequence[Any], now: datetime) -> Approval:
    """An approval read in COLUMNS order, with its status as of now (pending or approved past expiry: expired)."""
    (id_, digest, kind, principal, action, approvers, created, expires, status, decided_by, decided_at, reason,
     opened_by, used_by, masked) = row
    if status in (PENDING, APPROVED) and expires <= format_time(now):
        status = EXPIRED
    return Approval(id=id_, request_digest=digest, kind=kind, principal=json.loads(principal),
                    action=json.loads(action), approvers=tuple(json.loads(approvers)), created_at=created,
                    expires_at=expires, status=status, decided_by=decided_by, decided_at=decided_at, reason=reason,
                    opened_by=opened_by, used_by=used_by or "", masked=tuple(json.loads(masked)))
