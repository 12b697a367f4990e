"""`tollgate serve`: the sidecar process — configure its parts, run them as plugins until a signal, stop them.

The steps read like the process's life: resolve the settings → open the state → build the parts (engine slot,
bundle activator, decision log, shipping, authorizer, servicers) → add them as plugins in start order →
start → serve until SIGTERM or SIGINT → stop in reverse order (drain, last commit, final export flush).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1._async import HealthServicer
from grpc_reflection.v1alpha import reflection

from tollgate.api import (
    AdminServicer,
    ApprovalServicer,
    AuthorizationServicer,
    AuthzenService,
    RequestLimits,
    StreamRoom,
    json_error,
)
from tollgate.api._access import AdminAccess, NoAudit, oidc_people
from tollgate.api._envoy import SERVICE as ENVOY_SERVICE
from tollgate.api._envoy import EnvoyAuthorizationServicer, EnvoySettings
from tollgate.api._http import start_http_server
from tollgate.api._outcomes import OutcomeServicer
from tollgate.api._toolresults import ToolResultServicer
from tollgate.bundle import Activation, BundleError, BundleStatus, Failure
from tollgate.clock import Clock, from_environment
from tollgate.decision import Authorizer, AuthorizerConfig, BudgetGuard, never_behind
from tollgate.decisionlog import DecisionLog, LogConfig, LogReadError, LogShipping, ShippingConfig
from tollgate.decisionlog._checkpoint import CheckpointError, CheckpointKey
from tollgate.engine import EngineConfig, EngineSlot, WorkerPoolEngine
from tollgate.identity import CallerMap, CallerResolver, PeerCredentialRelay
from tollgate.net import HttpOptions
from tollgate.sidecar._plugins import (
    BundlePlugin,
    DecisionLogPlugin,
    GrpcPlugin,
    HttpPlugin,
    PluginManager,
    PluginStartError,
    RelayPlugin,
    ShippingPlugin,
)
from tollgate.sidecar.activation import ActivatorConfig, BundleActivator, RemoteEngineActivator
from tollgate.sidecar.checkpoints import CheckpointPlugin, CheckpointPublisher, startup_problems
from tollgate.sidecar.config import ConfigError, ServeConfig
from tollgate.sidecar.fleet import FleetPlugin, SidecarFacts, resolve_sidecar_id
from tollgate.sidecar.metrics import Metrics, PendingApprovals, start_metrics_server
from tollgate.sidecar.notify import Notifier, NotifyMetrics, NotifyPlugin, Receiver, receivers_from, sender_id
from tollgate.sidecar.state import ListenerPlugin, SidecarState, open_state
from tollgate.state import StateError, private_dir
from tollgate.state._protocol import OutboxStore
from tollgate.v1 import admin_pb2, approval_pb2, authorization_pb2

log = logging.getLogger("tollgate")

SERVICE = authorization_pb2.DESCRIPTOR.services_by_name["AuthorizationService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
APPROVAL_SERVICE = approval_pb2.DESCRIPTOR.services_by_name["ApprovalService"].full_name
#: On shutdown, how long the decision-log exporters may take to deliver what is committed, in seconds.
EXPORT_FLUSH_SECONDS = 5.0


async def serve(config: ServeConfig) -> int:
    """Run until SIGTERM or SIGINT; then drain, flush the decision log and return 0."""
    clock = from_environment()  # the one clock every part reads (shifted only by the testing aid)
    settings = _settings(config, clock)
    checkpoint_key = _checked_log(config)
    state = await _open_state(config, clock)
    health = GrpcHealth(HealthServicer())
    manager = PluginManager(health)
    metrics = Metrics()
    slot = EngineSlot()
    try:
        activator = _activator(config, slot, metrics, manager, clock, http=settings.bundle_http)
    except SystemExit:
        await state.close()
        raise
    parts = _Parts(config, settings, state, slot, activator, metrics, health, clock)
    checkpoints = None if checkpoint_key is None else CheckpointPlugin(
        CheckpointPublisher(parts.decision_log.path, checkpoint_key, clock=clock,
                            file=Path(config.decision_log_checkpoint_file) if config.decision_log_checkpoint_file
                            else None), every=config.decision_log_checkpoint_interval)
    grpc_plugin = _add_plugins(manager, parts, checkpoints=checkpoints)
    metrics.plugin_states = lambda: {name: s.state.value for name, s in manager.statuses().items()}
    try:
        await manager.start()
    except PluginStartError as exc:
        raise SystemExit(f"tollgate serve: {exc}") from exc
    revision = slot.current.revision if slot.current else "none"
    address = config.listen if settings.relay is not None else grpc_plugin.address
    # One line on stdout that tools and tests can wait for.
    print(f"tollgate: serving on {address} (bundle {revision}, decision log {parts.decision_log.path})", flush=True)
    await _until_signalled()
    log.info("shutting down: draining in-flight requests (up to %gs)", config.drain_seconds)
    await manager.stop()
    log.info("decision log flushed; bye")
    return 0


# -- configure ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Settings:
    """What the configuration resolves to before anything is opened (ConfigError is a start-up error)."""

    admin_token: str
    credentials: grpc.ServerCredentials | None
    callers: CallerMap
    #: On a Unix socket the relay reads each connection's peer credentials (gRPC does not expose them).
    relay: PeerCredentialRelay | None
    resolver: CallerResolver
    authzen_tls: ssl.SSLContext | None
    shipping: ShippingConfig
    #: How an http(s) bundle service is reached (its token and headers files read).
    bundle_http: HttpOptions
    #: This sidecar's fleet id (sidecar_id, or the one kept in the data dir): its registry entry's.
    sidecar_id: str
    #: Where approval notifications go (the notifications key, secrets read).
    receivers: tuple[Receiver, ...] = ()


def _settings(config: ServeConfig, clock: Clock) -> _Settings:
    data_dir = Path(config.data_dir)
    private_dir(data_dir)  # 0700: the databases in it hold what agents asked and what people decided
    try:
        relay = (PeerCredentialRelay(config.listen[len("unix:"):], state_dir=data_dir)
                 if config.listen.startswith("unix:") else None)
        sidecar_id = resolve_sidecar_id(config.sidecar_id, data_dir)
        settings = _Settings(
            admin_token=config.resolved_admin_token(), credentials=config.server_credentials(),
            callers=config.caller_map(), relay=relay,
            resolver=config.caller_resolver(relay_prefix=relay.peer_prefix if relay else "", clock=clock),
            authzen_tls=config.authzen_ssl_context(), shipping=config.log_shipping(sidecar_id=sidecar_id),
            bundle_http=config.bundle_http(), sidecar_id=sidecar_id, receivers=receivers_from(config))
    except ConfigError as exc:
        raise SystemExit(f"tollgate serve: {exc}") from exc
    if not settings.admin_token and not config.admin_identities:
        log.warning("no admin token configured: AdminService (status, kill switches) refuses every call "
                    "(set --admin-token-file FILE, --admin-token TOKEN or admin_token in the config)")
    if settings.callers:
        log.info("callers: %d identities mapped to the principals they may speak for; any other caller is "
                 "refused (principal_mismatch)", len(settings.callers.entries))
    return settings


def _checked_log(config: ServeConfig) -> CheckpointKey | None:
    """Prove the decision log's tail before the writer continues its chain (see sidecar/checkpoints.py); returns
    the checkpoint key, if any. A tampered log stops the start unless accept_log_tamper says otherwise."""
    try:
        key = config.checkpoint_key()
    except ConfigError as exc:
        raise SystemExit(f"tollgate serve: {exc}") from exc
    path = Path(config.data_dir) / "decisions.db"
    try:
        problems = startup_problems(path, key, file=Path(config.decision_log_checkpoint_file)
                                    if config.decision_log_checkpoint_file else None)
    except (LogReadError, CheckpointError) as exc:
        raise SystemExit(f"tollgate serve: {exc}") from exc
    if not problems:
        return key
    found = "; ".join(problems)
    if config.accept_log_tamper:
        log.error("decision log %s was TAMPERED WITH: %s; starting anyway because accept_log_tamper is set: "
                  "new records chain on from the tampered head", path, found)
        return key
    raise SystemExit(f"tollgate serve: decision log {path} was tampered with: {found}. Keep the file for "
                     "investigation (`tollgate logs verify --data-dir DIR --key KEY_FILE` names every break); to start "
                     "on it anyway, pass --accept-log-tamper (or move it aside to start a new log)")


async def _open_state(config: ServeConfig, clock: Clock) -> SidecarState:
    """SQLite in the data dir, or the shared PostgreSQL store (sidecar/state.py says what a store down does)."""
    try:
        state = await open_state(config, clock=clock)
    except StateError as exc:
        raise SystemExit(f"tollgate serve: {exc}") from exc
    log.info("state store: %s", state.where)
    active = list(state.kill_switches.snapshot().active.values())  # on PostgreSQL: read by the listener
    if active:
        log.warning("kill switches active: %s", ", ".join(f"{s.scope}={s.value}" for s in active))
    return state


def _activator(config: ServeConfig, slot: EngineSlot, metrics: Metrics, manager: PluginManager,
               clock: Clock, *, http: HttpOptions) -> BundleActivator:
    async def on_bundle(status: BundleStatus, activation: Activation | None, failure: Failure | None) -> None:
        if activation is not None:
            metrics.activated(revision=activation.revision, digest=activation.digest, source=status.source,
                              when=activation.time.timestamp())
        if failure is not None:
            metrics.activation_failed(failure.reason)
        await manager.changed()  # SERVING only while a bundle is active

    engine_config = EngineConfig(entrypoint=config.entrypoint, workers=config.workers,
                                 eval_timeout=config.eval_timeout_ms / 1000, on_restart=metrics.engine_worker_restarted)
    if config.engine != "embedded":  # the bundle lives in the remote OPA; readiness follows its health
        try:
            engine = config.remote_engine(entrypoint=config.entrypoint, eval_timeout=engine_config.eval_timeout)
        except ConfigError as exc:
            raise SystemExit(f"tollgate serve: {exc}") from exc
        return RemoteEngineActivator(engine, slot, poll_interval=min(config.bundle_poll, 5.0), listeners=(on_bundle,),
                                     clock=clock)
    try:
        return BundleActivator(
            ActivatorConfig(
                source=config.bundle, state_dir=Path(config.data_dir) / "bundles", keys_dir=config.bundle_keys,
                require_signatures=config.require_signatures, poll_interval=config.bundle_poll,
                timeout=config.bundle_timeout, size_limit=config.bundle_size_limit, http=http,
                data_limits=config.bundle_data_limits(), smoke_log_dir=Path(config.data_dir),
            ),
            slot, engine_config, listeners=(on_bundle,), clock=clock,
        )
    except BundleError as exc:  # an unreadable trusted key: a configuration error, not a bad bundle
        raise SystemExit(f"tollgate serve: bundle_keys: {exc}") from exc


class _Parts:
    """The sidecar's parts, built from the settings and wired to each other and to the metrics."""

    def __init__(self, config: ServeConfig, settings: _Settings, state: SidecarState, slot: EngineSlot,
                 activator: BundleActivator, metrics: Metrics, health: GrpcHealth, clock: Clock) -> None:
        self.config, self.settings, self.state, self.slot = config, settings, state, slot
        self.activator, self.metrics, self.health, self.clock = activator, metrics, health, clock
        data_dir = Path(config.data_dir)
        self.decision_log = DecisionLog(LogConfig(path=data_dir / "decisions.db", synchronous=config.log_sync),
                                        observer=metrics)
        # Exporters and retention read decisions.db on connections of their own; answers never wait for them.
        self.shipping = LogShipping(self.decision_log.path, settings.shipping, clock=clock)
        self.limits = RequestLimits(max_request_bytes=config.max_request_bytes, max_depth=config.max_depth)
        self.authorizer = Authorizer(
            slot, self.decision_log, AuthorizerConfig(entrypoint=config.entrypoint), observer=metrics,
            kill_switches=state.kill_switches, approvals=state.approvals, budgets=BudgetGuard(state.budgets),
            callers=settings.callers, clock=clock,
            export_gate=self.shipping.refusal if config.decision_log_fail_closed_on_lag else never_behind,
        )
        metrics.exports, metrics.pruned = self.shipping.statuses, self.shipping.pruned
        pending = PendingApprovals(state.approvals, clock=clock)
        metrics.pending_approvals, metrics.before_scrape = pending, pending.refresh
        metrics.kill_switch_scopes = lambda: [s.scope for s in state.kill_switches.snapshot().active.values()]
        metrics.engine_workers = self._engine_workers

    def _engine_workers(self) -> tuple[int, int]:
        engine = self.slot.current
        return (engine.busy, engine.workers) if isinstance(engine, WorkerPoolEngine) else (0, 0)

    def grpc_server(self) -> grpc.aio.Server:
        config, settings, state = self.config, self.settings, self.state
        access = AdminAccess(settings.admin_token.encode(), frozenset(config.admin_identity_list()),
                             settings.resolver, tokens=state.tokens, people=config.person_identity_map(),
                             oidc=oidc_people(config.oidc_settings(), clock=self.clock),
                             audit=state.audit or NoAudit(), accounts=state.users)
        server = grpc_server(config)
        streams = StreamRoom(config.max_concurrent_streams)  # WaitForApproval and WatchApproval share it
        server.add_generic_rpc_handlers((
            AuthorizationServicer(self.authorizer, self.decision_log, self.limits, budgets=state.budgets,
                                  approvals=state.approvals, callers=settings.resolver, streams=streams,
                                  fleet_log=state.decisions).handler(),
            OutcomeServicer(state.outcomes, data_dir=self.decision_log.path.parent, resolver=settings.resolver,
                            callers=settings.callers, fleet_log=state.decisions).handler(),
            ToolResultServicer(state.tool_results, self.decision_log, resolver=settings.resolver,
                               fleet_log=state.decisions, clock=self.clock).handler(),
            AdminServicer(lambda: self.activator.status, state.kill_switches, access=access, budgets=state.budgets,
                          exports=self.shipping.statuses, fleet=state.fleet, clock=self.clock).handler(),
            ApprovalServicer(state.approvals, access=access, streams=streams).handler(),
            EnvoyAuthorizationServicer(self.authorizer, self.limits, settings=EnvoySettings.parse(config.envoy),
                                       resolver=settings.resolver, callers=settings.callers).handler(),
        ))
        health_pb2_grpc.add_HealthServicer_to_server(self.health.servicer, server)
        reflection.enable_server_reflection(
            (SERVICE, ADMIN_SERVICE, APPROVAL_SERVICE, ENVOY_SERVICE,
             health_pb2.DESCRIPTOR.services_by_name["Health"].full_name, reflection.SERVICE_NAME), server
        )
        return server


# -- the plugins, in start order ---------------------------------------------------------------------


def _add_plugins(manager: PluginManager, parts: _Parts, *, checkpoints: CheckpointPlugin | None = None) -> GrpcPlugin:
    """Add every plugin in start order (they stop in reverse); returns the gRPC server's."""
    config, settings = parts.config, parts.settings
    for plugin in parts.state.plugins:  # the store and its listener: stopped after everything that uses them
        if isinstance(plugin, ListenerPlugin):
            plugin.on_change = manager.changed  # health follows the staleness rule
        manager.add(plugin)
    manager.add(ShippingPlugin(parts.shipping, flush_seconds=EXPORT_FLUSH_SECONDS))
    manager.add(DecisionLogPlugin(parts.decision_log))
    if checkpoints is not None:  # after the writer starts; it stops after the gRPC drain, so it signs the last head
        manager.add(checkpoints)
    manager.add(BundlePlugin(parts.activator, parts.slot))
    if isinstance(parts.activator, RemoteEngineActivator):
        manager.add(parts.activator.health_plugin())
    if config.metrics_listen:
        manager.add(HttpPlugin(
            "metrics", lambda: start_metrics_server(parts.metrics, config.metrics_listen),
            refusal=lambda exc: f"cannot serve metrics on {config.metrics_listen} ({exc.strerror or exc})",
            announce=lambda address: log.info("metrics on http://%s/metrics", address)))
    if settings.relay is not None:
        manager.add(RelayPlugin(settings.relay))
    grpc_plugin = GrpcPlugin(parts.grpc_server(), settings.relay.backend if settings.relay else config.listen,
                             credentials=settings.credentials, drain_seconds=config.drain_seconds)
    manager.add(grpc_plugin)
    if config.authzen_listen:
        manager.add(_authzen_plugin(parts))
    manager.add(parts.state.sweep)
    if settings.receivers and parts.state.outbox is not None:
        manager.add(_notify_plugin(parts.state.outbox, parts))
    manager.add(_fleet_plugin(manager, parts, grpc_plugin))  # last: its goodbye is the first thing a stop does
    return grpc_plugin


def _fleet_plugin(manager: PluginManager, parts: _Parts, grpc_plugin: GrpcPlugin) -> FleetPlugin:
    """The heartbeat into the fleet registry; after the servers, so it reports the address bound."""
    config, relay = parts.config, parts.settings.relay
    facts = SidecarFacts(bundle=lambda: parts.activator.status, ready=lambda: manager.ready,
                         exports=parts.shipping.statuses, stale=parts.state.kill_switches.staleness,
                         listen=lambda: config.listen if relay is not None else grpc_plugin.address)
    return FleetPlugin(parts.state.fleet, facts, sidecar_id=parts.settings.sidecar_id, every=config.fleet_heartbeat,
                       clock=parts.clock)


def _notify_plugin(outbox: OutboxStore, parts: _Parts) -> NotifyPlugin:
    """The approval notifications' sender, from the store's outbox (sidecar/notify.py)."""
    config, state, clock = parts.config, parts.state, parts.clock
    notifier = Notifier(outbox, parts.settings.receivers, owner=sender_id(parts.settings.sidecar_id),
                        console_url=config.console_url, approver_groups=config.approver_groups,
                        max_attempts=config.notification_max_attempts, clock=clock,
                        metrics=NotifyMetrics(parts.metrics.registry, clock))
    return NotifyPlugin(notifier, generation=lambda: state.approvals.generation)


def _authzen_plugin(parts: _Parts) -> HttpPlugin:
    config, tls = parts.config, parts.settings.authzen_tls
    authzen = AuthzenService(parts.authorizer, parts.limits, callers=parts.settings.resolver, tls=tls is not None,
                             max_batch=config.authzen_max_batch)
    return HttpPlugin(
        "authzen",
        lambda: start_http_server(authzen.handle, config.authzen_listen, max_body=config.max_request_bytes,
                                  errors=json_error, tls=tls),
        refusal=lambda exc: f"authzen_listen: cannot listen on {config.authzen_listen} ({exc.strerror or exc})",
        announce=lambda address: log.info("AuthZEN access evaluation API on %s://%s",
                                          "https" if tls else "http", address))


class GrpcHealth:
    """Readiness as the gRPC health service reports it, for the whole server and the AuthorizationService."""

    def __init__(self, servicer: HealthServicer) -> None:
        self.servicer = servicer

    async def report(self, ready: bool) -> None:
        serving = health_pb2.HealthCheckResponse.SERVING if ready else health_pb2.HealthCheckResponse.NOT_SERVING
        await self.servicer.set("", serving)
        await self.servicer.set(SERVICE, serving)

    async def shutdown(self) -> None:
        await self.servicer.enter_graceful_shutdown()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


def grpc_server(config: ServeConfig) -> grpc.aio.Server:
    """The gRPC server `tollgate serve` runs on (the benchmark's no-op floor uses the same one)."""
    return grpc.aio.server(
        options=[
            # The transport refuses anything far past the limit; the servicer names the field for the rest.
            ("grpc.max_receive_message_length", 2 * config.max_request_bytes + 65536),
            ("grpc.so_reuseport", 0),
        ],
        # Streams have their own bound (StreamRoom): counted here too, they get room of their own on top.
        maximum_concurrent_rpcs=config.max_concurrent_rpcs + config.max_concurrent_streams,
    )


def main(config: ServeConfig) -> int:
    logging.basicConfig(
        level=config.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # httpx2 logs every request with its whole URL at INFO: a Slack webhook's URL is its secret.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    return asyncio.run(serve(config))
