import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_ALLOW: _ClassVar[Decision]
    DECISION_DENY: _ClassVar[Decision]
    DECISION_REQUIRE_APPROVAL: _ClassVar[Decision]

class Outcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OUTCOME_UNSPECIFIED: _ClassVar[Outcome]
    OUTCOME_SUCCEEDED: _ClassVar[Outcome]
    OUTCOME_FAILED: _ClassVar[Outcome]
    OUTCOME_ABANDONED: _ClassVar[Outcome]

class ToolResult(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOOL_RESULT_UNSPECIFIED: _ClassVar[ToolResult]
    TOOL_RESULT_OK: _ClassVar[ToolResult]
    TOOL_RESULT_ERROR: _ClassVar[ToolResult]
    TOOL_RESULT_INTERRUPTED: _ClassVar[ToolResult]
DECISION_UNSPECIFIED: Decision
DECISION_ALLOW: Decision
DECISION_DENY: Decision
DECISION_REQUIRE_APPROVAL: Decision
OUTCOME_UNSPECIFIED: Outcome
OUTCOME_SUCCEEDED: Outcome
OUTCOME_FAILED: Outcome
OUTCOME_ABANDONED: Outcome
TOOL_RESULT_UNSPECIFIED: ToolResult
TOOL_RESULT_OK: ToolResult
TOOL_RESULT_ERROR: ToolResult
TOOL_RESULT_INTERRUPTED: ToolResult

class Principal(_message.Message):
    __slots__ = ("agent_id", "instance_id", "session_id", "workflow", "team", "user", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    AGENT_ID_FIELD_NUMBER: _ClassVar[int]
    INSTANCE_ID_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_FIELD_NUMBER: _ClassVar[int]
    TEAM_FIELD_NUMBER: _ClassVar[int]
    USER_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    agent_id: str
    instance_id: str
    session_id: str
    workflow: str
    team: str
    user: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, agent_id: _Optional[str] = ..., instance_id: _Optional[str] = ..., session_id: _Optional[str] = ..., workflow: _Optional[str] = ..., team: _Optional[str] = ..., user: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("server", "name", "arguments", "resources")
    SERVER_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_FIELD_NUMBER: _ClassVar[int]
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    server: str
    name: str
    arguments: _struct_pb2.Struct
    resources: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, server: _Optional[str] = ..., name: _Optional[str] = ..., arguments: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., resources: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelCall(_message.Message):
    __slots__ = ("provider", "model", "input_tokens", "max_output_tokens", "data_classes")
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MAX_OUTPUT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    DATA_CLASSES_FIELD_NUMBER: _ClassVar[int]
    provider: str
    model: str
    input_tokens: int
    max_output_tokens: int
    data_classes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, provider: _Optional[str] = ..., model: _Optional[str] = ..., input_tokens: _Optional[int] = ..., max_output_tokens: _Optional[int] = ..., data_classes: _Optional[_Iterable[str]] = ...) -> None: ...

class BudgetRequest(_message.Message):
    __slots__ = ("amount", "unit", "category")
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    CATEGORY_FIELD_NUMBER: _ClassVar[int]
    amount: float
    unit: str
    category: str
    def __init__(self, amount: _Optional[float] = ..., unit: _Optional[str] = ..., category: _Optional[str] = ...) -> None: ...

class AuthorizeRequest(_message.Message):
    __slots__ = ("principal", "tool", "model", "budget", "context", "request_id", "approval_id", "dry_run")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    principal: Principal
    tool: ToolCall
    model: ModelCall
    budget: BudgetRequest
    context: _struct_pb2.Struct
    request_id: str
    approval_id: str
    dry_run: bool
    def __init__(self, principal: _Optional[_Union[Principal, _Mapping]] = ..., tool: _Optional[_Union[ToolCall, _Mapping]] = ..., model: _Optional[_Union[ModelCall, _Mapping]] = ..., budget: _Optional[_Union[BudgetRequest, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., request_id: _Optional[str] = ..., approval_id: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class Reason(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class AuthorizeResponse(_message.Message):
    __slots__ = ("decision", "decision_id", "reasons", "bundle_revision", "approval_id", "obligations", "reservation_id")
    DECISION_FIELD_NUMBER: _ClassVar[int]
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_REVISION_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    OBLIGATIONS_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    decision: Decision
    decision_id: str
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    bundle_revision: str
    approval_id: str
    obligations: _struct_pb2.Struct
    reservation_id: str
    def __init__(self, decision: _Optional[_Union[Decision, str]] = ..., decision_id: _Optional[str] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., bundle_revision: _Optional[str] = ..., approval_id: _Optional[str] = ..., obligations: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., reservation_id: _Optional[str] = ...) -> None: ...

class GetDecisionRequest(_message.Message):
    __slots__ = ("decision_id",)
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    def __init__(self, decision_id: _Optional[str] = ...) -> None: ...

class DecisionRecord(_message.Message):
    __slots__ = ("decision_id", "timestamp", "principal", "tool", "model", "budget", "context", "decision", "reasons", "obligations", "bundle_revision", "input", "result", "latency_us", "request_id", "approval_id", "reservation_id", "previous_decision_id", "prev_hash", "hash", "policy_path", "request_digest", "approval_status", "requested_by", "erased", "masked", "error", "dry_run")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    TIMESTAMP_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BUDGET_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    OBLIGATIONS_FIELD_NUMBER: _ClassVar[int]
    BUNDLE_REVISION_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    LATENCY_US_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    PREV_HASH_FIELD_NUMBER: _ClassVar[int]
    HASH_FIELD_NUMBER: _ClassVar[int]
    POLICY_PATH_FIELD_NUMBER: _ClassVar[int]
    REQUEST_DIGEST_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_STATUS_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    ERASED_FIELD_NUMBER: _ClassVar[int]
    MASKED_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    timestamp: _timestamp_pb2.Timestamp
    principal: Principal
    tool: ToolCall
    model: ModelCall
    budget: BudgetRequest
    context: _struct_pb2.Struct
    decision: Decision
    reasons: _containers.RepeatedCompositeFieldContainer[Reason]
    obligations: _struct_pb2.Struct
    bundle_revision: str
    input: _struct_pb2.Struct
    result: _struct_pb2.Value
    latency_us: int
    request_id: str
    approval_id: str
    reservation_id: str
    previous_decision_id: str
    prev_hash: str
    hash: str
    policy_path: str
    request_digest: str
    approval_status: str
    requested_by: str
    erased: _containers.RepeatedScalarFieldContainer[str]
    masked: _containers.RepeatedScalarFieldContainer[str]
    error: str
    dry_run: bool
    def __init__(self, decision_id: _Optional[str] = ..., timestamp: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., principal: _Optional[_Union[Principal, _Mapping]] = ..., tool: _Optional[_Union[ToolCall, _Mapping]] = ..., model: _Optional[_Union[ModelCall, _Mapping]] = ..., budget: _Optional[_Union[BudgetRequest, _Mapping]] = ..., context: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., decision: _Optional[_Union[Decision, str]] = ..., reasons: _Optional[_Iterable[_Union[Reason, _Mapping]]] = ..., obligations: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., bundle_revision: _Optional[str] = ..., input: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., result: _Optional[_Union[_struct_pb2.Value, _Mapping]] = ..., latency_us: _Optional[int] = ..., request_id: _Optional[str] = ..., approval_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., previous_decision_id: _Optional[str] = ..., prev_hash: _Optional[str] = ..., hash: _Optional[str] = ..., policy_path: _Optional[str] = ..., request_digest: _Optional[str] = ..., approval_status: _Optional[str] = ..., requested_by: _Optional[str] = ..., erased: _Optional[_Iterable[str]] = ..., masked: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class ReportUsageRequest(_message.Message):
    __slots__ = ("reservation_id", "amount", "unit")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    amount: float
    unit: str
    def __init__(self, reservation_id: _Optional[str] = ..., amount: _Optional[float] = ..., unit: _Optional[str] = ...) -> None: ...

class ReportUsageResponse(_message.Message):
    __slots__ = ("reservation_id", "unit", "reserved", "committed", "released", "over_reserved")
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    RESERVED_FIELD_NUMBER: _ClassVar[int]
    COMMITTED_FIELD_NUMBER: _ClassVar[int]
    RELEASED_FIELD_NUMBER: _ClassVar[int]
    OVER_RESERVED_FIELD_NUMBER: _ClassVar[int]
    reservation_id: str
    unit: str
    reserved: float
    committed: float
    released: float
    over_reserved: bool
    def __init__(self, reservation_id: _Optional[str] = ..., unit: _Optional[str] = ..., reserved: _Optional[float] = ..., committed: _Optional[float] = ..., released: _Optional[float] = ..., over_reserved: _Optional[bool] = ...) -> None: ...

class WaitForApprovalRequest(_message.Message):
    __slots__ = ("approval_id",)
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    approval_id: str
    def __init__(self, approval_id: _Optional[str] = ...) -> None: ...

class ApprovalState(_message.Message):
    __slots__ = ("id", "status", "expires_at", "decided_by", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    status: str
    expires_at: _timestamp_pb2.Timestamp
    decided_by: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., status: _Optional[str] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., decided_by: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportOutcomeRequest(_message.Message):
    __slots__ = ("session_id", "task_id", "outcome", "labels", "summary", "replace")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    REPLACE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task_id: str
    outcome: Outcome
    labels: _containers.RepeatedScalarFieldContainer[str]
    summary: str
    replace: bool
    def __init__(self, session_id: _Optional[str] = ..., task_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., labels: _Optional[_Iterable[str]] = ..., summary: _Optional[str] = ..., replace: _Optional[bool] = ...) -> None: ...

class ReportOutcomeResponse(_message.Message):
    __slots__ = ("session_id", "task_id", "outcome", "labels", "reported_at", "reported_by", "revision", "unchanged")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TASK_ID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    REPORTED_BY_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    task_id: str
    outcome: Outcome
    labels: _containers.RepeatedScalarFieldContainer[str]
    reported_at: _timestamp_pb2.Timestamp
    reported_by: str
    revision: int
    unchanged: bool
    def __init__(self, session_id: _Optional[str] = ..., task_id: _Optional[str] = ..., outcome: _Optional[_Union[Outcome, str]] = ..., labels: _Optional[_Iterable[str]] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reported_by: _Optional[str] = ..., revision: _Optional[int] = ..., unchanged: _Optional[bool] = ...) -> None: ...

class ReportToolResultRequest(_message.Message):
    __slots__ = ("decision_id", "request_id", "result", "duration_ms")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    request_id: str
    result: ToolResult
    duration_ms: int
    def __init__(self, decision_id: _Optional[str] = ..., request_id: _Optional[str] = ..., result: _Optional[_Union[ToolResult, str]] = ..., duration_ms: _Optional[int] = ...) -> None: ...

class ReportToolResultResponse(_message.Message):
    __slots__ = ("decision_id", "result", "duration_ms", "duration_measured", "reported_at", "reported_by", "unchanged", "approval_id")
    DECISION_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MEASURED_FIELD_NUMBER: _ClassVar[int]
    REPORTED_AT_FIELD_NUMBER: _ClassVar[int]
    REPORTED_BY_FIELD_NUMBER: _ClassVar[int]
    UNCHANGED_FIELD_NUMBER: _ClassVar[int]
    APPROVAL_ID_FIELD_NUMBER: _ClassVar[int]
    decision_id: str
    result: ToolResult
    duration_ms: int
    duration_measured: bool
    reported_at: _timestamp_pb2.Timestamp
    reported_by: str
    unchanged: bool
    approval_id: str
    def __init__(self, decision_id: _Optional[str] = ..., result: _Optional[_Union[ToolResult, str]] = ..., duration_ms: _Optional[int] = ..., duration_measured: _Optional[bool] = ..., reported_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reported_by: _Optional[str] = ..., unchanged: _Optional[bool] = ..., approval_id: _Optional[str] = ...) -> None: ...
