"""Micro-benchmark of the decision log's per-record cost: the JSON spelling, and append() through the writer.

Records are the real ones in samples/decisions.jsonl (the default library's answers), each given a fresh decision
ID, appended as the authorizer appends them: with the input JSON the engine got (the mask changed nothing) or,
for --masked of them, without it (the writer serialises the masked input). Prints µs per record, measured on
each thread's own CPU clock: the main thread per append() (its event loop, the bench's tasks included) and the
writer thread per record written; wall-clock throughput, records per commit, and append latency percentiles.

    PYTHONPATH=server .venv/bin/python tools/bench_log.py [--records 20000] [--concurrency 1 64] [--log-sync full]

Run it against two trees side by side (PYTHONPATH=/other/tree/server) to compare: the machine is shared, so only
ratios measured in one session mean anything.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import statistics
import tempfile
import threading
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tollgate.decisionlog import DecisionLog, DecisionRecord, LogConfig
from tollgate.encoding import canonical_json

try:
    from tollgate.encoding import canonical_json_with
except ImportError:  # a tree from before it moved to encoding.py
    from tollgate.decisionlog._sqlite import canonical_json_with  # type: ignore[attr-defined]
from tollgate.ids import new_decision_id

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "samples" / "decisions.jsonl"


def stdlib_canonical_json(value: Any) -> str:
    """canonical_json as it was spelled with the standard library alone: the reference for the spelling timings."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sample_records() -> list[DecisionRecord]:
    found = []
    for line in SAMPLE.read_text().splitlines():
        value = json.loads(line)
        for link in ("seq", "hash", "prev_hash"):
            value.pop(link, None)
        found.append(DecisionRecord.from_dict(value))
    return found


def spelling_us(spell: Callable[[Any], str], values: list[Any], rounds: int) -> float:
    """µs per value: the best of `rounds` passes over values (the machine is shared: the least disturbed)."""
    return min(timeit.repeat(lambda: [spell(v) for v in values], number=1, repeat=rounds)) / len(values) * 1e6


def bench_spelling(records: list[DecisionRecord], rounds: int) -> None:
    inputs = [dict(r.input) for r in records]
    docs = [r.as_dict() for r in records]
    print(f"JSON spelling, µs per value (mean over the {len(records)} sample records, best of {rounds} passes):")
    for label, values in (("input", inputs), ("record", docs)):
        size = statistics.mean(len(stdlib_canonical_json(v).encode()) for v in values)
        ours = spelling_us(canonical_json, values, rounds)
        ref = spelling_us(stdlib_canonical_json, values, rounds)
        print(f"  {label:<7} {size:6.0f} B   canonical_json {ours:7.2f}   stdlib json.dumps {ref:7.2f}"
              f"   ratio {ours / ref:5.2f}")
    # What the writer does with a record whose input JSON the engine got: splice it in, the rest serialised.
    spliced = [({k: v for k, v in doc.items() if k != "input"}, canonical_json(doc["input"])) for doc in docs]
    ours = min(timeit.repeat(lambda: [canonical_json_with(d, "input", j) for d, j in spliced], number=1,
                             repeat=rounds)) / len(spliced) * 1e6
    ref = spelling_us(stdlib_canonical_json, docs, rounds)
    print(f"  record with the input spliced in: canonical_json_with {ours:7.2f}   stdlib json.dumps of the record"
          f" {ref:7.2f}   ratio {ours / ref:5.2f}")


def thread_cpu(thread: threading.Thread) -> float:
    assert thread.ident is not None
    return time.clock_gettime(time.pthread_getcpuclockid(thread.ident))


async def drive(log: DecisionLog, work: list[tuple[DecisionRecord, str | None]], concurrency: int) -> list[float]:
    """Append every record from `concurrency` tasks; returns each append's latency in seconds."""
    latencies: list[float] = []
    items = iter(work)

    async def worker() -> None:
        for record, input_json in items:
            started = time.perf_counter()
            await log.append(record, input_json=input_json)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def bench_append(records: list[DecisionRecord], *, count: int, concurrency: int, masked: float,
                 sync: str) -> None:
    work: list[tuple[DecisionRecord, str | None]] = []
    for i in range(count):
        record = dataclasses.replace(records[i % len(records)], decision_id=new_decision_id())
        keeps_input = (i % 1000) >= masked * 1000
        work.append((record, canonical_json(record.input) if keeps_input else None))
    with tempfile.TemporaryDirectory(prefix="bench-log-") as tmp:
        log = DecisionLog(LogConfig(path=Path(tmp) / "decisions.db", synchronous=sync))

        async def run() -> tuple[list[float], float, float, float]:
            log.start(asyncio.get_running_loop())
            writer = log._thread  # the bench reads the writer's CPU clock
            assert writer is not None
            await drive(log, work[:200], concurrency)  # warm-up: first pages, caches
            wall, main_cpu, writer_cpu = time.perf_counter(), time.thread_time(), thread_cpu(writer)
            latencies = await drive(log, work[200:], concurrency)
            return (latencies, time.perf_counter() - wall, time.thread_time() - main_cpu,
                    thread_cpu(writer) - writer_cpu)

        commits_before = log.commits
        latencies, wall, main_cpu, writer_cpu = asyncio.run(run())
        log.close()
    timed = len(latencies)
    commits = max(log.commits - commits_before, 1)
    latencies.sort()
    p50, p99 = latencies[timed // 2], latencies[min(timed - 1, timed * 99 // 100)]
    print(f"  concurrency {concurrency:>4}: {timed / wall:8.0f} records/s"
          f"   main thread {main_cpu / timed * 1e6:6.1f} µs/append"
          f"   writer thread {writer_cpu / timed * 1e6:6.1f} µs/record   {timed / commits:6.1f} records/commit"
          f"   append p50 {p50 * 1e3:6.2f} ms  p99 {p99 * 1e3:6.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=20000, help="records appended per concurrency level")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 64],
                        help="tasks appending at once (1: each append waits its own commit)")
    parser.add_argument("--masked", type=float, default=0.0,
                        help="fraction of records appended without the engine's input JSON (the mask changed it)")
    parser.add_argument("--log-sync", choices=["full", "normal"], default="full")
    parser.add_argument("--rounds", type=int, default=200,
                        help="passes over the sample for the spelling timings (the best one counts)")
    args = parser.parse_args()
    records = sample_records()
    bench_spelling(records, args.rounds)
    print(f"append() through the writer (--log-sync {args.log_sync}, {args.records} records, "
          f"{args.masked:.0%} without the input JSON; CPU per thread's clock):")
    for concurrency in args.concurrency:
        bench_append(records, count=args.records, concurrency=concurrency, masked=args.masked, sync=args.log_sync)


if __name__ == "__main__":
    main()
