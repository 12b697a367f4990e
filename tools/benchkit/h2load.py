"""h2load runs: closed-loop saturation and its 10 ms-paced --rps mode, parsed into one LoadResult."""

from __future__ import annotations

import math
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from benchkit.procs import BenchError, CpuSample, CpuUse, Target
from benchkit.wire import METHOD_PATH

# -- h2load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    """One h2load run."""

    phase: str  # "warm-up", "saturation" or "half"
    duration: float
    clients: int
    streams: int
    rps_total: float | None = None  # None: as fast as it goes
    round_no: int = 0  # tools/bench_fleet.py's measuring round (0: the warm-up); bench.py runs one round


@dataclass(frozen=True)
class LoadResult:
    """What one run measured (h2load's or the Poisson generator's), with the server's CPU use during it."""

    phase: str
    generator: str  # "h2load" or "poisson"
    clients: int  # h2load clients, or the generator's channels
    streams: int  # h2load streams per client (0 for the open loop: no limit on requests in flight)
    rps_target: float | None
    duration_s: float
    throughput: float  # successful requests per second
    succeeded: int
    started: int
    failed: int  # h2load's failed + errored + timeout and non-2xx; the generator's gRPC errors
    data_bytes: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu: CpuUse
    cpu_us_per_request: dict[str, float]
    #: Tollgate only: rows the decision log gained, by answer ("allow", "deny:deadline_exceeded", ...).
    decision_log: dict[str, int] = field(default_factory=dict)
    answers: dict[str, int] = field(default_factory=dict)  # the generator's own count, by answer
    errors: dict[str, int] = field(default_factory=dict)  # the generator's gRPC errors, by status code
    generator_cores: float = math.nan  # the Poisson generator's own CPU (h2load's is in cpu.generator)
    send_lag_p99_ms: float = math.nan  # how late the Poisson generator sent, p99
    non_policy: int = 0  # answers that were not the policy's (decision log), plus failed requests
    retirements: int = 0  # engine workers retired during the run (the server's "retiring worker" lines)

    @property
    def label(self) -> str:
        return self.phase if self.generator == "h2load" else f"{self.phase} (open loop)"

    def share_of(self, answer: str) -> float:
        """The fraction of logged answers that were `answer` (1.0 when there is no log to ask)."""
        total = sum(self.decision_log.values())
        return self.decision_log.get(answer, 0) / total if total else 1.0


_FINISHED = re.compile(r"finished in (?P<secs>[\d.]+)s, (?P<rps>[\d.]+) req/s")
_REQUESTS = re.compile(
    r"requests: (?P<total>\d+) total, (?P<started>\d+) started, (?P<done>\d+) done, (?P<ok>\d+) succeeded,"
    r" (?P<failed>\d+) failed, (?P<errored>\d+) errored, (?P<timeout>\d+) timeout")
_STATUS = re.compile(r"status codes: (?P<s2>\d+) 2xx, (?P<s3>\d+) 3xx, (?P<s4>\d+) 4xx, (?P<s5>\d+) 5xx")
_TRAFFIC = re.compile(r"traffic: .*\((?P<data>\d+)\) data")


def h2load_argv(spec: LoadSpec, target: Target, body: Path, log_file: Path) -> list[str]:
    argv = [
        "h2load", "-D", f"{spec.duration:g}", "-c", str(spec.clients), "-m", str(spec.streams), "-t", "1",
        f"--data={body}", "-H", "content-type: application/grpc", "-H", "te: trailers",
        f"--log-file={log_file}",
    ]
    if spec.rps_total is not None:
        argv.append(f"--rps={spec.rps_total / spec.clients:.3f}")  # h2load's rate is per client
    return [*argv, f"http://{target.address}{METHOD_PATH}"]


def run_load(spec: LoadSpec, target: Target, body: Path, workdir: Path) -> LoadResult:
    log_file = workdir / f"h2load-{target.name}-{spec.phase}.log"
    log_file.unlink(missing_ok=True)  # h2load appends to an existing log
    before = CpuSample.take(target.proc.pid)
    proc = subprocess.run(h2load_argv(spec, target, body, log_file), capture_output=True, text=True,
                          timeout=spec.duration + 120, check=False)
    cpu = CpuUse.between(before, CpuSample.take(target.proc.pid))
    if proc.returncode != 0:
        raise BenchError(f"h2load against {target.name} exited with {proc.returncode}:\n"
                         f"{proc.stderr.strip()}")
    return _parse_h2load(spec, proc.stdout, _latencies_ms(log_file), cpu)


def _parse_h2load(spec: LoadSpec, output: str, latencies: list[float], cpu: CpuUse) -> LoadResult:
    finished, requests = _FINISHED.search(output), _REQUESTS.search(output)
    status, traffic = _STATUS.search(output), _TRAFFIC.search(output)
    if not (finished and requests and status and traffic):
        raise BenchError(f"cannot read h2load's summary:\n{output}")
    non_2xx = sum(int(status[k]) for k in ("s3", "s4", "s5"))
    return LoadResult(
        phase=spec.phase, generator="h2load", clients=spec.clients, streams=spec.streams,
        rps_target=spec.rps_total,
        duration_s=float(finished["secs"]), throughput=float(finished["rps"]),
        succeeded=int(requests["ok"]), started=int(requests["started"]),
        failed=int(requests["failed"]) + int(requests["errored"]) + int(requests["timeout"]) + non_2xx,
        data_bytes=int(traffic["data"]),
        p50_ms=percentile(latencies, 50), p99_ms=percentile(latencies, 99),
        max_ms=max(latencies, default=math.nan),
        cpu=cpu, cpu_us_per_request=cpu.per_request_us(float(finished["rps"])),
    )


def _latencies_ms(log_file: Path) -> list[float]:
    """Elapsed time of each completed request from h2load's log: start µs, HTTP status, elapsed µs."""
    latencies = []
    with log_file.open() as f:
        for line in f:
            parts = line.split("\t")
            if len(parts) >= 3 and parts[1] == "200":
                latencies.append(int(parts[2]) / 1000)
    return latencies


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (an observed value, never an interpolation)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(pct / 100 * len(ordered)) - 1)]

