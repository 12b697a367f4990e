"""Fleet figures: budget decisions on SQLite and on PostgreSQL side by side, and kill-switch propagation.

    python tools/bench_fleet.py [--duration S] [--warmup S] [--connections C] [--streams M] [--rounds R]
                                [--kill-rounds N] [--reservation-ttl S] [--workers N] [--state-store URL]
                                [--json] [--keep]

One run measures both things the [fleet] issue asks for, on the same machine at the same time:

1. Budget decisions. It starts a PostgreSQL (tests/pg.py's PostgresServer: initdb into a temp dir, a free port;
   or uses --state-store URL), runs `tollgate state migrate` on it, and starts two sidecars that differ only in
   their state store: one on SQLite in its data dir, one with --state-store. h2load (as tools/bench.py drives it)
   sends both the same budget request, a 0.000001 usd step of one code-reviewer session, team and workflow: a
   saturation run each, interleaved, then a run paced at the same rate for both (--paced-share of the slower
   one's saturation throughput), so the two p99s are compared under one load. Every spending decision takes
   the budget step on each scope the principal is counted under (session, agent, team, workflow), so these
   requests queue for one another on either store: the figures are the step's cost, fleet-wide atomic on
   PostgreSQL, process-local on SQLite. Each run's answers are counted in the sidecar's decision log: an
   answer that is not the policy's ALLOW (state_unavailable from a slow store, budget_exceeded) is reported
   beside the throughput, which counts it.
2. Kill-switch propagation. Two more sidecars on the same store (started with the others, idle through part 1)
   join the PostgreSQL one: three in all. Each round engages a kill switch on a session of its own through the
   first (AdminService Kill), while a thread per other sidecar asks Authorize for a tool call in that session,
   back to back, until the answer is DENY `killed`; then lifts it (Revive) and polls until ALLOW. The time
   counts from just before the Kill or Revive is sent, so it includes that call. --kill-rounds rounds; min,
   median and max against the 1 s target.

CPU is read from /proc around each budget run: the sidecar's process tree, and PostgreSQL's (the postmaster and
its backends) when this tool started it, so a decision's cost on PostgreSQL counts the database's share too.

Exits 0 when everything was measured (whatever the figures), 1 when a sidecar or the store failed to start, a
request failed or a check did not add up, 2 on bad arguments, 130 when interrupted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import dataclasses
import json
import math
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

ROOT = Path(__file__).resolve().parent.parent
# tools/ for bench.py (its h2load runner and checks), the checkout for tests.pg (the one PostgreSQL harness, shared
# with the test suite): first on sys.path when run as a script, not when a test imports this file.
sys.path[:0] = [str(ROOT / "tools"), str(ROOT)]

from bench import (  # noqa: E402
    HOST,
    BenchError,
    LoadResult,
    LoadSpec,
    Target,
    check_authorize,
    cpu_seconds,
    grpc_frame,
    log_key,
    log_rows_since,
    process_tree,
    progress,
    run_load,
    settled_log_position,
    source_revision,
    start_target,
    stop_target,
    verify_run,
)

from tests.pg import PostgresServer  # noqa: E402
from tollgate.contract import KILLED  # noqa: E402
from tollgate.sidecar.config import default_bundle  # noqa: E402
from tollgate.state.postgres import redact  # noqa: E402
from tollgate.v1 import admin_pb2 as admin_pb  # noqa: E402
from tollgate.v1 import admin_pb2_grpc as admin_grpc  # noqa: E402
from tollgate.v1 import authorization_pb2 as pb  # noqa: E402
from tollgate.v1 import authorization_pb2_grpc as pb_grpc  # noqa: E402

SQLITE, POSTGRES = "sqlite", "postgresql"  # the two budget targets, in the order they are measured
PEERS = ("postgresql-b", "postgresql-c")  # the other two sidecars of the kill-switch fleet
#: DESIGN.md / issue 13: a kill switch engaged anywhere applies at every sidecar within this bound.
PROPAGATION_TARGET_MS = 1000.0
MIGRATE_TIMEOUT = 120.0


# -- the requests --------------------------------------------------------------------------------


def budget_request(session: str) -> pb.AuthorizeRequest:
    """A step's spend that the default library allows: far below code-reviewer's ceilings and limits (20 usd a
    session, 400 a day for the agent), so a run of any length is answered ALLOW by the policy."""
    return pb.AuthorizeRequest(
        principal=pb.Principal(agent_id="code-reviewer", instance_id="bench-fleet-1", session_id=session,
                               workflow="pr-review", team="platform", user="alice@example.com"),
        budget=pb.BudgetRequest(amount=0.000001, unit="usd", category="model"),
    )


def probe_request(session: str) -> pb.AuthorizeRequest:
    """A tool call the default library allows, in the session a round's kill switch names."""
    request = pb.AuthorizeRequest(
        principal=pb.Principal(agent_id="code-reviewer", instance_id="bench-fleet-probe", session_id=session,
                               workflow="pr-review", team="platform"),
        tool=pb.ToolCall(server="github", name="get_pull_request", resources=["repo:payments-api"]),
    )
    request.tool.arguments.update({"repo": "payments-api", "number": 42})
    return request


# -- the store and the sidecars ------------------------------------------------------------------


@dataclass
class Store:
    """The PostgreSQL the fleet shares: started here (server set) or given (--state-store)."""

    url: str
    server: PostgresServer | None = None
    migrate_output: str = ""

    def postmaster_pid(self) -> int | None:
        """The postmaster's pid (its backends are its children), when this tool runs the server."""
        if self.server is None:
            return None
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.server.data / "postmaster.pid").read_text().split()[0])
        return None

    def cpu_seconds(self) -> float:
        pid = self.postmaster_pid()
        return sum(cpu_seconds(p) for p in process_tree(pid)) if pid else math.nan


def tollgate_exe() -> str:
    exe = Path(sys.executable).with_name("tollgate")
    return str(exe) if exe.exists() else "tollgate"


def migrate(store: Store) -> None:
    """`tollgate state migrate`, as an operator runs it before the first sidecar starts."""
    done = subprocess.run([tollgate_exe(), "state", "migrate", "--state-store", store.url], capture_output=True,
                          text=True, timeout=MIGRATE_TIMEOUT, check=False)
    if done.returncode != 0:
        raise BenchError(f"tollgate state migrate --state-store {redact(store.url)} exited with {done.returncode}:"
                         f"\n{done.stderr or done.stdout}")
    store.migrate_output = done.stdout.strip()


def sidecar_argv(args: argparse.Namespace, data_dir: Path, token_file: Path, state_store: str) -> list[str]:
    argv = [tollgate_exe(), "serve", "--listen", f"{HOST}:0", "--data-dir", str(data_dir), "--bundle", args.bundle,
            "--admin-token-file", str(token_file)]
    if state_store:
        argv += ["--state-store", state_store]
    if args.workers is not None:
        argv += ["--workers", str(args.workers)]
    if args.reservation_ttl is not None:
        argv += ["--reservation-ttl", f"{args.reservation_ttl:g}"]
    return argv


def start_sidecars(args: argparse.Namespace, workdir: Path, store: Store,
                   stack: contextlib.ExitStack) -> dict[str, Target]:
    """The SQLite sidecar and three on the store, started at once (each compiles the bundle in its workers).

    bench.py's children die with the thread that started them (PR_SET_PDEATHSIG), so the starter threads live
    until the sidecars have been stopped: the pool is shut down after them (the stack unwinds newest first)."""
    token_file = workdir / "admin-token"
    token_file.write_text(secrets.token_urlsafe(24) + "\n")
    token_file.chmod(0o600)
    plan = {SQLITE: ""} | {name: store.url for name in (POSTGRES, *PEERS)}
    pool = concurrent.futures.ThreadPoolExecutor(len(plan), thread_name_prefix="sidecar-start")
    stack.callback(pool.shutdown)
    futures = {name: pool.submit(start_target, name, sidecar_argv(args, workdir / name, token_file, url), workdir,
                                 data_dir=workdir / name) for name, url in plan.items()}
    targets: dict[str, Target] = {}
    failures = []
    for name, future in futures.items():
        try:
            targets[name] = future.result()
            stack.callback(stop_target, targets[name])
        except BenchError as exc:
            failures.append(str(exc))
    if failures:
        raise BenchError("\n".join(failures))
    return targets


def admin_token(workdir: Path) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {(workdir / 'admin-token').read_text().strip()}")]


# -- part 1: budget decisions --------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetRun:
    """One h2load run of budget requests against one sidecar, with what its decision log says it answered."""

    target: str
    phase: str  # "saturation" or "paced"
    round_no: int
    throughput: float  # answers per second (h2load's successes)
    allowed_per_s: float  # of those, the policy's ALLOW, per second
    p50_ms: float
    p99_ms: float
    max_ms: float
    sidecar_cores: float
    sidecar_us_per_decision: float
    postgres_us_per_decision: float  # nan: not this target, or a store this tool did not start
    others_cores: float  # everything else on the machine during the run (other tenants): a noisy run shows here
    answers: dict[str, int] = field(default_factory=dict)


class BudgetBench:
    """The same budget load against the SQLite and the PostgreSQL sidecar, interleaved."""

    def __init__(self, args: argparse.Namespace, workdir: Path, targets: dict[str, Target], store: Store) -> None:
        self.args = args
        self.workdir = workdir
        self.targets = [targets[SQLITE], targets[POSTGRES]]
        self.store = store
        self.request = budget_request(f"bench-fleet-{uuid.uuid4().hex[:8]}")
        self.body = workdir / "budget-request.bin"
        self.body.write_bytes(grpc_frame(self.request.SerializeToString()))
        self.message_bytes: dict[str, int] = {}
        self.runs: list[BudgetRun] = []
        self.problems: list[str] = []
        self.notes: list[str] = []

    def check(self) -> None:
        for target in self.targets:
            response = check_authorize(target, self.request)
            if response.decision != pb.DECISION_ALLOW:
                reasons = ", ".join(f"{r.code}: {r.message}" for r in response.reasons)
                raise BenchError(f"{target.name} answers the budget request {log_key(response)} ({reasons}), not "
                                 "ALLOW: nothing to measure")
            # The smallest answer seen: verify_run checks that every HTTP 200 carried at least that many bytes.
            self.message_bytes[target.name] = len(grpc_frame(response.SerializeToString()))
            progress(f"{target.name} at {target.address} allows the budget request (reservation "
                     f"{response.reservation_id})")

    def measure(self, target: Target, spec: LoadSpec) -> BudgetRun:
        progress(f"{target.name}: {spec.phase} {spec.duration:g}s, -c {spec.clients} -m {spec.streams}"
                 + (f", {spec.rps_total:.0f} req/s" if spec.rps_total else ""))
        assert target.decision_db is not None
        before_log = settled_log_position(target.decision_db)
        pg_before = self.store.cpu_seconds() if target.name == POSTGRES else math.nan
        result = run_load(spec, target, self.body, self.workdir)
        pg_used = self.store.cpu_seconds() - pg_before if target.name == POSTGRES else math.nan
        count = log_rows_since(target.decision_db, before_log, settled_log_position(target.decision_db))
        self.problems += verify_run(target, result, self.message_bytes[target.name], count)
        run = self._run(target.name, spec, result, count.by_decision, pg_used)
        if spec.phase != "warm-up":
            self.runs.append(run)
            others = {k: n for k, n in count.by_decision.items() if k != "allow"}
            if others:
                self.notes.append(f"{target.name} {spec.phase} round {spec.round_no}: {sum(others.values()):,} of "
                                  f"{count.rows:,} answers were not ALLOW ({', '.join(others)})")
        return run

    @staticmethod
    def _run(name: str, spec: LoadSpec, result: LoadResult, answers: dict[str, int], pg_used: float) -> BudgetRun:
        total = sum(answers.values())
        allowed = result.throughput * answers.get("allow", 0) / total if total else 0.0
        wall = result.duration_s or spec.duration
        pg_us = pg_used / wall * 1e6 / result.throughput if result.throughput and not math.isnan(pg_used) \
            else math.nan
        return BudgetRun(name, spec.phase, spec.round_no, result.throughput, allowed, result.p50_ms, result.p99_ms,
                         result.max_ms, result.cpu.tree, result.cpu_us_per_request["tree"], pg_us,
                         _others(result.cpu.other, pg_used / wall), answers)

    def run(self) -> None:
        a = self.args
        self.check()
        for target in self.targets:
            self.measure(target, LoadSpec("warm-up", a.warmup, a.connections, a.streams))
        for n in range(1, a.rounds + 1):
            saturation = [self.measure(t, LoadSpec("saturation", a.duration, a.connections, a.streams, round_no=n))
                          for t in self.targets]
            rate = a.paced_share * min(r.throughput for r in saturation)
            if rate < a.connections:  # h2load paces per client: below one request a second each it cannot
                self.problems.append(f"round {n}: a saturation throughput of {rate:.1f} req/s leaves nothing to pace")
                continue
            for target in self.targets:
                self.measure(target, LoadSpec("paced", a.duration, a.connections, a.streams, rps_total=rate,
                                              round_no=n))

    def comparison(self) -> list[dict[str, Any]]:
        """Per round and phase: PostgreSQL's figures against SQLite's."""
        rows = []
        for n in range(1, self.args.rounds + 1):
            for phase in ("saturation", "paced"):
                pair = {r.target: r for r in self.runs if r.round_no == n and r.phase == phase}
                if len(pair) < 2:
                    continue
                lite, pg = pair[SQLITE], pair[POSTGRES]
                rows.append({"round": n, "phase": phase,
                             "throughput_ratio": pg.throughput / lite.throughput if lite.throughput else math.nan,
                             "p99_ratio": pg.p99_ms / lite.p99_ms if lite.p99_ms else math.nan})
        return rows


def _others(other_cores: float, postgres_cores: float) -> float:
    """bench.py's "everything else on the machine", less the PostgreSQL this run was measuring."""
    return other_cores if math.isnan(postgres_cores) else max(0.0, other_cores - postgres_cores)


# -- part 2: kill-switch propagation -------------------------------------------------------------


@dataclass(frozen=True)
class PropagationRound:
    """One kill and lift: milliseconds from just before the call until each other sidecar answered accordingly
    (nan: it did not within --kill-timeout)."""

    round_no: int
    kill_call_ms: float
    revive_call_ms: float
    engaged_ms: dict[str, float]
    lifted_ms: dict[str, float]
    polls: int  # Authorize calls the pollers made in this round


def _killed(response: pb.AuthorizeResponse) -> bool:
    return response.decision == pb.DECISION_DENY and any(r.code == KILLED for r in response.reasons)


def _allowed(response: pb.AuthorizeResponse) -> bool:
    return response.decision == pb.DECISION_ALLOW


@dataclass
class Race:
    """One timed change: the pollers start on `go`, count from `started`, give up on `stop` or their timeout."""

    go: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)
    started: float = 0.0
    #: Per poller: ms until its first passing answer (nan: none within the timeout, or cut short).
    out: dict[str, float] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


class Poller:
    """Asks one sidecar Authorize back to back, from a go signal, until an answer passes the test."""

    def __init__(self, name: str, address: str, request: pb.AuthorizeRequest, timeout: float) -> None:
        self.name = name
        self.channel = grpc.insecure_channel(address)
        self.stub = pb_grpc.AuthorizationServiceStub(self.channel)
        self.request = request
        self.timeout = timeout
        self.polls = 0

    def ask(self) -> pb.AuthorizeResponse:
        self.polls += 1
        response: pb.AuthorizeResponse = self.stub.Authorize(self.request, timeout=10)
        return response

    def until(self, passes: Callable[[pb.AuthorizeResponse], bool], race: Race) -> None:
        race.out[self.name] = math.nan
        race.go.wait()
        deadline = time.monotonic() + self.timeout
        try:
            while time.monotonic() < deadline and not race.stop.is_set():
                if passes(self.ask()):
                    race.out[self.name] = (time.monotonic() - race.started) * 1000
                    return
        except grpc.RpcError as exc:
            race.errors.append(f"{self.name}: Authorize failed with {exc.code().name}: {exc.details()}")

    def close(self) -> None:
        self.channel.close()


class PropagationBench:
    """Kill switches engaged and lifted through one sidecar, timed at the two others."""

    def __init__(self, args: argparse.Namespace, workdir: Path, targets: dict[str, Target]) -> None:
        self.args = args
        self.source = targets[POSTGRES]
        self.peers = [targets[name] for name in PEERS]
        self.metadata = admin_token(workdir)
        self.rounds: list[PropagationRound] = []
        self.problems: list[str] = []

    def _timed(self, pollers: Sequence[Poller], passes: Callable[[pb.AuthorizeResponse], bool],
               call: Callable[[], object]) -> tuple[float, dict[str, float]]:
        """Start the pollers, make the call, and wait for each poller's first passing answer."""
        race = Race()
        threads = [threading.Thread(target=p.until, args=(passes, race)) for p in pollers]
        for thread in threads:
            thread.start()
        race.started = time.monotonic()
        race.go.set()
        try:
            call()
        except grpc.RpcError as exc:
            race.stop.set()
            raise BenchError(f"{self.source.name}: the admin call failed with {exc.code().name}: "
                             f"{exc.details()}") from exc
        finally:
            called_ms = (time.monotonic() - race.started) * 1000
            for thread in threads:
                thread.join()
        self.problems += race.errors
        return called_ms, race.out

    def one_round(self, n: int, admin: Any) -> PropagationRound:
        session = f"bench-kill-{uuid.uuid4().hex[:8]}"
        request = probe_request(session)
        pollers = [Poller(t.name, t.address, request, self.args.kill_timeout) for t in self.peers]
        try:
            for poller in pollers:
                if not _allowed(poller.ask()):
                    raise BenchError(f"{poller.name} does not allow the probe tool call before the kill switch")
            kill = admin_pb.KillRequest(scope="session", value=session, reason="bench: propagation", by="bench")
            revive = admin_pb.ReviveRequest(scope="session", value=session, by="bench")
            kill_ms, engaged = self._timed(pollers, _killed,
                                           lambda: admin.Kill(kill, metadata=self.metadata, timeout=10))
            with grpc.insecure_channel(self.source.address) as channel:
                own = pb_grpc.AuthorizationServiceStub(channel).Authorize(request, timeout=10)
            if not _killed(own):
                self.problems.append(f"round {n}: {self.source.name} did not deny right after its own Kill returned")
            revive_ms, lifted = self._timed(pollers, _allowed,
                                            lambda: admin.Revive(revive, metadata=self.metadata, timeout=10))
            return PropagationRound(n, kill_ms, revive_ms, engaged, lifted, sum(p.polls for p in pollers))
        finally:
            for poller in pollers:
                poller.close()

    def run(self) -> None:
        with grpc.insecure_channel(self.source.address) as channel:
            admin = admin_grpc.AdminServiceStub(channel)
            for n in range(1, self.args.kill_rounds + 1):
                progress(f"kill switch round {n}: engage through {self.source.name}, poll {', '.join(PEERS)}")
                result = self.one_round(n, admin)
                for what, times in (("deny", result.engaged_ms), ("allow again", result.lifted_ms)):
                    late = [name for name, ms in times.items() if math.isnan(ms)]
                    if late:
                        self.problems.append(f"round {n}: {', '.join(late)} did not {what} within "
                                             f"{self.args.kill_timeout:g}s")
                self.rounds.append(result)

    def summary(self) -> dict[str, Any]:
        engaged = [ms for r in self.rounds for ms in r.engaged_ms.values()]
        lifted = [ms for r in self.rounds for ms in r.lifted_ms.values()]
        every = engaged + lifted
        worst = max(every, default=math.nan)
        return {"engage": _spread(engaged), "lift": _spread(lifted),
                "kill_call": _spread([r.kill_call_ms for r in self.rounds]),
                "revive_call": _spread([r.revive_call_ms for r in self.rounds]),
                "worst_ms": worst, "target_ms": PROPAGATION_TARGET_MS,
                "met": bool(every) and not any(math.isnan(v) for v in every) and worst <= PROPAGATION_TARGET_MS}


def _spread(values: list[float]) -> dict[str, float]:
    seen = [v for v in values if not math.isnan(v)]
    if not seen:
        return {"n": 0, "min": math.nan, "median": math.nan, "max": math.nan}
    return {"n": len(seen), "min": min(seen), "median": statistics.median(seen), "max": max(seen)}


# -- the report ----------------------------------------------------------------------------------


@dataclass
class Report:
    settings: dict[str, Any]
    tollgate: str
    store: str
    migrate: str
    budget_runs: list[BudgetRun]
    comparison: list[dict[str, Any]]
    propagation_rounds: list[PropagationRound]
    propagation: dict[str, Any]
    problems: list[str]
    notes: list[str]


def _f(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:,.{digits}f}"


def _columns(rows: Sequence[Sequence[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
            .rstrip() for r in rows]


def render(report: Report) -> str:
    s = report.settings
    lines = [f"Tollgate {report.tollgate}; state store {report.store}",
             f"budget load: h2load -c {s['connections']} -m {s['streams']}, {s['duration_s']:g} s per run after a "
             f"{s['warmup_s']:g} s warm-up; paced at {s['paced_share']:.0%} of the slower saturation throughput; "
             f"reservation TTL {_f(s['reservation_ttl'], 0) + ' s' if s['reservation_ttl'] else 'the default'}, "
             f"workers {s['workers'] or 'the default'} per sidecar",
             ""]
    rows: list[tuple[str, ...]] = [("store", "phase", "answers/s", "ALLOW/s", "p50 ms", "p99 ms", "max ms",
                                    "sidecar cores", "sidecar µs/answer", "postgres µs/answer", "others cores")]
    rows += [(r.target, f"{r.phase} {r.round_no}", _f(r.throughput, 0), _f(r.allowed_per_s, 0), _f(r.p50_ms),
              _f(r.p99_ms), _f(r.max_ms), _f(r.sidecar_cores), _f(r.sidecar_us_per_decision, 0),
              _f(r.postgres_us_per_decision, 0), _f(r.others_cores)) for r in report.budget_runs]
    lines += _columns(rows)
    lines += [f"round {c['round']} {c['phase']}: PostgreSQL / SQLite throughput {_f(c['throughput_ratio'])}x, "
              f"p99 {_f(c['p99_ratio'])}x" for c in report.comparison]
    p = report.propagation
    lines += ["", f"kill switch propagation over {len(report.propagation_rounds)} rounds, through {POSTGRES} to "
              f"{', '.join(PEERS)} (ms from the call sent to the other sidecar's answer):"]
    rows = [("", "", "n", "min", "median", "max")]
    for label, key in (("engaged", "engage"), ("lifted", "lift"), ("Kill call", "kill_call"),
                       ("Revive call", "revive_call")):
        spread = p[key]
        rows.append((label, "", str(spread["n"]), _f(spread["min"], 1), _f(spread["median"], 1), _f(spread["max"], 1)))
    lines += _columns(rows)
    lines.append(f"kill switch propagation: worst {_f(p['worst_ms'], 1)} ms (target <= {p['target_ms']:g} ms: "
                 f"{'met' if p['met'] else 'MISSED'})")
    lines.append("")
    if report.problems:
        lines += ["PROBLEMS:", *(f"  - {problem}" for problem in report.problems)]
    else:
        lines.append("checks: every HTTP 200 carried an answer; decision-log rows match; every peer followed")
    if report.notes:
        lines += ["notes:", *(f"  - {note}" for note in report.notes)]
    return "\n".join(lines)


def report_json(report: Report) -> str:
    return json.dumps(dataclasses.asdict(report), indent=2, default=str)


# -- entry ---------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    # Whole seconds: h2load's -D refuses a fraction.
    p.add_argument("--duration", type=int, default=10, help="seconds per measured budget run")
    p.add_argument("--warmup", type=int, default=3, help="seconds of warm-up per budget target")
    p.add_argument("--connections", type=int, default=4, help="h2load clients")
    p.add_argument("--streams", type=int, default=8, help="concurrent streams per client")
    p.add_argument("--rounds", type=int, default=1, help="saturation + paced rounds, interleaved by store")
    p.add_argument("--paced-share", type=float, default=0.5,
                   help="the paced run's rate, as a share of the slower store's saturation throughput")
    p.add_argument("--kill-rounds", type=int, default=10, help="kill switches engaged and lifted")
    p.add_argument("--kill-timeout", type=float, default=10.0,
                   help="seconds a peer may take to follow a kill or a lift before the round counts it missed")
    p.add_argument("--bundle", default=default_bundle(), help="policy bundle for every sidecar")
    p.add_argument("--workers", type=int, default=None, help="engine workers per sidecar (default: its own)")
    p.add_argument("--reservation-ttl", type=float, default=None,
                   help="seconds an unreported reservation holds (default: the sidecar's own): none is reported here, "
                        "and a spend read sums every live one of its scopes")
    p.add_argument("--state-store", default="",
                   help="an existing postgresql:// database to measure (default: start a PostgreSQL here)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (logs, data dirs) and print it")
    return p


def _validate(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    for name in ("duration", "warmup", "connections", "streams", "rounds", "kill_rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be 1 or more")
    if not 0 < args.kill_timeout <= 600:  # also refuses NaN
        p.error("--kill-timeout must be above 0 and at most 600 seconds")
    if args.reservation_ttl is not None and not 0 < args.reservation_ttl <= 86400:
        p.error("--reservation-ttl must be above 0 and at most 86400 seconds")
    if not 0 < args.paced_share <= 1:
        p.error("--paced-share must be above 0 and at most 1")
    if shutil.which("h2load") is None:
        p.error("h2load not found; install Debian's nghttp2-client (tools/setup.sh does)")
    args.bundle = str(Path(args.bundle).resolve())
    if not Path(args.bundle).exists():
        p.error(f"--bundle {args.bundle}: no such file or directory")


@contextlib.contextmanager
def _workdir(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="tollgate-bench-fleet-"))
    try:
        yield path
    finally:
        if keep:
            progress(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def _store(url: str) -> Iterator[Store]:
    if url:
        yield Store(url)
        return
    progress("starting PostgreSQL (initdb into a temp dir)")
    try:
        server = PostgresServer()
    except RuntimeError as exc:
        raise BenchError(str(exc)) from exc
    try:
        yield Store(server.database(), server)
    finally:
        server.close()


def benchmark(args: argparse.Namespace) -> Report:
    with _workdir(args.keep) as workdir, _store(args.state_store) as store, contextlib.ExitStack() as stack:
        migrate(store)
        progress(f"migrated {redact(store.url)}; starting four sidecars (one on SQLite, three on the store)")
        targets = start_sidecars(args, workdir, store, stack)
        budgets = BudgetBench(args, workdir, targets, store)
        budgets.run()
        kills = PropagationBench(args, workdir, targets)
        kills.run()
        stack.close()  # stop the sidecars now: an unclean exit belongs in the report
        problems = budgets.problems + kills.problems
        problems += [f"{t.name} exited with {t.exit_code} after SIGTERM (expected 0)" for t in targets.values()
                     if t.exit_code not in (0, None)]
        settings = {k: getattr(args, k) for k in ("duration", "warmup", "connections", "streams", "rounds",
                                                  "paced_share", "kill_rounds", "kill_timeout", "workers",
                                                  "reservation_ttl", "bundle")}
        settings["duration_s"], settings["warmup_s"] = settings.pop("duration"), settings.pop("warmup")
        return Report(settings, source_revision(), redact(store.url), store.migrate_output, budgets.runs,
                      budgets.comparison(), kills.rounds, kills.summary(), problems, budgets.notes)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    _validate(parser, args)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        report = benchmark(args)
    except BenchError as exc:
        progress(f"error: {exc}")
        return 1
    except KeyboardInterrupt:
        progress("interrupted; sidecars and PostgreSQL stopped")
        return 130
    print(report_json(report) if args.json else render(report))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
