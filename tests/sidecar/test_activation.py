"""The bundle activator's polling schedule: jittered intervals, exponential backoff with a cap."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollgate.engine import EngineConfig, EngineSlot
from tollgate.sidecar.activation import ActivatorConfig, BundleActivator


def _activator(tmp_path: Path, source: str, **config: float) -> BundleActivator:
    return BundleActivator(ActivatorConfig(source=source, state_dir=tmp_path / "bundles", **config),  # type: ignore[arg-type]
                           EngineSlot(), EngineConfig())


def test_http_polls_are_jittered_by_a_quarter_either_way(tmp_path: Path) -> None:
    activator = _activator(tmp_path, "http://127.0.0.1:1/b.tar.gz", poll_interval=30.0)
    delays = [activator._next_delay() for _ in range(2000)]
    assert 22.5 <= min(delays) < 24 and 36 < max(delays) <= 37.5


@pytest.mark.parametrize(("failures", "low", "high"), [(1, 0.5, 1.0), (2, 1.0, 2.0), (5, 8.0, 16.0),
                                                       (9, 128.0, 256.0), (10, 150.0, 300.0), (60, 150.0, 300.0)],
                         ids=["first", "second", "fifth", "ninth", "capped", "long-outage"])
def test_failed_polls_back_off_exponentially_with_jitter_up_to_five_minutes(
        tmp_path: Path, failures: int, low: float, high: float) -> None:
    activator = _activator(tmp_path, "http://127.0.0.1:1/b.tar.gz")
    activator._failures = failures
    delays = [activator._next_delay() for _ in range(500)]
    assert low <= min(delays) and max(delays) <= high
    assert max(delays) - min(delays) > (high - low) / 3  # jittered, not in step


def test_local_sources_are_checked_every_second(tmp_path: Path) -> None:
    (tmp_path / "rego").mkdir()
    assert _activator(tmp_path, str(tmp_path / "rego"))._next_delay() == 1.0
