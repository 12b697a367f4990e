"""The console's local accounts and sign-in sessions, in the state store (SQLite here; postgres/_users.py the twin).

An account holds a name, groups and an scrypt hash (identity/_people.py makes and checks it), never a password.
A session is stored by the sha256 of its id only: the id itself lives in the person's cookie, so a copy of the
store opens no session. A session carries the person as sign-in gave them (name, groups, how), and ends at its
expiry (read by the store's clock), at sign-out, or when the account is removed or its password changed.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import sqlite3
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from tollgate.clock import Clock, SystemClock
from tollgate.encoding import format_time
from tollgate.state._store import StateError, StateStore

COMPONENT = "users"
#: Most sessions one person may hold at once: the oldest ends when a new one would pass it (bounded table).
MAX_SESSIONS_PER_PERSON = 20

#: The component's migrations (the same tables on PostgreSQL, postgres/_users.py). Times are encoding.format_time
#: text: one fixed width in UTC, so text order is time order on both stores.
STEPS = (
    """
    CREATE TABLE console_users (
        name TEXT PRIMARY KEY,
        groups TEXT NOT NULL,
        password_hash TEXT NOT NULL,
        created_at TEXT NOT NULL,
        updated_at TEXT NOT NULL
    );
    CREATE TABLE console_sessions (
        id_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        groups TEXT NOT NULL,
        via TEXT NOT NULL,
        created_at TEXT NOT NULL,
        expires_at TEXT NOT NULL
    );
    CREATE INDEX console_sessions_name ON console_sessions (name);
    CREATE INDEX console_sessions_expires ON console_sessions (expires_at)
    """,
)


class UserError(ValueError):
    """An account operation that cannot be done (the message says why and what to do)."""


@dataclass(frozen=True)
class UserAccount:
    """A local account as stored."""

    name: str
    groups: tuple[str, ...]
    password_hash: str
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class SessionRecord:
    """A sign-in session: who (as sign-in gave them) and until when."""

    name: str
    groups: tuple[str, ...]
    via: str
    created_at: str
    expires_at: str


class UserStore(Protocol):
    """Local accounts and the console's sessions (every sign-in method's)."""

    async def add(self, name: str, *, groups: builtins.list[str], password_hash: str) -> UserAccount:
        """A new account (UserError when the name is taken)."""
        ...

    async def get(self, name: str) -> UserAccount | None:
        ...

    async def list(self) -> builtins.list[UserAccount]:
        """Every account, by name."""
        ...

    async def remove(self, name: str) -> bool:
        """Remove the account and end its sessions; False when there was none."""
        ...

    async def set_password(self, name: str, password_hash: str) -> None:
        """Replace the hash and end every session of the account (UserError when there is none)."""
        ...

    async def start_session(self, id_hash: str, *, name: str, groups: builtins.list[str], via: str,
                            ttl: float) -> SessionRecord:
        """Store a session ending ttl seconds from now (the person's oldest ended past MAX_SESSIONS_PER_PERSON)."""
        ...

    async def session(self, id_hash: str) -> SessionRecord | None:
        """The live session with this id hash (None when there is none or it has expired)."""
        ...

    async def end_session(self, id_hash: str) -> None:
        ...


def account_from_row(row: tuple[Any, ...]) -> UserAccount:
    return UserAccount(str(row[0]), tuple(json.loads(row[1])), str(row[2]), str(row[3]), str(row[4]))


def session_from_row(row: tuple[Any, ...]) -> SessionRecord:
    return SessionRecord(str(row[0]), tuple(json.loads(row[1])), str(row[2]), str(row[3]), str(row[4]))


USER_COLUMNS = "name, groups, password_hash, created_at, updated_at"
SESSION_COLUMNS = "name, groups, via, created_at, expires_at"


class LocalUsers:
    """UserStore on DATA_DIR/state.db: each call in a worker thread, under the store's lock."""

    COMPONENT = COMPONENT

    def __init__(self, store: StateStore, *, clock: Clock = SystemClock()) -> None:
        self._store = store
        self.clock = clock
        store.migrate(COMPONENT, STEPS)

    def _now(self) -> str:
        return format_time(self.clock.now())

    def _read(self, sql: str, params: tuple[Any, ...], doing: str) -> builtins.list[tuple[Any, ...]]:
        with self._store.lock:
            try:
                return self._store.db.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"state store {self._store.path}: cannot {doing} ({exc})") from exc

    async def add(self, name: str, *, groups: builtins.list[str], password_hash: str) -> UserAccount:
        def add() -> UserAccount:
            now = self._now()
            with self._store.lock, self._store.transaction("add a console account") as db:
                if db.execute("SELECT 1 FROM console_users WHERE name = ?", (name,)).fetchone():
                    raise UserError(f"user {name!r} exists (hint: `tollgate users passwd {name}` sets a new password)")
                db.execute(f"INSERT INTO console_users ({USER_COLUMNS}) VALUES (?, ?, ?, ?, ?)",
                           (name, json.dumps(groups), password_hash, now, now))
            return UserAccount(name, tuple(groups), password_hash, now, now)

        return await asyncio.to_thread(add)

    async def get(self, name: str) -> UserAccount | None:
        rows = await asyncio.to_thread(self._read, f"SELECT {USER_COLUMNS} FROM console_users WHERE name = ?",
                                       (name,), "read a console account")
        return account_from_row(rows[0]) if rows else None

    async def list(self) -> builtins.list[UserAccount]:
        rows = await asyncio.to_thread(self._read, f"SELECT {USER_COLUMNS} FROM console_users ORDER BY name", (),
                                       "list console accounts")
        return [account_from_row(r) for r in rows]

    async def remove(self, name: str) -> bool:
        def remove() -> bool:
            with self._store.lock, self._store.transaction("remove a console account") as db:
                db.execute("DELETE FROM console_sessions WHERE name = ?", (name,))
                return db.execute("DELETE FROM console_users WHERE name = ?", (name,)).rowcount > 0

        return await asyncio.to_thread(remove)

    async def set_password(self, name: str, password_hash: str) -> None:
        def change() -> None:
            with self._store.lock, self._store.transaction("set a console password") as db:
                changed = db.execute("UPDATE console_users SET password_hash = ?, updated_at = ? WHERE name = ?",
                                     (password_hash, self._now(), name)).rowcount
                if not changed:
                    raise UserError(f"user {name!r}: no such account (hint: `tollgate users add {name}`)")
                db.execute("DELETE FROM console_sessions WHERE name = ?", (name,))

        await asyncio.to_thread(change)

    async def start_session(self, id_hash: str, *, name: str, groups: builtins.list[str], via: str,
                            ttl: float) -> SessionRecord:
        now = self.clock.now()
        record = SessionRecord(name, tuple(groups), via, format_time(now), format_time(now + timedelta(seconds=ttl)))

        def start() -> None:
            with self._store.lock, self._store.transaction("start a console session") as db:
                db.execute("DELETE FROM console_sessions WHERE expires_at <= ?", (record.created_at,))
                db.execute(
                    "DELETE FROM console_sessions WHERE id_hash IN (SELECT id_hash FROM console_sessions "
                    "WHERE name = ? ORDER BY created_at DESC LIMIT -1 OFFSET ?)", (name, MAX_SESSIONS_PER_PERSON - 1))
                db.execute(f"INSERT INTO console_sessions (id_hash, {SESSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?)",
                           (id_hash, name, json.dumps(groups), via, record.created_at, record.expires_at))

        await asyncio.to_thread(start)
        return record

    async def session(self, id_hash: str) -> SessionRecord | None:
        rows = await asyncio.to_thread(
            self._read, f"SELECT {SESSION_COLUMNS} FROM console_sessions WHERE id_hash = ? AND expires_at > ?",
            (id_hash, self._now()), "read a console session")
        return session_from_row(rows[0]) if rows else None

    async def end_session(self, id_hash: str) -> None:
        def end() -> None:
            with self._store.lock, self._store.transaction("end a console session") as db:
                db.execute("DELETE FROM console_sessions WHERE id_hash = ?", (id_hash,))

        await asyncio.to_thread(end)


if TYPE_CHECKING:
    _users: type[UserStore] = LocalUsers  # mypy holds the class to the protocol
