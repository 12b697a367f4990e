"""Masking a decision record before it is written: the policy's `data.tollgate.log.mask`, as OPA's `system.log.mask`.

The mask rule sees the same input as the decision and returns a set (or array) of entries, each either a
JSON pointer (RFC 6901) to erase, e.g. "/input/tool/arguments/api_key", or an object
`{"op": "remove" | "upsert", "path": POINTER, "value": ANY}`. Pointers start at `/input` or `/result`. An
erased member is removed; an upserted one is replaced (or created, with the objects leading to it, as OPA
does). The record lists the pointers it erased and masked (`erased`, `masked`, OPA's names).

Fail closed: when the mask cannot be computed (the rule failed, returned something that is not a set of
entries, or the engine gave no answer) the free-form parts of the input, where secrets travel (arguments,
context, principal labels), are erased instead (FALLBACK_ERASE) and the record's `error` says why. An entry
that is not valid is skipped and named in `error` by its position, never by its content (which may be the
very secret). An upsert that replaces only the credentials inside a string (`... # Bearer ***`) hides only
those from the reasons that quote the string, so the reason stays readable.

Nothing is copied unless something is masked: the containers along each masked path are copied, the rest
of the input (which the caller still holds, e.g. the request's action) is shared, never modified.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger(__name__)

#: Erased when the mask cannot be computed: the parts of the input a caller fills freely.
FALLBACK_ERASE: Final = ("/input/tool/arguments", "/input/context", "/input/principal/labels")
#: Pointers a mask may not touch: the log indexes them (agent, session, kind), and a record without them
#: could not be written or read back.
PROTECTED: Final = frozenset({
    ("input",), ("input", "kind"), ("input", "principal"), ("input", "principal", "agent_id"),
    ("input", "principal", "session_id"),
})
_ROOTS: Final = ("input", "result")
_REMOVE, _UPSERT = "remove", "upsert"
_LOG_EVERY = 60.0  # seconds between two warnings about the same broken mask rule
_last_warning: dict[str, float] = {}


@dataclass(frozen=True)
class Masking:
    """What to write for one record: the masked input and result, and what was erased and masked."""

    #: The input document to record (the very object given when nothing changed).
    input: Mapping[str, Any]
    #: The policy result to record.
    result: Any
    #: Pointers removed, in the order applied.
    erased: tuple[str, ...] = ()
    #: Pointers replaced or created by an upsert, in the order applied.
    masked: tuple[str, ...] = ()
    #: What went wrong while masking, for the record's `error`; empty when the mask applied cleanly.
    error: str = ""
    #: The strings the mask took out (never written): reason messages and errors that quote one of them
    #: are scrubbed before the record is written.
    hidden: frozenset[str] = frozenset()

    @property
    def changed(self) -> bool:
        return bool(self.erased or self.masked)

    def scrub(self, value: Any) -> Any:
        """value with every hidden string inside its strings replaced by "***" (objects and arrays walked).

        A policy's reason may quote an argument ("url https://u:pw@host is not allowed"); masking the
        argument alone would leave it in the reason's copy. Returns value itself when nothing is hidden.
        """
        if not self.hidden:
            return value
        # Longest first, so a secret that contains another is replaced whole.
        return _scrub(value, sorted(self.hidden, key=len, reverse=True))


@dataclass(frozen=True)
class _Entry:
    position: int  # in the mask's value, for error messages that do not repeat the entry
    op: str
    parts: tuple[str, ...]
    value: Any = None


def mask_record(mask: Any, input_doc: Mapping[str, Any], result: Any, *, failed: str = "") -> Masking:
    """Apply a mask rule's value to a record's input and result.

    mask is the rule's value (a list of entries; an empty tuple when the bundle has no mask rule or it is
    undefined); failed, when set, says why the mask could not be computed, and the fallback is erased.
    """
    if failed:
        return _fallback(input_doc, result, f"the mask could not be computed ({failed})")
    if isinstance(mask, tuple) and not mask:
        return Masking(input_doc, result)
    if not isinstance(mask, list):
        return _fallback(input_doc, result, f"data.tollgate.log.mask must be a set or array of entries, "
                                            f"not {_kind(mask)}")
    if not mask:
        return Masking(input_doc, result)
    entries: list[_Entry] = []
    problems: list[str] = []
    for position, raw in enumerate(mask):
        entry = _parse(position, raw)
        if isinstance(entry, str):
            problems.append(f"mask entry {position} skipped: {entry}")
        else:
            entries.append(entry)
    doc, erased, masked, skipped, hidden = _apply(entries, input_doc, result)
    problems += skipped
    error = "; ".join(problems)
    if error:
        _warn("entries", f"decision log mask: {error}")
    return Masking(doc["input"], doc.get("result"), tuple(erased), tuple(masked), error, frozenset(hidden))


def failure_summary(code: str, message: str) -> str:
    """Where and how a mask rule failed (`file:line: eval_conflict_error`), without the rest of the message:
    an evaluation error can quote the input it choked on, and that input is what masking hides."""
    found = _FAILURE.search(message)
    return found.group(1) if found else code


_FAILURE: Final = re.compile(r"((?:[^\s:]+:\d+: )?(?:eval|rego)_[a-z_]*error)\b")


def _fallback(input_doc: Mapping[str, Any], result: Any, why: str) -> Masking:
    entries = [_Entry(i, _REMOVE, _split(p) or ()) for i, p in enumerate(FALLBACK_ERASE)]
    doc, erased, _, _, hidden = _apply(entries, input_doc, result)
    _warn(why, f"decision log mask: {why}; erasing {', '.join(FALLBACK_ERASE)} from the records instead")
    return Masking(doc["input"], doc.get("result"), tuple(erased), (),
                   f"mask: {why}; erased {', '.join(FALLBACK_ERASE)} instead", frozenset(hidden))


def _parse(position: int, raw: Any) -> _Entry | str:
    """An entry, or why it is not one (without repeating its content)."""
    op: Any = _REMOVE
    path: Any = raw
    value: Any = None
    if isinstance(raw, dict):
        op, path, value = raw.get("op", _REMOVE), raw.get("path"), raw.get("value")
        if op not in (_REMOVE, _UPSERT):
            return 'op must be "remove" or "upsert"'
        if op == _UPSERT and "value" not in raw:
            return "an upsert needs a value"
        if not isinstance(path, str):
            return "path must be a JSON pointer string"
    elif not isinstance(raw, str):
        return f"an entry must be a JSON pointer or an object with op, path and value, not {_kind(raw)}"
    parts = _split(path)
    if parts is None:
        return "path must be a JSON pointer starting with /input or /result (RFC 6901: ~0 for ~, ~1 for /)"
    if parts in PROTECTED:
        return "path names a part of the input the decision log indexes (kind, principal, agent_id, session_id)"
    return _Entry(position, op, parts, value)


def _split(pointer: str) -> tuple[str, ...] | None:
    if not pointer.startswith("/"):
        return None
    parts = pointer[1:].split("/")
    for part in parts:
        rest = part.replace("~0", "").replace("~1", "")
        if "~" in rest:
            return None
    parts = [p.replace("~1", "/").replace("~0", "~") for p in parts]
    if parts[0] not in _ROOTS:
        return None
    return tuple(parts)


def _pointer(parts: Sequence[str]) -> str:
    return "".join("/" + p.replace("~", "~0").replace("/", "~1") for p in parts)


def _apply(entries: list[_Entry], input_doc: Mapping[str, Any],
           result: Any) -> tuple[dict[str, Any], list[str], list[str], list[str], set[str]]:
    """Apply entries to {input, result}: parents before children; an entry inside one already applied is covered.

    Returns the document, the pointers erased and masked, the entries skipped and the strings taken out.
    """
    doc: dict[str, Any] = {"input": input_doc, "result": result}
    copied: set[int] = {id(doc)}
    done: set[tuple[str, ...]] = set()
    erased: list[str] = []
    masked: list[str] = []
    problems: list[str] = []
    hidden: set[str] = set()
    for entry in sorted(entries, key=lambda e: e.parts):
        if any(entry.parts[:i] in done for i in range(1, len(entry.parts) + 1)):
            continue
        outcome = _apply_one(doc, entry, copied, hidden)
        if outcome is None:
            continue  # nothing there to erase
        if isinstance(outcome, str):
            problems.append(f"mask entry {entry.position} skipped: {outcome}")
            continue
        done.add(entry.parts)
        (erased if entry.op == _REMOVE else masked).append(_pointer(entry.parts))
    return doc, erased, masked, problems, hidden


#: Strings shorter than this are not scrubbed from messages: "1" or "id" would mangle every message while
#: no credential is that short.
_MIN_HIDDEN = 4


def _collect_strings(value: Any, into: set[str]) -> None:
    if isinstance(value, str):
        if len(value) >= _MIN_HIDDEN:
            into.add(value)
    elif isinstance(value, Mapping):
        for item in value.values():
            _collect_strings(item, into)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _collect_strings(item, into)


#: What a mask puts in place of a credential inside a string (`Bearer ***`).
_PLACEHOLDER: Final = "***"


def _collect_hidden(old: Any, new: Any, into: set[str]) -> None:
    """The strings a mask entry takes out of old: when a string is replaced by itself with parts turned
    into "***" (`curl ... # Bearer ***`), only those parts, so that a reason quoting the command keeps it
    readable; otherwise every string in old."""
    if isinstance(old, str) and isinstance(new, str):
        parts = _replaced_parts(old, new)
        if parts is not None:
            into.update(p for p in parts if len(p) >= _MIN_HIDDEN)
            return
    _collect_strings(old, into)


def _replaced_parts(old: str, new: str) -> list[str] | None:
    """The pieces of old that new's "***" stand for, when new is old with pieces replaced; else None.

    Each piece ends where the text that follows its placeholder next appears: the patterns a mask uses
    stop at such text (a space, "@", a quote), and when this alignment fails the whole of old is hidden.
    """
    literals = new.split(_PLACEHOLDER)
    if len(literals) < 2 or not old.startswith(literals[0]) or not old.endswith(literals[-1]):
        return None
    parts: list[str] = []
    at = len(literals[0])
    end = len(old) - len(literals[-1])
    for literal in literals[1:-1]:
        found = old.find(literal, at, end) if literal else at
        if found < 0:
            return None
        parts.append(old[at:found])
        at = found + len(literal)
    if at > end:
        return None
    parts.append(old[at:end])
    return parts


def _scrub(value: Any, hidden: Sequence[str]) -> Any:
    if isinstance(value, str):
        for secret in hidden:
            if secret in value:
                value = value.replace(secret, "***")
        return value
    if isinstance(value, Mapping):
        return {key: _scrub(item, hidden) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_scrub(item, hidden) for item in value]
    return value


def _apply_one(doc: dict[str, Any], entry: _Entry, copied: set[int], hidden: set[str]) -> bool | str | None:
    """True when applied, None when a remove finds nothing, or why the entry cannot apply."""
    node: Any = doc
    upsert = entry.op == _UPSERT
    *parents, last = entry.parts
    for depth, key in enumerate(parents):
        child = _child(node, key)
        if child is _MISSING:
            if not (upsert and isinstance(node, dict)):
                return None if not upsert else "path goes through an array index that does not exist"
            child = {}
            copied.add(id(child))
            node[key] = child
        elif not isinstance(child, (Mapping, list, tuple)) or isinstance(child, str):
            if not upsert:
                return None
            return f"path goes through a value that is neither an object nor an array at depth {depth + 1}"
        elif id(child) not in copied:
            child = dict(child) if isinstance(child, Mapping) else list(child)
            copied.add(id(child))
            _set(node, key, child)
        node = child
    if isinstance(node, dict):
        _collect_hidden(node.get(last), entry.value if upsert else None, hidden)
        if upsert:
            node[last] = entry.value
            return True
        if last not in node:
            return None
        del node[last]
        return True
    if isinstance(node, list):
        index = _index(node, last)
        if index is None:
            return None if not upsert else "path names an array index that does not exist"
        _collect_hidden(node[index], entry.value if upsert else None, hidden)
        if upsert:
            node[index] = entry.value
        else:
            del node[index]
        return True
    return None if not upsert else "path goes through a value that is neither an object nor an array"


class _Missing:
    pass


_MISSING: Final = _Missing()


def _child(node: Any, key: str) -> Any:
    if isinstance(node, Mapping):
        return node.get(key, _MISSING)
    if isinstance(node, (list, tuple)):
        index = _index(node, key)
        return _MISSING if index is None else node[index]
    return _MISSING


def _set(node: Any, key: str, value: Any) -> None:
    if isinstance(node, dict):
        node[key] = value
    else:
        index = _index(node, key)
        assert index is not None
        node[index] = value


def _index(node: Sequence[Any], key: str) -> int | None:
    if not key.isdigit() or (len(key) > 1 and key.startswith("0")):
        return None
    index = int(key)
    return index if index < len(node) else None


def _kind(value: Any) -> str:
    return {dict: "an object", str: "a string", bool: "a boolean", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _warn(key: str, message: str) -> None:
    # A broken mask rule fails the same way on every request: say so once a minute, not at request rate.
    now = time.monotonic()
    if now - _last_warning.get(key, -_LOG_EVERY) >= _LOG_EVERY:
        _last_warning[key] = now
        log.error("%s", message)
