"""`tollgate serve`: flags for every ServeConfig field, then the sidecar."""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields

from tollgate_cli._common import EXIT_ERROR

ORDER = 10  # position in `tollgate --help`
COMMANDS = ("serve",)  # the top-level command register() adds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from tollgate.sidecar.config import ServeConfig

    serve = sub.add_parser("serve", help="run the policy decision sidecar")
    serve.add_argument("--config", help="YAML file; its keys are the flag names")
    for f in fields(ServeConfig):
        flag = f"--{f.name.replace('_', '-')}"
        if str(f.type) == "bool":
            serve.add_argument(flag, dest=f.name, action="store_const", const=True, default=None,
                               help=_field_help(f.name))
            continue
        kind = {"int": int, "float": float}.get(str(f.type), str)
        serve.add_argument(flag, dest=f.name, type=kind, default=None, help=_field_help(f.name))
    serve.set_defaults(func=_serve)


def _field_help(name: str) -> str:
    from tollgate.sidecar.config import ServeConfig

    doc = {
        "listen": "HOST:PORT or unix:PATH", "data_dir": "decision log and state directory",
        "bundle": "policy directory, OPA bundle .tar.gz, or http(s):// bundle URL (watched for new revisions)",
        "bundle_poll": "seconds between polls of a bundle URL (jittered by a quarter either way)",
        "bundle_timeout": "bundle download deadline in seconds", "bundle_size_limit": "largest bundle in bytes",
        "bundle_data_limit": "largest total of a bundle's data documents in bytes (refused before parsing)",
        "bundle_data_values": "most values a bundle's data documents may hold (refused before parsing)",
        "bundle_keys": "directory of trusted public keys (KID.pem)",
        "bundle_token_file": "file holding the bearer token sent to a bundle URL",
        "bundle_headers_file": "file of `Name: value` headers sent with every request to a bundle URL",
        "bundle_ca_file": "PEM CA certificates an https bundle URL's certificate must chain to (not the system's)",
        "require_signatures": "refuse bundles not signed by a trusted key",
        "metrics_listen": "HOST:PORT for Prometheus /metrics (off when empty)",
        "engine": "embedded, or opa+http(s)://HOST:PORT: an OPA server holding the bundle (--bundle unused)",
        "engine_ca_file": "PEM CA certificates an opa+https engine's certificate must chain to (not the system's)",
        "engine_cert_file": "PEM client certificate presented to an opa+https engine (mTLS; with --engine-key-file)",
        "engine_key_file": "PEM key of --engine-cert-file",
        "engine_token_file": "file holding the bearer token sent to a remote OPA (OPA's --authentication=token)",
        "entrypoint": "policy document to evaluate",
        "eval_timeout_ms": "evaluation deadline in ms", "workers": "engine worker processes (0: one per CPU)",
        "max_request_bytes": "largest request accepted", "max_depth": "deepest argument nesting accepted",
        "log_sync": "full or normal", "max_concurrent_rpcs": "unary RPCs handled at once",
        "max_concurrent_streams": "WaitForApproval/WatchApproval streams open at once",
        "drain_seconds": "grace for in-flight requests on SIGTERM", "log_level": "debug, info, warning, error",
        "admin_token": "bearer token AdminService requires (prefer --admin-token-file: argv is visible to all)",
        "admin_token_file": "file holding the admin token",
        "reservation_ttl": "seconds a budget reservation holds its amount until usage is reported",
        "budget_line": "budget requests of one scope that may wait at this sidecar (past it: DENY scope_overloaded)",
        "budget_line_wait": "seconds a budget request may wait in its scope's line (past it: DENY scope_overloaded)",
        "state_store": "postgresql:// URL of the state store a fleet shares (empty: SQLite in the data dir)",
        "state_store_timeout": "seconds a state-store call may take before the request is DENY state_unavailable",
        "state_store_password_file": "file holding the state store's password (its first line)",
        "state_store_migrate": "create or upgrade the state store's schema at start-up",
        "state_store_max_connections": "most connections to the state store",
        "kill_switch_max_staleness": "seconds without confirmed kill switches before every request is DENY "
                                     "state_stale",
        "sidecar_id": "this sidecar's name in the fleet registry (empty: HOST-SUFFIX, kept in the data dir)",
        "fleet_heartbeat": "seconds between heartbeats into the fleet registry (three missed: shown stale)",
        "kill_switch_refresh": "seconds between reads of the shared kill switches (beside their notifications)",
        "tls_cert": "PEM server certificate: serve gRPC over TLS", "tls_key": "PEM key of --tls-cert",
        "tls_client_ca": "PEM CA that client certificates must chain to (mTLS; the certificate names the caller)",
        "tls_require_client_cert": "refuse TLS clients without a valid certificate (needs --tls-client-ca)",
        "callers": "YAML/JSON list of {id, agents, teams, users, workflows}: who may speak for whom",
        "token_keys": "directory of KID.pem keys verifying caller tokens (tollgate-caller-token metadata)",
        "token_issuer": "iss caller tokens must carry", "token_audience": "aud caller tokens must carry",
        "authzen_listen": "HOST:PORT for the AuthZEN 1.0 HTTP API (off when empty)",
        "authzen_max_batch": "most evaluations in one AuthZEN batch request",
        "envoy": "YAML/JSON {mcp_servers, principal_headers, trusted_proxies, ...}: Envoy ext_authz Check mapping",
        "admin_identities": "comma-separated caller identities that may use the admin RPCs without the token",
        "person_identities": "client certificate identity -> the person it authenticates on approvals (a mapping: "
                             "set it in --config)",
        "oidc": "{issuer, client_id, audience, name_claim, ...}: OpenID Connect tokens of people on approvals (a "
                "mapping: set it in --config)",
        "authzen_tls": "serve the AuthZEN port over TLS (--tls-cert/--tls-key; --tls-client-ca: mTLS)",
        "decision_log_service": "OPA decision-log service URL: records go to POST URL+resource (off when empty)",
        "decision_log_resource": "path below --decision-log-service that takes uploads",
        "decision_log_token_file": "file holding the bearer token for --decision-log-service",
        "otlp_headers_file": "file of `Name: value` headers sent with every OTLP upload (a collector's API key)",
        "otlp_endpoint": "OTLP/HTTP collector URL: one log record per decision to POST URL/v1/logs (off when empty)",
        "decision_log_batch_records": "most records per upload", "decision_log_batch_bytes": "most bytes per upload",
        "decision_log_min_delay": "seconds between looks for new records; first retry delay",
        "decision_log_max_delay": "longest retry delay in seconds",
        "decision_log_max_lag": "seconds behind before an exporter reports WARN (0: no limit)",
        "decision_log_fail_closed_on_lag": "answer DENY export_lag while an exporter is behind max lag",
        "decision_log_retention": "delete exported records older than this, e.g. 30d, 12h (empty: keep all)",
        "decision_log_checkpoint_key_file": "HMAC secret or Ed25519/P-256 PEM key signing checkpoints of the log's "
                                            "head and retention anchors (outside the data dir; empty: none)",
        "decision_log_checkpoint_interval": "seconds between signed checkpoints (one more on shutdown)",
        "decision_log_checkpoint_file": "JSON Lines file each checkpoint is also appended to (another disk)",
        "approver_groups": "the members of each group:NAME an approval names (a mapping: set it in --config)",
        "notifications": "YAML/JSON list of {url, kind: generic|slack, groups, secret_file}: approval webhooks",
        "console_url": "the console's URL people open: notifications link URL/approvals/ID",
        "notification_max_attempts": "deliveries of one approval notification before it is given up",
        "accept_log_tamper": "start even if the decision log's tail does not prove (logged as TAMPERED WITH)",
    }.get(name, "")
    default = getattr(ServeConfig(), name)
    if name.startswith("admin_token"):
        return f"{doc} (default: none, admin RPCs refused)"
    return f"{doc} (default {default})"


def _serve(args: argparse.Namespace) -> int:
    from tollgate.sidecar import serve
    from tollgate.sidecar.config import ConfigError, ServeConfig, load_config

    overrides = {f.name: getattr(args, f.name) for f in fields(ServeConfig)}
    try:
        config = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"tollgate serve: {exc}", file=sys.stderr)
        return EXIT_ERROR
    return serve.main(config)
