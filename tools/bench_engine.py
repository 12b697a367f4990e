"""Benchmark the engine worker pool alone: main-thread CPU per evaluate() on a one-rule bundle.

    python tools/bench_engine.py [--calls 20000] [--concurrency 32] [--workers 2] [--tree PATH] [--json]

Starts a WorkerPoolEngine (the embedded engine's pool of worker processes) on a one-rule policy and runs
--calls evaluate() calls from --concurrency callers looping at once, then prints the event-loop thread's CPU
per call in µs (what the pool costs the server's main thread per answer: dispatch, frames, deadline watch,
futures), the calls per second, and how many answers were deadline_exceeded and workers retired. --tree runs
another checkout's server code (e.g. /work/main) with this same script, so two trees compare side by side;
run both in one session, the machine's load moves absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

POLICY = """package tollgate

decision := {"decision": "allow"} if input.principal.agent_id != "nobody"
"""

INPUT = json.dumps({"kind": "tool", "tool": {"server": "github", "name": "get_pull_request",
                                             "arguments": {"repo": "payments-api", "number": 42}},
                    "principal": {"agent_id": "code-reviewer", "session_id": "s1"}}).encode()


async def run(calls: int, concurrency: int, workers: int) -> dict[str, float]:
    from tollgate.bundle import load_bundle
    from tollgate.engine import EngineConfig, EvaluationTimeout, WorkerPoolEngine

    restarts: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "tollgate").mkdir()
        (Path(tmp) / "tollgate" / "decision.rego").write_text(POLICY)
        engine = WorkerPoolEngine(load_bundle(Path(tmp)), EngineConfig(workers=workers, on_restart=restarts.append))
        await engine.start()
    timeouts = 0

    async def caller(n: int) -> None:
        nonlocal timeouts
        for _ in range(n):
            try:
                await engine.evaluate(INPUT)
            except EvaluationTimeout:
                timeouts += 1

    try:
        await asyncio.gather(*(caller(50) for _ in range(concurrency)))  # warm-up
        timeouts = 0
        cpu, wall = time.thread_time(), time.perf_counter()
        await asyncio.gather(*(caller(calls // concurrency) for _ in range(concurrency)))
        cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    finally:
        await engine.close()
    done = calls // concurrency * concurrency
    return {"main_thread_us_per_call": cpu / done * 1e6, "calls_per_s": done / wall,
            "deadline_exceeded": timeouts, "worker_retirements": len(restarts)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the checkout whose server/ code runs")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    server = str((args.tree / "server").resolve())
    sys.path.insert(0, server)
    os.environ["PYTHONPATH"] = server  # the worker processes import the same tree
    result = asyncio.run(run(args.calls, args.concurrency, args.workers))
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{args.tree}: main thread {result['main_thread_us_per_call']:.1f} µs/call, "
              f"{result['calls_per_s']:.0f} calls/s, {result['deadline_exceeded']:.0f} deadline_exceeded, "
              f"{result['worker_retirements']:.0f} worker retirements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
