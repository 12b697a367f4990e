"""The decision log's exporters and retention as one unit with one life cycle: start, stop, status."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

from tollgate.clock import Clock, SystemClock
from tollgate.decisionlog._checkpoint import CheckpointKey
from tollgate.decisionlog._events import VERSION
from tollgate.decisionlog._export import (
    ExporterConfig,
    ExportStatus,
    HttpTransport,
    LogExporter,
    OpaEncoder,
    Transport,
)
from tollgate.decisionlog._otlp import OtlpEncoder
from tollgate.decisionlog._pgexport import POSTGRESQL, PgTransport
from tollgate.decisionlog._retention import LogRetention

#: Cursor names in export_cursors.
OPA = "opa"
OTLP = "otlp"


@dataclass(frozen=True)
class ShippingConfig:
    """Where the decision log goes and how long it stays; everything off by default."""

    #: OPA decision-log service base URL; batches go to POST {opa_service}{opa_resource}. "" turns it off.
    opa_service: str = ""
    opa_resource: str = "/logs"
    #: Bearer token for the OPA service ("" sends none).
    opa_token: str = ""
    #: OTLP/HTTP base URL (e.g. http://collector:4318); batches go to POST {otlp_endpoint}/v1/logs. "" is off.
    otlp_endpoint: str = ""
    #: Headers sent with every OTLP upload (authentication a collector or vendor asks for).
    otlp_headers: tuple[tuple[str, str], ...] = ()
    #: The fleet's PostgreSQL store (the sidecar's state_store) every record is shipped into, idempotent by
    #: decision_id; "" is off. The log goes where the fleet's state is: one store to migrate, secure and size, and
    #: the same --state-store URL answers `tollgate logs query` and GetDecision fleet-wide.
    postgresql_url: str = ""
    #: A file holding the store's password (first line), for a URL that carries none (state_store_password_file).
    postgresql_password_file: str = ""
    #: Seconds connecting to the store may take (state_store_timeout); a batch may take the upload timeout.
    postgresql_timeout: float = 2.0
    #: This sidecar's fleet id (the registry's): the sidecar_id column of every record it ships.
    sidecar_id: str = ""
    #: Batch limits, retry delays and the lag limit, shared by every exporter (see ExporterConfig).
    batch_records: int = 500
    batch_bytes: int = 1024 * 1024
    min_delay: float = 1.0
    max_delay: float = 60.0
    max_lag: float = 300.0
    #: Keep records this long (None: forever); unexported records are kept whatever their age.
    retention: timedelta | None = None
    #: Seconds between retention sweeps.
    retention_every: float = 60.0
    #: Signs each retention anchor (the checkpoint key), so that a prefix deleted behind a forged anchor shows.
    anchor_key: CheckpointKey | None = None


def otlp_logs_url(endpoint: str) -> str:
    """OTLP's rule for a base endpoint: the logs signal is at /v1/logs below it."""
    base = endpoint.rstrip("/")
    return base if base.endswith("/v1/logs") else f"{base}/v1/logs"


def _targets(config: ShippingConfig) -> list[tuple[ExporterConfig, Transport]]:
    """Each configured destination's exporter settings and transport (ValueError naming a bad setting)."""
    limits = ExporterConfig(name="", url="", batch_records=config.batch_records, batch_bytes=config.batch_bytes,
                            min_delay=config.min_delay, max_delay=config.max_delay, max_lag=config.max_lag)
    targets: list[tuple[ExporterConfig, Transport]] = []
    if config.opa_service:
        url = config.opa_service.rstrip("/") + "/" + config.opa_resource.lstrip("/")
        opa = replace(limits, name=OPA, url=url, token=config.opa_token)
        targets.append((opa, HttpTransport(opa, OpaEncoder())))
    if config.otlp_endpoint:
        otlp = replace(limits, name=OTLP, url=otlp_logs_url(config.otlp_endpoint), headers=config.otlp_headers)
        targets.append((otlp, HttpTransport(otlp, OtlpEncoder(service_version=VERSION))))
    if config.postgresql_url:
        from tollgate.state import valid_sidecar_id

        if config.sidecar_id and not valid_sidecar_id(config.sidecar_id):  # the registry's grammar: one id per sidecar
            raise ValueError(f"sidecar_id: {config.sidecar_id[:140]!r} is not a sidecar id (a letter or digit, then "
                             "up to 127 letters, digits and . _ : @ / -)")
        store = PgTransport(config.postgresql_url, sidecar_id=config.sidecar_id,
                            password_file=config.postgresql_password_file, timeout=config.postgresql_timeout)
        targets.append((replace(limits, name=POSTGRESQL, url=store.target), store))
    return targets


class LogShipping:
    """Owns the configured exporters and the retention sweeper of one decisions.db; both read `clock` (export
    lag, the retention cutoff)."""

    def __init__(self, path: Path, config: ShippingConfig, *, clock: Clock = SystemClock()) -> None:
        self.exporters = [LogExporter(path, settings, transport, clock=clock)
                          for settings, transport in _targets(config)]
        self.retention = None if config.retention is None else LogRetention(
            path, window=config.retention, exporters=[e.name for e in self.exporters],
            every=config.retention_every, clock=clock, key=config.anchor_key)

    def start(self) -> None:
        for exporter in self.exporters:
            exporter.start()
        if self.retention is not None:
            self.retention.start()

    def stop(self, flush_deadline: float) -> None:
        """Stop pruning, then give the exporters until flush_deadline seconds to upload what is committed."""
        if self.retention is not None:
            self.retention.stop()
        for exporter in self.exporters:  # side by side, so the deadline holds for all of them together
            exporter.begin_stop(flush_deadline)
        for exporter in self.exporters:
            exporter.join()

    def statuses(self) -> Sequence[ExportStatus]:
        return [e.status for e in self.exporters]

    def pruned(self) -> int:
        return 0 if self.retention is None else self.retention.pruned

    def lagging(self) -> list[ExportStatus]:
        """The exporters further behind than their max_lag."""
        return [s for s in self.statuses() if s.lagging]

    def refusal(self) -> str:
        """Why requests are refused under decision_log_fail_closed_on_lag ("" while every exporter keeps up)."""
        return "; ".join(f"decision log export {s.name} is {s.lag_seconds:.0f}s ({s.lag_records} records) behind, "
                         f"more than its limit of {s.max_lag:g}s" for s in self.lagging())
