"""Policy engines: the Engine protocol and the embedded OPA engine run in a pool of worker processes."""

from tollgate.engine._base import (
    UNDEFINED,
    Engine,
    EngineError,
    EvaluationTimeout,
    decode_envelope,
)
from tollgate.engine._opa import EmbeddedOpa
from tollgate.engine._pool import EngineConfig, WorkerPoolEngine

__all__ = [
    "UNDEFINED",
    "EmbeddedOpa",
    "Engine",
    "EngineConfig",
    "EngineError",
    "EvaluationTimeout",
    "WorkerPoolEngine",
    "decode_envelope",
]
