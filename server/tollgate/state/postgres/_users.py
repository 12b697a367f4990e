"""The console's accounts and sessions on the shared store: state/_users.py's tables and rules, for every console
of a fleet (a person signed in through one console replica is signed in through all)."""

from __future__ import annotations

import builtins
import json
from datetime import timedelta
from typing import TYPE_CHECKING

from tollgate.clock import Clock, SystemClock
from tollgate.encoding import format_time
from tollgate.state._users import (
    COMPONENT,
    MAX_SESSIONS_PER_PERSON,
    SESSION_COLUMNS,
    STEPS,
    USER_COLUMNS,
    SessionRecord,
    UserAccount,
    UserError,
    account_from_row,
    session_from_row,
)
from tollgate.state.postgres._store import PgStore


class PgUsers:
    """UserStore on the shared store's console_users and console_sessions tables."""

    COMPONENT = COMPONENT
    STEPS = STEPS

    def __init__(self, store: PgStore, *, clock: Clock = SystemClock()) -> None:
        self._store = store
        self.clock = clock

    async def migrate(self, *, upgrade: bool) -> int:
        return await self._store.migrate(COMPONENT, STEPS, upgrade=upgrade)

    def _now(self) -> str:
        return format_time(self.clock.now())

    async def add(self, name: str, *, groups: builtins.list[str], password_hash: str) -> UserAccount:
        now = self._now()
        async with self._store.connection("add a console account") as conn:
            cursor = await conn.execute(
                f"INSERT INTO console_users ({USER_COLUMNS}) VALUES (%s, %s, %s, %s, %s) ON CONFLICT (name) "
                "DO NOTHING", (name, json.dumps(groups), password_hash, now, now))
            if cursor.rowcount == 0:
                raise UserError(f"user {name!r} exists (hint: `tollgate users passwd {name}` sets a new password)")
        return UserAccount(name, tuple(groups), password_hash, now, now)

    async def get(self, name: str) -> UserAccount | None:
        async with self._store.connection("read a console account") as conn:
            row = await (await conn.execute(f"SELECT {USER_COLUMNS} FROM console_users WHERE name = %s",
                                            (name,))).fetchone()
        return account_from_row(row) if row else None

    async def list(self) -> builtins.list[UserAccount]:
        async with self._store.connection("list console accounts") as conn:
            rows = await (await conn.execute(f"SELECT {USER_COLUMNS} FROM console_users ORDER BY name COLLATE \"C\""
                                             )).fetchall()
        return [account_from_row(r) for r in rows]

    async def remove(self, name: str) -> bool:
        async with self._store.transaction("remove a console account") as conn:
            await conn.execute("DELETE FROM console_sessions WHERE name = %s", (name,))
            cursor = await conn.execute("DELETE FROM console_users WHERE name = %s", (name,))
            return cursor.rowcount > 0

    async def set_password(self, name: str, password_hash: str) -> None:
        async with self._store.transaction("set a console password") as conn:
            cursor = await conn.execute(
                "UPDATE console_users SET password_hash = %s, updated_at = %s WHERE name = %s",
                (password_hash, self._now(), name))
            if cursor.rowcount == 0:
                raise UserError(f"user {name!r}: no such account (hint: `tollgate users add {name}`)")
            await conn.execute("DELETE FROM console_sessions WHERE name = %s", (name,))

    async def start_session(self, id_hash: str, *, name: str, groups: builtins.list[str], via: str,
                            ttl: float) -> SessionRecord:
        now = self.clock.now()
        record = SessionRecord(name, tuple(groups), via, format_time(now), format_time(now + timedelta(seconds=ttl)))
        async with self._store.transaction("start a console session") as conn:
            await conn.execute("DELETE FROM console_sessions WHERE expires_at <= %s", (record.created_at,))
            await conn.execute(
                "DELETE FROM console_sessions WHERE id_hash IN (SELECT id_hash FROM console_sessions WHERE name = %s "
                "ORDER BY created_at DESC OFFSET %s)", (name, MAX_SESSIONS_PER_PERSON - 1))
            await conn.execute(
                f"INSERT INTO console_sessions (id_hash, {SESSION_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)",
                (id_hash, name, json.dumps(groups), via, record.created_at, record.expires_at))
        return record

    async def session(self, id_hash: str) -> SessionRecord | None:
        async with self._store.connection("read a console session") as conn:
            row = await (await conn.execute(
                f"SELECT {SESSION_COLUMNS} FROM console_sessions WHERE id_hash = %s AND expires_at > %s",
                (id_hash, self._now()))).fetchone()
        return session_from_row(row) if row else None

    async def end_session(self, id_hash: str) -> None:
        async with self._store.connection("end a console session") as conn:
            await conn.execute("DELETE FROM console_sessions WHERE id_hash = %s", (id_hash,))


if TYPE_CHECKING:
    from tollgate.state._users import UserStore

    _users: type[UserStore] = PgUsers  # mypy holds the class to the protocol
