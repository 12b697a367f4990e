"""The one spelling of each value Tollgate writes: canonical JSON for records, RFC 3339 times, durations.

Bundle signatures hash JSON with OPA's own canonicaliser (`tollgate.bundle`); everything Tollgate stores, hashes or
compares of its own (decision records, request digests, approvals) goes through `canonical_json` here.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any


def canonical_json(value: Any) -> str:
    """The one JSON spelling used for hashing and storage: sorted keys, no spaces, UTF-8, no NaN or infinity."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


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
