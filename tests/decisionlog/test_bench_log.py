"""tools/bench_log.py keeps working: a tiny real run prints the spelling timings and a line per concurrency."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import ROOT


def test_bench_log_prints_us_per_record_for_each_thread_and_concurrency() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "bench_log.py"), "--records", "300",
                           "--concurrency", "1", "8", "--rounds", "2", "--log-sync", "normal"],
                          capture_output=True, text=True, timeout=120, check=True)
    assert re.search(r"input +\d+ B +canonical_json +[\d.]+ +stdlib json.dumps +[\d.]+ +ratio", done.stdout)
    assert re.search(r"record +\d+ B +canonical_json", done.stdout)
    for concurrency in (1, 8):
        assert re.search(rf"concurrency +{concurrency}: +\d+ records/s +main thread +[\d.]+ µs/append +writer thread"
                         r" +[\d.]+ µs/record +[\d.]+ records/commit +append p50", done.stdout), done.stdout
