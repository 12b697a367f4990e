"""The fleet heartbeat: this sidecar's entry in the fleet registry (`tollgate fleet`, AdminService.ListSidecars),
written at start, every fleet_heartbeat seconds, and once more with health "stopped" when it stops.

A heartbeat is information for people, never on a decision's path: one that fails is logged (the first
failure, then at most once a minute while it goes on, and the recovery) and shows in the plugin's status, and
the sidecar serves on. The sidecar's id is sidecar_id, or HOST-SUFFIX with a random suffix kept in
DATA_DIR/sidecar-id, so a restarted sidecar keeps its entry instead of leaving a stale one behind.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tollgate.bundle import BundleStatus
from tollgate.clock import Clock, SystemClock
from tollgate.decisionlog import ExportStatus
from tollgate.decisionlog._events import VERSION
from tollgate.encoding import format_time
from tollgate.sidecar._plugins import NOT_STARTED, RUNNING, PluginState, PluginStatus, cancel
from tollgate.sidecar.config import ConfigError
from tollgate.state import FleetRegistry, SidecarInfo, valid_sidecar_id
from tollgate.state._fleet import MAX_SECONDS

log = logging.getLogger("tollgate")

#: Where a generated sidecar id is kept in the data dir.
ID_FILE = "sidecar-id"
#: Seconds between two log lines about heartbeats that keep failing.
FAILURE_LOG_EVERY = 60.0
#: The longest the goodbye heartbeat may hold up the stop, in seconds (a PostgreSQL call is bounded by
#: state_store_timeout already; this bounds the rest).
GOODBYE_TIMEOUT = 5.0
_NOT_IN_ID = re.compile(r"[^A-Za-z0-9.-]+")


def resolve_sidecar_id(configured: str, data_dir: Path, *, host: str | None = None) -> str:
    """This sidecar's fleet id, resolved once at start-up (the heartbeat and the shipped decision log use it):
    sidecar_id, else the one kept in DATA_DIR/sidecar-id, else a new HOST-SUFFIX kept there (ConfigError when
    it cannot be)."""
    if configured:
        return configured
    try:
        return _kept_sidecar_id(data_dir, host=socket.gethostname() if host is None else host)
    except OSError as exc:
        raise ConfigError(f"sidecar_id: cannot keep the generated id in {data_dir / ID_FILE} "
                          f"({exc.strerror or exc}); set sidecar_id") from exc


def _kept_sidecar_id(data_dir: Path, *, host: str) -> str:
    path = data_dir / ID_FILE
    try:
        kept = path.read_bytes().decode(errors="replace").strip()
    except FileNotFoundError:
        kept = ""
    if kept and valid_sidecar_id(kept):
        return kept
    if kept:
        log.warning("%s does not hold a sidecar id (%r); writing a new one", path, kept[:140])
    name = _NOT_IN_ID.sub("-", host).strip(".-")[:100] or "sidecar"
    new = f"{name}-{secrets.token_hex(3)}"
    part = path.with_name(f"{ID_FILE}.part")
    fd = os.open(part, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(new + "\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(part, path)
    return new


@dataclass(frozen=True)
class SidecarFacts:
    """Where each heartbeat reads what it reports, at the time it is sent."""

    #: The bundle activator's status: the active revision and digest.
    bundle: Callable[[], BundleStatus]
    #: Whether the sidecar is ready (the plugin manager's readiness: what gRPC health reports).
    ready: Callable[[], bool]
    #: The decision-log exporters' statuses: the worst lag is reported.
    exports: Callable[[], Sequence[ExportStatus]]
    #: The gRPC address served on (known once the gRPC server has started).
    listen: Callable[[], str]
    #: Why the kill switches cannot be trusted ("" when they can): such a sidecar denies everything.
    stale: Callable[[], str] = lambda: ""


class FleetPlugin:
    """Heartbeats into the fleet registry. Added after the servers, so the address is bound when it starts and
    the goodbye goes out as soon as the sidecar starts stopping."""

    name = "fleet heartbeat"
    required = False  # the registry is for people: a sidecar serves whether or not it can heartbeat

    def __init__(self, registry: FleetRegistry, facts: SidecarFacts, *, sidecar_id: str, every: float = 5.0,
                 clock: Clock = SystemClock(), host: str | None = None, version: str = VERSION) -> None:
        self._registry = registry
        self._facts = facts
        self._every = every
        self._clock = clock
        self._host = socket.gethostname() if host is None else host
        self._version = version
        self.sidecar_id = sidecar_id  # resolve_sidecar_id's
        self._started_at = ""
        self._task: asyncio.Task[None] | None = None
        self._beating: asyncio.Future[bool] | None = None  # the loop's heartbeat under way
        self._status = NOT_STARTED
        self._failures = 0
        self._logged_at = 0.0  # monotonic: when a failure was last logged

    async def start(self) -> None:
        self._started_at = format_time(self._clock.now())
        log.info("fleet: this sidecar is %s (a heartbeat every %gs)", self.sidecar_id, self._every)
        await self.beat()  # the entry is there once the sidecar says it serves
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        if self._started_at:
            try:
                # A heartbeat under way (its write may already be in a thread or on the server) lands first,
                # so it can never overwrite the goodbye.
                async with asyncio.timeout(GOODBYE_TIMEOUT):
                    if self._beating is not None:
                        await self._beating
                    await self.beat(health="stopped")
            except TimeoutError:
                log.warning("fleet: the goodbye heartbeat took longer than %gs; the entry turns stale instead",
                            GOODBYE_TIMEOUT)
        self._status = NOT_STARTED

    def status(self) -> PluginStatus:
        return self._status

    def info(self, *, health: str = "") -> SidecarInfo:
        """The entry as of now (health: as the sidecar is, unless given)."""
        bundle = self._facts.bundle().active
        # The worst lag, bounded as the registry holds it (an endless one shows as the largest, not as none).
        lag = min(max((e.lag_seconds for e in self._facts.exports() if not math.isnan(e.lag_seconds)),
                      default=0.0), MAX_SECONDS)
        if not health:
            health = "serving" if self._facts.ready() and not self._facts.stale() else "not_serving"
        return SidecarInfo(
            id=self.sidecar_id, host=self._host, version=self._version, listen=self._facts.listen(),
            bundle_revision=bundle.revision if bundle else "", bundle_digest=bundle.digest if bundle else "",
            health=health, export_lag_seconds=max(lag, 0.0),
            started_at=self._started_at, last_seen="", heartbeat_seconds=self._every)

    async def beat(self, *, health: str = "") -> bool:
        """Send one heartbeat; a failure is logged (rate-limited) and kept as the status, never raised."""
        try:
            await self._registry.heartbeat(self.info(health=health))
        except Exception as exc:  # whatever the store says, the sidecar serves on
            self._failed(exc)
            return False
        if self._failures:
            log.info("fleet: heartbeats into the registry work again (after %d failed)", self._failures)
            self._failures = 0
        self._status = RUNNING
        return True

    def _failed(self, exc: Exception) -> None:
        self._failures += 1
        self._status = PluginStatus(PluginState.ERROR, f"heartbeat failed: {exc}")
        now = time.monotonic()
        if self._failures == 1:
            log.error("fleet: heartbeat failed: %s (the sidecar serves on; logged again at most every %gs while it "
                      "goes on)", exc, FAILURE_LOG_EVERY)
        elif now - self._logged_at >= FAILURE_LOG_EVERY:
            log.error("fleet: heartbeats still failing (%d so far): %s", self._failures, exc)
        else:
            return
        self._logged_at = now

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            # Shielded: cancelling the loop at stop must not abandon a write halfway (stop awaits it instead).
            self._beating = asyncio.ensure_future(self.beat())
            await asyncio.shield(self._beating)
            self._beating = None
