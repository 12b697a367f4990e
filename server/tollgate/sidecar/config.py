"""`tollgate serve` settings: defaults, a YAML file, then flags (every flag is also a config key)."""

from __future__ import annotations

import dataclasses
import ssl
from dataclasses import dataclass, fields
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import grpc
import yaml

from tollgate import encoding
from tollgate.bundle import DEFAULT_DATA_LIMIT, DEFAULT_DATA_VALUES, DEFAULT_SIZE_LIMIT, DataLimits
from tollgate.clock import Clock, SystemClock
from tollgate.contract import MAX_DEPTH
from tollgate.decisionlog import ShippingConfig
from tollgate.identity import CallerMap, CallerResolver, IdentityConfigError, TokenVerifier, valid_caller_id
from tollgate.net import HttpOptions, ssl_context
from tollgate.sidecar._budget_config import BudgetSettings
from tollgate.sidecar._config_files import BUNDLE_HEADERS as _BUNDLE_HEADERS
from tollgate.sidecar._config_files import ConfigError as ConfigError  # re-exported: every caller imports it from here
from tollgate.sidecar._config_files import read_headers as _read_headers
from tollgate.sidecar._config_files import read_secret as _read_secret
from tollgate.sidecar._engine_config import EngineSettings

if TYPE_CHECKING:
    from tollgate.decisionlog._checkpoint import CheckpointKey
    from tollgate.identity._oidc import OidcSettings

_PROJECT_REGO = Path(__file__).resolve().parents[2] / "rego"


def default_bundle() -> str:
    """The project's rego/ (when run from a checkout), else ./rego."""
    return str(_PROJECT_REGO) if _PROJECT_REGO.is_dir() else "rego"


@dataclass(frozen=True)
class ServeConfig(BudgetSettings, EngineSettings):
    """Everything `tollgate serve` needs. Keys in the YAML file are these names (dashes also accepted); the engine's
    are in EngineSettings (sidecar/_engine_config.py), the budgets' in BudgetSettings (sidecar/_budget_config.py)."""

    #: gRPC address: HOST:PORT (port 0 picks a free one) or unix:PATH.
    listen: str = "127.0.0.1:50051"
    #: Directory for the decision log and state.
    data_dir: str = ".tollgate"
    #: Policy bundle: a directory laid out like rego/, an OPA bundle .tar.gz, or an http(s):// bundle service URL.
    #: Each is watched: a new revision is verified, compiled, smoke-tested and swapped in without a restart.
    bundle: str = dataclasses.field(default_factory=default_bundle)
    #: Seconds between polls of an http(s) bundle service (jittered by ±25 %; errors back off up to 5 min).
    bundle_poll: float = 30.0
    #: Whole-download deadline for an http(s) bundle, in seconds.
    bundle_timeout: float = 10.0
    #: Largest bundle download, and largest uncompressed bundle, in bytes (a guard against gzip bombs).
    bundle_size_limit: int = DEFAULT_SIZE_LIMIT
    #: Largest total size of a bundle's data documents (data.json / data.yaml), in bytes, checked before any is
    #: parsed (a parsed document takes many times its bytes).
    bundle_data_limit: int = DEFAULT_DATA_LIMIT
    #: Most values (objects, arrays, keys, scalars) a bundle's data documents may hold together, counted from
    #: their bytes before they are parsed: each costs the sidecar up to ~250 bytes while it is read.
    bundle_data_values: int = DEFAULT_DATA_VALUES
    #: A file holding the bearer token sent to an http(s) bundle service (surrounding whitespace ignored).
    bundle_token_file: str = ""
    #: A file of headers sent with every request to an http(s) bundle service, one `Name: value` per line
    #: (# comments), as otlp_headers_file: an object store's or CDN's credentials, kept out of the config.
    bundle_headers_file: str = ""
    #: PEM CA certificates an https bundle service's certificate must chain to, in place of the system's trust
    #: store (a service behind a private CA).
    bundle_ca_file: str = ""
    #: Directory of trusted public keys (KID.pem); signed bundles are verified against them.
    bundle_keys: str = ""
    #: Refuse bundles that are not signed by a trusted key (needs bundle_keys).
    require_signatures: bool = False
    #: Prometheus metrics endpoint, HOST:PORT (GET /metrics); "" turns it off.
    metrics_listen: str = ""
    #: The policy document evaluated for every request.
    entrypoint: str = "tollgate/decision"
    #: Deadline for one policy evaluation, in milliseconds; past it the answer is DENY (deadline_exceeded).
    eval_timeout_ms: float = 50.0
    #: Engine worker processes; 0 means one per CPU.
    workers: int = 0
    #: Largest AuthorizeRequest accepted, in bytes.
    max_request_bytes: int = 1024 * 1024
    #: Deepest nesting accepted in tool.arguments and context; at most 31 (MAX_DEPTH), the deepest whose record
    #: GetDecision can still send (protobuf decoders stop at 100 nested messages).
    max_depth: int = MAX_DEPTH
    #: Decision-log durability: "full" (fsync per group commit) or "normal" (survives a process crash only).
    log_sync: str = "full"
    #: RPCs handled at once; more are refused with RESOURCE_EXHAUSTED instead of queueing without bound.
    #: Approval streams do not count against it: they have max_concurrent_streams.
    max_concurrent_rpcs: int = 4096
    #: WaitForApproval and WatchApproval streams open at once (each may last an approval's TTL); more are refused
    #: with RESOURCE_EXHAUSTED, and unary RPCs (Authorize, Kill, health) keep all of max_concurrent_rpcs.
    max_concurrent_streams: int = 1024
    #: On SIGTERM, how long in-flight requests may take to finish, in seconds.
    drain_seconds: float = 15.0
    #: Server log level (debug, info, warning, error).
    log_level: str = "info"
    #: The bearer token AdminService RPCs (status, kill switches) require; without one they are refused.
    #: Prefer admin_token_file: a token on a command line is visible to every user of the machine.
    admin_token: str = ""
    #: A file holding the admin token (surrounding whitespace ignored), instead of admin_token.
    admin_token_file: str = ""
    #: Approver groups: an approval's approvers entry `group:NAME` names every identity listed under NAME
    #: here (e.g. {"sre": ["alice", "bob"]}); a group not listed names no one.
    approver_groups: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: Webhooks told when an approval opens, is decided or expires (sidecar/notify.py; docs/CONSOLE.md).
    notifications: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: The console's address people open (default: the console section's base_url): links {console_url}/approvals/ID.
    console_url: str = ""
    #: Deliveries of one notification before it is given up (dead); retries back off from 1 s to 5 min.
    notification_max_attempts: int = 12
    #: Where budgets, approvals, kill switches and the fleet registry live: "" is SQLite in data_dir (one
    #: sidecar); a postgresql://USER@HOST:PORT/DB URL is the store a fleet shares (libpq's query parameters, such
    #: as ?sslmode=verify-full, pass through; PGPASSFILE works as with psql).
    state_store: str = ""
    #: Seconds a call to a PostgreSQL state store may take (a connection, a lock, a statement); past it the
    #: request that needs the state is DENY state_unavailable.
    state_store_timeout: float = 2.0
    #: A file holding the PostgreSQL password (its first line), for a state_store URL that carries none.
    state_store_password_file: str = ""
    #: Create or upgrade the PostgreSQL schema at start-up (else an older schema is a start-up error naming
    #: `tollgate state migrate`); a schema newer than this tollgate knows is always refused.
    state_store_migrate: bool = False
    #: Most connections this sidecar opens to a PostgreSQL state store (a budget step holds one across its
    #: policy evaluation, so this bounds the budget decisions in flight).
    state_store_max_connections: int = 10
    #: Seconds a sidecar on a shared store may go without confirming the kill switches before it denies every
    #: request state_stale (it cannot prove that none names the request).
    kill_switch_max_staleness: float = 5.0
    #: Seconds between reads of the shared store's kill switches, the backstop to their push notifications.
    kill_switch_refresh: float = 1.0
    #: This sidecar's name in the fleet registry (`tollgate fleet`): a letter or digit, then up to 127 letters,
    #: digits or . _ : @ / -. "" is HOST-SUFFIX, the suffix drawn once and kept in data_dir/sidecar-id.
    sidecar_id: str = ""
    #: Seconds between heartbeats into the fleet registry; an entry three heartbeats late is shown stale.
    fleet_heartbeat: float = 5.0
    #: PEM server certificate (chain) for TLS on the gRPC listener; with tls_key. "" serves plaintext.
    tls_cert: str = ""
    #: PEM private key of tls_cert.
    tls_key: str = ""
    #: PEM CA bundle that client certificates must chain to (mTLS); the certificate names the caller (its SANs).
    tls_client_ca: str = ""
    #: Require a valid client certificate on every TLS connection (needs tls_client_ca). gRPC asks for a client
    #: certificate only when it requires one, so tls_client_ca needs this too.
    tls_require_client_cert: bool = False
    #: Which callers may speak for which principals: a list of {id, agents, teams, users, workflows}, where id
    #: is a certificate identity (spiffe://..., dns:NAME, cn:NAME), uid:N or gid:N (Unix socket) or jwt:SUB
    #: (caller token), and each list names what it may claim ("*": any). Empty: identity is only reported.
    #: Once any entry exists, a caller not listed may claim nothing (DENY principal_mismatch).
    callers: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    #: Directory of trusted public keys (KID.pem) that verify caller tokens (JWT, RS256 or ES256, sent in
    #: `tollgate-caller-token` metadata); "" accepts no tokens.
    token_keys: str = ""
    #: The iss every caller token must carry.
    token_issuer: str = ""
    #: The aud every caller token must carry.
    token_audience: str = ""
    #: Caller identities (as in callers: spiffe://..., uid:N, gid:N, jwt:SUB, ...) that may use AdminService and
    #: ApprovalService without the admin token, because the transport proves who they are.
    admin_identities: list[str] = dataclasses.field(default_factory=list)
    #: Client certificate or Unix-socket identities (spiffe://..., dns:NAME, cn:NAME, uid:N) → the person each
    #: authenticates on ApprovalService, who decides as themselves (people's own tokens need no entry).
    person_identities: dict[str, str] = dataclasses.field(default_factory=dict)
    #: OpenID Connect tokens of people on ApprovalService: issuer, client_id, audience, ... (docs/CONSOLE.md).
    oidc: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: AuthZEN 1.0 Access Evaluation API over HTTP, HOST:PORT (POST /access/v1/evaluation[s]); "" turns it off.
    authzen_listen: str = ""
    #: Serve the AuthZEN port over TLS with tls_cert/tls_key; with tls_client_ca, a client certificate is required
    #: there too and names the caller, as on gRPC.
    authzen_tls: bool = False
    #: Most evaluations in one POST /access/v1/evaluations (each is a logged decision); more is a 400.
    authzen_max_batch: int = 64
    #: Envoy ext_authz Check: mcp_servers, principal_headers, trusted_proxies, ... (api/_envoy.py EnvoySettings).
    envoy: dict[str, Any] = dataclasses.field(default_factory=dict)
    #: OPA decision-log service base URL (http or https): committed records are POSTed to
    #: {decision_log_service}{decision_log_resource} as gzipped JSON arrays of OPA events. "" exports nothing.
    decision_log_service: str = ""
    #: The path below decision_log_service that receives uploads (OPA's decision_logs.resource).
    decision_log_resource: str = "/logs"
    #: A file holding the bearer token sent to decision_log_service (surrounding whitespace ignored).
    decision_log_token_file: str = ""
    #: OpenTelemetry collector OTLP/HTTP base URL (e.g. http://collector:4318): one log record per decision,
    #: POSTed as OTLP JSON to {otlp_endpoint}/v1/logs. "" exports nothing.
    otlp_endpoint: str = ""
    #: A file of headers sent with every OTLP upload, one `Name: value` per line (# comments): the API key or
    #: token a collector or vendor asks for, kept out of the config and the command line.
    otlp_headers_file: str = ""
    #: Most records in one upload (both exporters).
    decision_log_batch_records: int = 500
    #: Most record bytes (uncompressed JSON) in one upload; a receiver's 413 halves it.
    decision_log_batch_bytes: int = 1024 * 1024
    #: Seconds between looks for new records once caught up, and the first retry delay after a failed upload.
    decision_log_min_delay: float = 1.0
    #: Longest retry delay in seconds: failed uploads back off exponentially, with jitter, up to it.
    decision_log_max_delay: float = 60.0
    #: Seconds an exporter may fall behind before it reports WARN (metrics, GetStatus); 0 means no limit.
    decision_log_max_lag: float = 300.0
    #: Answer DENY (export_lag) instead of allow or require_approval while an exporter is further behind than
    #: decision_log_max_lag. Off by default: every decision is on local disk before it is answered, so a slow
    #: receiver delays the copy, not the record; turn it on when the local disk may not outlive the process.
    decision_log_fail_closed_on_lag: bool = False
    #: Delete decision records older than this (e.g. 30d, 12h, 90m), never ones an exporter has not yet
    #: delivered, never the newest; "" keeps everything.
    decision_log_retention: str = ""
    #: A file holding the key that signs checkpoints of the log's chain head and retention's anchors: an HMAC
    #: secret (32 bytes or more) or a PEM Ed25519 / ECDSA P-256 private key. Keep it outside data_dir: whoever
    #: can write the log must not hold it. "" publishes no checkpoints.
    decision_log_checkpoint_key_file: str = ""
    #: Seconds between checkpoints (one more is published on shutdown).
    decision_log_checkpoint_interval: float = 60.0
    #: A JSON Lines file each checkpoint is also appended to (fsynced), ideally on another disk or host mount;
    #: `tollgate logs verify --checkpoints FILE` proves the log against it. "" keeps them in the log only.
    decision_log_checkpoint_file: str = ""
    #: Start even when the start-up check finds the log tampered with (logged as an error on every start).
    accept_log_tamper: bool = False

    def validate(self) -> ServeConfig:
        self._validate_engine()
        self._validate_budgets()
        if self.eval_timeout_ms <= 0:
            raise ConfigError("eval_timeout_ms: must be greater than 0")
        if self.workers < 0:
            raise ConfigError("workers: must be 0 (one per CPU) or more")
        if self.max_request_bytes <= 0:
            raise ConfigError("max_request_bytes: must be greater than 0")
        if not 1 <= self.max_depth <= MAX_DEPTH:
            raise ConfigError(f"max_depth: must be 1 to {MAX_DEPTH}, not {self.max_depth} (a deeper request's "
                              f"record could not be read back: protobuf decoders stop at 100 nested messages)")
        if self.authzen_max_batch < 1:
            raise ConfigError("authzen_max_batch: must be 1 or more")
        if self.log_sync not in ("full", "normal"):
            raise ConfigError(f"log_sync: must be 'full' or 'normal', not {self.log_sync!r}")
        if self.max_concurrent_rpcs < 1:
            raise ConfigError("max_concurrent_rpcs: must be 1 or more")
        if self.max_concurrent_streams < 1:
            raise ConfigError("max_concurrent_streams: must be 1 or more")
        if self.bundle_poll <= 0:
            raise ConfigError("bundle_poll: must be greater than 0 seconds")
        if self.bundle_timeout <= 0:
            raise ConfigError("bundle_timeout: must be greater than 0 seconds")
        if self.bundle_size_limit <= 0:
            raise ConfigError("bundle_size_limit: must be greater than 0")
        if self.bundle_data_limit <= 0 or self.bundle_data_values <= 0:
            raise ConfigError("bundle_data_limit, bundle_data_values: must be greater than 0")
        if self.require_signatures and not self.bundle_keys:
            raise ConfigError("require_signatures: needs bundle_keys (the directory of trusted public keys)")
        if self.bundle_keys and not Path(self.bundle_keys).is_dir():
            raise ConfigError(f"bundle_keys: {self.bundle_keys!r} is not a directory")
        self._validate_bundle_service()
        if self.metrics_listen and (":" not in self.metrics_listen
                                    or not self.metrics_listen.rsplit(":", 1)[1].isdigit()):
            raise ConfigError(f"metrics_listen: must be HOST:PORT, not {self.metrics_listen!r}")
        if not self.listen:
            raise ConfigError("listen: required (HOST:PORT or unix:PATH)")
        if self.admin_token and self.admin_token_file:
            raise ConfigError("admin_token_file: give admin_token or admin_token_file, not both")
        if self.admin_token and self.admin_token != self.admin_token.strip():
            raise ConfigError("admin_token: must not start or end with whitespace")
        if not isinstance(self.approver_groups, dict):
            raise ConfigError(f"approver_groups: must map group names to lists of identities, "
                              f"got {self.approver_groups!r}")
        for group, members in self.approver_groups.items():
            if not isinstance(members, list) or not all(isinstance(m, str) and m.strip() for m in members):
                raise ConfigError(f"approver_groups: {group!r} must be a list of identities, got {members!r}")
        self._validate_tls()
        self._validate_identity()
        self._validate_log_export()
        self._validate_state_store()
        self._validate_fleet()
        return self

    def _validate_fleet(self) -> None:
        from tollgate.state import valid_sidecar_id  # imported here, as the state store's checks are

        if self.sidecar_id and not valid_sidecar_id(self.sidecar_id):
            raise ConfigError(f"sidecar_id: {self.sidecar_id[:140]!r} is not one: a letter or digit, then up to 127 "
                              "letters, digits or . _ : @ / - (\"\" names it HOST-SUFFIX)")
        if not 0 < self.fleet_heartbeat <= 3600:  # also refuses NaN
            raise ConfigError(f"fleet_heartbeat: must be above 0 and at most 3600 seconds, not "
                              f"{self.fleet_heartbeat:g}")

    def _validate_state_store(self) -> None:
        # Imported here: the PostgreSQL driver is loaded only by a sidecar that uses it.
        from tollgate.state.postgres import is_postgres_url, redact

        if self.state_store and not is_postgres_url(self.state_store):
            raise ConfigError(f"state_store: must be \"\" (SQLite in data_dir) or a postgresql:// URL, not "
                              f"{redact(self.state_store)!r}")
        if not self.state_store:
            for name in ("state_store_password_file", "state_store_migrate"):
                if getattr(self, name):
                    raise ConfigError(f"{name}: needs a postgresql:// state_store (SQLite in data_dir has none)")
        if self.state_store_password_file and not Path(self.state_store_password_file).is_file():
            raise ConfigError(f"state_store_password_file: {self.state_store_password_file!r} is not a readable "
                              "file")
        # Bounded above too: an infinite timeout would let a hung store hang every request that needs it, an
        # infinite staleness bound would never deny on kill switches it cannot confirm.
        if not 0 < self.state_store_timeout <= 60:  # also refuses NaN
            raise ConfigError(f"state_store_timeout: must be above 0 and at most 60 seconds, not "
                              f"{self.state_store_timeout:g}")
        if self.state_store_max_connections < 1:
            raise ConfigError("state_store_max_connections: must be 1 or more")
        if not 0 < self.kill_switch_max_staleness <= 3600:
            raise ConfigError(f"kill_switch_max_staleness: must be above 0 and at most 3600 seconds, not "
                              f"{self.kill_switch_max_staleness:g}")
        if not 0 < self.kill_switch_refresh < self.kill_switch_max_staleness:
            raise ConfigError(f"kill_switch_refresh: must be above 0 and below kill_switch_max_staleness "
                              f"({self.kill_switch_max_staleness:g} s), not {self.kill_switch_refresh:g}: a sidecar "
                              "that refreshes less often than the bound would deny everything state_stale")

    def _validate_log_export(self) -> None:
        for name in ("decision_log_service", "otlp_endpoint"):
            url = getattr(self, name)
            parts = urlsplit(url)
            if url and (parts.scheme not in ("http", "https") or not parts.hostname or parts.query):
                raise ConfigError(f"{name}: must be an http(s)://HOST[:PORT][/PATH] URL, not {url!r}")
        if not self.decision_log_resource.startswith("/"):
            raise ConfigError(f"decision_log_resource: must be a path starting with '/', "
                              f"not {self.decision_log_resource!r}")
        if self.decision_log_token_file and not self.decision_log_service:
            raise ConfigError("decision_log_token_file: needs decision_log_service (the URL the token is sent to)")
        if self.otlp_headers_file and not self.otlp_endpoint:
            raise ConfigError("otlp_headers_file: needs otlp_endpoint (the URL the headers are sent to)")
        if self.decision_log_batch_records < 1:
            raise ConfigError("decision_log_batch_records: must be 1 or more")
        if self.decision_log_batch_bytes < 1024:
            raise ConfigError("decision_log_batch_bytes: must be 1024 or more")
        if self.decision_log_min_delay <= 0:
            raise ConfigError("decision_log_min_delay: must be greater than 0 seconds")
        if self.decision_log_max_delay < self.decision_log_min_delay:
            raise ConfigError("decision_log_max_delay: must be at least decision_log_min_delay")
        if self.decision_log_max_lag < 0:
            raise ConfigError("decision_log_max_lag: must be 0 (no limit) or more seconds")
        if self.decision_log_retention:
            parse_duration("decision_log_retention", self.decision_log_retention)
        if self.decision_log_fail_closed_on_lag and not (self.decision_log_service or self.otlp_endpoint
                                                         or self.state_store):
            raise ConfigError("decision_log_fail_closed_on_lag: needs an exporter (decision_log_service, "
                              "otlp_endpoint, or a postgresql:// state_store)")
        if self.decision_log_fail_closed_on_lag and not self.decision_log_max_lag:
            raise ConfigError("decision_log_fail_closed_on_lag: needs decision_log_max_lag above 0")
        self._validate_checkpoints()

    def _validate_checkpoints(self) -> None:
        if self.decision_log_checkpoint_interval <= 0:
            raise ConfigError("decision_log_checkpoint_interval: must be greater than 0 seconds")
        if self.decision_log_checkpoint_file and not self.decision_log_checkpoint_key_file:
            raise ConfigError("decision_log_checkpoint_file: needs decision_log_checkpoint_key_file (the key that "
                              "signs what is written there)")
        if self.decision_log_checkpoint_key_file:
            data_dir = Path(self.data_dir).resolve()
            key = Path(self.decision_log_checkpoint_key_file).resolve()
            if key.is_relative_to(data_dir):
                raise ConfigError(f"decision_log_checkpoint_key_file: {key} is inside data_dir {data_dir}: whoever "
                                  "can rewrite the log could then sign it; keep the key elsewhere")

    def checkpoint_key(self) -> CheckpointKey | None:
        """The key of decision_log_checkpoint_key_file (read now), or None when there is none."""
        if not self.decision_log_checkpoint_key_file:
            return None
        from tollgate.decisionlog._checkpoint import CheckpointError, load_key

        try:
            key = load_key(self.decision_log_checkpoint_key_file)
        except CheckpointError as exc:
            raise ConfigError(str(exc)) from exc
        if not key.can_sign:
            raise ConfigError(f"decision_log_checkpoint_key_file: {self.decision_log_checkpoint_key_file} is a "
                              "public key; the sidecar signs checkpoints with the private key (or an HMAC secret)")
        return key

    def bundle_data_limits(self) -> DataLimits:
        """What a bundle's data documents may hold (bundle_data_limit, bundle_data_values)."""
        return DataLimits(bytes=self.bundle_data_limit, values=self.bundle_data_values)

    def log_shipping(self, *, sidecar_id: str = "") -> ShippingConfig:
        """The decision log's exporters and retention (reads decision_log_token_file). On a PostgreSQL state_store
        every record is also shipped into it, under sidecar_id (the fleet registry's id of this sidecar)."""
        token = ""
        if self.decision_log_token_file:
            token = _read_secret("decision_log_token_file", self.decision_log_token_file)
        return ShippingConfig(
            opa_service=self.decision_log_service, opa_resource=self.decision_log_resource, opa_token=token,
            otlp_endpoint=self.otlp_endpoint, batch_records=self.decision_log_batch_records,
            otlp_headers=_read_headers("otlp_headers_file", self.otlp_headers_file) if self.otlp_headers_file
            else (),
            batch_bytes=self.decision_log_batch_bytes, min_delay=self.decision_log_min_delay,
            max_delay=self.decision_log_max_delay, max_lag=self.decision_log_max_lag,
            retention=parse_duration("decision_log_retention", self.decision_log_retention)
            if self.decision_log_retention else None, anchor_key=self.checkpoint_key(),
            postgresql_url=self.state_store, postgresql_password_file=self.state_store_password_file,
            postgresql_timeout=self.state_store_timeout, sidecar_id=sidecar_id)

    def _validate_bundle_service(self) -> None:
        for name in ("bundle_token_file", "bundle_headers_file", "bundle_ca_file"):
            if getattr(self, name) and not self.bundle.startswith(("http://", "https://")):
                raise ConfigError(f"{name}: needs an http(s):// bundle (the service it is for), not {self.bundle!r}")
        if self.bundle_ca_file and not self.bundle.startswith("https://"):
            raise ConfigError(f"bundle_ca_file: needs an https:// bundle (plain http has no certificate to check), "
                              f"not {self.bundle!r}")
        if self.bundle_ca_file:
            try:
                ssl_context(self.bundle_ca_file)
            except OSError as exc:  # ssl.SSLError is one too
                raise ConfigError(f"bundle_ca_file: cannot load {self.bundle_ca_file!r} as PEM CA certificates "
                                  f"({exc.strerror or exc})") from exc

    def bundle_http(self) -> HttpOptions:
        """How an http(s) bundle service is reached (reads bundle_token_file and bundle_headers_file)."""
        token = _read_secret("bundle_token_file", self.bundle_token_file) if self.bundle_token_file else ""
        headers = (_read_headers("bundle_headers_file", self.bundle_headers_file, set_by="the bundle poller",
                                 own=_BUNDLE_HEADERS) if self.bundle_headers_file else ())
        if token and any(name.lower() == "authorization" for name, _ in headers):
            raise ConfigError(f"bundle_headers_file: {self.bundle_headers_file} has an Authorization line and "
                              "bundle_token_file gives a token too: keep one of them")
        return HttpOptions(token=token, headers=headers, ca_file=self.bundle_ca_file)

    def _validate_tls(self) -> None:
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert: give tls_cert and tls_key together (the server certificate and its key)")
        if (self.tls_client_ca or self.tls_require_client_cert) and not self.tls_cert:
            name = "tls_client_ca" if self.tls_client_ca else "tls_require_client_cert"
            raise ConfigError(f"{name}: needs TLS on the listener (tls_cert and tls_key)")
        if self.tls_require_client_cert and not self.tls_client_ca:
            raise ConfigError("tls_require_client_cert: needs tls_client_ca (the CA client certificates chain to)")
        if self.tls_client_ca and not self.tls_require_client_cert:
            raise ConfigError("tls_client_ca: also set tls_require_client_cert; gRPC asks for a client certificate "
                              "only when it requires one, so a client CA alone would verify no one")
        for name in ("tls_cert", "tls_key", "tls_client_ca"):
            path = getattr(self, name)
            if path and not Path(path).is_file():
                raise ConfigError(f"{name}: {path!r} is not a readable file")

    def server_credentials(self) -> grpc.ServerCredentials | None:
        """The gRPC listener's TLS credentials (None: plaintext)."""
        if not self.tls_cert:
            return None
        try:
            key, cert = Path(self.tls_key).read_bytes(), Path(self.tls_cert).read_bytes()
            client_ca = Path(self.tls_client_ca).read_bytes() if self.tls_client_ca else None
        except OSError as exc:
            raise ConfigError(f"tls: cannot read {exc.filename!r} ({exc.strerror or exc})") from exc
        # With require_client_auth gRPC asks for a client certificate, verifies it against the CA and refuses
        # the handshake without one; without it, none is asked for.
        return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                           require_client_auth=self.tls_require_client_cert)

    def _validate_identity(self) -> None:
        self.caller_map()
        from tollgate.api._envoy import EnvoySettings  # the api module that reads it checks it
        if problem := EnvoySettings.problem(self.envoy):
            raise ConfigError(f"envoy: {problem}")
        self.admin_identity_list()
        self.person_identity_map()
        self.oidc_settings()
        if self.authzen_tls and not (self.authzen_listen and self.tls_cert):
            raise ConfigError("authzen_tls: needs authzen_listen and the server certificate (tls_cert, tls_key)")
        if self.token_keys and not (self.token_issuer and self.token_audience):
            raise ConfigError("token_keys: needs token_issuer and token_audience (the iss and aud every caller "
                              "token must carry)")
        if (self.token_issuer or self.token_audience) and not self.token_keys:
            raise ConfigError("token_keys: required with token_issuer/token_audience (the directory of KID.pem "
                              "public keys that verify caller tokens)")
        if self.token_keys and not Path(self.token_keys).is_dir():
            raise ConfigError(f"token_keys: {self.token_keys!r} is not a directory of KID.pem public keys")
        if self.authzen_listen and (":" not in self.authzen_listen
                                    or not self.authzen_listen.rsplit(":", 1)[1].isdigit()):
            raise ConfigError(f"authzen_listen: must be HOST:PORT, not {self.authzen_listen!r}")

    def admin_identity_list(self) -> list[str]:
        """admin_identities, checked (given as a flag, its value is comma-separated)."""
        raw: Any = self.admin_identities
        if isinstance(raw, str):
            raw = [i.strip() for i in raw.split(",") if i.strip()]
        if not isinstance(raw, list):
            raise ConfigError(f"admin_identities: must be a list of caller identities, got {raw!r}")
        for ident in raw:
            if not isinstance(ident, str) or not valid_caller_id(ident):
                raise ConfigError(f"admin_identities: {ident!r} is not a caller identity (spiffe://..., dns:NAME, "
                                  "cn:NAME, uid:N, gid:N or jwt:SUBJECT)")
        return raw

    def person_identity_map(self) -> dict[str, str]:
        """person_identities, checked."""
        from tollgate.identity._tokens import parse_person_identities

        try:
            return parse_person_identities(self.person_identities)
        except IdentityConfigError as exc:
            raise ConfigError(str(exc)) from exc

    def oidc_settings(self) -> OidcSettings | None:
        """The oidc section, checked (None without one)."""
        from tollgate.identity._oidc import OidcConfigError, OidcSettings

        try:
            return OidcSettings.parse(self.oidc) if self.oidc else None
        except OidcConfigError as exc:
            raise ConfigError(str(exc)) from exc

    def caller_map(self) -> CallerMap:
        """The callers mapping, parsed (given as a flag, its value is YAML or JSON text)."""
        raw: Any = self.callers
        if isinstance(raw, str):
            try:
                raw = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise ConfigError(f"callers: not YAML or JSON ({exc})") from exc
        try:
            return CallerMap.parse(raw)
        except IdentityConfigError as exc:
            raise ConfigError(str(exc)) from exc

    def caller_resolver(self, *, relay_prefix: str = "", clock: Clock = SystemClock()) -> CallerResolver:
        """How callers are identified: caller tokens (token_keys; a remembered one is held against clock's
        time) and the Unix-socket relay's peer addresses."""
        tokens = None
        if self.token_keys:
            try:
                tokens = TokenVerifier.from_config(self.token_keys, issuer=self.token_issuer,
                                                   audience=self.token_audience, clock=clock)
            except IdentityConfigError as exc:
                raise ConfigError(str(exc)) from exc
        return CallerResolver(tokens=tokens, relay_prefix=relay_prefix, callers=self.caller_map())

    def authzen_ssl_context(self) -> ssl.SSLContext | None:
        """TLS for the AuthZEN port (None: plain HTTP)."""
        if not self.authzen_tls:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.tls_cert, self.tls_key)
            if self.tls_client_ca:
                context.load_verify_locations(self.tls_client_ca)
                context.verify_mode = ssl.CERT_REQUIRED
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"authzen_tls: cannot load the TLS files ({exc})") from exc
        return context

    def resolved_admin_token(self) -> str:
        """The admin token: admin_token, or the contents of admin_token_file ("" when neither is set)."""
        if not self.admin_token_file:
            return self.admin_token
        return _read_secret("admin_token_file", self.admin_token_file)


def parse_duration(name: str, text: str) -> timedelta:
    """A duration setting (encoding.parse_duration: `30d`, `12h`, `1h30m`); the error names the key."""
    try:
        return encoding.parse_duration(text)
    except ValueError:
        raise ConfigError(f"{name}: must be a positive number and a unit, {encoding.DURATION_GRAMMAR}; not {text!r}"
                          ) from None


def load_config(path: str | None, overrides: dict[str, Any]) -> ServeConfig:
    """Defaults, then the YAML file at path (if any), then overrides (flags that were given)."""
    known = {f.name: f for f in fields(ServeConfig)}
    values: dict[str, Any] = {}
    if path:
        try:
            doc = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"config {path}: cannot read ({exc})") from exc
        if not isinstance(doc, dict):
            raise ConfigError(f"config {path}: must be a mapping of keys to values")
        for key, value in doc.items():
            name = str(key).replace("-", "_")
            if name == "console":  # `tollgate console`'s section: one config file serves both (console/_config.py)
                if isinstance(value, dict) and isinstance(value.get("base_url"), str):  # notifications link it
                    values.setdefault("console_url", value["base_url"])
                continue
            if name not in known:
                raise ConfigError(f"config {path}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
            values[name] = _coerce(name, value, known[name].type, path)
    values.update({k: v for k, v in overrides.items() if v is not None})
    return ServeConfig(**values).validate()


def _coerce(name: str, value: Any, type_name: object, path: str) -> Any:
    expected: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float), "bool": bool}
    kind = expected.get(str(type_name), object)
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind):
        raise ConfigError(f"config {path}: {name} must be a {type_name}, got {value!r}")
    if str(type_name) == "float":
        return float(cast(float, value))
    return value
