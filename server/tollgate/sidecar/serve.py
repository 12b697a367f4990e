"""`tollgate serve`: the sidecar process — gRPC server, engine pool, decision log, signals."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import sys
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
    json_error,
)
from tollgate.api._http import start_http_server
from tollgate.bundle import BundleError
from tollgate.decision import Authorizer, AuthorizerConfig, BudgetGuard
from tollgate.decisionlog import DecisionLog, LogConfig, LogShipping
from tollgate.engine import EngineConfig, EngineSlot
from tollgate.identity import PeerCredentialRelay
from tollgate.sidecar.activation import Activation, ActivatorConfig, BundleActivator, BundleStatus, Failure
from tollgate.sidecar.config import ConfigError, ServeConfig
from tollgate.sidecar.metrics import Metrics, start_metrics_server
from tollgate.state import KillSwitches, StateError, StateStore
from tollgate.state.approvals import Approvals
from tollgate.state.budgets import Budgets
from tollgate.v1 import admin_pb2, approval_pb2, authorization_pb2

log = logging.getLogger("tollgate")

SERVICE = authorization_pb2.DESCRIPTOR.services_by_name["AuthorizationService"].full_name
ADMIN_SERVICE = admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
APPROVAL_SERVICE = approval_pb2.DESCRIPTOR.services_by_name["ApprovalService"].full_name
#: On shutdown, how long the decision-log exporters may take to deliver what is committed, in seconds.
EXPORT_FLUSH_SECONDS = 5.0


async def serve(config: ServeConfig) -> int:
    """Run until SIGTERM or SIGINT; then drain, flush the decision log and return 0."""
    loop = asyncio.get_running_loop()
    data_dir = Path(config.data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    try:
        admin_token = config.resolved_admin_token()
        credentials = config.server_credentials()
        callers = config.caller_map()
        # On a Unix socket the relay reads each connection's peer credentials (gRPC does not expose them).
        relay = (PeerCredentialRelay(config.listen[len("unix:"):], state_dir=data_dir)
                 if config.listen.startswith("unix:") else None)
        resolver = config.caller_resolver(relay_prefix=relay.peer_prefix if relay else "")
        authzen_tls = config.authzen_ssl_context()
        shipping_config = config.log_shipping()
        bundle_http = config.bundle_http()
    except ConfigError as exc:
        raise SystemExit(f"tollgate serve: {exc}") from exc
    if not admin_token and not config.admin_identities:
        log.warning("no admin token configured: AdminService (status, kill switches) refuses every call "
                    "(set --admin-token-file FILE, --admin-token TOKEN or admin_token in the config)")
    try:
        state = StateStore(data_dir / "state.db")
        kill_switches = KillSwitches(state)
        approvals = Approvals(state, approver_groups=config.approver_groups)
        budgets = Budgets(state, ttl=config.reservation_ttl)
    except StateError as exc:
        raise SystemExit(f"tollgate serve: {exc}") from exc
    if kill_switches.list():
        log.warning("kill switches active: %s",
                    ", ".join(f"{s.scope}={s.value}" for s in kill_switches.list()))
    decision_log = DecisionLog(LogConfig(path=data_dir / "decisions.db", synchronous=config.log_sync))
    decision_log.start(loop)

    health = HealthServicer()
    slot = EngineSlot()
    engine_config = EngineConfig(
        entrypoint=config.entrypoint, workers=config.workers, eval_timeout=config.eval_timeout_ms / 1000
    )
    metrics = Metrics()

    async def on_bundle(status: BundleStatus, activation: Activation | None, failure: Failure | None) -> None:
        if activation is not None:
            metrics.activated(revision=activation.revision, digest=activation.digest, source=status.source,
                              when=activation.time.timestamp())
        if failure is not None:
            metrics.activation_failed(failure.reason)
        # SERVING only while a bundle is active; a refused revision never takes the active one away.
        serving = health_pb2.HealthCheckResponse.SERVING if slot.current else health_pb2.HealthCheckResponse.NOT_SERVING
        await health.set("", serving)
        await health.set(SERVICE, serving)

    try:
        activator = BundleActivator(
            ActivatorConfig(
                source=config.bundle, state_dir=data_dir / "bundles", keys_dir=config.bundle_keys,
                require_signatures=config.require_signatures, poll_interval=config.bundle_poll,
                timeout=config.bundle_timeout, size_limit=config.bundle_size_limit, http=bundle_http,
            ),
            slot, engine_config, listeners=(on_bundle,),
        )
    except BundleError as exc:  # an unreadable trusted key: a configuration error, not a bad bundle
        decision_log.close()
        state.close()
        raise SystemExit(f"tollgate serve: bundle_keys: {exc}") from exc
    await on_bundle(activator.status, None, None)  # NOT_SERVING until the first activation
    await activator.start()
    if slot.current is None:
        # Fail closed: keep serving, answer every request DENY (no_bundle), report NOT_SERVING, keep polling.
        error = activator.status.last_error
        log.error("no policy bundle loaded: %s; every request will be denied (no_bundle) until a good bundle "
                  "arrives", error.message if error else "unknown error")
    metrics_server = None
    if config.metrics_listen:
        try:
            metrics_server, metrics_address = await start_metrics_server(metrics, config.metrics_listen)
        except OSError as exc:
            await activator.stop()
            if slot.current is not None:
                await slot.current.close()
            decision_log.close()
            state.close()
            raise SystemExit(f"tollgate serve: cannot serve metrics on {config.metrics_listen} ({exc.strerror or exc})"
                             ) from exc
        log.info("metrics on http://%s/metrics", metrics_address)
    # Exporters and retention read decisions.db on connections of their own; answers never wait for them.
    shipping = LogShipping(decision_log.path, shipping_config)
    shipping.start()
    metrics.exports, metrics.pruned = shipping.statuses, shipping.pruned

    limits = RequestLimits(max_request_bytes=config.max_request_bytes, max_depth=config.max_depth)
    authorizer = Authorizer(
        slot, decision_log,
        AuthorizerConfig(entrypoint=config.entrypoint), on_decision=metrics.decision,
        kill_switches=kill_switches, approvals=approvals, budgets=BudgetGuard(budgets), callers=callers,
        export_gate=shipping.refusal if config.decision_log_fail_closed_on_lag else None,
    )
    server = grpc_server(config)
    server.add_generic_rpc_handlers((
        AuthorizationServicer(authorizer, decision_log, limits, budgets=budgets, approvals=approvals,
                              callers=resolver).handler(),
        AdminServicer(lambda: activator.status, kill_switches, admin_token=admin_token, budgets=budgets,
                      exports=shipping.statuses, admin_identities=config.admin_identity_list(),
                      callers=resolver).handler(),
        ApprovalServicer(approvals, admin_token=admin_token, admin_identities=config.admin_identity_list(),
                         callers=resolver).handler(),
    ))
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE, ADMIN_SERVICE, APPROVAL_SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME), server
    )
    address = _bind(server, relay.backend if relay else config.listen, credentials)
    await server.start()
    if relay is not None:
        await relay.start()
        address = config.listen
    authzen_server, startup_failed = None, ""
    if config.authzen_listen:
        authzen = AuthzenService(authorizer, limits, callers=resolver, tls=authzen_tls is not None)
        try:
            authzen_server, authzen_address = await start_http_server(
                authzen.handle, config.authzen_listen, max_body=config.max_request_bytes, errors=json_error,
                tls=authzen_tls)
            log.info("AuthZEN access evaluation API on %s://%s", "https" if authzen_tls else "http", authzen_address)
        except OSError as exc:
            # The gRPC server is already up: shut everything down the normal way, then exit with the error.
            startup_failed = f"authzen_listen: cannot listen on {config.authzen_listen} ({exc.strerror or exc})"
    if callers:
        log.info("callers: %d identities mapped to the principals they may speak for; any other caller is "
                 "refused (principal_mismatch)", len(callers.entries))

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    revision = slot.current.revision if slot.current else "none"
    # One line on stdout that tools and tests can wait for.
    print(f"tollgate: serving on {address} (bundle {revision}, decision log {decision_log.path})", flush=True)
    sweep = asyncio.create_task(_sweep_reservations(budgets, every=min(config.reservation_ttl, 60.0)))
    if not startup_failed:
        await stop.wait()

    sweep.cancel()
    log.info("shutting down: draining in-flight requests (up to %gs)", config.drain_seconds)
    await health.enter_graceful_shutdown()
    if authzen_server is not None:
        authzen_server.close()
    await server.stop(config.drain_seconds)
    if relay is not None:
        await relay.close()
    await activator.stop()
    if metrics_server is not None:
        metrics_server.close()
    if slot.current is not None:
        await slot.current.close()
    await loop.run_in_executor(None, decision_log.close)
    # After the last commit: the exporters try to deliver everything, within a deadline (their cursors are on
    # disk, so what does not make it goes out on the next start).
    await loop.run_in_executor(None, shipping.stop, EXPORT_FLUSH_SECONDS)
    state.close()
    log.info("decision log flushed; bye")
    if startup_failed:
        raise SystemExit(f"tollgate serve: {startup_failed}")
    return 0


async def _sweep_reservations(budgets: Budgets, *, every: float) -> None:
    """Mark expired reservations: spend already leaves them out once past expiry; this keeps their status true."""
    while True:
        await asyncio.sleep(every)
        try:
            expired = budgets.expire()
        except StateError as exc:
            log.error("budgets: %s", exc)
            continue
        if expired:
            log.info("budgets: %d reservations expired and released their amounts", expired)


def grpc_server(config: ServeConfig) -> grpc.aio.Server:
    """The gRPC server `tollgate serve` runs on (the benchmark's no-op floor uses the same one)."""
    return grpc.aio.server(
        options=[
            # The transport refuses anything far past the limit; the servicer names the field for the rest.
            ("grpc.max_receive_message_length", 2 * config.max_request_bytes + 65536),
            ("grpc.so_reuseport", 0),
        ],
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
    )


def _bind(server: grpc.aio.Server, listen: str, credentials: grpc.ServerCredentials | None = None) -> str:
    def add_port(address: str) -> int:
        port: int = (server.add_insecure_port(address) if credentials is None
                     else server.add_secure_port(address, credentials))
        return port

    if listen.startswith("unix:"):
        path = listen[len("unix:"):]
        try:
            if stat.S_ISSOCK(os.stat(path).st_mode):
                os.unlink(path)  # a stale socket from an earlier run
        except FileNotFoundError:
            pass
        add_port(listen)
        return listen
    port = add_port(listen)
    if port == 0:
        raise SystemExit(f"tollgate serve: cannot listen on {listen} (address in use or invalid?)")
    host = listen.rsplit(":", 1)[0]
    return f"{host}:{port}"


def main(config: ServeConfig) -> int:
    logging.basicConfig(
        level=config.log_level.upper(), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return asyncio.run(serve(config))
