"""Policy engines: the Engine protocol, the embedded OPA engine run in a pool of worker processes, and a remote
OPA server reached over its REST API (RemoteOpaEngine, `--engine opa+http://HOST:PORT`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tollgate.engine._base import (
    UNDEFINED,
    Engine,
    EngineError,
    Evaluation,
    EvaluationTimeout,
    decode_envelope,
    decode_evaluation,
)
from tollgate.engine._opa import EmbeddedOpa

if TYPE_CHECKING:
    from tollgate.engine._pool import RESTART_REASONS, EngineConfig, WorkerPoolEngine
    from tollgate.engine._remote import RemoteOpaEngine
    from tollgate.engine._slot import EngineSlot


def __getattr__(name: str) -> Any:
    # The pool (asyncio, the bundle package, its signing dependencies) is imported on first use, so that an
    # engine worker process, which needs only _base and _opa, starts without it: less start-up and memory
    # in every worker.
    if name in ("EngineConfig", "RESTART_REASONS", "WorkerPoolEngine"):
        from tollgate.engine import _pool

        return getattr(_pool, name)
    if name == "RemoteOpaEngine":  # aiohttp (opa-python-client's) only where a remote engine is configured
        from tollgate.engine import _remote

        return _remote.RemoteOpaEngine
    if name == "EngineSlot":
        from tollgate.engine import _slot

        return _slot.EngineSlot
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "RESTART_REASONS",
    "UNDEFINED",
    "EmbeddedOpa",
    "Engine",
    "EngineConfig",
    "EngineError",
    "EngineSlot",
    "Evaluation",
    "EvaluationTimeout",
    "RemoteOpaEngine",
    "WorkerPoolEngine",
    "decode_envelope",
    "decode_evaluation",
]
