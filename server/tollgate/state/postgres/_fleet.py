"""The fleet registry on the shared store: every sidecar of the fleet upserts its own entry each heartbeat.

The entry's bounds are the SQLite registry's (state/_fleet.py: `checked` on write, `shown` on read), and the
table's CHECK constraints hold them for rows written by hand too. last_seen is stamped from this registry's
clock (the sidecar's), as on SQLite, so a sidecar's entries read the same on both stores.
"""

from __future__ import annotations

import builtins
import time
from datetime import timedelta
from typing import TYPE_CHECKING

from tollgate.clock import Clock, SystemClock
from tollgate.encoding import format_time, parse_time
from tollgate.state._fleet import (
    COLUMNS,
    DEFAULT_PRUNE_AFTER,
    LIMITS,
    MAX_LISTED,
    MAX_SECONDS,
    PRUNE_EVERY,
    checked,
    from_row,
)
from tollgate.state._protocol import SidecarInfo
from tollgate.state.postgres._store import PgStore

COMPONENT = "fleet"
#: The fleet component's migrations: step i brings its schema from version i to i + 1 (`PgStore.migrate`).
FLEET_STEPS = (
    f"""
    CREATE TABLE fleet_sidecars (
        id text PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
        host text NOT NULL CHECK (length(host) <= {LIMITS["host"]}),
        version text NOT NULL CHECK (length(version) <= {LIMITS["version"]}),
        listen text NOT NULL CHECK (length(listen) <= {LIMITS["listen"]}),
        bundle_revision text NOT NULL CHECK (length(bundle_revision) <= {LIMITS["bundle_revision"]}),
        bundle_digest text NOT NULL CHECK (length(bundle_digest) <= {LIMITS["bundle_digest"]}),
        health text NOT NULL CHECK (health IN ('serving', 'not_serving', 'stopped')),
        export_lag_seconds double precision NOT NULL
            CHECK (export_lag_seconds >= 0 AND export_lag_seconds <= {MAX_SECONDS:.0f}),
        heartbeat_seconds double precision NOT NULL
            CHECK (heartbeat_seconds > 0 AND heartbeat_seconds <= {MAX_SECONDS:.0f}),
        started_at timestamptz NOT NULL,
        last_seen timestamptz NOT NULL
    );
    CREATE INDEX fleet_sidecars_last_seen ON fleet_sidecars (last_seen);
    """,
)
_UPSERT = (
    f"INSERT INTO fleet_sidecars ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s) "
    "ON CONFLICT (id) DO UPDATE SET host = excluded.host, version = excluded.version, listen = excluded.listen, "
    "bundle_revision = excluded.bundle_revision, bundle_digest = excluded.bundle_digest, health = excluded.health, "
    "export_lag_seconds = excluded.export_lag_seconds, started_at = excluded.started_at, "
    "last_seen = excluded.last_seen, heartbeat_seconds = excluded.heartbeat_seconds")


class PgFleet:
    """The fleet registry in the shared store's fleet_sidecars table."""

    COMPONENT = COMPONENT
    STEPS = FLEET_STEPS  # as the other components name theirs

    def __init__(self, store: PgStore, *, clock: Clock = SystemClock(),
                 prune_after: timedelta = DEFAULT_PRUNE_AFTER) -> None:
        self._store = store
        self.clock = clock
        self._prune_after = prune_after
        self._pruned_at: float | None = None  # monotonic; None: not yet in this process

    async def migrate(self, *, upgrade: bool) -> int:
        """Check (or with upgrade, bring) the fleet schema to this code's version; the steps applied."""
        return await self._store.migrate(COMPONENT, FLEET_STEPS, upgrade=upgrade)

    async def heartbeat(self, info: SidecarInfo) -> None:
        now = self.clock.now()
        entry = checked(info, last_seen=now)
        prune = self._pruned_at is None or time.monotonic() - self._pruned_at >= PRUNE_EVERY
        async with self._store.connection("record a fleet heartbeat") as conn:
            await conn.execute(_UPSERT, (
                entry.id, entry.host, entry.version, entry.listen, entry.bundle_revision, entry.bundle_digest,
                entry.health, entry.export_lag_seconds, parse_time(entry.started_at), now, entry.heartbeat_seconds))
            if prune:
                # Any replica may prune; two at once delete the same rows, which is no harm.
                await conn.execute("DELETE FROM fleet_sidecars WHERE last_seen < %s", (now - self._prune_after,))
        if prune:
            self._pruned_at = time.monotonic()

    async def sidecars(self) -> builtins.list[SidecarInfo]:
        async with self._store.connection("read the fleet registry") as conn:
            cursor = await conn.execute(
                f"SELECT {COLUMNS} FROM fleet_sidecars ORDER BY last_seen DESC, id LIMIT %s", (MAX_LISTED,))
            rows = await cursor.fetchall()
        return [from_row(r, started_at=format_time(r[8]), last_seen=format_time(r[9])) for r in rows]


if TYPE_CHECKING:
    from tollgate.state._protocol import FleetRegistry

    _fleet: type[FleetRegistry] = PgFleet  # mypy holds the class to the protocol
