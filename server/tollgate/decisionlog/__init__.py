"""The decision log: one durable record per answer, committed before the answer is sent."""

from tollgate.decisionlog._events import jsonl_record, opa_event, opa_time
from tollgate.decisionlog._export import (
    ExporterConfig,
    ExportRow,
    ExportState,
    ExportStatus,
    HttpTransport,
    LogExporter,
    OpaEncoder,
    Transport,
    UploadError,
)
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
from tollgate.decisionlog._pgexport import (
    DECISIONS_COMPONENT,
    DECISIONS_STEPS,
    POSTGRESQL,
    PgTransport,
    migrate_decisions,
)
from tollgate.decisionlog._pgread import DecisionLookup, NoFleetLog, PgDecisionReader, ShippedRecord, open_reader
from tollgate.decisionlog._query import KINDS, ActiveSession, ActiveSessions, Query, action_summary, first_reason
from tollgate.decisionlog._record import DecisionRecord
from tollgate.decisionlog._retention import LogRetention
from tollgate.decisionlog._shipping import LogShipping, ShippingConfig
from tollgate.decisionlog._sqlite import (
    DecisionLog,
    DecisionLogError,
    LogConfig,
)
from tollgate.decisionlog._sqlite_store import SqliteDecisionStore, open_read_only
from tollgate.decisionlog._store import Anchor, DecisionStore, LogReadError, StoredRecord, matching
from tollgate.decisionlog._timeline import (
    ApprovalState,
    NoRunState,
    RunState,
    SpendLine,
    Step,
    Timeline,
    render_timeline,
    session_timeline,
    timeline,
)
from tollgate.decisionlog._verify import ChainBreak, Verification, verify

__all__ = ["DECISIONS_COMPONENT", "DECISIONS_STEPS", "FALLBACK_ERASE", "FORMATS", "KINDS", "POSTGRESQL",
           "ActiveSession", "ActiveSessions", "Anchor",
           "ApprovalState", "ChainBreak", "DecisionLog", "DecisionLogError", "DecisionLookup", "DecisionRecord",
           "DecisionStore", "ExportRow", "ExportState", "ExportStatus", "ExporterConfig", "FileCursor", "FileExport",
           "FileExportError", "HttpTransport", "LogConfig", "LogExporter", "LogReadError", "LogRetention",
           "LogShipping", "Masking", "NoFleetLog", "NoRunState", "OpaEncoder", "OtlpEncoder", "PgDecisionReader",
           "PgTransport", "Query", "Rotation", "RunState", "ShippedRecord", "ShippingConfig", "SpendLine",
           "SqliteDecisionStore", "Step", "StoredRecord", "StreamExport", "Timeline", "Transport", "UploadError",
           "Verification", "action_summary", "export_line", "export_once", "failure_summary", "first_reason",
           "follow", "jsonl_record", "mask_record", "matching", "migrate_decisions", "opa_event", "opa_time",
           "open_output", "open_read_only", "open_reader", "read_export", "render_timeline", "session_timeline",
           "timeline", "verify"]
