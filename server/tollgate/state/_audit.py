"""The audit trail of what people do: every console sign-in (success and failure) and every change a person
makes, through the console or the API: who, how they signed in, what, to what, when, from where.

Entries are appended, never changed, and each field is bounded and cleaned on the way in (control characters
become "?", long text is cut), since some of it is what a stranger typed into a sign-in form. SQLite here;
postgres/_audit.py is the twin.
"""

from __future__ import annotations

import asyncio
import builtins
import sqlite3
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tollgate.clock import Clock, SystemClock
from tollgate.encoding import format_time
from tollgate.state._fleet import shown_text
from tollgate.state._store import StateError, StateStore

COMPONENT = "audit"
#: The longest each field is kept (characters); beyond it the text is cut and ends in "…".
LIMITS = {"actor": 128, "via": 32, "action": 64, "target": 512, "detail": 4000, "source_address": 64}
#: Most entries one listing returns.
MAX_LISTED = 500

STEPS = (
    """
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        via TEXT NOT NULL,
        action TEXT NOT NULL,
        target TEXT NOT NULL,
        detail TEXT NOT NULL,
        source_address TEXT NOT NULL
    );
    CREATE INDEX audit_log_actor ON audit_log (actor, id);
    CREATE INDEX audit_log_action ON audit_log (action, id)
    """,
)
COLUMNS = "id, at, actor, via, action, target, detail, source_address"


@dataclass(frozen=True)
class AuditEntry:
    """One thing a person did (or tried: `signin.failed`)."""

    id: int
    at: str  # RFC 3339, UTC, the store's clock
    actor: str  # the person's name, "admin-token" for the shared admin token, or the name a failed sign-in gave
    via: str  # local, oidc, proxy, token, admin-token
    action: str  # e.g. signin, signin.failed, signout, approval.approve, killswitch.engage
    target: str  # what it acted on: an approval id, scope=value, a user name
    detail: str  # a reason, the outcome, what changed
    source_address: str  # the client's address as the console or the API saw it


class AuditLog(Protocol):
    """Append what people do; read it back newest first."""

    async def record(self, actor: str, via: str, action: str, target: str = "", detail: str = "",
                     source_address: str = "") -> AuditEntry:
        ...

    async def entries(self, *, limit: int = 100, before: int | None = None, actor: str = "",
                      action: str = "") -> builtins.list[AuditEntry]:
        """Entries newest first, at most limit (capped at MAX_LISTED); before: ids below it (the next page);
        actor, action: only those (action "signin" also matches "signin.failed": a prefix up to a dot)."""
        ...


def bounded(actor: str, via: str, action: str, target: str, detail: str, source_address: str) -> dict[str, str]:
    """The fields as stored: each cleaned and cut to LIMITS."""
    given = {"actor": actor, "via": via, "action": action, "target": target, "detail": detail,
             "source_address": source_address}
    return {name: shown_text(value, LIMITS[name]) for name, value in given.items()}


def listing_sql(*, limit: int, before: int | None, actor: str, action: str,
                mark: str = "?") -> tuple[str, builtins.list[Any]]:
    """The WHERE … LIMIT of a listing (mark: the driver's placeholder)."""
    parts: builtins.list[str] = []
    params: builtins.list[Any] = []
    if before is not None:
        parts.append(f"id < {mark}")
        params.append(before)
    if actor:
        parts.append(f"actor = {mark}")
        params.append(actor)
    if action:
        parts.append(f"(action = {mark} OR substr(action, 1, {mark}) = {mark})")
        params += [action, len(action) + 1, action + "."]
    where = f"WHERE {' AND '.join(parts)} " if parts else ""
    params.append(max(1, min(limit, MAX_LISTED)))
    return f"{where}ORDER BY id DESC LIMIT {mark}", params


def entry_from_row(row: tuple[Any, ...]) -> AuditEntry:
    return AuditEntry(int(row[0]), str(row[1]), *(str(v) for v in row[2:8]))


class LocalAudit:
    """The audit trail in DATA_DIR/state.db."""

    COMPONENT = COMPONENT

    def __init__(self, store: StateStore, *, clock: Clock = SystemClock()) -> None:
        self._store = store
        self.clock = clock
        store.migrate(COMPONENT, STEPS)

    async def record(self, actor: str, via: str, action: str, target: str = "", detail: str = "",
                     source_address: str = "") -> AuditEntry:
        fields = bounded(actor, via, action, target, detail, source_address)
        at = format_time(self.clock.now())

        def append() -> int:
            with self._store.lock, self._store.transaction("record an audit entry") as db:
                cursor = db.execute(
                    "INSERT INTO audit_log (at, actor, via, action, target, detail, source_address) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)", (at, *fields.values()))
                return int(cursor.lastrowid or 0)

        return AuditEntry(await asyncio.to_thread(append), at, **fields)

    async def entries(self, *, limit: int = 100, before: int | None = None, actor: str = "",
                      action: str = "") -> builtins.list[AuditEntry]:
        tail, params = listing_sql(limit=limit, before=before, actor=actor, action=action)

        def read() -> builtins.list[tuple[Any, ...]]:
            with self._store.lock:
                try:
                    return self._store.db.execute(f"SELECT {COLUMNS} FROM audit_log {tail}", params).fetchall()
                except sqlite3.Error as exc:
                    raise StateError(f"state store {self._store.path}: cannot read the audit log ({exc})") from exc

        return [entry_from_row(r) for r in await asyncio.to_thread(read)]


if TYPE_CHECKING:
    _audit: type[AuditLog] = LocalAudit  # mypy holds the class to the protocol
