"""tools/bench_path.py keeps working: a tiny real run prints the main thread's figure and every step's."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests.conftest import ROOT

TOOL = ROOT / "tools" / "bench_path.py"
STEPS = ("parse AuthorizeRequest", "caller resolution", "to_decision_request", "read_state", "build_input",
         "canonical_json(input)", "evaluate (engine pool, wall time)", "mask_record", "settle", "record",
         "observer (metrics)", "to_response + serialise")


def test_a_tiny_run_prints_the_answer_cost_and_each_step() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "server")}
    run = subprocess.run([sys.executable, str(TOOL), "--requests", "40", "--rounds", "1", "--concurrency", "4",
                          "--calls", "3", "--repeat", "1"], capture_output=True, text=True, timeout=120, env=env,
                         check=False)
    assert run.returncode == 0, run.stderr
    figures = dict(re.findall(r"^\s+(.+?)\s{2,}([\d.]+) µs", run.stdout, re.MULTILINE))
    assert float(figures["end to end (main thread CPU per answer)"]) > 0, run.stdout
    assert all(float(figures[step]) >= 0 for step in STEPS), run.stdout
