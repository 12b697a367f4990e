"""Where memory and CPU go as a bundle's agent manifests grow (issue 15 target 5), per process.

For each manifest count: builds the bundle as tools/bench.py does (benchkit.bundles.manifest_bundle), loads it in
this process, starts a WorkerPoolEngine on it and answers the benchmark's request `--calls` times one at a time;
prints VmRSS/VmHWM of this (the main) process after the load and after the start, of each worker, the time to load
and to start, the CPU per answer of the main process and of the workers, and how long a replacement worker takes.

    PYTHONPATH=server:tools python tools/bench_manifests.py --policy one-rule --manifests 10,10000
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchkit.bundles import DEFAULT_LIBRARY, MANIFEST_DATA_VALUES, ONE_RULE, manifest_bundle
from benchkit.wire import bench_request  # the request tools/bench.py sends

from tollgate.api._authorization import RequestLimits
from tollgate.api._convert import to_decision_request
from tollgate.bundle import DataLimits, load_bundle
from tollgate.contract import build_input
from tollgate.encoding import canonical_json
from tollgate.engine import EngineConfig, WorkerPoolEngine
from tollgate.identity import ANONYMOUS

TICKS = os.sysconf("SC_CLK_TCK")


def status(pid: int | str = "self") -> tuple[float, float]:
    """VmRSS and VmHWM in MiB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def cpu(pid: int) -> float:
    """Seconds of CPU a process used (user + system)."""
    parts = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / TICKS


def engine_input() -> bytes:
    request = to_decision_request(bench_request(), max_depth=RequestLimits().max_depth, caller=ANONYMOUS)
    return canonical_json(build_input(request, now="2026-01-01T00:00:00Z")).encode()


async def measure(bundle_dir: Path, calls: int, workers: int) -> list[str]:
    lines = []
    gc.collect()
    rss0, _ = status()
    started = time.perf_counter()
    bundle = load_bundle(bundle_dir, data_limits=DataLimits(values=MANIFEST_DATA_VALUES))
    loaded = time.perf_counter()
    rss1, hwm1 = status()
    lines.append(f"  load {loaded - started:6.2f} s   main VmRSS {rss0:6.0f} -> {rss1:6.0f} MiB (HWM {hwm1:.0f})")
    engine = WorkerPoolEngine(bundle, EngineConfig(workers=workers, eval_timeout=5.0))
    del bundle
    gc.collect()
    await engine.start()
    up = time.perf_counter()
    rss2, hwm2 = status()
    pids = [w.proc.pid for w in engine._workers]
    lines.append(f"  start {up - loaded:5.2f} s   main VmRSS {rss2:6.0f} MiB (HWM {hwm2:.0f}); workers " + ", ".join(
        "VmRSS {:.0f} (HWM {:.0f})".format(*status(p)) for p in pids) + " MiB")
    payload = engine_input()
    for _ in range(min(200, calls)):
        await engine.evaluate_with_mask(payload)
    main0, workers0 = time.process_time(), sum(cpu(p) for p in pids)
    wall0 = time.perf_counter()
    for _ in range(calls):
        await engine.evaluate_with_mask(payload)
    wall = (time.perf_counter() - wall0) / calls * 1e6
    main_us = (time.process_time() - main0) / calls * 1e6
    workers_us = (sum(cpu(p) for p in pids) - workers0) / calls * 1e6
    lines.append(f"  per answer: wall {wall:6.0f} µs, main CPU {main_us:5.0f} µs, workers CPU {workers_us:5.0f} µs; "
                 "workers " + ", ".join("VmRSS {:.0f} (HWM {:.0f})".format(*status(p)) for p in pids) + " MiB")
    victim = engine._workers[0]
    t0 = time.perf_counter()
    engine._retire(victim, why="bench_manifests: replacement timing", reason="exited")
    while engine.workers < workers:
        await asyncio.sleep(0.01)
    lines.append(f"  a replacement worker took {time.perf_counter() - t0:5.2f} s to be ready")
    await engine.close()
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policy", choices=("one-rule", "default"), default="one-rule")
    parser.add_argument("--manifests", default="10,10000", help="comma-separated manifest counts")
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    policy = ONE_RULE if args.policy == "one-rule" else DEFAULT_LIBRARY
    counts = [int(x) for x in args.manifests.split(",")]
    if len(counts) > 1:  # each count in a process of its own, so that its VmHWM is its own
        for n in counts:
            subprocess.run([sys.executable, __file__, "--policy", args.policy, "--manifests", str(n), "--calls",
                            str(args.calls), "--workers", str(args.workers)], check=True)
        return 0
    for n in counts:
        with tempfile.TemporaryDirectory() as tmp:
            bundle_dir = manifest_bundle(policy, Path(tmp) / "bundle", n)
            print(f"{args.policy}, {n} manifests:")
            for line in asyncio.run(measure(bundle_dir, args.calls, args.workers)):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
