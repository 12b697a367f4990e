"""Kill switches on the fleet's shared store: written once for every replica, pushed by NOTIFY, re-read as a
backstop, and trusted by a decision only while recently confirmed.

Each sidecar keeps the active set in memory (decisions never read the store) and replaces it after every read of
the whole set: at start, after its own kill or revive (before the call returns, so the engaging sidecar's next
decision sees it), on every `tollgate_kill_switches` notification (another replica's change, tens of
milliseconds), and every `refresh_every` seconds whatever happens (a row an operator wrote by hand, which notifies
no one; a notification lost while the listener reconnected). Each read that succeeds confirms the set. When none
has for more than `max_staleness` seconds, `staleness()` says so and every request is DENY state_stale: the
sidecar cannot prove that no kill switch names the request.

Reads and the changes of this process publish under one lock, so an older read never replaces a newer one. While
run() runs, reads and changes go over a connection of their own (as the listener listens on one), not the pool:
a pool busy with budget steps must neither make every request stale nor hold back the kill that stops them.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

import psycopg

from tollgate.clock import Clock, SystemClock
from tollgate.encoding import format_time
from tollgate.state._killswitch import (
    ALL_VALUE,
    HistoryEntry,
    KillSwitch,
    KillSwitchNotFound,
    KillSwitchSnapshot,
    checked_kill,
    checked_revive,
)
from tollgate.state._store import StateError
from tollgate.state.postgres._listener import KILL_SWITCH_CHANNEL, NotificationListener, connect, failure, still_running
from tollgate.state.postgres._store import PgStore

log = logging.getLogger(__name__)

#: The migration steps of the "kill_switches" component (the SQLite tables' columns). The checks hold a row an
#: operator writes by hand to what kill() writes: a scope no request matches, or an `all` switch stored under
#: another value than "*", would stop nothing while looking engaged. The defaults let that INSERT name only
#: scope, value and reason. Times are text in Tollgate's RFC 3339 spelling, as on SQLite, so they sort as text.
_STEPS = (
    """
    CREATE TABLE kill_switches (
        scope TEXT NOT NULL CONSTRAINT kill_switch_scope_is_known CHECK (scope IN
            ('agent', 'instance', 'session', 'workflow', 'team', 'user', 'tool', 'mcp_server', 'model', 'all')),
        value TEXT NOT NULL CONSTRAINT kill_switch_value_is_at_most_512_characters CHECK (length(value) <= 512),
        reason TEXT NOT NULL CONSTRAINT kill_switch_reason_is_required CHECK (btrim(reason) <> ''),
        killed_by TEXT NOT NULL DEFAULT current_user,
        killed_at TEXT NOT NULL
            DEFAULT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        PRIMARY KEY (scope, value),
        CONSTRAINT kill_switch_all_is_stored_under_star CHECK (scope <> 'all' OR value = '*'),
        CONSTRAINT kill_switch_value_is_required_and_trimmed CHECK (scope = 'all' OR
            (btrim(value, E' \\t\\n\\r\\f\\v') <> '' AND value = btrim(value, E' \\t\\n\\r\\f\\v')))
    );
    CREATE TABLE kill_switch_history (
        seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        time TEXT NOT NULL,
        action TEXT NOT NULL CHECK (action IN ('kill', 'revive')),
        scope TEXT NOT NULL,
        value TEXT NOT NULL,
        reason TEXT NOT NULL,
        actor TEXT NOT NULL
    );
    """,
)

# Byte order (COLLATE "C"), as SQLite sorts: a database created with a language locale would sort otherwise.
_ACTIVE = ('SELECT scope, value, reason, killed_by, killed_at FROM kill_switches ORDER BY killed_at COLLATE "C", '
           'scope COLLATE "C", value COLLATE "C"')
_KILL = ("INSERT INTO kill_switches (scope, value, reason, killed_by, killed_at) VALUES (%s, %s, %s, %s, %s) "
         "ON CONFLICT (scope, value) DO UPDATE SET reason = excluded.reason, killed_by = excluded.killed_by, "
         "killed_at = excluded.killed_at")
_REVIVE = ("DELETE FROM kill_switches WHERE scope = %s AND value = %s "
           "RETURNING scope, value, reason, killed_by, killed_at")
_HISTORY = ("INSERT INTO kill_switch_history (action, time, scope, value, reason, actor) "
            "VALUES (%s, %s, %s, %s, %s, %s)")
# The payload says only what happened: every listener re-reads the whole (small) set, and a payload naming a long
# value could pass NOTIFY's 8000-byte limit and fail the kill.
_NOTIFY = f"SELECT pg_notify('{KILL_SWITCH_CHANNEL}', %s)"

_Active = dict[tuple[str, str], KillSwitch]


class PgKillSwitches:
    """kill / revive / list / history on the shared store; snapshot() and staleness() from memory."""

    COMPONENT = "kill_switches"
    #: Its migration steps (`tollgate state migrate` applies them through PgStore.migrate).
    STEPS = _STEPS

    def __init__(self, store: PgStore, *, clock: Clock = SystemClock(), max_staleness: float = 5.0,
                 refresh_every: float = 1.0) -> None:
        if not 0 < max_staleness < float("inf"):  # also refuses NaN
            raise ValueError(f"kill_switch_max_staleness: must be a finite number of seconds above 0, "
                             f"got {max_staleness}")
        if not 0 < refresh_every < max_staleness:
            raise ValueError(f"kill_switch_refresh: must be above 0 and below kill_switch_max_staleness "
                             f"({max_staleness:g} s), got {refresh_every}")
        self._store = store
        self.clock = clock
        self.max_staleness = max_staleness
        self.refresh_every = refresh_every
        self._snapshot = KillSwitchSnapshot({}, [])
        #: time.monotonic() when the read behind the snapshot began; None before the first one succeeded.
        self._confirmed: float | None = None
        self._error = ""
        #: Reads of the whole set that succeeded (each one confirms it): status and tests read it.
        self.reads = 0
        self._lock = asyncio.Lock()
        self._listener: NotificationListener | None = None
        self._own: _OwnConnection | None = None

    async def start(self, *, upgrade: bool = False) -> None:
        """Migrate the tables (a newer schema refused; an older one only with upgrade) and read the set once
        (StateError when the store cannot be reached)."""
        await self._store.migrate(self.COMPONENT, self.STEPS, upgrade=upgrade)
        await self.refresh()

    # -- what a decision reads (memory only) ------------------------------------------------------------------

    def snapshot(self) -> KillSwitchSnapshot:
        """The active kill switches as last confirmed; one decision reads one snapshot."""
        return self._snapshot

    def staleness(self) -> str:
        """"" while the set was confirmed at most max_staleness seconds ago; else why no request is trusted."""
        confirmed = self._confirmed
        if confirmed is None:
            return (f"the kill switches have not been confirmed since start-up ({self._error or 'not read yet'}); "
                    "every request is denied until they are")
        age = time.monotonic() - confirmed
        if age <= self.max_staleness:
            return ""
        return (f"the kill switches could not be confirmed for {age:.1f}s ({self._error or 'not read since'}); "
                "every request is denied until they are")

    @property
    def listening(self) -> bool:
        """Whether run()'s LISTEN connection is up (changes elsewhere arrive pushed, not only at the refresh)."""
        return self._listener is not None and self._listener.listening

    # -- changes --------------------------------------------------------------------------------------------

    async def kill(self, scope: str, value: str, *, reason: str, by: str) -> KillSwitch:
        """Stop every request that scope=value names, for every replica; killing it again replaces the reason."""
        scope, value = checked_kill(scope, value, reason=reason, by=by)
        switch = KillSwitch(scope, value, reason, by, format_time(self.clock.now()))
        async with self._lock:
            async with self._transaction("record the kill switch") as conn:
                await conn.execute(_KILL, (scope, value, reason, by, switch.killed_at))
                await conn.execute(_HISTORY, ("kill", switch.killed_at, scope, value, reason, by))
                await conn.execute(_NOTIFY, ("kill",))
                active, began = await _read(conn)
            self._publish(active, began)  # after the commit: a failed one leaves the snapshot as it was
        return switch

    async def revive(self, scope: str, value: str, *, by: str, reason: str = "") -> KillSwitch:
        """Lift the kill switch on scope=value for every replica; KillSwitchNotFound when the store holds none
        (another replica may have lifted it: the snapshot is brought up to date either way)."""
        scope, value = checked_revive(scope, value, by=by)
        async with self._lock:
            async with self._transaction("lift the kill switch") as conn:
                row = await (await conn.execute(_REVIVE, (scope, value))).fetchone()
                if row is not None:
                    await conn.execute(_HISTORY, ("revive", format_time(self.clock.now()), scope, value, reason, by))
                    await conn.execute(_NOTIFY, ("revive",))
                active, began = await _read(conn)
            self._publish(active, began)
        if row is None:
            raise KillSwitchNotFound(f"{scope}={value} is not killed")
        return KillSwitch(*row)

    # -- reads ----------------------------------------------------------------------------------------------

    async def refresh(self) -> KillSwitchSnapshot:
        """Read the whole active set and publish it (StateError when the store cannot give it in time)."""
        try:
            async with self._lock:
                async with self._connection("read the kill switches") as conn:
                    active, began = await _read(conn)
                return self._publish(active, began)
        except StateError as exc:
            if not self._error:  # once per outage: the refresh retries every refresh_every
                log.warning("%s; the last confirmed kill switches serve for up to %gs", exc, self.max_staleness)
            self._error = str(exc)
            raise

    async def list(self) -> builtins.list[KillSwitch]:
        """The active kill switches, oldest first, as the store holds them now."""
        return builtins.list((await self.refresh()).active.values())

    async def history(self) -> builtins.list[HistoryEntry]:
        """Every kill and revive, oldest first (through the pool: nothing waits on it)."""
        async with self._store.connection("read the kill switch history") as conn:
            rows = await (await conn.execute(
                "SELECT seq, time, action, scope, value, reason, actor FROM kill_switch_history ORDER BY seq"
            )).fetchall()
        return [HistoryEntry(*row) for row in rows]

    # -- the background task --------------------------------------------------------------------------------

    async def run(self, *, listeners: Mapping[str, Sequence[Callable[[], object]]] | None = None) -> None:
        """The sidecar's background task, until cancelled: one LISTEN connection (kill switches, and the other
        channels in listeners, e.g. {APPROVALS_CHANNEL: [approvals.changed]}: each callback runs on every
        notification of its channel and after every reconnection), a refresh on every kill-switch notification,
        and one every refresh_every seconds."""
        wake = asyncio.Event()
        channels = {name: builtins.list(callbacks) for name, callbacks in (listeners or {}).items()}
        channels.setdefault(KILL_SWITCH_CHANNEL, []).append(wake.set)
        listener = NotificationListener(self._store, channels, ping_every=self.refresh_every)
        own = _OwnConnection(self._store)
        self._listener, self._own = listener, own
        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(listener.run(), name="kill switches: listen")
                tasks.create_task(self._refresh_loop(wake), name="kill switches: refresh")
        finally:
            self._listener, self._own = None, None
            async with self._lock:  # not under a change that is using it
                await own.close()

    async def _refresh_loop(self, wake: asyncio.Event) -> None:
        while True:
            try:
                async with asyncio.timeout(self.refresh_every):  # not wait_for: see still_running()
                    await wake.wait()
            except TimeoutError:
                pass  # the periodic refresh: nothing notified
            # Cleared before the read begins: a notification during the read wakes the loop for one more.
            wake.clear()
            try:
                await self.refresh()
            except StateError:
                pass  # recorded for staleness() and logged by refresh(); the next round tries again
            still_running()

    def _connection(self, doing: str) -> AbstractAsyncContextManager[psycopg.AsyncConnection[Any]]:
        # While run() runs, not through the pool: budget steps hold pooled connections across an evaluation, and
        # a fleet busy spending must neither queue the read that keeps every request from going stale nor the
        # kill that stops the spending. (Every use holds self._lock: one statement at a time on it.)
        return self._own.connection(doing) if self._own is not None else self._store.connection(doing)

    @contextlib.asynccontextmanager
    async def _transaction(self, doing: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        async with self._connection(doing) as conn, conn.transaction():
            yield conn

    def _publish(self, active: _Active, began: float) -> KillSwitchSnapshot:
        if self._error:
            log.info("state store %s: kill switches confirmed again", self._store.name)
            self._error = ""
        # One assignment each: a reader sees the old snapshot or the new one, never a mix.
        snapshot = KillSwitchSnapshot(active, [s.policy_entry() for s in active.values()])
        self._snapshot = snapshot
        self._confirmed = began
        self.reads += 1
        return snapshot


async def _read(conn: psycopg.AsyncConnection[Any]) -> tuple[_Active, float]:
    """The active set and the monotonic time its read began (what it confirms: nothing older is missing)."""
    began = time.monotonic()
    rows = await (await conn.execute(_ACTIVE)).fetchall()
    active: _Active = {}
    for scope, value, reason, killed_by, killed_at in rows:
        # The schema holds an `all` switch under "*"; keyed so even without that check it stops everything.
        key = (scope, ALL_VALUE) if scope == "all" else (scope, value)
        active[key] = KillSwitch(key[0], key[1], reason, killed_by, killed_at)
    return active, began



class _OwnConnection:
    """The kill switches' connection of their own while run() runs: opened on first use, again after any failure."""

    def __init__(self, store: PgStore) -> None:
        self._store = store
        self._conn: psycopg.AsyncConnection[Any] | None = None

    @contextlib.asynccontextmanager
    async def connection(self, doing: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """The connection (autocommit); any failure inside becomes StateError("cannot <doing>"), as the store's."""
        try:
            # statement_timeout bounds each statement on the server; this bounds a network that stopped answering.
            async with asyncio.timeout(self._store.options.timeout):
                if self._conn is None:
                    self._conn = await connect(self._store, "kill switches")
                yield self._conn
        except (psycopg.Error, OSError, TimeoutError) as exc:
            await self.close()
            raise StateError(f"state store {self._store.name}: cannot {doing} ({failure(exc)})") from exc
        except asyncio.CancelledError:
            await self.close()  # a statement cut short leaves the connection in the middle of its protocol
            raise

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()
