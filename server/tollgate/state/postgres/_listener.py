"""The one notification listener of a sidecar: a dedicated LISTEN connection on the shared store, kept alive.

PostgreSQL delivers a NOTIFY to the connections listening when the notifying transaction commits, and to no one
else: what is sent while this connection is down is lost. So after every (re)connection each channel's callbacks
run once, as if a notification had arrived, and their owners read the store again. A connection that dies
without a word (the store's host gone, no TCP reset) is found by a `SELECT 1` whenever no notification came for
`ping_every` seconds, bounded by the store's timeout. Reconnection backs off with jitter (tollgate.net.Backoff).
The listener never blocks the event loop: it waits on psycopg's AsyncConnection.notifies().
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psycopg
from psycopg import sql

from tollgate.net import Backoff
from tollgate.state.postgres._store import PgStore, _why

log = logging.getLogger(__name__)

#: Notified in the transaction of every kill and revive.
KILL_SWITCH_CHANNEL = "tollgate_kill_switches"
#: Notified in the transaction of every approval change (PgApprovals).
APPROVALS_CHANNEL = "tollgate_approvals"

#: What a channel callback is: called with no argument on the loop; it must not block (set an event, bump a counter).
Callback = Callable[[], object]

#: A channel name LISTEN accepts unquoted and every NOTIFY sender spells the same way.
_CHANNEL_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")
#: Between reconnection attempts: quick after one loss, at most 2 s while the store stays down (the kill
#: switches are re-read every refresh meanwhile, so this bounds only how soon pushes resume).
RECONNECT = Backoff(0.1, 2.0)


class NotificationListener:
    """LISTEN on some channels and call each one's callbacks for every notification, across reconnections."""

    def __init__(self, store: PgStore, channels: Mapping[str, Sequence[Callback]], *,
                 backoff: Backoff = RECONNECT, ping_every: float = 1.0) -> None:
        for name in channels:
            if not _CHANNEL_NAME.fullmatch(name):
                raise ValueError(f"channel: {name!r} is not a lower-case identifier of at most 63 characters")
        if not 0 < ping_every < float("inf"):
            raise ValueError(f"ping_every: must be a finite number of seconds above 0, got {ping_every}")
        self._store = store
        self._channels = {name: tuple(callbacks) for name, callbacks in channels.items()}
        self._backoff = backoff
        self._ping_every = ping_every
        self._listening = False
        self.error = ""
        #: How many times a LISTEN connection was made (the first included): tests and status read it.
        self.connections = 0

    @property
    def listening(self) -> bool:
        """Whether a LISTEN connection is up now (notifications reach this process)."""
        return self._listening

    async def run(self) -> None:
        """Listen until cancelled, reconnecting after every loss; never returns otherwise."""
        attempt = 0
        while True:
            connected_at = time.monotonic()
            try:
                conn = await self._connect()
            except (psycopg.Error, OSError, TimeoutError) as exc:
                self._lost(f"cannot connect ({failure(exc)})", first=attempt == 0)
            else:
                try:
                    await self._listen(conn)
                except (psycopg.Error, OSError, TimeoutError) as exc:
                    self._lost(f"connection lost ({failure(exc)})", first=True)
                finally:
                    self._listening = False
                    with contextlib.suppress(psycopg.Error, OSError):
                        await conn.close()
                # A connection that lived proves the store is back: the next loss starts the backoff afresh. One
                # that failed at once (a store that accepts and drops) keeps backing off.
                if time.monotonic() - connected_at > self._backoff.maximum:
                    attempt = 0
            still_running()
            await asyncio.sleep(self._backoff.delay(attempt))
            attempt += 1

    async def _connect(self) -> psycopg.AsyncConnection[Any]:
        conn = await connect(self._store, "notifications")
        bound = self._store.options.timeout
        try:
            for name in self._channels:  # autocommit (connect_kwargs): each LISTEN is in force once it returns
                async with asyncio.timeout(bound):
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(name)))
        except BaseException:
            with contextlib.suppress(psycopg.Error, OSError):
                await conn.close()
            raise
        return conn

    async def _listen(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self._listening = True
        self.connections += 1
        if self.error:
            log.info("state store %s: listening for notifications again", self._store.name)
        self.error = ""
        # Whatever was notified while no connection listened is lost: every owner reads the store again now.
        for name in self._channels:
            self._dispatch(name)
        while True:
            async for notify in conn.notifies(timeout=self._ping_every):
                self._dispatch(notify.channel)
            # The window ended (notifies() checks its deadline even while notifications keep coming): prove that
            # the connection still answers, or fail within the timeout and reconnect.
            async with asyncio.timeout(self._store.options.timeout):
                await conn.execute("SELECT 1")

    def _dispatch(self, channel: str) -> None:
        for callback in self._channels.get(channel, ()):
            try:
                callback()
            except Exception:  # one owner's bug must not deafen the others
                log.exception("state store %s: a %s notification callback failed", self._store.name, channel)

    def _lost(self, why: str, *, first: bool) -> None:
        self.error = f"state store {self._store.name}: notifications: {why}"
        if first:  # once per outage, not once per retry
            log.warning("%s; reconnecting (kill switches are still re-read every refresh)", self.error)



async def connect(store: PgStore, purpose: str) -> psycopg.AsyncConnection[Any]:
    """A connection of its own onto the store (autocommit, the store's timeouts), outside the pool, named
    "<application_name> <purpose>" so an operator (and a test) can tell it in pg_stat_activity."""
    kwargs = {**store.connect_kwargs, "application_name": f"{store.options.application_name} {purpose}"}
    # connect_timeout (in connect_kwargs) is whole seconds and per address; the wait bounds the whole attempt.
    async with asyncio.timeout(store.options.timeout + 1):  # not wait_for: see still_running()
        return await store.connection_class.connect(store.options.url, **kwargs)


def still_running() -> None:
    """CancelledError when this task was cancelled and an await swallowed it: a background loop that missed its
    cancellation would never stop. Python 3.11's asyncio.wait_for can turn a cancellation arriving at its timeout
    into the timeout (psycopg_pool waits for a connection with it: a pool wait becomes PoolTimeout, then
    StateError), so the loops here check after every round; their own waits use asyncio.timeout, which counts."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def failure(exc: BaseException) -> str:
    """A failure on a connection of its own, in one line (a wait cut by asyncio has no text of its own)."""
    return "timed out" if isinstance(exc, TimeoutError) else _why(exc)
