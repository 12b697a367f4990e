import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SourceState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SOURCE_STATE_UNSPECIFIED: _ClassVar[SourceState]
    SOURCE_STATE_NOT_READY: _ClassVar[SourceState]
    SOURCE_STATE_OK: _ClassVar[SourceState]
    SOURCE_STATE_ERROR: _ClassVar[SourceState]

class ExportState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    EXPORT_STATE_UNSPECIFIED: _ClassVar[ExportState]
    EXPORT_STATE_NOT_READY: _ClassVar[ExportState]
    EXPORT_STATE_OK: _ClassVar[ExportState]
    EXPORT_STATE_WARN: _ClassVar[ExportState]
    EXPORT_STATE_ERROR: _ClassVar[ExportState]
SOURCE_STATE_UNSPECIFIED: SourceState
SOURCE_STATE_NOT_READY: SourceState
SOURCE_STATE_OK: SourceState
SOURCE_STATE_ERROR: SourceState
EXPORT_STATE_UNSPECIFIED: ExportState
EXPORT_STATE_NOT_READY: ExportState
EXPORT_STATE_OK: ExportState
EXPORT_STATE_WARN: ExportState
EXPORT_STATE_ERROR: ExportState

class KillRequest(_message.Message):
    __slots__ = ("scope", "value", "reason", "by")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    scope: str
    value: str
    reason: str
    by: str
    def __init__(self, scope: _Optional[str] = ..., value: _Optional[str] = ..., reason: _Optional[str] = ..., by: _Optional[str] = ...) -> None: ...

class ReviveRequest(_message.Message):
    __slots__ = ("scope", "value", "by", "reason")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    scope: str
    value: str
    by: str
    reason: str
    def __init__(self, scope: _Optional[str] = ..., value: _Optional[str] = ..., by: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class KillSwitch(_message.Message):
    __slots__ = ("scope", "value", "reason", "killed_by", "killed_at")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    KILLED_BY_FIELD_NUMBER: _ClassVar[int]
    KILLED_AT_FIELD_NUMBER: _ClassVar[int]
    scope: str
    value: str
    reason: str
    killed_by: str
    killed_at: _timestamp_pb2.Timestamp
    def __init__(self, scope: _Optional[str] = ..., value: _Optional[str] = ..., reason: _Optional[str] = ..., killed_by: _Optional[str] = ..., killed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class ListKillsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListKillsResponse(_message.Message):
    __slots__ = ("kill_switches",)
    KILL_SWITCHES_FIELD_NUMBER: _ClassVar[int]
    kill_switches: _containers.RepeatedCompositeFieldContainer[KillSwitch]
    def __init__(self, kill_switches: _Optional[_Iterable[_Union[KillSwitch, _Mapping]]] = ...) -> None: ...

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class BundleActivation(_message.Message):
    __slots__ = ("time", "revision", "digest", "signed_by", "from_persisted")
    TIME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    DIGEST_FIELD_NUMBER: _ClassVar[int]
    SIGNED_BY_FIELD_NUMBER: _ClassVar[int]
    FROM_PERSISTED_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    revision: str
    digest: str
    signed_by: str
    from_persisted: bool
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., revision: _Optional[str] = ..., digest: _Optional[str] = ..., signed_by: _Optional[str] = ..., from_persisted: _Optional[bool] = ...) -> None: ...

class BundleError(_message.Message):
    __slots__ = ("time", "message", "reason")
    TIME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    message: str
    reason: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., message: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class BundleStatus(_message.Message):
    __slots__ = ("source", "state", "active_revision", "last_activation", "last_error", "etag", "last_poll")
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_REVISION_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVATION_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    ETAG_FIELD_NUMBER: _ClassVar[int]
    LAST_POLL_FIELD_NUMBER: _ClassVar[int]
    source: str
    state: SourceState
    active_revision: str
    last_activation: BundleActivation
    last_error: BundleError
    etag: str
    last_poll: _timestamp_pb2.Timestamp
    def __init__(self, source: _Optional[str] = ..., state: _Optional[_Union[SourceState, str]] = ..., active_revision: _Optional[str] = ..., last_activation: _Optional[_Union[BundleActivation, _Mapping]] = ..., last_error: _Optional[_Union[BundleError, _Mapping]] = ..., etag: _Optional[str] = ..., last_poll: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Status(_message.Message):
    __slots__ = ("serving", "bundle", "exports")
    SERVING_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_FIELD_NUMBER: _ClassVar[int]
    EXPORTS_FIELD_NUMBER: _ClassVar[int]
    serving: bool
    bundle: BundleStatus
    exports: _containers.RepeatedCompositeFieldContainer[DecisionLogExport]
    def __init__(self, serving: _Optional[bool] = ..., bundle: _Optional[_Union[BundleStatus, _Mapping]] = ..., exports: _Optional[_Iterable[_Union[DecisionLogExport, _Mapping]]] = ...) -> None: ...

class DecisionLogExport(_message.Message):
    __slots__ = ("name", "url", "state", "cursor", "lag_records", "lag_seconds", "max_lag_seconds", "uploads_ok", "uploads_failed", "records_exported", "last_error", "last_upload")
    NAME_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    CURSOR_FIELD_NUMBER: _ClassVar[int]
    LAG_RECORDS_FIELD_NUMBER: _ClassVar[int]
    LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    MAX_LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    UPLOADS_OK_FIELD_NUMBER: _ClassVar[int]
    UPLOADS_FAILED_FIELD_NUMBER: _ClassVar[int]
    RECORDS_EXPORTED_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_UPLOAD_FIELD_NUMBER: _ClassVar[int]
    name: str
    url: str
    state: ExportState
    cursor: int
    lag_records: int
    lag_seconds: float
    max_lag_seconds: float
    uploads_ok: int
    uploads_failed: int
    records_exported: int
    last_error: str
    last_upload: _timestamp_pb2.Timestamp
    def __init__(self, name: _Optional[str] = ..., url: _Optional[str] = ..., state: _Optional[_Union[ExportState, str]] = ..., cursor: _Optional[int] = ..., lag_records: _Optional[int] = ..., lag_seconds: _Optional[float] = ..., max_lag_seconds: _Optional[float] = ..., uploads_ok: _Optional[int] = ..., uploads_failed: _Optional[int] = ..., records_exported: _Optional[int] = ..., last_error: _Optional[str] = ..., last_upload: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GetSpendRequest(_message.Message):
    __slots__ = ("session", "agent", "team", "workflow")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    AGENT_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    session: str
    agent: str
    team: str
    workflow: str
    def __init__(self, session: _Optional[str] = ..., agent: _Optional[str] = ..., team: _Optional[str] = ..., workflow: _Optional[str] = ...) -> None: ...

class UnitSpend(_message.Message):
    __slots__ = ("unit", "committed", "reserved", "total")
    UNIT_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    unit: str
    committed: float
    reserved: float
    total: float
    def __init__(self, unit: _Optional[str] = ..., committed: _Optional[float] = ..., reserved: _Optional[float] = ..., total: _Optional[float] = ...) -> None: ...

class ScopeSpend(_message.Message):
    __slots__ = ("scope", "value", "window", "units", "invalid")
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    WINDOW_FIELD_NUMBER: _ClassVar[int]
    UNITS_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    scope: str
    value: str
    window: str
    units: _containers.RepeatedCompositeFieldContainer[UnitSpend]
    invalid: str
    def __init__(self, scope: _Optional[str] = ..., value: _Optional[str] = ..., window: _Optional[str] = ..., units: _Optional[_Iterable[_Union[UnitSpend, _Mapping]]] = ..., invalid: _Optional[str] = ...) -> None: ...

class GetSpendResponse(_message.Message):
    __slots__ = ("scopes",)
    SCOPES_FIELD_NUMBER: _ClassVar[int]
    scopes: _containers.RepeatedCompositeFieldContainer[ScopeSpend]
    def __init__(self, scopes: _Optional[_Iterable[_Union[ScopeSpend, _Mapping]]] = ...) -> None: ...

class ListSidecarsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class Sidecar(_message.Message):
    __slots__ = ("id", "host", "version", "listen", "bundle_revision", "bundle_digest", "health", "export_lag_seconds", "started_at", "last_seen", "heartbeat_seconds", "stale")
    ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    LISTEN_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_REVISION_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_DIGEST_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    EXPORT_LAG_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_SECONDS_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    id: str
    host: str
    version: str
    listen: str
    bundle_revision: str
    bundle_digest: str
    health: str
    export_lag_seconds: float
    started_at: _timestamp_pb2.Timestamp
    last_seen: _timestamp_pb2.Timestamp
    heartbeat_seconds: float
    stale: bool
    def __init__(self, id: _Optional[str] = ..., host: _Optional[str] = ..., version: _Optional[str] = ..., listen: _Optional[str] = ..., bundle_revision: _Optional[str] = ..., bundle_digest: _Optional[str] = ..., health: _Optional[str] = ..., export_lag_seconds: _Optional[float] = ..., started_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_seen: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., heartbeat_seconds: _Optional[float] = ..., stale: _Optional[bool] = ...) -> None: ...

class ListSidecarsResponse(_message.Message):
    __slots__ = ("sidecars",)
    SIDECARS_FIELD_NUMBER: _ClassVar[int]
    sidecars: _containers.RepeatedCompositeFieldContainer[Sidecar]
    def __init__(self, sidecars: _Optional[_Iterable[_Union[Sidecar, _Mapping]]] = ...) -> None: ...
