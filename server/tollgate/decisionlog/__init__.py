"""The decision log: one durable record per answer, committed before the answer is sent."""

from tollgate.decisionlog._events import jsonl_record, opa_event, opa_time
from tollgate.decisionlog._export import ExporterConfig, ExportState, ExportStatus, LogExporter, OpaEncoder
from tollgate.decisionlog._otlp import OtlpEncoder
from tollgate.decisionlog._retention import LogRetention
from tollgate.decisionlog._shipping import LogShipping, ShippingConfig
from tollgate.decisionlog._sqlite import (
    DecisionLog,
    DecisionLogError,
    LogConfig,
    canonical_json,
    log_time,
    request_digest,
)

__all__ = ["DecisionLog", "DecisionLogError", "ExportState", "ExportStatus", "ExporterConfig", "LogConfig",
           "LogExporter", "LogRetention", "LogShipping", "OpaEncoder", "OtlpEncoder", "ShippingConfig",
           "canonical_json", "jsonl_record", "log_time", "opa_event", "opa_time", "request_digest"]
