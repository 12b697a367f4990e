"""Benchmark Tollgate's Authorize against a no-op servicer on the same gRPC stack: issue 15's five targets.

    python tools/bench.py [--only default|one-rule] [--quick] [--duration S] [--warmup S] [--workers N]
                          [--log-sync full|normal] [--manifests SMALL,LARGE] [--json] [--keep]

The no-op is this file in `--noop-server PORT` mode: the same generated AuthorizationService on the same
grpc.aio server with the same options as `tollgate serve`, answering a fixed ALLOW. Tollgate runs as `tollgate
serve` on a fresh data dir with durable logging, once per policy: the default library (rego/) and the one-rule
policy (tools/bench_policies/one-rule/). For each policy, against both servers:

  1-2. a closed-loop saturation run (h2load -c 8 -m 16): throughput, and CPU per answer from /proc;
  3.   at half of Tollgate's saturation rate, for both servers: h2load --rps (paced on a 10 ms timer) and an
       open-loop Poisson run (benchkit/poisson.py: latency from each request's scheduled time);
  4.   every Tollgate run's decision-log rows by answer and its engine worker retirements;
  5.   two more Tollgate servers with 10 and 10,000 agent manifests, p50 at one fixed open-loop rate; a new
       bundle revision activated in the middle of an open-loop run; the peak RSS of the tree.

Each target is printed with its figures side by side and a verdict (met, or MISSED by how much): see
docs/BENCHMARKS.md. Exits 0 when everything was measured (whatever the verdicts), 1 when a target failed to
start or requests failed, 2 on bad arguments, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from benchkit import verdicts
from benchkit.bundles import DEFAULT_LIBRARY, MANIFEST_DATA_VALUES, ONE_RULE, copy_policy, manifest_bundle, new_revision
from benchkit.h2load import LoadResult, LoadSpec, run_load
from benchkit.logcheck import log_key, log_rows_since, settled_log_position, verify_run
from benchkit.poisson import PoissonSpec, Timeline, client_main, generator_saturated, run_poisson
from benchkit.procs import (
    HOST,
    NOOP,
    BenchError,
    MemorySampler,
    Target,
    cpu_seconds,
    process_tree,
    progress,
    start_target,
    stderr_problems,
    stop_target,
    tail,
    worker_retirements,
)
from benchkit.report import PolicyReport, Report, render, report_json
from benchkit.wire import bench_request, check_authorize, grpc_frame, serve_noop

from tollgate.contract import NO_BUNDLE
from tollgate.v1 import authorization_pb2 as pb

#: What tools/bench_fleet.py imports from here (`from bench import ...`): this module is its h2load runner too.
__all__ = ["HOST", "BenchError", "LoadResult", "LoadSpec", "Target", "check_authorize", "cpu_seconds", "grpc_frame",
           "log_key", "log_rows_since", "main", "process_tree", "progress", "run_load", "settled_log_position",
           "source_revision", "start_target", "stop_target", "verify_run"]

POLICIES = {"default": DEFAULT_LIBRARY, "one-rule": ONE_RULE}
EVAL_DEADLINE_MS = 50.0  # tollgate serve's --eval-timeout-ms default, the activation window's allowance
ACTIVATION_RUN_S = 10.0  # at least: a poll (1 s) and two workers compiling must fit after the change
ACTIVATION_AT = 0.25  # the change is made this far into the run


class Session:
    """What the policies share: arguments, temp dir, the no-op server, memory sampling, problems and notes."""

    def __init__(self, args: argparse.Namespace, workdir: Path, memory: MemorySampler) -> None:
        self.args = args
        self.workdir = workdir
        self.memory = memory
        self.body = workdir / "authorize-request.bin"
        self.body.write_bytes(grpc_frame(bench_request().SerializeToString()))
        self.problems: list[str] = []
        self.notes: list[str] = []
        self.message_bytes: dict[str, int] = {}  # per server: the gRPC frame of its answer, as h2load counts it

    def start(self, name: str, argv: list[str], data_dir: Path | None = None) -> Target:
        progress(f"starting {name}")
        target = start_target(name, argv, self.workdir, data_dir=data_dir)
        self.memory.watch(target)
        return target

    def start_tollgate(self, name: str, bundle: Path, *, data_values: int | None = None) -> Target:
        data_dir = self.workdir / f"data-{name}"
        token = self.workdir / "admin-token"  # unused, but without one the sidecar warns on every start
        if not token.exists():
            token.write_text(secrets.token_urlsafe(24) + "\n")
            token.chmod(0o600)
        exe = Path(sys.executable).with_name("tollgate")
        argv = [str(exe) if exe.exists() else "tollgate", "serve", "--listen", f"{HOST}:0",
                "--data-dir", str(data_dir), "--bundle", str(bundle), "--log-sync", self.args.log_sync,
                "--workers", str(self.args.workers), "--admin-token-file", str(token)]
        if data_values is not None:
            argv += ["--bundle-data-values", str(data_values)]
        return self.start(name, argv, data_dir)

    def stop(self, target: Target) -> None:
        stop_target(target)
        problems = stderr_problems(target)
        if target.exit_code not in (0, None):
            self.problems.append(f"{target.name} exited with {target.exit_code} after SIGTERM (expected 0)")
        if problems:
            self.notes.append(f"{target.name} logged {len(problems)} warning/error lines, e.g. {problems[-1][:200]}")

    def check(self, target: Target) -> pb.AuthorizeResponse:
        response = check_authorize(target, bench_request())
        self.message_bytes[target.name] = len(grpc_frame(response.SerializeToString()))
        if any(r.code == NO_BUNDLE for r in response.reasons):
            raise BenchError(f"{target.name} loaded no policy bundle; see its log:\n{tail(target.stderr)}")
        return response

    def h2load(self, target: Target, spec: LoadSpec, expected: str) -> LoadResult:
        progress(f"{target.name}: {spec.phase} {spec.duration:g}s, h2load -c {spec.clients} -m {spec.streams}"
                 + (f", {spec.rps_total:,.0f} req/s" if spec.rps_total else ""))
        return self._measure(target, expected, lambda: run_load(spec, target, self.body, self.workdir))

    def poisson(self, target: Target, spec: PoissonSpec, expected: str,
                during: threading.Timer | None = None) -> tuple[LoadResult, Timeline]:
        progress(f"{target.name}: {spec.phase} {spec.duration:g}s, open loop at {spec.rate:,.0f} req/s")
        seen: list[Timeline] = []

        def run() -> LoadResult:
            if during is not None:
                during.start()
            result, line = run_poisson(spec, target, self.body, self.workdir, Path(__file__).resolve())
            seen.append(line)
            return result

        result = self._measure(target, expected, run)
        if generator_saturated(result):
            self.notes.append(f"{target.name} {result.label}: the Poisson generator used {result.generator_cores:.2f}"
                              f" cores and sent {result.send_lag_p99_ms:.2f} ms late (p99): saturated or starved of"
                              " CPU, its latencies include its own delay")
        return result, seen[0]

    def _measure(self, target: Target, expected: str, run: Callable[[], LoadResult]) -> LoadResult:
        db = target.decision_db
        before, retired = (settled_log_position(db) if db else 0), worker_retirements(target)
        result = run()
        count = log_rows_since(db, before, settled_log_position(db)) if db else None
        self.problems += verify_run(target, result, self.message_bytes[target.name], count)
        answers = count.by_decision if count else (result.answers or {expected: result.succeeded})
        non_policy = sum(n for k, n in answers.items() if k != expected) + result.failed
        retirements = worker_retirements(target) - retired
        if result.phase == "warm-up" and (non_policy or retirements):  # not judged, but it shapes the next run
            self.notes.append(f"{target.name} warm-up: {non_policy:,} non-policy answers, {retirements} worker"
                              " retirements")
        if result.failed and result.generator == "poisson":
            self.notes.append(f"{target.name} {result.label}: {result.failed:,} requests failed ({result.errors})")
        if result.rps_target and result.throughput < 0.9 * result.rps_target:
            self.notes.append(f"{target.name} {result.label}: reached {result.throughput:,.0f} of the"
                              f" {result.rps_target:,.0f} req/s asked for")
        return dataclasses.replace(result, decision_log=count.by_decision if count else {}, non_policy=non_policy,
                                   retirements=retirements)


class PolicyBench:
    """One policy against the no-op: the runs of the five targets, then their verdicts."""

    def __init__(self, session: Session, noop: Target, policy: str) -> None:
        self.session, self.noop, self.policy = session, noop, policy
        self.args = session.args
        self.report = PolicyReport(policy, str(POLICIES[policy]))
        self.root = session.workdir / policy
        self.root.mkdir()

    def _record(self, name: str, result: LoadResult) -> LoadResult:
        self.report.runs.setdefault(name, []).append(result)
        return result

    def run(self) -> PolicyReport:
        bundle = copy_policy(POLICIES[self.policy], self.root / "bundle")
        tollgate = self.session.start_tollgate(f"tollgate-{self.policy}", bundle)
        try:
            response = self.session.check(tollgate)
            self.report.decision = pb.Decision.Name(response.decision).removeprefix("DECISION_")
            self.report.revision, self.report.expected = response.bundle_revision, log_key(response)
            if response.decision != pb.DECISION_ALLOW:
                self.session.notes.append(f"{self.policy}: Tollgate answers {self.report.decision}, not ALLOW: the"
                                          " figures measure a deny path")
            closed, rate = self._closed_loop(tollgate)
            open_loop = self._open_loop(tollgate, rate)
            peak = self.session.memory.peak(tollgate.name)
            self.report.peak_rss_mib, self.report.main_rss_mib = peak.tree_hwm_kib / 1024, peak.main_hwm_kib / 1024
            self.report.processes = peak.processes
            activation = self._activation(tollgate, bundle, rate)
            self.report.peak_rss_during_activation_mib = self.session.memory.peak(tollgate.name).tree_hwm_kib / 1024
            self.session.check(tollgate)  # still answering properly after all that load
        finally:
            self.session.stop(tollgate)
        manifests = self._manifests(rate / 2)
        self.report.verdicts = self._verdicts(closed, open_loop, activation, manifests)
        return self.report

    def _closed_loop(self, tollgate: Target) -> tuple[dict[str, LoadResult], float]:
        a, s, expected = self.args, self.session, self.report.expected
        s.h2load(self.noop, LoadSpec("warm-up", a.warmup, a.connections, a.streams), "allow")
        s.h2load(tollgate, LoadSpec("warm-up", a.warmup, a.connections, a.streams), expected)
        saturation = LoadSpec("saturation", a.duration, a.connections, a.streams)
        runs = {"noop": self._record("noop", s.h2load(self.noop, saturation, "allow")),
                "tollgate": self._record("tollgate", s.h2load(tollgate, saturation, expected))}
        rate = runs["tollgate"].throughput / 2
        half = LoadSpec("half", a.duration, a.half_connections, a.half_streams, rps_total=rate)
        runs["noop half"] = self._record("noop", s.h2load(self.noop, half, "allow"))
        runs["tollgate half"] = self._record("tollgate", s.h2load(tollgate, half, expected))
        return runs, rate

    def _open_loop(self, tollgate: Target, rate: float) -> dict[str, LoadResult]:
        spec = PoissonSpec("half", rate, self.args.duration, seed=self.args.seed)
        noop, _ = self.session.poisson(self.noop, spec, "allow")
        toll, _ = self.session.poisson(tollgate, spec, self.report.expected)
        return {"noop": self._record("noop", noop), "tollgate": self._record("tollgate", toll)}

    def _activation(self, tollgate: Target, bundle: Path, rate: float) -> verdicts.Activation:
        duration = max(self.args.duration, ACTIVATION_RUN_S)
        changed: list[float] = []

        def change() -> None:
            changed.append(time.monotonic())
            new_revision(bundle, 1)

        timer = threading.Timer(duration * ACTIVATION_AT + 0.5, change)  # + the generator's start-up
        spec = PoissonSpec("activation", rate, duration, seed=self.args.seed + 1)
        try:
            result, line = self.session.poisson(tollgate, spec, self.report.expected, during=timer)
        finally:
            timer.cancel()
        self._record("tollgate", result)
        found = verdicts.activation_window(line, changed[0] if changed else float("inf"), self.report.revision,
                                           result.non_policy)
        self.report.activation = found.as_dict()
        return found

    def _manifests(self, rate: float) -> dict[int, LoadResult]:
        measured = {}
        for count in self.args.manifests:
            progress(f"{self.policy}: building a bundle with {count:,} agent manifests")
            bundle = manifest_bundle(POLICIES[self.policy], self.root / f"manifests-{count}", count)
            name = f"manifests-{count}"
            target = self.session.start_tollgate(f"tollgate-{self.policy}-{name}", bundle,
                                                 data_values=MANIFEST_DATA_VALUES)
            try:
                expected = log_key(self.session.check(target))
                self.session.h2load(target, LoadSpec("warm-up", self.args.warmup, self.args.connections,
                                                     self.args.streams), expected)
                spec = PoissonSpec("fixed rate", rate, self.args.duration, seed=self.args.seed + 2)
                measured[count] = self._record(name, self.session.poisson(target, spec, expected)[0])
                self.report.manifests_rss_mib[name] = self.session.memory.peak(target.name).tree_hwm_kib / 1024
            finally:
                self.session.stop(target)
            shutil.rmtree(bundle, ignore_errors=True)
        return measured

    def _verdicts(self, closed: dict[str, LoadResult], open_loop: dict[str, LoadResult],
                  activation: verdicts.Activation, manifests: dict[int, LoadResult]) -> list[verdicts.Verdict]:
        sat = closed["tollgate"]
        saturated = [f"{name} {r.label}" for name, r in open_loop.items() if generator_saturated(r)]
        below = [("tollgate", closed["tollgate half"]), ("tollgate", open_loop["tollgate"]),
                 ("tollgate", self.report.runs["tollgate"][-1]),
                 *((f"manifests-{count}", run) for count, run in manifests.items())]
        small, large = sorted(manifests)
        return [
            verdicts.throughput(closed["noop"], sat, policy_share=sat.share_of(self.report.expected)),
            verdicts.cpu_per_decision(closed["noop"], sat),
            verdicts.latency([("paced (h2load)", closed["noop half"], closed["tollgate half"]),
                              ("open loop (Poisson)", open_loop["noop"], open_loop["tollgate"])], saturated),
            verdicts.policy_answers(below, sat),
            verdicts.flat_and_bounded((small, manifests[small]), (large, manifests[large]), activation,
                                      EVAL_DEADLINE_MS, self.report.peak_rss_mib, self.args.workers),
        ]


# -- the machine ---------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    h2load = subprocess.run(["h2load", "--version"], capture_output=True, text=True, check=False)
    return {"cpus": os.cpu_count(), "cpu_model": model, "python": sys.version.split()[0],
            "h2load": h2load.stdout.strip(), "tollgate": source_revision()}


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


# -- entry ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--only", choices=tuple(POLICIES), help="measure one policy (default: both)")
    p.add_argument("--quick", action="store_true",
                   help="a shorter run: --duration 3 --warmup 1 unless given, manifests 10 and 1,000")
    # Whole seconds: h2load's -D takes no fraction.
    p.add_argument("--duration", type=int, help="seconds per measured run (default 10; 3 with --quick)")
    p.add_argument("--warmup", type=int, help="seconds of warm-up per server (default 3; 1 with --quick)")
    p.add_argument("--connections", type=int, default=8, help="h2load clients at saturation")
    p.add_argument("--streams", type=int, default=16, help="concurrent streams per client at saturation")
    p.add_argument("--half-connections", type=int, default=8, help="h2load clients at half saturation")
    p.add_argument("--half-streams", type=int, default=4,
                   help="streams per client at half saturation (room for h2load's 10 ms bursts)")
    p.add_argument("--workers", type=int, default=2, help="Tollgate's engine workers")
    p.add_argument("--log-sync", choices=("full", "normal"), default="full", help="decision-log durability")
    p.add_argument("--manifests", help="the two manifest counts of target 5, SMALL,LARGE (default 10,10000)")
    p.add_argument("--seed", type=int, default=15, help="the Poisson schedules' seed")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, decision logs) and print it")
    p.add_argument("--noop-server", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--poisson-client", metavar="SPEC", help=argparse.SUPPRESS)
    return p


def _validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    args.duration = args.duration if args.duration is not None else (3 if args.quick else 10)
    args.warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    for name in ("duration", "warmup", "connections", "streams", "half_connections", "half_streams", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be 1 or more")
    try:
        counts = [int(n) for n in (args.manifests or ("10,1000" if args.quick else "10,10000")).split(",")]
    except ValueError:
        p.error(f"--manifests {args.manifests}: expected two whole numbers, SMALL,LARGE")
    if len(counts) != 2 or not 10 <= counts[0] < counts[1] <= 100_000:
        p.error("--manifests must be SMALL,LARGE with 10 <= SMALL < LARGE <= 100000 (the library holds 5)")
    args.manifests = counts
    if shutil.which("h2load") is None:
        p.error("h2load not found; install Debian's nghttp2-client (tools/setup.sh does)")


def settings(args: argparse.Namespace) -> dict[str, Any]:
    return {"duration_s": args.duration, "warmup_s": args.warmup, "connections": args.connections,
            "streams": args.streams, "half_connections": args.half_connections, "half_streams": args.half_streams,
            "workers": args.workers, "log_sync": args.log_sync, "manifests": args.manifests, "seed": args.seed,
            "policies": [args.only] if args.only else list(POLICIES)}


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
    with _workdir(args.keep) as workdir, MemorySampler() as memory:
        session = Session(args, workdir, memory)
        noop = session.start(NOOP, [sys.executable, str(Path(__file__).resolve()), "--noop-server", "0"])
        report = Report(settings(args), machine_info(), {})
        try:
            session.check(noop)
            for policy in settings(args)["policies"]:
                report.policies[policy] = PolicyBench(session, noop, policy).run()
        finally:
            session.stop(noop)
        report.noop_peak_rss_mib = memory.peak(NOOP).tree_hwm_kib / 1024
        report.problems, report.notes = session.problems, session.notes
        return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.noop_server is not None:
        return asyncio.run(serve_noop(args.noop_server))
    if args.poisson_client is not None:
        return client_main(args.poisson_client)
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
