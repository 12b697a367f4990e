"""The fleet registry on SQLite (a fleet of one: this sidecar and earlier runs of its data dir), and the rules
both registries hold every entry to: what a sidecar may write, how an entry is shown, when it is stale.

An entry is written by a sidecar and read by people (`tollgate fleet`, AdminService.ListSidecars, the console),
so what goes in is bounded: an id of the sidecar_id grammar, a known health, a finite lag, and text fields cut
to a length and stripped of control characters (a bundle revision is chosen by whoever builds the bundle; a
terminal escape in it must not reach an operator's terminal). Rows are cleaned again when read, so a row
written by hand cannot carry more than a heartbeat could.
"""

from __future__ import annotations

import asyncio
import builtins
import math
import re
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from tollgate.clock import Clock, SystemClock
from tollgate.encoding import format_time, parse_time
from tollgate.state._protocol import SidecarInfo
from tollgate.state._store import StateError, StateStore

#: The health values an entry may hold (SidecarInfo.health).
HEALTHS = ("serving", "not_serving", "stopped")
#: An entry is stale once its last heartbeat is older than this many of its heartbeat intervals.
STALE_HEARTBEATS = 3
#: Entries not seen for this long are deleted (a pod that was replaced never says goodbye under its old id).
DEFAULT_PRUNE_AFTER = timedelta(days=7)
#: How often (monotonic seconds) one registry prunes: a heartbeat every few seconds need not delete each time.
PRUNE_EVERY = 3600.0
#: Most entries one listing returns, the most recently seen: a listing stays bounded whatever the table holds, and
#: even with every text field at its limit (about 1.2 kB an entry) fits a gRPC client's default 4 MB message.
MAX_LISTED = 2000
#: sidecar_id: a letter or digit, then letters, digits and . _ : @ / - (a pod name, HOST-SUFFIX, a SPIFFE path).
SIDECAR_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}")
#: The longest each text field is kept (characters); beyond it the text is cut and ends in "…".
LIMITS = {"host": 255, "version": 64, "listen": 300, "bundle_revision": 256, "bundle_digest": 128}
#: Largest export lag and heartbeat interval stored, in seconds (about 31 years: any real figure fits).
MAX_SECONDS = 1e9

_SCHEMA = (
    f"""
    CREATE TABLE fleet_sidecars (
        id TEXT PRIMARY KEY CHECK (length(id) BETWEEN 1 AND 128),
        host TEXT NOT NULL CHECK (length(host) <= {LIMITS["host"]}),
        version TEXT NOT NULL CHECK (length(version) <= {LIMITS["version"]}),
        listen TEXT NOT NULL CHECK (length(listen) <= {LIMITS["listen"]}),
        bundle_revision TEXT NOT NULL CHECK (length(bundle_revision) <= {LIMITS["bundle_revision"]}),
        bundle_digest TEXT NOT NULL CHECK (length(bundle_digest) <= {LIMITS["bundle_digest"]}),
        health TEXT NOT NULL CHECK (health IN ('serving', 'not_serving', 'stopped')),
        export_lag_seconds REAL NOT NULL CHECK (export_lag_seconds BETWEEN 0 AND {MAX_SECONDS:.0f}),
        heartbeat_seconds REAL NOT NULL CHECK (heartbeat_seconds > 0 AND heartbeat_seconds <= {MAX_SECONDS:.0f}),
        started_at TEXT NOT NULL,
        last_seen TEXT NOT NULL
    );
    CREATE INDEX fleet_sidecars_last_seen ON fleet_sidecars (last_seen)
    """,
)
#: The table's columns, in the order the registries select them (from_row reads them so).
COLUMNS = ("id, host, version, listen, bundle_revision, bundle_digest, health, export_lag_seconds, started_at, "
            "last_seen, heartbeat_seconds")


def valid_sidecar_id(text: str) -> bool:
    """Whether text may name a sidecar in the registry (SIDECAR_ID)."""
    return SIDECAR_ID.fullmatch(text) is not None


def shown_text(text: str, limit: int) -> str:
    """text as a person may be shown it: control characters (and other unprintables) as "?", at most limit
    characters, a cut one ending in "…"."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit - 1] + "…"


def checked(info: SidecarInfo, *, last_seen: datetime) -> SidecarInfo:
    """The entry a heartbeat writes: info bounded (ValueError naming the field when it cannot be), last_seen set.

    The id is refused rather than cut (two cut ids could name one entry); free text is cut and cleaned."""
    if not valid_sidecar_id(info.id):
        raise ValueError(f"sidecar id: {info.id[:140]!r} is not one (a letter or digit, then up to 127 letters, "
                         "digits or . _ : @ / -)")
    if info.health not in HEALTHS:
        raise ValueError(f"health: {info.health[:40]!r} is not one of {', '.join(HEALTHS)}")
    for name, value in (("export_lag_seconds", info.export_lag_seconds),
                        ("heartbeat_seconds", info.heartbeat_seconds)):
        if not (isinstance(value, int | float) and math.isfinite(value) and 0 <= value <= MAX_SECONDS):
            raise ValueError(f"{name}: must be a number of seconds from 0 to {MAX_SECONDS:g}, not {value!r}")
    if not info.heartbeat_seconds > 0:
        raise ValueError("heartbeat_seconds: must be greater than 0")
    try:
        started = format_time(parse_time(info.started_at))
    except ValueError as exc:
        raise ValueError(f"started_at: {exc}") from None
    return shown(replace(info, started_at=started, last_seen=format_time(last_seen),
                         export_lag_seconds=float(info.export_lag_seconds),
                         heartbeat_seconds=float(info.heartbeat_seconds)))


def shown(info: SidecarInfo) -> SidecarInfo:
    """An entry as read back: every text field bounded and cleaned (see the module's docstring)."""
    return replace(info, id=shown_text(info.id, 128), health=shown_text(info.health, 16),
                   host=shown_text(info.host, LIMITS["host"]), version=shown_text(info.version, LIMITS["version"]),
                   listen=shown_text(info.listen, LIMITS["listen"]),
                   bundle_revision=shown_text(info.bundle_revision, LIMITS["bundle_revision"]),
                   bundle_digest=shown_text(info.bundle_digest, LIMITS["bundle_digest"]))


def from_row(row: Sequence[Any], *, started_at: str, last_seen: str) -> SidecarInfo:
    """An entry from a row of the columns in COLUMNS' order (times given in Tollgate's spelling), shown."""
    return shown(SidecarInfo(
        id=str(row[0]), host=str(row[1]), version=str(row[2]), listen=str(row[3]), bundle_revision=str(row[4]),
        bundle_digest=str(row[5]), health=str(row[6]), export_lag_seconds=float(row[7]), started_at=started_at,
        last_seen=last_seen, heartbeat_seconds=float(row[10])))


def is_stale(info: SidecarInfo, *, now: datetime) -> bool:
    """Whether a sidecar that has not said goodbye missed STALE_HEARTBEATS of its heartbeats (an entry whose
    last_seen cannot be read is stale: nothing shows it alive)."""
    if info.health == "stopped":
        return False
    try:
        seen = parse_time(info.last_seen)
    except ValueError:
        return True
    return (now - seen).total_seconds() > STALE_HEARTBEATS * info.heartbeat_seconds


class LocalFleet:
    """The registry in DATA_DIR/state.db: its SQLite calls run in worker threads, under the store's lock."""

    COMPONENT = "fleet"

    def __init__(self, store: StateStore, *, clock: Clock = SystemClock(),
                 prune_after: timedelta = DEFAULT_PRUNE_AFTER) -> None:
        self._store = store
        self.clock = clock
        self._prune_after = prune_after
        self._pruned_at: float | None = None  # monotonic; None: not yet in this process
        store.migrate(self.COMPONENT, _SCHEMA)

    async def heartbeat(self, info: SidecarInfo) -> None:
        entry = checked(info, last_seen=self.clock.now())
        await asyncio.to_thread(self._write, entry)

    async def sidecars(self) -> builtins.list[SidecarInfo]:
        return await asyncio.to_thread(self._read)

    def _write(self, entry: SidecarInfo) -> None:
        prune = self._pruned_at is None or time.monotonic() - self._pruned_at >= PRUNE_EVERY
        with self._store.lock, self._store.transaction("record a fleet heartbeat") as db:
            db.execute(
                f"INSERT INTO fleet_sidecars ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET host = excluded.host, version = excluded.version, "
                "listen = excluded.listen, bundle_revision = excluded.bundle_revision, "
                "bundle_digest = excluded.bundle_digest, health = excluded.health, "
                "export_lag_seconds = excluded.export_lag_seconds, started_at = excluded.started_at, "
                "last_seen = excluded.last_seen, heartbeat_seconds = excluded.heartbeat_seconds",
                (entry.id, entry.host, entry.version, entry.listen, entry.bundle_revision, entry.bundle_digest,
                 entry.health, entry.export_lag_seconds, entry.started_at, entry.last_seen,
                 entry.heartbeat_seconds))
            if prune:
                # last_seen is format_time's spelling (fixed width, UTC), so text order is time order.
                db.execute("DELETE FROM fleet_sidecars WHERE last_seen < ?",
                           (format_time(self.clock.now() - self._prune_after),))
        if prune:
            self._pruned_at = time.monotonic()

    def _read(self) -> builtins.list[SidecarInfo]:
        with self._store.lock:
            try:
                rows = self._store.db.execute(
                    f"SELECT {COLUMNS} FROM fleet_sidecars ORDER BY last_seen DESC, id LIMIT ?",
                    (MAX_LISTED,)).fetchall()
            except sqlite3.Error as exc:
                raise StateError(f"state store {self._store.path}: cannot read the fleet registry ({exc})") from exc
        return [from_row(r, started_at=str(r[8]), last_seen=str(r[9])) for r in rows]
