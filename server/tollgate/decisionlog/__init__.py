"""The decision log: one durable record per answer, committed before the answer is sent."""

from tollgate.decisionlog._events import jsonl_record, opa_event, opa_time
from tollgate.decisionlog._export import ExporterConfig, ExportState, ExportStatus, LogExporter, OpaEncoder
from tollgate.decisionlog._fileexport import (
    FORMATS,
    FileCursor,
    FileExport,
    FileExportError,
    Rotation,
    StreamExport,
    export_line,
    export_once,
    follow,
    open_output,
    read_export,
)
from tollgate.decisionlog._mask import FALLBACK_ERASE, Masking, failure_summary, mask_record
from tollgate.decisionlog._otlp import OtlpEncoder
from tollgate.decisionlog._query import Query, action_summary, find, first_reason, matching
from tollgate.decisionlog._reader import LogReadError, StoredRecord, open_read_only, rows, snapshot
from tollgate.decisionlog._retention import LogRetention
from tollgate.decisionlog._shipping import LogShipping, ShippingConfig
from tollgate.decisionlog._sqlite import (
    DecisionLog,
    DecisionLogError,
    LogConfig,
)
from tollgate.decisionlog._timeline import Step, Timeline, render_timeline, timeline
from tollgate.decisionlog._verify import Anchor, ChainBreak, Verification, resolve_position, verify

__all__ = ["FALLBACK_ERASE", "FORMATS", "Anchor", "ChainBreak", "DecisionLog", "DecisionLogError", "ExportState",
           "ExportStatus", "ExporterConfig", "FileCursor", "FileExport", "FileExportError", "LogConfig",
           "LogExporter", "LogReadError", "LogRetention", "LogShipping", "Masking", "OpaEncoder", "OtlpEncoder",
           "Query", "Rotation", "ShippingConfig", "Step", "StoredRecord", "StreamExport", "Timeline", "Verification",
           "action_summary", "export_line", "export_once", "failure_summary", "find",
           "first_reason", "follow", "jsonl_record", "mask_record", "matching", "opa_event", "opa_time",
           "open_output", "open_read_only", "read_export", "render_timeline",
           "resolve_position", "rows", "snapshot", "timeline", "verify"]
