"""Benchmark Tollgate's Authorize against a no-op servicer on the same gRPC stack, driven by h2load.

    python tools/bench.py [--duration SECONDS] [--connections C] [--streams M] [--bundle PATH]
                          [--workers N] [--log-sync full|normal] [--rounds R] [--json]

Both targets run as real subprocesses on free ports: `tollgate serve` (a fresh data dir, durable
logging by default) and this file in `--noop-server PORT` mode, which serves the same generated
AuthorizationService on the same grpc.aio server with the same options, answering a fixed ALLOW
without doing anything. That floor is what the "≥ 80 % of a no-op servicer" target in DESIGN.md is
measured against.

For each target, interleaved: a warm-up, a saturation run (C connections × M streams for the
duration), then a run rate-limited to half of that target's saturation throughput. h2load speaks
gRPC unary (a length-prefixed AuthorizeRequest as the body); its per-request log gives p50/p99.
h2load paces --rps on a 10 ms timer, so at R req/s about R/100 requests leave together every 10 ms:
the half-saturation p99 includes draining such a burst.

h2load counts any HTTP 200 as a success even when grpc-status says otherwise, so every run is
checked afterwards: the response bytes must be at least succeeded × the size of a real answer (a
gRPC error carries no message), and Tollgate's decision log must hold one row per answer. Answers
in the log that are not the policy's (a DENY for a missed evaluation deadline) are reported too.

The machine is measured along with the servers: CPU used by each server's process tree, by
h2load, and by everything else (other tenants), so a noisy run can be told from a slow server.

Exits 0 when everything was measured (whatever the figures), 1 when a target failed to start or
requests failed, 2 on bad arguments, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import ctypes
import dataclasses
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from tollgate.contract import NO_BUNDLE
from tollgate.decisionlog import Query, matching, open_read_only
from tollgate.sidecar.config import ServeConfig, default_bundle
from tollgate.sidecar.serve import grpc_server
from tollgate.v1 import authorization_pb2 as pb
from tollgate.v1 import authorization_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["AuthorizationService"].full_name
METHOD_PATH = f"/{SERVICE}/Authorize"
HOST = "127.0.0.1"
NOOP, TOLLGATE = "noop", "tollgate"  # the two targets, in the order they are measured
#: The line both servers print on stdout when they accept requests.
READY_LINE = re.compile(r"serving on (?P<host>[^\s:]+):(?P<port>\d+)")
NOOP_RESPONSE = pb.AuthorizeResponse(decision=pb.DECISION_ALLOW, decision_id="noop")
#: A problem line in a server's stderr (Tollgate logs INFO there too, which is not worth reporting).
STDERR_PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b|Traceback|Exception")

START_TIMEOUT = 90.0  # seconds a server may take to print its ready line (workers compile the bundle)
STOP_TIMEOUT = 20.0  # seconds after SIGTERM before SIGKILL (Tollgate drains for up to 15 s)
RSS_SAMPLE_INTERVAL = 0.2
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PR_SET_PDEATHSIG = 1


class BenchError(Exception):
    """The benchmark could not measure: a target did not start or answer, or h2load failed."""


# -- the request ---------------------------------------------------------------------------------


def bench_request() -> pb.AuthorizeRequest:
    """A realistic tool call that the default library allows: a code reviewer reading a pull request.

    No request_id: with one, every request after the first would be answered from the log
    (idempotency) instead of being evaluated.
    """
    request = pb.AuthorizeRequest(
        principal=pb.Principal(
            agent_id="code-reviewer", instance_id="bench-1", session_id="bench-session",
            workflow="pr-review", team="platform", user="alice@example.com",
        ),
        tool=pb.ToolCall(server="github", name="get_pull_request", resources=["repo:payments-api"]),
    )
    request.tool.arguments.update({"repo": "payments-api", "number": 42})
    request.context.update({"environment": "prod", "task": "review pull request"})
    return request


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, the bytes."""
    return b"\x00" + struct.pack(">I", len(message)) + message


# -- the no-op server ----------------------------------------------------------------------------


async def _noop_authorize(request: pb.AuthorizeRequest, context: grpc.aio.ServicerContext) -> pb.AuthorizeResponse:
    """Answers every Authorize with the same ALLOW and does nothing else: the floor to compare with."""
    return NOOP_RESPONSE


async def serve_noop(port: int) -> int:
    server = grpc_server(ServeConfig())
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tollgate.v1.AuthorizationService", {
        "Authorize": grpc.unary_unary_rpc_method_handler(
            _noop_authorize, request_deserializer=pb.AuthorizeRequest.FromString,
            response_serializer=pb.AuthorizeResponse.SerializeToString),
    }),))
    bound = server.add_insecure_port(f"{HOST}:{port}")
    if bound == 0:
        print(f"noop server: cannot listen on {HOST}:{port}", file=sys.stderr)
        return 1
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"noop: serving on {HOST}:{bound}", flush=True)
    await stop.wait()
    await server.stop(5)
    return 0


# -- processes -----------------------------------------------------------------------------------


def _die_with_parent() -> None:
    # Runs in the child before exec: if the benchmark itself is killed, its servers get SIGTERM.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Target:
    """One server under test, started as a subprocess and stopped when the benchmark ends."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes]
    stdout: Path
    stderr: Path
    data_dir: Path | None = None  # Tollgate's, for the decision log
    address: str = ""
    exit_code: int | None = None

    @property
    def url(self) -> str:
        return f"http://{self.address}{METHOD_PATH}"

    @property
    def decision_db(self) -> Path | None:
        return self.data_dir / "decisions.db" if self.data_dir else None


def start_target(name: str, argv: Sequence[str], workdir: Path, *, data_dir: Path | None = None) -> Target:
    stdout, stderr = workdir / f"{name}.stdout", workdir / f"{name}.stderr"
    with stdout.open("wb") as out, stderr.open("wb") as err:
        proc = subprocess.Popen(
            list(argv), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            start_new_session=True,  # Ctrl-C reaches the benchmark, which then stops servers in order
            preexec_fn=_die_with_parent,
        )
    target = Target(name, list(argv), proc, stdout, stderr, data_dir)
    target.address = _wait_ready(target)
    return target


def _wait_ready(target: Target) -> str:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        match = READY_LINE.search(target.stdout.read_text(errors="replace"))
        if match:
            return f"{match['host']}:{match['port']}"
        if target.proc.poll() is not None:
            raise BenchError(f"{target.name} exited with {target.proc.returncode} before serving:\n"
                             f"{_tail(target.stderr)}")
        time.sleep(0.05)
    raise BenchError(f"{target.name} did not print its ready line within {START_TIMEOUT:g}s:\n"
                     f"{_tail(target.stderr)}")


def _tail(path: Path, lines: int = 15) -> str:
    text = path.read_text(errors="replace").splitlines() if path.exists() else []
    return "\n".join("  " + line for line in text[-lines:]) or "  (stderr is empty)"


def stop_target(target: Target) -> None:
    """SIGTERM (Tollgate drains and flushes its log), then SIGKILL if it does not exit in time."""
    if target.proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            target.proc.send_signal(signal.SIGTERM)
        try:
            target.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                target.proc.kill()
            target.proc.wait()
    target.exit_code = target.proc.returncode


def stderr_problems(target: Target) -> list[str]:
    if not target.stderr.exists():
        return []
    lines = target.stderr.read_text(errors="replace").splitlines()
    return [line for line in lines if STDERR_PROBLEM.search(line)]


# -- the gRPC check ------------------------------------------------------------------------------


def check_authorize(target: Target, request: pb.AuthorizeRequest) -> pb.AuthorizeResponse:
    """Ask once with a real gRPC client; a target that cannot answer with status OK is not measured."""
    with grpc.insecure_channel(target.address) as channel:
        try:
            response: pb.AuthorizeResponse = pb_grpc.AuthorizationServiceStub(channel).Authorize(
                request, timeout=10, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise BenchError(
                f"{target.name} at {target.address}: Authorize failed with {exc.code().name}: {exc.details()}"
            ) from exc
    return response


# -- process trees: memory and CPU ---------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """root, then every descendant, found through /proc/*/stat (no `children` file needed)."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cpu_seconds(pid: int, *, tid: int | None = None, reaped_children: bool = True) -> float:
    """User + system CPU time of a process (or one of its threads), plus that of the children it reaped.

    Counting reaped children keeps a tree's total right when an engine worker is replaced mid-run.
    """
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        stat = Path(path).read_text()
    except OSError:
        return 0.0
    after_comm = stat[stat.rindex(")") + 2 :].split()
    ticks = int(after_comm[11]) + int(after_comm[12])  # utime, stime
    if reaped_children and tid is None:
        ticks += int(after_comm[13]) + int(after_comm[14])  # cutime, cstime
    return ticks / CLOCK_TICKS


def machine_busy_seconds() -> float:
    """CPU time every process on the machine has used (and the hypervisor has stolen), from /proc/stat."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9])
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


@dataclass(frozen=True)
class CpuSample:
    """Cumulative CPU seconds at one moment: the server (tree, process, main thread), h2load, everyone."""

    at: float
    tree: float
    process: float
    main_thread: float
    h2load: float  # children of this process that have exited: the finished h2load runs
    own: float
    machine: float

    @classmethod
    def take(cls, server_pid: int) -> CpuSample:
        times = os.times()
        return cls(
            at=time.monotonic(), tree=sum(cpu_seconds(pid) for pid in process_tree(server_pid)),
            process=cpu_seconds(server_pid, reaped_children=False),
            main_thread=cpu_seconds(server_pid, tid=server_pid),
            h2load=times.children_user + times.children_system, own=times.user + times.system,
            machine=machine_busy_seconds(),
        )


@dataclass(frozen=True)
class CpuUse:
    """Cores used during one run (CPU seconds per second of wall time).

    For a server: its whole process tree (with engine workers), its main process (with the gRPC and
    decision-log threads), and the main thread alone (the asyncio loop, which holds the GIL).
    """

    tree: float
    process: float
    main_thread: float
    h2load: float
    other: float  # everything else on the machine: other tenants, the hypervisor's steal

    @classmethod
    def between(cls, before: CpuSample, after: CpuSample) -> CpuUse:
        wall = after.at - before.at
        tree, h2load, own = after.tree - before.tree, after.h2load - before.h2load, after.own - before.own
        other = max(0.0, after.machine - before.machine - tree - h2load - own)
        return cls(tree / wall, (after.process - before.process) / wall,
                   (after.main_thread - before.main_thread) / wall, h2load / wall, other / wall)

    def per_request_us(self, throughput: float) -> dict[str, float]:
        """CPU microseconds per answered request: a cost that noise on a shared machine moves less."""
        if throughput <= 0:
            return {"tree": math.nan, "process": math.nan, "main_thread": math.nan}
        scale = 1e6 / throughput
        return {"tree": self.tree * scale, "process": self.process * scale,
                "main_thread": self.main_thread * scale}


@dataclass
class MemoryPeak:
    """The largest figures seen for one server's process tree (VmHWM is each process's own peak RSS)."""

    tree_hwm_kib: int = 0
    main_hwm_kib: int = 0
    processes: int = 0


class MemorySampler:
    """Samples each target's process tree in the background; the peak of the sum is what is reported."""

    def __init__(self, targets: Sequence[Target]) -> None:
        self._targets = list(targets)
        self.peaks = {t.name: MemoryPeak() for t in targets}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def _run(self) -> None:
        while not self._stop.wait(RSS_SAMPLE_INTERVAL):
            self.sample()

    def sample(self) -> None:
        for target in self._targets:
            if target.proc.poll() is not None:
                continue
            tree = process_tree(target.proc.pid)
            peak = self.peaks[target.name]
            peak.tree_hwm_kib = max(peak.tree_hwm_kib, sum(_status_kib(pid, "VmHWM") for pid in tree))
            peak.main_hwm_kib = max(peak.main_hwm_kib, _status_kib(target.proc.pid, "VmHWM"))
            peak.processes = max(peak.processes, len(tree))


# -- h2load --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LoadSpec:
    """One h2load run."""

    phase: str  # "warm-up", "saturation" or "half"
    duration: float
    clients: int
    streams: int
    rps_total: float | None = None  # None: as fast as it goes
    round_no: int = 0  # which measuring round (0: the warm-up)


@dataclass(frozen=True)
class LoadResult:
    """What one h2load run measured, with the server's CPU use during it."""

    phase: str
    round_no: int
    clients: int
    streams: int
    rps_target: float | None
    duration_s: float
    throughput: float  # successful requests per second
    succeeded: int
    started: int
    failed: int  # h2load's failed + errored + timeout, and non-2xx statuses
    data_bytes: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    cpu: CpuUse
    cpu_us_per_request: dict[str, float]
    #: Tollgate only: rows the decision log gained, by answer ("allow", "deny:deadline_exceeded", ...).
    decision_log: dict[str, int] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return f"{self.phase} (round {self.round_no})" if self.round_no else self.phase

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
    return [*argv, target.url]


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
        phase=spec.phase, round_no=spec.round_no, clients=spec.clients, streams=spec.streams,
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


# -- checks after each run -----------------------------------------------------------------------


@dataclass(frozen=True)
class LogCount:
    """Decision-log rows written during one run, by decision (and reason code for server DENYs)."""

    rows: int
    by_decision: dict[str, int]


def log_key(response: pb.AuthorizeResponse) -> str:
    """How log_rows_since names this kind of answer: the decision, and the first reason code if any."""
    decision = str(pb.Decision.Name(response.decision)).removeprefix("DECISION_").lower()
    return decision + (f":{response.reasons[0].code}" if response.reasons else "")


def log_position(db: Path) -> int:
    with open_read_only(db.parent) as store:
        return store.span(Query())[1]


def settled_log_position(db: Path) -> int:
    """The log position once requests still in flight when h2load stopped have been committed."""
    position, stable_since = log_position(db), time.monotonic()
    deadline = stable_since + 10
    while time.monotonic() < deadline and time.monotonic() - stable_since < 0.3:
        time.sleep(0.05)
        now = log_position(db)
        if now != position:
            position, stable_since = now, time.monotonic()
    return position


def log_rows_since(db: Path, after: int, upto: int) -> LogCount:
    counts: collections.Counter[str] = collections.Counter()
    with open_read_only(db.parent) as store:
        for row in matching(store, Query(), after=after, upto=upto):
            reasons = json.loads(row.record_json).get("reasons") or [{}]
            code = reasons[0].get("code")
            counts[row.decision + (f":{code}" if code else "")] += 1
    by_decision = dict(counts.most_common())
    return LogCount(sum(by_decision.values()), by_decision)


def verify_run(target: Target, result: LoadResult, message_bytes: int, log: LogCount | None) -> list[str]:
    """What does not add up in one run; h2load alone cannot see a gRPC error inside an HTTP 200."""
    problems = []
    where = f"{target.name} {result.label}"
    if result.failed:
        problems.append(f"{where}: h2load counted {result.failed} failed, errored, timed-out or non-2xx"
                        " requests")
    # A gRPC error comes back trailers-only, without a message: it shows as missing response bytes.
    # Streams cut off when h2load's duration ended may add bytes, never remove them.
    expected = result.succeeded * message_bytes
    if result.data_bytes < expected:
        missing = math.ceil((expected - result.data_bytes) / message_bytes)
        problems.append(f"{where}: about {missing} of {result.succeeded} HTTP-200 responses carried no"
                        f" AuthorizeResponse (gRPC errors): {result.data_bytes} response bytes,"
                        f" expected {expected}")
    if log is not None:
        if log.rows < result.succeeded:
            problems.append(f"{where}: h2load counted {result.succeeded} answers but the decision log gained"
                            f" only {log.rows} rows")
        elif log.rows > result.started:
            problems.append(f"{where}: the decision log gained {log.rows} rows for {result.started}"
                            " requests sent")
    return problems


# -- the benchmark -------------------------------------------------------------------------------


@dataclass
class TargetReport:
    """Everything measured for one target."""

    name: str
    address: str
    command: list[str]
    decision: str = ""
    bundle_revision: str = ""
    message_bytes: int = 0  # the gRPC frame of one answer, as h2load counts DATA bytes
    expected: str = ""  # how the answer to the checked request appears in the decision log
    runs: list[LoadResult] = field(default_factory=list)
    peak_rss_mib: float = 0.0
    main_rss_mib: float = 0.0
    processes: int = 0
    exit_code: int | None = None
    stderr_problems: list[str] = field(default_factory=list)

    def run(self, phase: str) -> list[LoadResult]:
        return [r for r in self.runs if r.phase == phase]


@dataclass
class Report:
    """The whole benchmark: settings, machine, per-target figures, ratios against the targets, problems."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    targets: dict[str, TargetReport]
    ratios: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # requests errored or a server misbehaved
    notes: list[str] = field(default_factory=list)  # anomalies that do not invalidate the figures


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    h2load = subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=False)
    version = h2load.stdout.strip()
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": sys.version.split()[0], "h2load": version,
            "tollgate": source_revision()}


def source_revision() -> str:
    """The checkout measured: its commit, and whether the server code has uncommitted changes."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "server"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + (" with uncommitted changes in server/" if dirty else "")


def tollgate_argv(args: argparse.Namespace, data_dir: Path) -> list[str]:
    exe = Path(sys.executable).with_name("tollgate")
    argv = [str(exe) if exe.exists() else "tollgate", "serve", "--listen", f"{HOST}:0",
            "--data-dir", str(data_dir), "--bundle", args.bundle, "--log-sync", args.log_sync]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    return argv


def noop_argv() -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--noop-server", "0"]


def progress(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


class Benchmark:
    """Runs the phases against both targets, interleaved, and collects the report."""

    def __init__(self, args: argparse.Namespace, workdir: Path, targets: list[Target]) -> None:
        self.args = args
        self.workdir = workdir
        self.targets = targets
        self.body = workdir / "authorize-request.bin"
        self.body.write_bytes(grpc_frame(bench_request().SerializeToString()))
        self.reports = {t.name: TargetReport(t.name, t.address, t.argv) for t in targets}
        self.problems: list[str] = []  # requests errored or a server misbehaved: exit 1
        self.notes: list[str] = []  # worth reading, but the figures stand

    def check_all(self) -> None:
        for target in self.targets:
            response = check_authorize(target, bench_request())
            report = self.reports[target.name]
            report.decision = pb.Decision.Name(response.decision).removeprefix("DECISION_")
            report.bundle_revision = response.bundle_revision
            report.message_bytes = len(grpc_frame(response.SerializeToString()))
            report.expected = log_key(response)
            progress(f"{target.name} at {target.address} answers {report.decision}"
                     + (f" (bundle {response.bundle_revision})" if response.bundle_revision else ""))
            reasons = ", ".join(f"{r.code}: {r.message}" for r in response.reasons)
            if any(r.code == NO_BUNDLE for r in response.reasons):
                raise BenchError(f"{target.name} loaded no policy bundle ({reasons}); see its log:\n"
                                 f"{_tail(target.stderr)}")
            if target.data_dir is not None and response.decision != pb.DECISION_ALLOW:
                self.notes.append(f"{target.name} answers {report.decision}, not ALLOW ({reasons}); the"
                                  " figures measure a deny path, not the allow path meant to be measured")

    def measure(self, target: Target, spec: LoadSpec) -> LoadResult:
        progress(f"{target.name}: {spec.phase} {spec.duration:g}s, -c {spec.clients} -m {spec.streams}"
                 + (f", {spec.rps_total:.0f} req/s" if spec.rps_total else ""))
        db = target.decision_db
        before = settled_log_position(db) if db else 0
        result = run_load(spec, target, self.body, self.workdir)
        report = self.reports[target.name]
        count = log_rows_since(db, before, settled_log_position(db)) if db else None
        self.problems += verify_run(target, result, report.message_bytes, count)
        if count is not None:
            result = dataclasses.replace(result, decision_log=count.by_decision)
            self._note_unexpected_answers(report, result)
        if spec.rps_total and result.throughput < 0.9 * spec.rps_total:
            self.notes.append(f"{target.name} {result.label}: reached {result.throughput:,.0f} of the"
                              f" {spec.rps_total:,.0f} req/s asked for")
        report.runs.append(result)
        return result

    def _note_unexpected_answers(self, report: TargetReport, result: LoadResult) -> None:
        others = {k: n for k, n in result.decision_log.items() if k != report.expected}
        if others:
            total = sum(result.decision_log.values())
            self.notes.append(
                f"{report.name} {result.label}: {sum(others.values()):,} of {total:,} answers were not the"
                f" policy's {report.expected!r} ({', '.join(others)}); h2load's throughput counts them")

    def run(self) -> None:
        a = self.args
        self.check_all()
        for target in self.targets:
            self.measure(target, LoadSpec("warm-up", a.warmup, a.connections, a.streams))
        for n in range(1, a.rounds + 1):
            saturation = {t.name: self.measure(t, LoadSpec("saturation", a.duration, a.connections, a.streams,
                                                           round_no=n))
                          for t in self.targets}
            for target in self.targets:
                half = LoadSpec("half", a.duration, a.half_connections, a.half_streams,
                                rps_total=saturation[target.name].throughput / 2, round_no=n)
                self.measure(target, half)
        for target in self.targets:  # still answering properly after the load?
            check_authorize(target, bench_request())

    def finish(self, memory: MemorySampler) -> Report:
        for target in self.targets:
            report = self.reports[target.name]
            peak = memory.peaks[target.name]
            report.peak_rss_mib, report.main_rss_mib = peak.tree_hwm_kib / 1024, peak.main_hwm_kib / 1024
            report.processes = peak.processes
            report.exit_code = target.exit_code
            report.stderr_problems = stderr_problems(target)
            if target.exit_code not in (0, None):
                self.problems.append(f"{target.name} exited with {target.exit_code} after SIGTERM"
                                     " (expected 0)")
            if report.stderr_problems:
                self.notes.append(f"{target.name} logged {len(report.stderr_problems)} warning/error lines")
        return Report(settings=self.settings(), machine=machine_info(), targets=self.reports,
                      ratios=ratios(self.reports), problems=self.problems, notes=self.notes)

    def settings(self) -> dict[str, Any]:
        a = self.args
        return {
            "duration_s": a.duration, "warmup_s": a.warmup, "rounds": a.rounds,
            "connections": a.connections, "streams": a.streams,
            "half_connections": a.half_connections, "half_streams": a.half_streams,
            "bundle": a.bundle, "workers": a.workers, "log_sync": a.log_sync,
        }


THROUGHPUT_TARGET = 0.80  # DESIGN.md: Tollgate ≥ 80 % of the no-op servicer's throughput
P99_TARGET_MS = 2.0  # DESIGN.md: p99 ≤ 2 ms at half of saturation


def ratios(reports: dict[str, TargetReport]) -> list[dict[str, Any]]:
    """Per round: Tollgate's share of the no-op's throughput, and its p99 at half saturation."""
    rounds = []
    noop, tollgate = reports[NOOP], reports[TOLLGATE]
    pairs = zip(noop.run("saturation"), tollgate.run("saturation"), tollgate.run("half"), strict=False)
    for i, (noop_sat, toll_sat, toll_half) in enumerate(pairs, 1):
        share = toll_sat.throughput / noop_sat.throughput if noop_sat.throughput else math.nan
        rounds.append({
            "round": i,
            "throughput_ratio": share, "throughput_ok": share >= THROUGHPUT_TARGET,
            # Server-made DENYs (a missed evaluation deadline) are answers, but not the policy's.
            "policy_answer_ratio": share * toll_sat.share_of(tollgate.expected),
            "p99_half_ms": toll_half.p99_ms, "p99_half_ok": toll_half.p99_ms <= P99_TARGET_MS,
        })
    return rounds


# -- output --------------------------------------------------------------------------------------


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _table(rows: list[tuple[str, ...]], left: int) -> list[str]:
    """Columns padded to their widest cell; the first `left` columns flush left, the rest right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(row: tuple[str, ...]) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in enumerate(cells)).rstrip()

    return [line(r) for r in rows]


def render(report: Report) -> str:
    s, m = report.settings, report.machine
    lines = [
        f"Tollgate {m['tollgate']}; {m['h2load']}; {m['cpus']} CPUs ({m['cpu_model']}); Python {m['python']}",
        f"bundle {s['bundle']}, workers {s['workers'] or 'default (one per CPU)'}, log-sync {s['log_sync']};"
        f" {s['duration_s']:g} s per run after a {s['warmup_s']:g} s warm-up",
        f"saturation: -c {s['connections']} -m {s['streams']}; half: -c {s['half_connections']}"
        f" -m {s['half_streams']} at 50 % of the target's own saturation throughput",
        "",
    ]
    rounds = min(len(t.run("half")) for t in report.targets.values())
    runs = [(t.name, i + 1, t.run("saturation")[i], t.run("half")[i])
            for i in range(rounds) for t in report.targets.values()]
    rows: list[tuple[str, ...]] = [
        ("", "", "saturation", "", "", "half saturation", "", ""),
        ("target", "round", "req/s", "p50 ms", "p99 ms", "req/s", "p50 ms", "p99 ms"),
    ]
    rows += [(name, str(i), f"{sat.throughput:,.0f}", _ms(sat.p50_ms), _ms(sat.p99_ms),
              f"{half.throughput:,.0f}", _ms(half.p50_ms), _ms(half.p99_ms)) for name, i, sat, half in runs]
    lines += _table(rows, left=2)
    lines += ["", "CPU during the saturation run (cores = CPU seconds per second; µs per answered request):"]
    rows = [
        ("", "", "server", "CPU µs per request", "", "", "h2load", "others"),
        ("target", "round", "cores", "tree", "process", "main thread", "cores", "cores"),
    ]
    rows += [(name, str(i), f"{sat.cpu.tree:.2f}", f"{sat.cpu_us_per_request['tree']:.0f}",
              f"{sat.cpu_us_per_request['process']:.0f}", f"{sat.cpu_us_per_request['main_thread']:.0f}",
              f"{sat.cpu.h2load:.2f}", f"{sat.cpu.other:.2f}") for name, i, sat, _ in runs]
    lines += _table(rows, left=2)
    lines += ["(tree: the server with its engine workers; process: its main process with the gRPC and",
              " decision-log threads; main thread: the asyncio loop; others: all else on the machine)", ""]
    for t in report.targets.values():
        lines.append(f"peak RSS {t.name}: {t.peak_rss_mib:.1f} MiB summed over its {t.processes} process(es);"
                     f" main process {t.main_rss_mib:.1f} MiB (VmHWM)")
    for r in report.ratios:
        lines += [
            f"round {r['round']}: Tollgate / no-op throughput {r['throughput_ratio']:.1%}"
            f" (target >= {THROUGHPUT_TARGET:.0%}: {'met' if r['throughput_ok'] else 'MISSED'});"
            f" counting only the policy's own answers {r['policy_answer_ratio']:.1%}",
            f"round {r['round']}: Tollgate p99 at half saturation {_ms(r['p99_half_ms'])} ms"
            f" (target <= {P99_TARGET_MS:g} ms: {'met' if r['p99_half_ok'] else 'MISSED'})",
        ]
    for run in report.targets[TOLLGATE].runs:
        summary = ", ".join(f"{k} {v:,}" for k, v in run.decision_log.items()) or "no rows"
        lines.append(f"decision log rows, {run.label}: {summary}")
    lines.append("")
    if report.problems:
        lines.append("PROBLEMS (requests errored or a server misbehaved):")
        lines += [f"  - {p}" for p in report.problems]
    else:
        lines.append("checks: every HTTP 200 carried an answer; decision-log rows match; clean exits")
    if report.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in report.notes]
    for t in report.targets.values():
        shown = t.stderr_problems[:20]
        lines += [f"  {t.name} stderr: {line}" for line in shown]
        if len(t.stderr_problems) > len(shown):
            lines.append(f"  {t.name} stderr: ... {len(t.stderr_problems) - len(shown)} more")
    return "\n".join(lines)


def report_json(report: Report) -> str:
    return json.dumps(dataclasses.asdict(report), indent=2, default=str)


# -- entry ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per target")
    p.add_argument("--connections", type=int, default=8, help="h2load clients at saturation")
    p.add_argument("--streams", type=int, default=16, help="concurrent streams per client at saturation")
    p.add_argument("--half-connections", type=int, default=8, help="h2load clients at half saturation")
    p.add_argument("--half-streams", type=int, default=4,
                   help="streams per client at half saturation (room for h2load's 10 ms bursts)")
    p.add_argument("--rounds", type=int, default=1, help="saturation + half rounds, interleaved by target")
    p.add_argument("--bundle", default=default_bundle(), help="policy bundle for Tollgate")
    p.add_argument("--workers", type=int, default=None, help="Tollgate engine workers (default: its own)")
    p.add_argument("--log-sync", choices=("full", "normal"), default="full", help="decision-log durability")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, decision log) and print it")
    p.add_argument("--noop-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    return p


def _validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("connections", "streams", "half_connections", "half_streams", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be 1 or more")
    if args.duration <= 0 or args.warmup <= 0:
        p.error("--duration and --warmup must be greater than 0")
    if shutil.which("h2load") is None:
        p.error("h2load not found; install Debian's nghttp2-client (tools/setup.sh does)")
    args.bundle = str(Path(args.bundle).resolve())
    if not Path(args.bundle).exists():
        p.error(f"--bundle {args.bundle}: no such file or directory")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tollgate-bench-"))
    try:
        yield path
    finally:
        if keep:
            progress(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def benchmark(args: argparse.Namespace) -> Report:
    with _workdir(args.keep) as workdir, contextlib.ExitStack() as stack:
        targets: list[Target] = []
        progress("starting the no-op server and Tollgate")
        data_dir = workdir / "data"
        for name, argv, target_data in ((NOOP, noop_argv(), None),
                                        (TOLLGATE, tollgate_argv(args, data_dir), data_dir)):
            target = start_target(name, argv, workdir, data_dir=target_data)
            stack.callback(stop_target, target)
            targets.append(target)
        bench = Benchmark(args, workdir, targets)
        with MemorySampler(targets) as memory:
            bench.run()
        stack.close()  # stop the servers now: their exit codes and final stderr belong in the report
        return bench.finish(memory)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.noop_server is not None:
        return asyncio.run(serve_noop(args.noop_server))
    _validate(parser, args)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        report = benchmark(args)
    except BenchError as exc:
        progress(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        progress("interrupted; servers stopped")
        return 130
    print(report_json(report) if args.json else render(report))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
