"""Open-loop load: requests sent at Poisson arrival times, latency counted from each one's scheduled time.

h2load is a closed loop (a stream waits for its answer before it sends again) and paces --rps on a 10 ms
timer, so a slow answer delays the requests behind it and hides in the figures (coordinated omission). This
generator sends each request at its scheduled time whether or not earlier ones were answered: the gaps are
exponential (seeded, so both targets get the same schedule), and a request's latency runs from the time it
was due, not from the time it left. It runs as its own process (`tools/bench.py --poisson-client SPEC`), a
grpc.aio client sending the same AuthorizeRequest bytes as h2load on a few channels, and reports its own CPU
and how late it sent: a saturated generator is reported as such, not misread as a slow server.
"""

from __future__ import annotations

import asyncio
import collections
import json
import math
import random
import resource
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from benchkit.h2load import LoadResult, percentile
from benchkit.logcheck import log_key
from benchkit.procs import BenchError, CpuSample, CpuUse, Target
from benchkit.wire import METHOD_PATH
from tollgate.v1 import authorization_pb2 as pb

#: Past this many cores, or sending later than this on the p99, the generator (not the server) set the pace.
GENERATOR_CORES_LIMIT = 0.8
GENERATOR_LAG_LIMIT_MS = 1.0
DRAIN_TIMEOUT = 10.0  # seconds to wait for answers still in flight when the schedule ends
CALL_TIMEOUT = 10.0  # a request unanswered this long counts as failed (DEADLINE_EXCEEDED at the client)


def poisson_schedule(rate: float, duration: float, seed: int) -> list[float]:
    """Send offsets in seconds from the start: exponential gaps of mean 1/rate, all below duration."""
    if rate <= 0 or duration <= 0:
        return []
    rng, offsets, at = random.Random(seed), list[float](), 0.0
    while True:
        at += rng.expovariate(rate)
        if at >= duration:
            return offsets
        offsets.append(at)


# -- the generator process -----------------------------------------------------------------------


@dataclass
class _Outcome:
    """What the generator saw, request by request (index = position in the schedule)."""

    latency_ms: list[float | None]
    lag_ms: list[float]
    revision: list[int]  # index into revisions; -1 for a failed request
    revisions: dict[str, int] = field(default_factory=dict)
    answers: collections.Counter[str] = field(default_factory=collections.Counter)
    errors: collections.Counter[str] = field(default_factory=collections.Counter)


async def _send_all(spec: dict[str, Any]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    body = Path(spec["body"]).read_bytes()
    offsets = poisson_schedule(spec["rate"], spec["duration"], spec["seed"])
    channels = [grpc.aio.insecure_channel(spec["address"]) for _ in range(spec["channels"])]
    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 30)
    calls = [c.unary_unary(METHOD_PATH) for c in channels]  # no serializers: the request goes as bytes
    n = len(offsets)
    seen = _Outcome(latency_ms=[None] * n, lag_ms=[math.nan] * n, revision=[-1] * n)
    in_flight: set[asyncio.Task[None]] = set()

    async def one(i: int, due: float) -> None:
        seen.lag_ms[i] = (loop.time() - due) * 1000
        try:
            raw = await calls[i % len(calls)](body, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as exc:
            seen.errors[exc.code().name] += 1
            return
        seen.latency_ms[i] = (loop.time() - due) * 1000
        response = pb.AuthorizeResponse.FromString(raw)
        seen.answers[log_key(response)] += 1
        seen.revision[i] = seen.revisions.setdefault(response.bundle_revision, len(seen.revisions))

    def fire(i: int, due: float) -> None:
        task = loop.create_task(one(i, due))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)

    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    start = loop.time() + 0.05
    for i, offset in enumerate(offsets):
        loop.call_at(start + offset, fire, i, start + offset)
    await asyncio.sleep(max(0.0, start + spec["duration"] - loop.time()))
    unanswered = 0
    if in_flight:
        _done, pending = await asyncio.wait(set(in_flight), timeout=DRAIN_TIMEOUT)
        unanswered = len(pending)
        for task in pending:
            task.cancel()
    wall = loop.time() - start
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    for channel in channels:
        await channel.close()
    cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime + cpu_before.ru_stime)
    return {
        "start": start, "offsets": offsets, "latency_ms": seen.latency_ms, "lag_ms": seen.lag_ms,
        "revision": seen.revision, "revisions": list(seen.revisions), "answers": dict(seen.answers),
        "errors": dict(seen.errors) | ({"unanswered": unanswered} if unanswered else {}),
        "cpu_s": cpu, "wall_s": wall,
    }


def client_main(spec_path: str) -> int:
    """The generator process: read the spec, send, write what it saw beside the spec."""
    spec = json.loads(Path(spec_path).read_text())
    result = asyncio.run(_send_all(spec))
    Path(spec["output"]).write_text(json.dumps(result))
    return 0


# -- the parent's side ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PoissonSpec:
    """One open-loop run."""

    phase: str
    rate: float  # requests per second, on average
    duration: float
    seed: int = 15
    channels: int = 4


@dataclass(frozen=True)
class Timeline:
    """Request by request, for the activation window: when each was due (monotonic s), its latency, revision."""

    due: list[float]
    latency_ms: list[float | None]
    revision: list[str | None]


def run_poisson(spec: PoissonSpec, target: Target, body: Path, workdir: Path,
                bench_script: Path) -> tuple[LoadResult, Timeline]:
    """Run the generator against target; the server's CPU is read from /proc around it, as for h2load."""
    stem = workdir / f"poisson-{target.name}-{spec.phase}"
    spec_file, output = stem.with_suffix(".spec.json"), stem.with_suffix(".out.json")
    body.with_suffix(".pb").write_bytes(body.read_bytes()[5:])  # the message without its gRPC frame
    spec_file.write_text(json.dumps({
        "address": target.address, "body": str(body.with_suffix(".pb")), "rate": spec.rate,
        "duration": spec.duration, "seed": spec.seed, "channels": spec.channels, "output": str(output),
    }))
    before = CpuSample.take(target.proc.pid)
    proc = subprocess.run([sys.executable, str(bench_script), "--poisson-client", str(spec_file)],
                          capture_output=True, text=True, timeout=spec.duration + DRAIN_TIMEOUT + 90, check=False)
    cpu = CpuUse.between(before, CpuSample.take(target.proc.pid))
    if proc.returncode != 0 or not output.exists():
        raise BenchError(f"the Poisson generator against {target.name} exited with {proc.returncode}:\n"
                         f"{proc.stderr.strip()[-2000:]}")
    seen = json.loads(output.read_text())
    return summarize(spec, seen, cpu), timeline(seen)


def summarize(spec: PoissonSpec, seen: dict[str, Any], cpu: CpuUse) -> LoadResult:
    latencies = [x for x in seen["latency_ms"] if x is not None]
    lags = [x for x in seen["lag_ms"] if not math.isnan(x)]
    wall = max(seen["wall_s"], 1e-9)
    throughput = len(latencies) / spec.duration
    failed = sum(seen["errors"].values())
    return LoadResult(
        phase=spec.phase, generator="poisson", clients=spec.channels, streams=0, rps_target=spec.rate,
        duration_s=spec.duration, throughput=throughput, succeeded=len(latencies), started=len(seen["offsets"]),
        failed=failed, data_bytes=0, p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
        max_ms=max(latencies, default=math.nan), cpu=cpu, cpu_us_per_request=cpu.per_request_us(throughput),
        answers=dict(seen["answers"]), errors=dict(seen["errors"]),
        generator_cores=seen["cpu_s"] / wall, send_lag_p99_ms=percentile(lags, 99),
    )


def timeline(seen: dict[str, Any]) -> Timeline:
    names: list[str] = seen["revisions"]
    return Timeline(due=[seen["start"] + o for o in seen["offsets"]], latency_ms=list(seen["latency_ms"]),
                    revision=[names[r] if r >= 0 else None for r in seen["revision"]])


def generator_saturated(result: LoadResult) -> bool:
    """The generator, not the server, set the pace: it used most of a core, or sent late."""
    return result.generator_cores > GENERATOR_CORES_LIMIT or result.send_lag_p99_ms > GENERATOR_LAG_LIMIT_MS

