"""The one backoff every retry loop uses: bounds, growth, the spread of its jitter, Retry-After."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from tollgate.net import Backoff, Jitter

SAMPLES = 2000


def test_the_step_grows_by_the_multiplier_up_to_the_maximum() -> None:
    backoff = Backoff(1.0, 60.0)
    assert [backoff.step(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert Backoff(0.1, 10.0, multiplier=3.0).step(2) == pytest.approx(0.9)


def test_a_retry_loop_that_never_succeeds_stays_at_the_maximum() -> None:
    backoff = Backoff(1.0, 300.0, multiplier=10.0)
    assert backoff.step(100_000) == 300.0  # no OverflowError after days of failures
    assert 150.0 <= Backoff(1.0, 300.0, jitter=Jitter.EQUAL).delay(10**9) <= 300.0


@pytest.mark.parametrize(("jitter", "low_share"), [(Jitter.FULL, 0.0), (Jitter.EQUAL, 0.5)], ids=["full", "equal"])
def test_jitter_keeps_each_delay_within_its_bounds_and_spreads_them(jitter: Jitter, low_share: float) -> None:
    backoff = Backoff(0.5, 8.0, jitter=jitter)
    for attempt, step in ((0, 0.5), (3, 4.0), (9, 8.0)):
        delays = [backoff.delay(attempt) for _ in range(SAMPLES)]
        low = step * low_share
        assert all(low <= d <= step for d in delays), (attempt, min(delays), max(delays))
        # Spread over the whole range, so sidecars that failed together retry apart.
        width = step - low
        assert min(delays) < low + 0.1 * width and max(delays) > step - 0.1 * width
        assert len(set(delays)) > SAMPLES * 0.99


def test_retry_after_is_a_floor_capped_at_the_maximum() -> None:
    backoff = Backoff(1.0, 60.0, jitter=Jitter.EQUAL)
    assert all(d >= 30.0 for d in (backoff.delay(0, retry_after=30.0) for _ in range(100)))
    assert backoff.delay(0, retry_after=3600.0) == 60.0  # a receiver cannot park the exporter for an hour
    # A Retry-After shorter than the backoff does not shorten it.
    assert all(d >= 4.0 for d in (backoff.delay(3, retry_after=0.5) for _ in range(100)))


@pytest.mark.parametrize(("arguments", "message"), [
    ({"initial": 0.0, "maximum": 1.0}, "0 < initial <= maximum"),
    ({"initial": 2.0, "maximum": 1.0}, "0 < initial <= maximum"),
    ({"initial": float("nan"), "maximum": 1.0}, "0 < initial <= maximum"),
    ({"initial": 1.0, "maximum": 2.0, "multiplier": 0.5}, "multiplier must be a finite number >= 1"),
    ({"initial": 1.0, "maximum": 2.0, "multiplier": float("inf")}, "multiplier must be a finite number >= 1"),
], ids=["zero", "initial-over-maximum", "nan", "shrinking", "infinite"])
def test_a_backoff_that_cannot_work_is_refused(arguments: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Backoff(**arguments)


def test_the_client_library_gets_its_backoff_without_an_http_stack() -> None:
    probe = ("import sys, tollgate.client; "
             "print(tollgate.client.Backoff is __import__('tollgate.net').net.Backoff, "
             "[m for m in ('httpx2', 'httpcore2') if m in sys.modules])")
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert ran.stdout.strip() == "True []"
