"""The embedded OPA v1 engine (Go `rego` package through opa-golib-python-bindings), without the GIL-bound extras."""

from __future__ import annotations

import ctypes
import json
from collections.abc import Mapping
from typing import Any

from tollgate.engine._base import EngineError, decode_envelope, envelope_value

_lib: Any = None


def _library() -> Any:
    # The package's ctypes layer; its high-level wrapper JSON-decodes every result, which the worker
    # does not need (it hands the raw envelope to the server), so the bridge is called directly.
    global _lib
    if _lib is None:
        from opa_bindings import _native

        _lib = _native.load()
    return _lib


class EmbeddedOpa:
    """One in-process OPA engine holding one bundle's modules and data. Evaluations are serialised."""

    def __init__(self, modules: Mapping[str, str], data: Mapping[str, Any] | bytes) -> None:
        """data: the data document, or its JSON as bytes (handed to the bridge as it is, never parsed here)."""
        self._lib = _library()
        self._handle: int | None = self._lib.OpaNew()
        try:
            for path, source in modules.items():
                self._call(self._lib.OpaAddPolicy, _cstr(path), _cstr(source))
            raw = data if isinstance(data, bytes) else json.dumps(data).encode() if data else b""
            if raw and raw != b"{}":
                self._call(self._lib.OpaAddData, b"", raw)
        except BaseException:
            self.close()
            raise

    def _raw(self, fn: Any, *args: Any) -> bytes:
        """Call a bridge function on this engine and return its JSON envelope, freeing the C string."""
        if self._handle is None:
            raise EngineError("closed", "engine has been closed")
        ptr = fn(self._handle, *args)
        if not ptr:
            raise EngineError("internal", "OPA bridge returned NULL")
        try:
            raw: bytes = ctypes.string_at(ptr)
        finally:
            self._lib.OpaFreeString(ptr)
        return raw

    def _call(self, fn: Any, *args: Any) -> bytes:
        """Like _raw, raising the EngineError the envelope carries."""
        raw = self._raw(fn, *args)
        error = json.loads(raw).get("error")
        if error:
            raise EngineError(str(error.get("code", "unknown")), str(error.get("message", "")))
        return raw

    def compile(self) -> None:
        """Compile every module now. OPA compiles lazily, on the first evaluation, so without this a bundle
        that does not compile would only fail on its first live request. Raises EngineError carrying every
        compile error as `file:line: message`."""
        self.query("compiled := true")

    def prepare(self, path: bytes) -> None:
        """Compile every module and prepare the query of data.<path>, without keeping any other: the bridge
        gives each prepared query its own copy of the data (an inmem store made from it), so a worker that
        also kept compile()'s query would hold the bundle's data once more for nothing. Raises EngineError
        (prepare_error, carrying every compile error) if the bundle does not compile; an evaluation error
        with the empty input is not one (the document may need an input)."""
        self._check_prepared(self.evaluate_raw(path, b"{}"))

    def prepare_query(self, query: bytes) -> None:
        """Like prepare, for an ad-hoc query."""
        self._check_prepared(self.query_raw(query, b"{}"))

    @staticmethod
    def _check_prepared(raw: bytes) -> None:
        if raw.startswith(b'{"error"'):
            error = json.loads(raw)["error"]
            if error.get("code") == "prepare_error":
                raise EngineError("prepare_error", str(error.get("message", "")))

    def evaluate_raw(self, path: bytes, input_json: bytes, coverage: bool = False) -> bytes:
        """Evaluate data.<path> (dot-separated) for a JSON input; return the raw envelope.

        With coverage, the envelope's "coverage" holds OPA's line coverage over every module.
        """
        return self._raw(self._lib.OpaEvalDocument, path, input_json, int(coverage), 0)

    def query_raw(self, query: bytes, input_json: bytes) -> bytes:
        """Evaluate an ad-hoc Rego query for a JSON input; return the raw envelope (bindings per result)."""
        return self._raw(self._lib.OpaEvalQuery, query, input_json, 0, 0)

    def evaluate(self, path: str, input_doc: Any = None) -> Any:
        """Evaluate data.<path>; return its value or UNDEFINED; raise EngineError on errors."""
        payload = b"" if input_doc is None else json.dumps(input_doc).encode()
        return decode_envelope(self.evaluate_raw(_cstr(path), payload))

    def evaluate_with_coverage(self, path: str, input_doc: Any = None) -> tuple[Any, dict[str, Any]]:
        """Like evaluate, also returning OPA's coverage report ({"files": {name: {"covered": [...],
        "not_covered": [...]}}}) for this evaluation; the report is empty when evaluation fails."""
        payload = b"" if input_doc is None else json.dumps(input_doc).encode()
        envelope = json.loads(self.evaluate_raw(_cstr(path), payload, coverage=True))
        return envelope_value(envelope), envelope.get("coverage") or {}

    def evaluate_with_trace(self, path: str, input_doc: Any = None) -> tuple[Any, list[dict[str, Any]]]:
        """Like evaluate, also returning OPA's evaluation trace (what `opa eval --explain full` prints): one event
        per step, {"op" (Enter, Eval, Exit, Redo, ...), "query_id", "parent_id", "location" (file:line),
        "node" (the rule or expression), "locals" (the bindings there), "message"}. Slow: for explaining one
        evaluation, never on the decision path."""
        payload = b"" if input_doc is None else json.dumps(input_doc).encode()
        envelope = json.loads(self._raw(self._lib.OpaEvalDocument, _cstr(path), payload, 0, 1))
        return envelope_value(envelope), envelope.get("trace") or []

    def query(self, query: str, input_doc: Any = None) -> list[dict[str, Any]]:
        """Evaluate an ad-hoc Rego query; return its bindings, one dict per result."""
        payload = b"" if input_doc is None else json.dumps(input_doc).encode()
        raw = self._call(self._lib.OpaEvalQuery, _cstr(query), payload, 0, 0)
        results = json.loads(raw).get("result") or []
        return [r.get("bindings", {}) for r in results]

    def close(self) -> None:
        if self._handle is not None:
            self._lib.OpaDestroy(self._handle)
            self._handle = None

    def __enter__(self) -> EmbeddedOpa:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _cstr(text: str) -> bytes:
    if "\0" in text:
        raise EngineError("invalid_argument", "string contains a NUL character")
    return text.encode("utf-8")
