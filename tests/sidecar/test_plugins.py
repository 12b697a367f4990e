"""The plugin life cycle: start in order, stop in reverse, a failed start undone, readiness from the statuses."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.conftest import REGO, TOLLGATE
from tollgate.bundle import Activation, BundleStatus, Failure, SourceState
from tollgate.sidecar._plugins import (
    BundlePlugin,
    PeriodicPlugin,
    PluginManager,
    PluginStartError,
    PluginState,
    PluginStatus,
)


class Journal:
    """What happened, in order, across the plugins and the readiness reports."""

    def __init__(self) -> None:
        self.events: list[str] = []

    async def report(self, ready: bool) -> None:
        self.events.append(f"ready={ready}")

    async def shutdown(self) -> None:
        self.events.append("shutdown")


@dataclass
class Part:
    name: str
    journal: Journal
    required: bool = True
    fails: str = ""  # start raises PluginStartError with this message
    broken_stop: bool = False
    state: PluginState = PluginState.NOT_READY
    history: list[str] = field(default_factory=list)

    async def start(self) -> None:
        if self.fails:
            raise PluginStartError(self.fails)
        self.journal.events.append(f"start {self.name}")
        self.state = PluginState.OK

    async def stop(self) -> None:
        self.journal.events.append(f"stop {self.name}")
        self.state = PluginState.NOT_READY
        if self.broken_stop:
            raise RuntimeError("stuck")

    def status(self) -> PluginStatus:
        return PluginStatus(self.state)


def _manager(*parts: tuple[str, dict[str, object]]) -> tuple[PluginManager, Journal, list[Part]]:
    journal = Journal()
    manager = PluginManager(journal)
    made = [Part(name, journal, **options) for name, options in parts]  # type: ignore[arg-type]
    for part in made:
        manager.add(part)
    return manager, journal, made


def test_plugins_start_in_order_and_stop_in_reverse_with_readiness_reported_around_them() -> None:
    manager, journal, _ = _manager(("log", {}), ("bundle", {}), ("grpc", {}))
    asyncio.run(manager.start())
    assert manager.ready
    asyncio.run(manager.stop())
    assert journal.events == ["ready=False", "start log", "ready=False", "start bundle", "ready=False",
                              "start grpc", "ready=True", "shutdown", "stop grpc", "stop bundle", "stop log"]


def test_a_plugin_that_cannot_start_stops_those_already_started_newest_first() -> None:
    manager, journal, _ = _manager(("log", {}), ("bundle", {}), ("metrics", {"fails": "port in use"}),
                                   ("grpc", {}))
    with pytest.raises(PluginStartError, match="port in use"):
        asyncio.run(manager.start())
    assert [e for e in journal.events if not e.startswith("ready")] == [
        "start log", "start bundle", "stop bundle", "stop log"]


def test_a_stop_that_fails_is_logged_and_the_rest_still_stop(caplog: pytest.LogCaptureFixture) -> None:
    manager, journal, _ = _manager(("log", {}), ("grpc", {"broken_stop": True}))
    asyncio.run(manager.start())
    asyncio.run(manager.stop())
    assert journal.events[-2:] == ["stop grpc", "stop log"]
    assert "grpc: error while stopping" in caplog.text


@pytest.mark.parametrize(("required", "optional", "ready"), [
    (PluginState.OK, PluginState.ERROR, True),
    (PluginState.WARN, PluginState.OK, True),
    (PluginState.ERROR, PluginState.OK, False),
    (PluginState.NOT_READY, PluginState.OK, False),
], ids=["optional-error-ignored", "warn-serves", "required-error", "required-not-ready"])
def test_readiness_is_every_required_plugin_ok_or_warn(required: PluginState, optional: PluginState,
                                                       ready: bool) -> None:
    manager, _, (needed, extra) = _manager(("bundle", {}), ("shipping", {"required": False}))
    needed.state, extra.state = required, optional
    assert manager.ready is ready
    assert manager.statuses() == {"bundle": PluginStatus(required), "shipping": PluginStatus(optional)}


# -- the bundle plugin's status ------------------------------------------------------------------------------

_NOW = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)


class _Activator:
    def __init__(self, state: SourceState, error: str) -> None:
        failure = Failure(_NOW, error, "corrupt") if error else None
        active = Activation(_NOW, "v1", "d") if state is not SourceState.NOT_READY else None
        self.status = BundleStatus(source="dir", state=state, active=active, last_error=failure, etag="",
                                   last_poll=_NOW)


class _Slot:
    def __init__(self, active: bool) -> None:
        self.current = object() if active else None


@pytest.mark.parametrize(("active", "source", "error", "expected"), [
    (True, SourceState.OK, "", PluginStatus(PluginState.OK)),
    (True, SourceState.ERROR, "not a readable .tar.gz", PluginStatus(PluginState.WARN, "not a readable .tar.gz")),
    (False, SourceState.NOT_READY, "", PluginStatus(PluginState.NOT_READY, "no bundle activated yet")),
    (False, SourceState.ERROR, "does not compile", PluginStatus(PluginState.ERROR, "does not compile")),
], ids=["active", "active-but-refused-a-revision", "nothing-yet", "nothing-loadable"])
def test_the_bundle_plugin_is_ready_while_a_bundle_is_active(active: bool, source: SourceState, error: str,
                                                              expected: PluginStatus) -> None:
    plugin = BundlePlugin(_Activator(source, error), _Slot(active))  # type: ignore[arg-type]
    assert plugin.status() == expected


def test_a_periodic_plugin_reports_its_last_failure_until_a_round_succeeds() -> None:
    outcomes = iter([RuntimeError("state store busy"), None])
    seen: list[PluginStatus] = []

    def work() -> None:
        outcome = next(outcomes, None)
        if outcome is not None:
            raise outcome

    async def run() -> None:
        plugin = PeriodicPlugin("budgets", work, every=0)
        await plugin.start()
        for _ in range(2):
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            seen.append(plugin.status())
        await plugin.stop()
        seen.append(plugin.status())

    asyncio.run(run())
    assert [s.state for s in seen] == [PluginState.ERROR, PluginState.OK, PluginState.NOT_READY]
    assert seen[0].message == "state store busy"


# -- start-up failures of a real process ---------------------------------------------------------------------


def test_a_grpc_port_in_use_stops_start_up_with_a_message(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*TOLLGATE, "serve", "--listen", f"127.0.0.1:{port}", "--data-dir",
                                 str(tmp_path / "d"), "--bundle", str(REGO)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert f"tollgate serve: cannot listen on 127.0.0.1:{port} (address in use or invalid?)" in result.stderr
    assert "serving on" not in result.stdout
    assert "Traceback" not in result.stderr
