"""The one spelling of each value: canonical JSON, RFC 3339 times, the duration grammar."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tollgate.encoding import canonical_json, format_time, parse_duration, parse_moment, parse_time


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
