"""The sidecar's moving parts under one life cycle, as OPA's plugin manager has it: start in order, stop in
reverse, one status each (NOT_READY, OK, WARN, ERROR), and readiness — what gRPC health reports — from them.

A plugin that cannot start raises PluginStartError; the manager then stops the ones already started, newest
first, so a failed start-up leaves nothing running and nothing half-written.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import grpc

from tollgate.bundle import SourceState

if TYPE_CHECKING:
    from tollgate.decisionlog import DecisionLog, LogShipping
    from tollgate.engine import EngineSlot
    from tollgate.identity import PeerCredentialRelay
    from tollgate.sidecar.activation import BundleActivator

log = logging.getLogger("tollgate")


class PluginState(enum.Enum):
    NOT_READY = "NOT_READY"  # not started yet, or nothing to serve yet (no bundle so far)
    OK = "OK"
    WARN = "WARN"  # working, degraded: a refused bundle revision, an exporter behind its max_lag
    ERROR = "ERROR"  # not doing its job: no bundle could be loaded, uploads or sweeps failing


@dataclass(frozen=True)
class PluginStatus:
    state: PluginState
    #: What is wrong, for a person (empty when OK).
    message: str = ""


NOT_STARTED = PluginStatus(PluginState.NOT_READY, "not started")
RUNNING = PluginStatus(PluginState.OK)
_SERVING_STATES = (PluginState.OK, PluginState.WARN)


class PluginStartError(Exception):
    """A plugin could not start; the message says what, where and why (`tollgate serve: ` goes before it)."""


class Plugin(Protocol):
    #: Named in the log and in statuses.
    name: str
    #: The sidecar is ready (health SERVING) only while every required plugin is OK or WARN.
    required: bool

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def status(self) -> PluginStatus: ...


class Readiness(Protocol):
    """Where the manager reports readiness (the gRPC health service)."""

    async def report(self, ready: bool) -> None: ...

    async def shutdown(self) -> None:
        """Report not ready for good: the process is stopping."""
        ...


class PluginManager:
    """Owns the plugins: starts them in the order added, stops them in reverse, reports readiness."""

    def __init__(self, readiness: Readiness) -> None:
        self._readiness = readiness
        self._plugins: list[Plugin] = []
        self._started: list[Plugin] = []

    def add(self, plugin: Plugin) -> None:
        self._plugins.append(plugin)

    @property
    def plugins(self) -> Sequence[Plugin]:
        return tuple(self._plugins)

    def statuses(self) -> dict[str, PluginStatus]:
        return {p.name: p.status() for p in self._plugins}

    @property
    def ready(self) -> bool:
        return all(p.status().state in _SERVING_STATES for p in self._plugins if p.required)

    async def changed(self) -> None:
        """A plugin's status changed: report readiness again."""
        await self._readiness.report(self.ready)

    async def start(self) -> None:
        """Start every plugin in order; if one fails, stop those already started (newest first) and re-raise."""
        await self.changed()  # not ready until the required plugins are
        for plugin in self._plugins:
            try:
                await plugin.start()
            except BaseException:
                await self._stop_started()
                raise
            self._started.append(plugin)
            await self.changed()

    async def stop(self) -> None:
        """Report not ready, then stop the started plugins, newest first; a failing stop does not skip the rest."""
        await self._readiness.shutdown()
        await self._stop_started()

    async def _stop_started(self) -> None:
        while self._started:
            plugin = self._started.pop()
            try:
                await plugin.stop()
            except Exception:
                log.exception("%s: error while stopping", plugin.name)


# -- the plugins -------------------------------------------------------------------------------------


class BundlePlugin:
    """The bundle activator: the first activation at start, polling after; the engine closed at stop."""

    name = "bundle"
    required = True

    def __init__(self, activator: BundleActivator, slot: EngineSlot) -> None:
        self._activator = activator
        self._slot = slot

    async def start(self) -> None:
        await self._activator.start()
        if self._slot.current is None:
            # Fail closed: keep serving, answer every request DENY (no_bundle), report NOT_SERVING, keep polling.
            error = self._activator.status.last_error
            log.error("no policy bundle loaded: %s; every request will be denied (no_bundle) until a good bundle "
                      "arrives", error.message if error else "unknown error")

    async def stop(self) -> None:
        await self._activator.stop()
        if self._slot.current is not None:
            await self._slot.current.close()

    def status(self) -> PluginStatus:
        status = self._activator.status
        error = status.last_error.message if status.last_error else ""
        if self._slot.current is None:
            # A refused revision never takes the active one away: without one, nothing is served.
            if status.state is SourceState.NOT_READY:
                return PluginStatus(PluginState.NOT_READY, "no bundle activated yet")
            return PluginStatus(PluginState.ERROR, error or "no bundle could be activated")
        if status.state is SourceState.ERROR:
            return PluginStatus(PluginState.WARN, error)
        return RUNNING


class DecisionLogPlugin:
    """The decision log's writer thread; stopping commits what is queued and checkpoints the WAL."""

    name = "decision log"
    required = True

    def __init__(self, decision_log: DecisionLog) -> None:
        self._log = decision_log
        self._status = NOT_STARTED

    async def start(self) -> None:
        self._log.start(asyncio.get_running_loop())
        self._status = RUNNING

    async def stop(self) -> None:
        self._status = NOT_STARTED
        await asyncio.get_running_loop().run_in_executor(None, self._log.close)

    def status(self) -> PluginStatus:
        return self._status


class ShippingPlugin:
    """The decision log's exporters and retention. Added before the decision log, so that it stops after the
    last commit: the exporters then get flush_seconds to deliver everything (their cursors are on disk, so
    what does not make it goes out on the next start)."""

    name = "decision log shipping"
    required = False  # answers never wait for an export; fail_closed_on_lag turns lag into DENYs instead

    def __init__(self, shipping: LogShipping, *, flush_seconds: float) -> None:
        self._shipping = shipping
        self._flush_seconds = flush_seconds
        self._started = False

    async def start(self) -> None:
        self._shipping.start()
        self._started = True

    async def stop(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._shipping.stop, self._flush_seconds)

    def status(self) -> PluginStatus:
        if not self._started:
            return NOT_STARTED
        for state in (PluginState.ERROR, PluginState.WARN):
            names = [s.name for s in self._shipping.statuses() if s.state.value == state.value.lower()]
            if names:
                return PluginStatus(state, f"exporters {state.value}: {', '.join(names)}")
        return RUNNING


class GrpcPlugin:
    """The gRPC server: bound and started; at stop, in-flight requests get drain_seconds to finish."""

    name = "gRPC server"
    required = True

    def __init__(self, server: grpc.aio.Server, listen: str, *, credentials: grpc.ServerCredentials | None,
                 drain_seconds: float) -> None:
        self._server = server
        self._listen = listen
        self._credentials = credentials
        self._drain_seconds = drain_seconds
        self._status = NOT_STARTED
        #: The address bound (HOST:PORT with the port picked, or unix:PATH), once started.
        self.address = ""

    async def start(self) -> None:
        self.address = bind(self._server, self._listen, self._credentials)
        await self._server.start()
        self._status = RUNNING

    async def stop(self) -> None:
        self._status = NOT_STARTED
        await self._server.stop(self._drain_seconds)

    def status(self) -> PluginStatus:
        return self._status


class RelayPlugin:
    """The Unix-socket peer-credential relay. Added before the gRPC server, so that it stops after the
    server has drained: the requests in flight through it keep their connections to the end."""

    name = "unix socket relay"
    required = True

    def __init__(self, relay: PeerCredentialRelay) -> None:
        self._relay = relay
        self._status = NOT_STARTED

    async def start(self) -> None:
        await self._relay.start()
        self._status = RUNNING

    async def stop(self) -> None:
        self._status = NOT_STARTED
        await self._relay.close()

    def status(self) -> PluginStatus:
        return self._status


class HttpPlugin:
    """An HTTP endpoint of the sidecar (metrics, AuthZEN) on its own port."""

    required = True

    def __init__(self, name: str, serve: Callable[[], Awaitable[tuple[asyncio.Server, str]]], *,
                 refusal: Callable[[OSError], str], announce: Callable[[str], None]) -> None:
        self.name = name
        self._serve = serve
        self._refusal = refusal  # the start-up error for a port that cannot be listened on
        self._announce = announce  # logs the bound address
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        try:
            self._server, address = await self._serve()
        except OSError as exc:
            raise PluginStartError(self._refusal(exc)) from exc
        self._announce(address)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def status(self) -> PluginStatus:
        return NOT_STARTED if self._server is None else RUNNING


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel a plugin's background task and wait until it has ended (nothing to do for None)."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class PeriodicPlugin:
    """Work done every `every` seconds on the event loop (the reservation sweep, awaited when it is a coroutine
    function); its last failure is its status."""

    required = False

    def __init__(self, name: str, work: Callable[[], Awaitable[None] | None], *, every: float) -> None:
        self.name = name
        self._work = work  # a function or a coroutine function; raises to report a failure, the next round retries
        self._every = every
        self._task: asyncio.Task[None] | None = None
        self._status = NOT_STARTED

    async def start(self) -> None:
        self._status = RUNNING
        self._task = asyncio.get_running_loop().create_task(self._run(), name=self.name)

    async def stop(self) -> None:
        await cancel(self._task)
        self._task = None
        self._status = NOT_STARTED

    def status(self) -> PluginStatus:
        return self._status

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            try:
                pending = self._work()
                if pending is not None:
                    await pending
            except Exception as exc:
                log.error("%s: %s", self.name, exc)
                self._status = PluginStatus(PluginState.ERROR, str(exc))
            else:
                self._status = RUNNING


def bind(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None = None) -> str:
    """Add the listening port to server; returns the address bound (HOST:PORT with the port picked)."""
    if listen.startswith("unix:"):
        path = listen[len("unix:"):]
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # a stale socket from an earlier run
        except FileNotFoundError:
            pass
    try:
        port: int = (server.add_insecure_port(listen) if credentials is None
                     else server.add_secure_port(listen, credentials))
    except RuntimeError as exc:  # grpc's "Failed to bind": its core gives no reason
        raise PluginStartError(f"cannot listen on {listen} (address in use or invalid?)") from exc
    if listen.startswith("unix:"):
        return listen
    return f"{listen.rsplit(':', 1)[0]}:{port}"
