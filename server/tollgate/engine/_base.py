"""The Engine protocol every policy engine implements, and the errors it raises."""

from __future__ import annotations

import json
from dataclasses import dataclass
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


@dataclass(frozen=True)
class Evaluation:
    """One input evaluated for a decision: the entrypoint's value and, when the bundle has one, the
    decision-log mask rule's, both from the same worker call."""

    #: The entrypoint's value, UNDEFINED, or the EngineError its evaluation raised.
    value: Any
    #: The mask rule's value; UNDEFINED when the bundle has no mask rule or it is undefined for this input;
    #: the EngineError its evaluation raised (which leaves the decision standing).
    mask: Any = UNDEFINED


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

    async def evaluate_with_mask(self, input_json: bytes) -> Evaluation:
        """Evaluate the entrypoint and the decision-log mask rule for one input, together.

        Each part carries its own failure, so a broken mask rule does not take the decision with it. Raises
        EngineError (EvaluationTimeout past the deadline) only when there is no answer at all.
        """
        ...

    async def close(self, *, drain: float = 0.0) -> None:
        """Release the engine; with drain, first wait up to drain seconds for evaluations in flight."""
        ...


def decode_envelope(raw: bytes) -> Any:
    """Turn the OPA bridge's JSON envelope into the document's value, UNDEFINED, or an EngineError."""
    try:
        envelope = json.loads(raw.decode())  # not loads(bytes): its encoding sniffing costs twice the parse
    except ValueError as exc:  # UnicodeDecodeError too
        raise EngineError("internal", f"engine returned malformed JSON: {exc}") from exc
    return envelope_value(envelope)


def decode_evaluation(raw: bytes) -> Evaluation:
    """Turn a worker's answer for the entrypoint and the mask rule into an Evaluation: either one query's
    envelope binding `decision` and `mask` to `[value]` or `[]`, or `[DECISION ENVELOPE, MASK ENVELOPE]`."""
    try:
        answer = json.loads(raw.decode())  # the engine's JSON is UTF-8: str parses in half the time of bytes
        if isinstance(answer, list):
            decision, mask = answer
            return Evaluation(_value_or_error(decision), _value_or_error(mask))
        error = answer.get("error")
        if error:  # the worker answers a failed query document by document; this is a last line of defence
            failure = EngineError(str(error.get("code", "unknown")), str(error.get("message", "")))
            return Evaluation(failure, failure)
        bindings = answer["result"][0]["bindings"]
        found, masks = bindings["decision"], bindings["mask"]
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        raise EngineError("internal", f"engine returned a malformed answer: {exc!r}") from exc
    return Evaluation(found[0] if found else UNDEFINED, masks[0] if masks else UNDEFINED)


def _value_or_error(envelope: dict[str, Any]) -> Any:
    try:
        return envelope_value(envelope)
    except EngineError as exc:
        return exc


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
