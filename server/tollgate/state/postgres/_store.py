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
        self.pool = psycopg_pool.AsyncConnectionPool(
            options.url, kwargs=kwargs, min_size=options.min_connections, max_size=options.max_connections,
            open=False, timeout=options.timeout, name="tollgate-state",
            # A connection broken while the store was down is found and replaced before it is handed out.
            check=psycopg_pool.AsyncConnectionPool.check_connection,
            # While the store is down the pool keeps trying in the background; requests fail at the timeout.
            reconnect_timeout=max(30.0, options.timeout * 10))

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
                yield conn
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
            applied = len(steps) - version
        if applied:
            log.info("state store %s: %s schema migrated from version %d to %d", self.name, component, version,
                     len(steps))
        return applied


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
