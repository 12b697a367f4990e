"""The one spelling of each value Tollgate writes: canonical JSON for records, RFC 3339 times, durations.

Bundle signatures hash JSON with OPA's own canonicaliser (`tollgate.bundle`); everything Tollgate stores, hashes or
compares of its own (decision records, request digests, approvals) goes through `canonical_json` here.

The spelling is the standard library's `json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False,
allow_nan=False)`, byte for byte, forever: records already on disk are verified against it and request digests bind
approvals. orjson writes it ~10x faster, so it writes every value whose bytes it spells the same, and the standard
library writes (or refuses) the rest, as before. Where orjson differs, and how each case is caught:

- floats from 1e-10 to 1e-4: `1e-05` / `1.5e-07` in json, `0.00001` / `1.5e-7` in orjson (every other finite float
  is spelled alike: Python's repr) -- caught by looking at orjson's bytes for a number ending `e-D` or `0.0000...`;
- NaN and infinities: json refuses them (ValueError), orjson writes `null` -- caught by looking for a non-finite
  float in marshal's bytes of the value (`_plain_and_finite`: C, as fast as a Python walk, and it refuses more);
- integers past 64 bits, lone surrogates, non-str keys, nesting past 255 levels (cycles included): orjson raises;
- subclasses of str, int, float, dict and list (an IntEnum, an OrderedDict), dataclasses and datetimes, which orjson
  would spell its own way or json refuses: passed through to orjson's `default`, which refuses them, so json decides.
- a uuid.UUID or a plain enum.Enum member, which orjson writes (as a string, as its value) and json refuses: marshal
  refuses them too.
"""

from __future__ import annotations

import hashlib
import json
import marshal
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

_ORJSON_OPTIONS = (orjson.OPT_SORT_KEYS | orjson.OPT_PASSTHROUGH_SUBCLASS | orjson.OPT_PASSTHROUGH_DATACLASS
                   | orjson.OPT_PASSTHROUGH_DATETIME)
#: A number as orjson spells a float below 1e-4 where json writes `1e-05`: `1e-5` (a one-digit negative exponent
#: ending the number) or `0.00001`. Text inside a string may match too, which only costs a json call.
_SHORT_NEGATIVE_EXPONENT = re.compile(rb"e-\d(?:[,\]}]|\Z)")
_FIXED_BELOW_1E_4 = re.compile(rb"0\.0000\d*(?:[,\]}]|\Z)")
#: A float in marshal's format 4 (`g`, or `g` | 0x80 when it is a shared object) whose exponent bits are all set:
#: NaN, inf, -inf.
_NON_FINITE_FLOAT = re.compile(rb"[g\xe7].{6}[\xf0-\xff][\x7f\xff]", re.DOTALL)


def canonical_json(value: Any) -> str:
    """The one JSON spelling used for hashing and storage: sorted keys, no spaces, UTF-8, no NaN or infinity.

    ValueError for NaN or an infinity, TypeError for what is not JSON data, as `json.dumps` refuses them.
    """
    try:
        spelled = orjson.dumps(value, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:  # past 64 bits, a lone surrogate, a non-str key, a subclass: json decides
        return _stdlib_canonical_json(value)
    if _spelled_apart(spelled, value):
        return _stdlib_canonical_json(value)
    return spelled.decode()


def canonical_json_with(value: dict[str, Any], key: str, value_json: str) -> str:
    """canonical_json(value | {key: v}) where value_json is already canonical_json(v); value lacks key.

    value_json goes in as written (an `orjson.Fragment`): a record reuses the input JSON the engine got.
    """
    try:
        spelled = orjson.dumps({**value, key: orjson.Fragment(value_json)}, option=_ORJSON_OPTIONS)
    except orjson.JSONEncodeError:
        spelled = b""
    if spelled and not _spelled_apart(spelled, value):
        return spelled.decode()
    before = _stdlib_canonical_json({k: v for k, v in value.items() if k < key})
    after = _stdlib_canonical_json({k: v for k, v in value.items() if k > key})
    middle = f"{json.dumps(key)}:{value_json}"
    head = before[:-1] + "," if len(before) > 2 else "{"
    tail = "," + after[1:] if len(after) > 2 else "}"
    return head + middle + tail


def _stdlib_canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _spelled_apart(spelled: bytes, value: Any) -> bool:
    """Whether orjson's bytes of value may differ from json's: a float below 1e-4, a NaN or infinity it wrote as
    null, a UUID or Enum it wrote at all. Cheap: substring searches, a regex only where one finds something."""
    if b"e-" in spelled and _SHORT_NEGATIVE_EXPONENT.search(spelled) is not None:
        return True
    if b"0.0000" in spelled and _FIXED_BELOW_1E_4.search(spelled) is not None:
        return True
    return not _plain_and_finite(value)


def _plain_and_finite(value: Any) -> bool:
    """Nothing in value but core types (no UUID, no Enum), and no NaN or infinity anywhere -- told by marshal, in C.

    marshal (format 4: its short ASCII strings make it twice as fast as 2) writes a float's first occurrence as its
    type byte and its 8 IEEE bytes, little-endian (a repeat of the same object is a reference to it): a NaN or an
    infinity, and only they, has every exponent bit set, its last two bytes 0xF?/0x7F or 0xFF. Strings are ASCII or
    UTF-8 (never 0xFF), so the pattern is almost never seen elsewhere, and a false match only sends the value to
    json. marshal refuses what is not a core type (a UUID, an Enum member), which json refuses as well.
    """
    try:
        packed = marshal.dumps(value, 4)
    except ValueError:
        return False
    if b"\x7f" not in packed and b"\xff" not in packed:
        return True
    return _NON_FINITE_FLOAT.search(packed) is None


def request_digest(kind: str, principal: Any, action: Any) -> str:
    """sha256 of the canonical request — principal, kind and action; not context, not approval_id.

    What an idempotent retry must repeat exactly, and what an approval is bound to.
    """
    body = canonical_json({"kind": kind, "principal": principal, "action": action})
    return hashlib.sha256(body.encode()).hexdigest()


def format_time(moment: datetime) -> str:
    """Tollgate's spelling of a time: RFC 3339 in UTC with microseconds and `Z`, so that it sorts as text."""
    return moment.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def parse_time(text: str) -> datetime:
    """An RFC 3339 time (`2026-11-21T18:00:00Z`, any offset; UTC when it has none) as an aware datetime.

    ValueError names the text when it is not one.
    """
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time (e.g. 2026-11-21T18:00:00Z)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_DURATION_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
#: How a duration is written, for error messages.
DURATION_GRAMMAR = "a number and a unit (s, m, h, d, w), or several: 45s, 90m, 12h, 30d, 2w, 1h30m"


def parse_duration(text: str) -> timedelta:
    """`45s`, `1.5h`, `30d`, `2w`, `1h30m`: one or more number-and-unit parts, as a positive timedelta.

    ValueError (with the grammar) for anything else, zero included.
    """
    text = text.strip()
    parts = _DURATION_PART.findall(text)
    if not text or _DURATION_PART.sub("", text) or not parts:
        raise ValueError(f"{text!r} is not a duration: write {DURATION_GRAMMAR}")
    seconds = sum(float(amount) * _DURATION_SECONDS[unit] for amount, unit in parts)
    if not 0 < seconds < 100 * 365 * 86400:  # a century bounds it: timedelta overflows far past that
        raise ValueError(f"{text!r} is not a duration: it must be positive and under 100 years")
    return timedelta(seconds=seconds)


def parse_moment(text: str, *, now: datetime) -> datetime:
    """An RFC 3339 time, or a duration back from now (`90m`, `24h`, `7d`, `1h30m`), as an aware datetime."""
    text = text.strip()
    if text and not _DURATION_PART.sub("", text):
        return now - parse_duration(text)
    try:
        return parse_time(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is neither an RFC 3339 time (2026-11-21T18:00:00Z) nor a duration (24h, 7d, 1h30m)"
        ) from None
