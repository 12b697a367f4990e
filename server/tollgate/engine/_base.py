"""The Engine protocol every policy engine implements, and the errors it raises."""

from __future__ import annotations

import json
from typing import Any, Final, Protocol


class _Undefined:
    """The value of a document the policy does not define."""

    def __repr__(self) -> str:
        return "UNDEFINED"


UNDEFINED: Final = _Undefined()


class EngineError(Exception):
    """The engine could not produce a result: a compile or evaluation error, or a worker that died."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class EvaluationTimeout(EngineError):
    """The evaluation did not finish before its deadline."""

    def __init__(self, message: str) -> None:
        super().__init__("deadline_exceeded", message)


class Engine(Protocol):
    """A prepared policy engine for one bundle revision."""

    @property
    def revision(self) -> str: ...

    async def evaluate(self, input_json: bytes) -> Any:
        """Evaluate the entrypoint for a JSON-encoded input; UNDEFINED if the policy defines no value.

        The engine owns its deadline: it raises EvaluationTimeout when the evaluation runs past it, and
        EngineError for any other failure.
        """
        ...

    async def close(self, *, drain: float = 0.0) -> None:
        """Release the engine; with drain, first wait up to drain seconds for evaluations in flight."""
        ...


def decode_envelope(raw: bytes) -> Any:
    """Turn the OPA bridge's JSON envelope into the document's value, UNDEFINED, or an EngineError."""
    try:
        envelope = json.loads(raw)
    except ValueError as exc:
        raise EngineError("internal", f"engine returned malformed JSON: {exc}") from exc
    return envelope_value(envelope)


def envelope_value(envelope: dict[str, Any]) -> Any:
    """The document's value in a parsed envelope, UNDEFINED, or the EngineError it carries."""
    error = envelope.get("error")
    if error:
        raise EngineError(str(error.get("code", "unknown")), str(error.get("message", "")))
    results = envelope.get("result")
    if not results:
        return UNDEFINED
    expressions = results[0].get("expressions")
    if not expressions:
        return UNDEFINED
    return expressions[0].get("value")
