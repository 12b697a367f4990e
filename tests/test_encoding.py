"""The one spelling of each value: canonical JSON, RFC 3339 times, the duration grammar."""

from __future__ import annotations

import enum
import json
import math
import random
import struct
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tollgate.encoding import canonical_json, canonical_json_with, format_time, parse_duration, parse_moment, parse_time


@pytest.mark.parametrize(("text", "expected"), [
    ("2026-11-21T18:00:00Z", datetime(2026, 11, 21, 18, tzinfo=UTC)),
    ("2026-11-21T19:30:00+01:30", datetime(2026, 11, 21, 18, tzinfo=UTC)),
    ("2026-11-21", datetime(2026, 11, 21, tzinfo=UTC)),
    ("24h", datetime(2026, 11, 21, 12, tzinfo=UTC)),
    ("7d", datetime(2026, 11, 15, 12, tzinfo=UTC)),
    ("1h30m", datetime(2026, 11, 22, 10, 30, tzinfo=UTC)),
    ("2w", datetime(2026, 11, 8, 12, tzinfo=UTC)),
], ids=["utc", "offset", "date", "hours", "days", "compound", "weeks"])
def test_times_are_rfc3339_or_durations_back_from_now(text: str, expected: datetime) -> None:
    assert parse_moment(text, now=datetime(2026, 11, 22, 12, tzinfo=UTC)) == expected


@pytest.mark.parametrize("text", ["yesterday", "24", "h", "-1d", "2026-13-01"])
def test_bad_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="RFC 3339"):
        parse_moment(text, now=datetime(2026, 11, 22, 12, tzinfo=UTC))


@pytest.mark.parametrize(("text", "seconds"), [
    ("45s", 45), ("90m", 5400), ("12h", 43200), ("30d", 30 * 86400), ("2w", 14 * 86400), ("1h30m", 5400),
    ("1.5s", 1.5),
], ids=["seconds", "minutes", "hours", "days", "weeks", "compound", "fractional"])
def test_one_duration_grammar(text: str, seconds: float) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["", "30", "d", "0s", "-1d", "1y", "1h 30m", "9999999w"],
                         ids=["empty", "no-unit", "no-number", "zero", "negative", "unknown-unit", "space", "huge"])
def test_bad_durations_are_refused_with_the_grammar(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_times_are_written_in_one_fixed_width_utc_spelling() -> None:
    moment = datetime(2026, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert format_time(moment) == "2026-12-31T23:59:59.000000Z"
    assert parse_time(format_time(moment)) == moment
    assert format_time(moment) < format_time(moment + timedelta(microseconds=1))  # sorts as text


def test_canonical_json_sorts_keys_keeps_unicode_and_refuses_nan() -> None:
    assert canonical_json({"b": 1, "a": "é"}) == '{"a":"é","b":1}'
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def _stdlib(value: Any) -> str:
    """canonical_json as it has always been spelled: records on disk and request digests hold these bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _outcome(spell: Any, value: Any) -> tuple[str, str]:
    """What spelling value gives: ("ok", the text) or (the exception's type, its message)."""
    try:
        return "ok", spell(value)
    except Exception as exc:
        return type(exc).__name__, str(exc)


class _Colour(enum.Enum):
    RED = 1


class _Level(enum.IntEnum):
    HIGH = 3


class _Name(enum.StrEnum):
    ADA = "ada"


@dataclass
class _Point:
    x: int


_SHARED_NAN = float("nan")  # one object in two places: marshal writes it once, then a reference to it


def _cycle() -> list[Any]:
    looped: list[Any] = []
    looped.append(looped)
    return looped


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize("value", [
    1e-05, 1.5e-07, -2.5e-09, 1e-10, 9.99e-05, 0.0001, 1e16, 1e+22, 1.7976931348623157e308, 5e-324, -0.0, 0.1,
    2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1, 10**30,
    "\ud800", "a\udfffb", "\x00\x1f\x7f\u2028\u2029", "é\U0001F600\uffff",
    {1: "int key"}, {None: 1}, {True: 1}, {1.5: 2}, {"a": 1, 2: "mixed"},
    {"\U0001F600": 1, "\uffff": 2, "Z": 3, "é": 4},
    float("nan"), float("inf"), -float("inf"), {"deep": [{"x": float("nan")}]}, [_SHARED_NAN, {"again": _SHARED_NAN}],
    (1, "tuple"), OrderedDict(b=1, a=2), _Level.HIGH, _Name.ADA, _Colour.RED, uuid.UUID(int=7), _Point(1),
    datetime(2026, 1, 1, tzinfo=UTC), {1, 2}, b"bytes", _nested(300), _cycle(),
], ids=[
    "1e-05", "1.5e-07", "-2.5e-09", "1e-10", "9.99e-05", "1e-4", "1e16", "1e22", "max-float", "min-subnormal",
    "minus-zero", "0.1", "int64-max", "2**63", "uint64-max", "2**64", "int64-min", "below-int64-min", "10**30",
    "lone-high-surrogate", "lone-low-surrogate", "controls-and-separators", "non-ascii",
    "int-key", "none-key", "bool-key", "float-key", "mixed-keys", "key-order-past-the-bmp",
    "nan", "inf", "minus-inf", "nested-nan", "one-nan-object-twice",
    "tuple", "ordered-dict", "int-enum", "str-enum", "plain-enum", "uuid", "dataclass", "datetime", "set", "bytes",
    "300-deep", "cycle",
])
def test_canonical_json_spells_or_refuses_each_value_exactly_as_json_dumps_did(value: Any) -> None:
    assert _outcome(canonical_json, value) == _outcome(_stdlib, value)


def _float(rng: random.Random) -> float:
    """A float from anywhere: any bit pattern (NaN and infinities included), a decimal of any size, or one near
    where the two spellings part (1e-10 to 1e-4, and Python's switch to an exponent at 1e16)."""
    choice = rng.randrange(4)
    if choice == 0:
        return float(struct.unpack("<d", rng.getrandbits(64).to_bytes(8, "little"))[0])
    if choice == 1:
        return float(f"{rng.choice('+-')}{rng.randint(1, 10**17)}e{rng.randint(-345, 292)}")  # past 1.8e308: infinite
    if choice == 2:
        return rng.choice((1, -1)) * round(rng.random(), rng.randint(1, 17)) * 10.0 ** rng.randint(-11, -3)
    return rng.choice((1.0, -1.0)) * rng.randint(1, 10**6) * 10.0 ** rng.randint(10, 18)


def _int(rng: random.Random) -> int:
    edge = rng.choice((0, 2**31, 2**53, 2**63, 2**64, 2**65))
    return rng.choice((1, -1)) * (edge + rng.randint(-3, 3)) if rng.random() < 0.5 else rng.randint(-1000, 10**6)


def _text(rng: random.Random) -> str:
    """Mostly ASCII, with controls, the JS line separators, non-BMP characters and now and then a lone surrogate;
    sometimes a text that looks like a small float (a false alarm must still give the same bytes)."""
    if rng.random() < 0.1:
        return rng.choice(("1e-5,", "x0.00001]", "claude-3-5", "e-", "null", "nan", "0.0000"))
    pool = ("a", "Z", "0", "e", "-", " ", '"', "\\", "/", "\n", "\x00", "\x1f", "\x7f", "é", "\u2028", "\uffff",
            "\U0001F600", "\U0010FFFF")
    chars = [rng.choice(pool) for _ in range(rng.randint(0, 8))]
    if rng.random() < 0.02:
        chars.append(chr(rng.randint(0xD800, 0xDFFF)))
    return "".join(chars)


def _key(rng: random.Random) -> Any:
    return _text(rng) if rng.random() < 0.98 else rng.choice((1, None, True, 2.5))


def _value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON-ish value: what canonical_json is given, and now and then what it must refuse."""
    kind = rng.randrange(9 if depth < 4 else 6)
    if kind == 0:
        return rng.choice((None, True, False))
    if kind == 1:
        return _int(rng)
    if kind == 2:
        return _float(rng)
    if kind in (3, 4, 5):
        return _text(rng)
    if kind == 6:
        items = [_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
        return tuple(items) if rng.random() < 0.1 else items
    return {_key(rng): _value(rng, depth + 1) for _ in range(rng.randint(0, 6))}


@pytest.mark.parametrize("seed", range(8))
def test_canonical_json_equals_json_dumps_over_generated_values(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(2500):
        value = _value(rng)
        assert _outcome(canonical_json, value) == _outcome(_stdlib, value), repr(value)


def test_canonical_json_spells_every_float_as_python_repr_does() -> None:
    rng = random.Random(15)
    for _ in range(50_000):
        number = _float(rng)
        if math.isfinite(number):
            assert canonical_json([number]) == f"[{number!r}]", repr(number)


@pytest.mark.parametrize("seed", range(4))
def test_spliced_canonical_json_equals_json_dumps_over_generated_records(seed: int) -> None:
    rng = random.Random(1000 + seed)
    for _ in range(1500):
        record = {_text(rng): _value(rng, 2) for _ in range(rng.randint(0, 6))}
        record.pop("input", None)
        value = _value(rng, 1)
        expected = _outcome(_stdlib, {**record, "input": value})
        if expected[0] != "ok":
            continue  # the record could not be written today: nothing to splice into
        value_json = _stdlib(value)
        spliced = _outcome(lambda r, v=value_json: canonical_json_with(r, "input", v), record)
        assert spliced == expected, repr(record)
