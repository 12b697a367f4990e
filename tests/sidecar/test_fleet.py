"""The fleet heartbeat plugin against a real registry (SQLite in a data dir): what it reports, under which id, how
often, its goodbye, and a registry that fails (logged without flooding, never fatal, recovered)."""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tollgate.bundle import Activation, BundleStatus, SourceState
from tollgate.clock import ManualClock
from tollgate.decisionlog import ExportStatus
from tollgate.encoding import format_time
from tollgate.sidecar._plugins import PluginState
from tollgate.sidecar.config import ConfigError, ServeConfig
from tollgate.sidecar.fleet import ID_FILE, FleetPlugin, SidecarFacts, resolve_sidecar_id
from tollgate.state import LocalFleet, SidecarInfo, StateError, StateStore

START = datetime(2026, 11, 21, 18, 0, 0, tzinfo=UTC)


@dataclass
class Sidecar:
    """What the facts read: changed by a test between heartbeats."""

    revision: str = "prod-7"
    ready: bool = True
    stale: str = ""
    lags: list[float] = field(default_factory=lambda: [0.0])

    def facts(self) -> SidecarFacts:
        return SidecarFacts(bundle=self.bundle, ready=lambda: self.ready, exports=self.exports,
                            listen=lambda: "127.0.0.1:50123", stale=lambda: self.stale)

    def bundle(self) -> BundleStatus:
        active = Activation(time=START, revision=self.revision, digest="sha256:0d" + "0" * 62) if self.revision \
            else None
        return BundleStatus(source="rego/", state=SourceState.OK if active else SourceState.NOT_READY, active=active,
                            last_error=None, etag="", last_poll=None)

    def exports(self) -> Sequence[ExportStatus]:
        return [ExportStatus(name=f"e{i}", url="http://x", lag_seconds=lag) for i, lag in enumerate(self.lags)]


class Flaky(LocalFleet):
    """The real registry, made to fail while `down` is set (a store that is away)."""

    down = False

    async def heartbeat(self, info: SidecarInfo) -> None:
        if self.down:
            raise StateError("state store test: cannot record a fleet heartbeat (the store is away)")
        await super().heartbeat(info)


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state.db")


def _plugin(store: StateStore, data_dir: Path, sidecar: Sidecar, *, every: float = 3600.0, sidecar_id: str = "",
            registry: LocalFleet | None = None) -> tuple[FleetPlugin, LocalFleet]:
    fleet = registry or LocalFleet(store, clock=ManualClock(START))
    resolved = resolve_sidecar_id(sidecar_id, data_dir, host="pod-a.example")
    return FleetPlugin(fleet, sidecar.facts(), sidecar_id=resolved, every=every, clock=ManualClock(START),
                       host="pod-a.example", version="9.9.9"), fleet


def test_start_registers_the_sidecar_with_what_it_serves(store: StateStore, tmp_path: Path) -> None:
    async def main() -> list[SidecarInfo]:
        plugin, fleet = _plugin(store, tmp_path, Sidecar(lags=[1.5, 42.0, 0.0]))
        await plugin.start()
        try:
            return await fleet.sidecars()
        finally:
            await plugin.stop()

    (entry,) = asyncio.run(main())
    assert entry.id.startswith("pod-a.example-") and len(entry.id) == len("pod-a.example-") + 6
    assert (entry.host, entry.version, entry.listen) == ("pod-a.example", "9.9.9", "127.0.0.1:50123")
    assert (entry.bundle_revision, entry.bundle_digest) == ("prod-7", "sha256:0d" + "0" * 62)
    assert (entry.health, entry.export_lag_seconds, entry.heartbeat_seconds) == ("serving", 42.0, 3600.0)
    assert entry.started_at == entry.last_seen == format_time(START)


def test_a_restarted_sidecar_keeps_its_id_and_a_configured_one_wins(store: StateStore, tmp_path: Path) -> None:
    async def ids() -> list[str]:
        found = []
        for configured in ("", "", "payments-7"):
            plugin, _ = _plugin(store, tmp_path, Sidecar(), sidecar_id=configured)
            await plugin.start()
            await plugin.stop()
            found.append(plugin.sidecar_id)
        return found

    first, second, configured = asyncio.run(ids())
    assert first == second == (tmp_path / ID_FILE).read_text().strip()
    assert configured == "payments-7"
    assert (tmp_path / ID_FILE).stat().st_mode & 0o777 == 0o600


def test_an_id_file_that_holds_no_id_is_replaced(store: StateStore, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / ID_FILE).write_text("not an id\x1b[2J\n")
    plugin, _ = _plugin(store, tmp_path, Sidecar())
    assert plugin.sidecar_id.startswith("pod-a.example-")
    assert (tmp_path / ID_FILE).read_text().strip() == plugin.sidecar_id
    assert "does not hold a sidecar id" in caplog.text


def test_an_id_that_cannot_be_kept_is_a_start_up_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / ID_FILE).mkdir()
    with pytest.raises(ConfigError, match=f"sidecar_id: cannot keep the generated id in {tmp_path / ID_FILE} .*set "
                                          "sidecar_id"):
        resolve_sidecar_id("", tmp_path)
    assert resolve_sidecar_id("pod-9", tmp_path) == "pod-9"  # a configured id needs no file


def test_heartbeats_follow_what_changes_and_stop_says_goodbye(store: StateStore, tmp_path: Path) -> None:
    sidecar = Sidecar()

    async def main() -> list[SidecarInfo]:
        plugin, fleet = _plugin(store, tmp_path, sidecar, every=0.02)
        await plugin.start()
        seen: list[SidecarInfo] = []

        async def shows(**expected: object) -> None:
            while True:
                (entry,) = await fleet.sidecars()
                if all(getattr(entry, k) == v for k, v in expected.items()):
                    seen.append(entry)
                    return
                await asyncio.sleep(0.01)

        await asyncio.wait_for(shows(health="serving", bundle_revision="prod-7"), 30)
        sidecar.revision, sidecar.ready = "", False  # the bundle went away: not ready
        await asyncio.wait_for(shows(health="not_serving", bundle_revision=""), 30)
        sidecar.revision, sidecar.ready, sidecar.stale = "prod-8", True, "kill switches not confirmed for 6s"
        await asyncio.wait_for(shows(health="not_serving", bundle_revision="prod-8"), 30)
        sidecar.stale = ""
        await asyncio.wait_for(shows(health="serving", bundle_revision="prod-8"), 30)
        await plugin.stop()
        seen.extend(await fleet.sidecars())
        return seen

    *_, goodbye = asyncio.run(main())
    assert (goodbye.health, goodbye.bundle_revision) == ("stopped", "prod-8")


@pytest.mark.parametrize(("lags", "shown"), [([math.nan, 4.0], 4.0), ([-3.0], 0.0), ([math.inf, 1.0], 1e9), ([], 0.0)],
                         ids=["nan-skipped", "negative", "endless", "no-exporter"])
def test_the_worst_export_lag_is_reported_within_what_the_registry_holds(
        store: StateStore, tmp_path: Path, lags: list[float], shown: float) -> None:
    plugin, fleet = _plugin(store, tmp_path, Sidecar(lags=lags))

    async def main() -> list[SidecarInfo]:
        await plugin.start()
        assert plugin.status().state is PluginState.OK
        await plugin.stop()
        return await fleet.sidecars()

    assert [e.export_lag_seconds for e in asyncio.run(main())] == [shown]


def test_a_failing_registry_is_logged_once_never_fatal_and_recovers(store: StateStore, tmp_path: Path,
                                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="tollgate")
    registry = Flaky(store, clock=ManualClock(START))
    registry.down = True

    async def main() -> list[SidecarInfo]:
        plugin, fleet = _plugin(store, tmp_path, Sidecar(), registry=registry, every=0.01)
        await plugin.start()  # the first heartbeat fails: the start does not
        assert plugin.status().state is PluginState.ERROR
        assert "the store is away" in plugin.status().message
        await asyncio.to_thread(wait_for, lambda: plugin._failures >= 20, timeout=30, what="20 failed heartbeats")
        registry.down = False
        await asyncio.to_thread(wait_for, lambda: plugin.status().state is PluginState.OK, timeout=30,
                                what="recovery")
        await plugin.stop()
        return await fleet.sidecars()

    (entry,) = asyncio.run(main())
    assert entry.health == "stopped"
    failures = [r for r in caplog.records if "heartbeat" in r.getMessage() and r.levelno == logging.ERROR]
    assert len(failures) == 1, [r.getMessage() for r in failures]  # 20 failures, one line
    assert "heartbeats into the registry work again" in caplog.text


class Slow(LocalFleet):
    """The real registry, whose "serving" writes wait in their worker thread until released (a slow store)."""

    def __init__(self, store: StateStore) -> None:
        super().__init__(store, clock=ManualClock(START))
        self.hold = threading.Event()
        self.release = threading.Event()
        self.held = threading.Event()  # a serving write is waiting
        self.goodbye = threading.Event()  # the stopped write has begun

    def _write(self, entry: SidecarInfo) -> None:
        if entry.health == "stopped":
            self.goodbye.set()
        elif self.hold.is_set():
            self.held.set()
            self.release.wait(30)
        super()._write(entry)


def test_a_heartbeat_under_way_at_stop_never_lands_after_the_goodbye(store: StateStore, tmp_path: Path) -> None:
    registry = Slow(store)

    async def main() -> list[SidecarInfo]:
        plugin, _ = _plugin(store, tmp_path, Sidecar(), registry=registry, every=0.01)
        await plugin.start()
        registry.hold.set()
        await asyncio.to_thread(wait_for, registry.held.is_set, timeout=30, what="a heartbeat in its thread")
        stopping = asyncio.ensure_future(plugin.stop())
        # Let the held write go once the goodbye has begun (what lost it before), or once stop() has waited a
        # moment for the write under way (what it does now: it cannot begin the goodbye before).
        asyncio.get_running_loop().call_later(0.2, registry.release.set)
        if await asyncio.to_thread(registry.goodbye.wait, 0.2):
            registry.release.set()
        await stopping
        return await registry.sidecars()

    (entry,) = asyncio.run(main())
    assert entry.health == "stopped"


@pytest.mark.parametrize(("key", "value", "message"), [
    ("sidecar_id", "pod a", "sidecar_id: 'pod a' is not one"),
    ("sidecar_id", "x" * 200, "sidecar_id: 'xxxx"),
    ("fleet_heartbeat", 0.0, "fleet_heartbeat: must be above 0 and at most 3600 seconds, not 0"),
    ("fleet_heartbeat", math.nan, "fleet_heartbeat: must be above 0"),
    ("fleet_heartbeat", math.inf, "fleet_heartbeat: must be above 0"),
], ids=["id-space", "id-long", "heartbeat-zero", "heartbeat-nan", "heartbeat-inf"])
def test_the_fleet_settings_are_checked(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        ServeConfig(**{key: value}).validate()  # type: ignore[arg-type]
