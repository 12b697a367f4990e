"""The fleet's shared state store on PostgreSQL: one async connection pool per process, versioned migrations.

Every replica of a fleet opens the same database. Each component (budgets, approvals, kill switches, the fleet
registry, the shipped decision log) owns its tables and migrates them with `migrate(component, steps)`, as on
SQLite: step i brings the component's schema from version i to i + 1, recorded in `tollgate_schema`. A migration
runs under one transaction-scoped advisory lock, so two replicas started at once never both apply a step.

Every call is bounded: taking a connection from the pool waits at most `timeout` seconds, and every statement
and lock wait on the server is cut at the same bound (`statement_timeout`, `lock_timeout`), so a store that is
unreachable or too slow becomes a StateError the decision path turns into DENY state_unavailable, never a hang.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
import psycopg_pool

from tollgate.state._store import StateError

log = logging.getLogger(__name__)

#: The URL schemes that name a PostgreSQL state store (libpq's own).
SCHEMES = ("postgresql", "postgres")
#: The advisory-lock key migrations run under (hashtext of a fixed name: every replica computes the same).
_MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(hashtext('tollgate.migrate'))"


def is_postgres_url(url: str) -> bool:
    """Whether a state_store value names PostgreSQL (anything else is refused by the caller)."""
    return urlsplit(url).scheme in SCHEMES


def redact(url: str) -> str:
    """The URL as messages and logs show it: a password in it is replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    user = netloc[0].split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[1]}"))


@dataclass(frozen=True)
class PgOptions:
    """How a sidecar reaches its shared store."""

    url: str
    #: Seconds a call may wait for a connection, a lock or a statement before it fails (state_unavailable).
    timeout: float = 2.0
    #: A file holding the password (first line), for URLs that carry none; libpq's PGPASSFILE works too.
    password_file: str = ""
    #: Connections this process keeps open at least, and at most (budget steps hold one across an evaluation).
    min_connections: int = 1
    max_connections: int = 10
    #: Shown in pg_stat_activity, so an operator can tell which replica holds a connection.
    application_name: str = "tollgate"


#: What a call may wait past the server's own timeouts before our side gives up on the server: statement_timeout
#: and lock_timeout answer first while the server runs; this catches a server that cannot answer at all.
_CLIENT_GRACE = 1.0
#: Seconds one migration step may run (an index built over a big table).
_MIGRATION_SECONDS = 600


class BoundedConnection(psycopg.AsyncConnection[Any]):
    """A connection whose every wait on the server is bounded from our side.

    statement_timeout and lock_timeout are the server's to enforce: a paused server (SIGSTOP, a VM frozen by its
    host) or a network that drops packets silently keeps the TCP connection open and answers nothing, so a query,
    a COMMIT or the pool's check would wait for good. Every wait goes through `wait()`, so bounding it there
    covers them all; a wait cut short leaves the connection in an unknown state, so it is closed (the pool then
    replaces it) and the call fails as a lost connection does, without psycopg's cancel request (which would wait
    on the same silent server).
    """

    #: Seconds a single wait may take; set per store (a subclass per PgStore carries its own bound).
    bound: float = 3.0

    async def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        try:
            return await super().wait(gen, interval, timeout=self.bound if timeout is None else timeout)
        except psycopg.errors._WaitTimeout as exc:  # private, but what every bounded wait raises (pinned psycopg)
            self.pgconn.finish()
            raise psycopg.OperationalError(f"the store did not answer within {self.bound:g}s") from exc


#: Seconds a pooled connection may sit idle and still be handed out unchecked: below the time a store takes to
#: go away and come back, so a connection that outlived a restart is always checked (see _check_idle).
IDLE_CHECK_SECONDS = 1.0


async def _check_idle(conn: psycopg.AsyncConnection[Any]) -> None:
    """The pool's check on checkout, only for a connection idle past IDLE_CHECK_SECONDS.

    psycopg_pool's check_connection costs a round trip on every checkout: 7 waits on the server per budget step
    instead of 6 (the transaction's BEGIN, its statements and COMMIT; tools/bench_budget_step.py), and the
    server's CPU for an empty statement, on the one connection the step holds while its scopes wait.

    A connection in steady use was answered a moment ago. After a store restart no connection that outlived it
    is handed out unchecked: one used during the outage failed there and was discarded by the pool, and one not
    used has sat idle longer than the restart took, so past IDLE_CHECK_SECONDS; the first request after the
    store's return gets a live connection, as with the check on every checkout. What is left unchecked is a
    connection that died within the last second while the store stayed up (a backend terminated by hand): the
    step's first statement fails, the store turns that into StateError (DENY state_unavailable, as any
    outage), and the pool discards it, so the next checkout connects again.
    """
    returned = getattr(conn, "_tollgate_returned", None)
    if returned is not None and time.monotonic() - returned < IDLE_CHECK_SECONDS:
        return
    await psycopg_pool.AsyncConnectionPool.check_connection(conn)


class PgStore:
    """One process's pool onto the shared store, and the per-component schema versions."""

    def __init__(self, options: PgOptions) -> None:
        if not is_postgres_url(options.url):
            raise StateError(f"state_store: {redact(options.url)!r} is not a postgresql:// URL")
        if options.timeout <= 0:
            raise StateError(f"state_store_timeout: must be above 0 seconds, got {options.timeout}")
        self.options = options
        self.name = redact(options.url)
        millis = max(1, int(options.timeout * 1000))
        kwargs: dict[str, Any] = {
            "autocommit": True, "application_name": options.application_name,
            "connect_timeout": max(1, int(options.timeout + 0.999)),
            # The server cuts any statement or lock wait past the bound: a slow store fails, it never hangs.
            "options": f"-c statement_timeout={millis} -c lock_timeout={millis} "
                       f"-c idle_in_transaction_session_timeout={max(millis * 10, 60000)}",
        }
        if options.password_file:
            kwargs["password"] = _read_password(options.password_file)
        self.connect_kwargs = kwargs
        #: The connection class of this store's pool (and of connections opened beside it): waits bounded.
        self.connection_class: type[BoundedConnection] = type(
            "StoreConnection", (BoundedConnection,), {"bound": options.timeout + _CLIENT_GRACE})
        self.pool = psycopg_pool.AsyncConnectionPool(
            options.url, kwargs=kwargs, min_size=options.min_connections, max_size=options.max_connections,
            connection_class=self.connection_class,
            open=False, timeout=options.timeout, name="tollgate-state",
            # A connection idle for a while is checked before it is handed out; one in steady use is not.
            check=_check_idle,
            # While the store is down, requests fail at the timeout. The pool's retries back off (1 s, doubling)
            # within one attempt: a short attempt keeps that backoff short, and the next request that finds no
            # connection starts a new attempt at once, so spending resumes within seconds of the store's return.
            reconnect_timeout=max(3.0, options.timeout * 2))

    async def open(self, *, wait: bool = True) -> None:
        """Open the pool; with wait, fail now (StateError) when the store cannot be reached within the timeout."""
        try:
            await self.pool.open(wait=wait, timeout=self.options.timeout)
        except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
            await self.pool.close()
            raise StateError(f"state store {self.name}: cannot connect ({_why(exc)})") from exc

    async def close(self) -> None:
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def connection(self, doing: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection (autocommit); any database failure inside becomes StateError("cannot <doing>")."""
        try:
            async with self.pool.connection(timeout=self.options.timeout) as conn:
                try:
                    yield conn
                finally:  # when it was last answered, for the pool's next check (_check_idle)
                    conn._tollgate_returned = time.monotonic()  # type: ignore[attr-defined]
        except psycopg_pool.PoolTimeout as exc:
            raise StateError(f"state store {self.name}: cannot {doing} (no connection within {self.options.timeout:g}"
                             "s: the store is unreachable or every connection is busy)") from exc
        except psycopg.Error as exc:
            raise StateError(f"state store {self.name}: cannot {doing} ({_why(exc)})") from exc

    @contextlib.asynccontextmanager
    async def transaction(self, doing: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """One transaction on a pooled connection: committed when the block ends, rolled back when it raises."""
        async with self.connection(doing) as conn, conn.transaction():
            yield conn

    async def versions(self) -> dict[str, int]:
        """Each component's schema version in the store ({} for a store never migrated)."""
        async with self.connection("read the schema versions") as conn:
            await conn.execute("CREATE TABLE IF NOT EXISTS tollgate_schema (component TEXT PRIMARY KEY, "
                               "version INTEGER NOT NULL)")
            rows = await (await conn.execute("SELECT component, version FROM tollgate_schema")).fetchall()
        return {str(c): int(v) for c, v in rows}

    async def migrate(self, component: str, steps: Sequence[str], *, upgrade: bool) -> int:
        """Bring component's tables to version len(steps); returns how many steps were applied.

        A schema newer than this code knows is refused; an older one (a new store included) is upgraded only
        with upgrade (`tollgate state migrate`, or `serve --state-store-migrate`), else refused with the hint."""
        async with self.transaction(f"migrate {component}") as conn:
            # A step may rewrite a big table: it gets minutes, not the decision path's bound.
            await conn.execute(f"SET LOCAL statement_timeout = {_MIGRATION_SECONDS * 1000}")
            conn.bound = _MIGRATION_SECONDS + _CLIENT_GRACE  # type: ignore[attr-defined]
            try:
                applied = await self._apply(conn, component, steps, upgrade=upgrade)
            finally:
                del conn.bound  # type: ignore[attr-defined]  # back in the pool with its class's bound
        if applied:
            log.info("state store %s: %s schema migrated to version %d", self.name, component, len(steps))
        return applied

    async def _apply(self, conn: psycopg.AsyncConnection[Any], component: str, steps: Sequence[str], *,
                     upgrade: bool) -> int:
        """The steps of component not applied yet, in the migration's transaction; returns how many."""
        await conn.execute(_MIGRATION_LOCK)
        await conn.execute("CREATE TABLE IF NOT EXISTS tollgate_schema (component TEXT PRIMARY KEY, "
                           "version INTEGER NOT NULL)")
        row = await (await conn.execute("SELECT version FROM tollgate_schema WHERE component = %s",
                                        (component,))).fetchone()
        version = int(row[0]) if row else 0
        if version > len(steps):
            raise StateError(f"state store {self.name}: {component} schema is version {version}, newer than "
                             f"this tollgate knows ({len(steps)}) (hint: run the newer tollgate)")
        if version < len(steps) and not upgrade:
            raise StateError(f"state store {self.name}: {component} schema is version {version}, this tollgate "
                             f"needs {len(steps)} (hint: run `tollgate state migrate --state-store URL`, or "
                             "start with --state-store-migrate)")
        for number in range(version, len(steps)):
            await conn.execute(steps[number].encode())  # no parameters: several statements in one step
            await conn.execute(
                "INSERT INTO tollgate_schema (component, version) VALUES (%s, %s) ON CONFLICT (component) "
                "DO UPDATE SET version = excluded.version", (component, number + 1))
        return len(steps) - version


def _read_password(path: str) -> str:
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise StateError(f"state_store_password_file: cannot read {path} ({exc.strerror or exc})") from exc
    if not lines or not lines[0]:
        raise StateError(f"state_store_password_file: {path} is empty (the password goes on its first line)")
    return lines[0]


def _why(exc: BaseException) -> str:
    """A database error in one line, without the libpq detail lines (which may quote a connection string)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
