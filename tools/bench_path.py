"""Micro-benchmark of the Authorize request path on the main thread: CPU µs per answer, and a breakdown per step.

What runs is the serving path without gRPC's own share: AuthorizationServicer.Authorize (parse, caller, convert)
→ Authorizer (read state → build input → canonical JSON → evaluate → mask → settle → record → append →
observe) → the response's bytes, over real parts in one process: the engine worker pool (`tollgate serve`'s,
one worker, the workers' CPU not counted) with a one-rule bundle (or --bundle), the SQLite decision log in a
temp dir (its writer thread not counted), Prometheus metrics as the observer. The call context is a stand-in
(an insecure peer, no metadata): grpc.aio's peer() and auth_context() cost under a microsecond each.

`end to end` is main-thread CPU (time.thread_time) over --requests answers kept --concurrency at a time, divided
by the answers. The steps are then timed alone, each on the same request, as CPU µs per call (the fastest of
--repeat runs; the engine's step in wall time, since it waits on a worker): their sum is not the total (the
total also pays the event loop, futures and the engine pool's IPC).

    PYTHONPATH=server python tools/bench_path.py [--requests 4000] [--concurrency 16] [--bundle DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from benchkit.wire import bench_request  # the request tools/bench.py sends

from tollgate.api._authorization import AuthorizationServicer, RequestLimits
from tollgate.api._convert import to_decision_request, to_response
from tollgate.bundle import load_bundle
from tollgate.contract import Decision, build_input
from tollgate.decision import Authorizer, BudgetGuard
from tollgate.decisionlog import DecisionLog, LogConfig, mask_record
from tollgate.encoding import canonical_json
from tollgate.engine import EngineConfig, EngineSlot, WorkerPoolEngine
from tollgate.identity import ANONYMOUS
from tollgate.sidecar.metrics import Metrics
from tollgate.state import open_local_state
from tollgate.v1 import authorization_pb2 as pb

#: A policy of one rule that allows the benchmark's request: the engine's share stays small, the path's shows.
ONE_RULE = """package tollgate

default decision := {"decision": "deny", "reasons": [{"code": "not_allowed", "message": "not this tool"}]}

decision := {"decision": "allow", "reasons": []} if input.tool.name == "get_pull_request"
"""


class CallContext:
    """The part of grpc.aio.ServicerContext that Authorize reads: an insecure TCP caller without metadata."""

    def peer(self) -> str:
        return "ipv4:127.0.0.1:50000"

    def auth_context(self) -> dict[str, list[bytes]]:
        return {"transport_security_type": [b"insecure"], "security_level": [b"TSI_SECURITY_NONE"]}

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("user-agent", "grpc-python-asyncio"),)


# Steps are timed in this thread's CPU time, not wall time: on a machine others load, a step preempted half-way
# would otherwise count the other process's turn; the fastest of many short runs is the least disturbed.
def per_call_us(fn: Callable[[], Any], *, calls: int, repeat: int) -> float:
    """CPU µs of one call of fn: the fastest of repeat runs of `calls` calls."""
    best = float("inf")
    for _ in range(repeat):
        started = time.thread_time()
        for _ in range(calls):
            fn()
        best = min(best, time.thread_time() - started)
    return best / calls * 1e6


async def per_await_us(make: Callable[[], Any], *, calls: int, repeat: int,
                       clock: Callable[[], float] = time.thread_time) -> float:
    """µs of one await of make(), as per_call_us (clock=time.perf_counter: wall time, for what waits)."""
    best = float("inf")
    for _ in range(repeat):
        started = clock()
        for _ in range(calls):
            await make()
        best = min(best, clock() - started)
    return best / calls * 1e6


async def end_to_end(servicer: AuthorizationServicer, raw: bytes, *, requests: int, concurrency: int) -> float:
    """Main-thread CPU µs per answer, `concurrency` requests in flight until `requests` are answered."""
    context: Any = CallContext()
    left = requests

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            response = await servicer.Authorize(raw, context)
            response.SerializeToString()

    started = time.thread_time()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return (time.thread_time() - started) / requests * 1e6


async def steps(authorizer: Authorizer, servicer: AuthorizationServicer, metrics: Metrics, raw: bytes, *,
                calls: int, repeat: int) -> list[tuple[str, float]]:
    """Each step of the path alone, on the benchmark's request: (name, µs per call)."""
    context: Any = CallContext()
    message = pb.AuthorizeRequest.FromString(raw)
    request = to_decision_request(message, max_depth=RequestLimits().max_depth, caller=ANONYMOUS)
    state = await authorizer.read_state(request, refusal=None, digest="")
    input_doc = build_input(request, now=state.now, killed=state.killed, approval=state.facts.approval,
                            spend=state.spend.spend.by_scope, spend_month=state.spend.spend.monthly)
    input_json = canonical_json(input_doc)
    evaluation = await authorizer.evaluate(input_json, asks_policy=True)
    assert evaluation.policy is not None
    outcome = evaluation.policy
    masking = mask_record(evaluation.mask, input_doc, outcome.raw, failed=evaluation.mask_failed)
    settled = await authorizer.settle(request, outcome, state, masking=masking, digest="", decision_id="d")
    result = outcome.result
    decision = Decision(decision=result.decision, decision_id="d", reasons=result.reasons,
                        obligations=result.obligations, bundle_revision=evaluation.revision)

    def timed(fn: Callable[[], Any]) -> float:
        return per_call_us(fn, calls=calls, repeat=repeat)

    async def awaited(make: Callable[[], Any], clock: Callable[[], float] = time.thread_time) -> float:
        return await per_await_us(make, calls=calls, repeat=repeat, clock=clock)

    return [
        ("parse AuthorizeRequest", timed(lambda: pb.AuthorizeRequest.FromString(raw))),
        ("caller resolution", timed(lambda: servicer.caller(context))),
        ("to_decision_request", timed(lambda: to_decision_request(message, max_depth=31, caller=ANONYMOUS))),
        ("read_state", await awaited(lambda: authorizer.read_state(request, refusal=None, digest=""))),
        ("build_input", timed(lambda: build_input(
            request, now=state.now, killed=state.killed, approval=state.facts.approval,
            spend=state.spend.spend.by_scope, spend_month=state.spend.spend.monthly))),
        ("canonical_json(input)", timed(lambda: canonical_json(input_doc))),
        ("evaluate (engine pool, wall time)", await awaited(lambda: authorizer.evaluate(input_json, asks_policy=True),
                                                            time.perf_counter)),
        ("mask_record", timed(lambda: mask_record(evaluation.mask, input_doc, outcome.raw))),
        ("settle", await awaited(lambda: authorizer.settle(request, outcome, state, masking=masking, digest="",
                                                           decision_id="d"))),
        ("record", timed(lambda: authorizer.record(request, decision, state=state, settled=settled,
                                                   masking=masking, previous_id="", latency_us=1))),
        ("observer (metrics)", timed(lambda: metrics.decided(
            kind="tool", decision="allow", reasons=(), revision=evaluation.revision, latency_seconds=0.001,
            evaluation_seconds=0.0002))),
        ("to_response + serialise", timed(lambda: to_response(decision).SerializeToString())),
    ]


async def run(args: argparse.Namespace, workdir: Path) -> None:
    bundle_dir = Path(args.bundle) if args.bundle else workdir / "bundle"
    if not args.bundle:
        bundle_dir.mkdir()
        (bundle_dir / "policy.rego").write_text(ONE_RULE)
    engine = WorkerPoolEngine(load_bundle(bundle_dir), EngineConfig(workers=args.workers))
    await engine.start()
    decision_log = DecisionLog(LogConfig(workdir / "decisions.db", synchronous=args.log_sync))
    decision_log.start(asyncio.get_running_loop())
    metrics = Metrics()
    state = open_local_state(workdir)  # the state `tollgate serve` keeps in its data dir
    authorizer = Authorizer(EngineSlot(engine), decision_log, observer=metrics, kill_switches=state.kill_switches,
                            approvals=state.approvals, budgets=BudgetGuard(state.budgets))
    servicer = AuthorizationServicer(authorizer, decision_log, RequestLimits(), budgets=state.budgets,
                                     approvals=state.approvals)
    raw = bench_request().SerializeToString()
    try:
        await end_to_end(servicer, raw, requests=max(200, args.requests // 10), concurrency=args.concurrency)
        totals = [await end_to_end(servicer, raw, requests=args.requests, concurrency=args.concurrency)
                  for _ in range(args.rounds)]
        breakdown = await steps(authorizer, servicer, metrics, raw, calls=args.calls, repeat=args.repeat)
    finally:
        await engine.close()
        decision_log.close()
        state.close()
    print(f"bench_path: {'bundle ' + args.bundle if args.bundle else 'one-rule bundle'}, {args.workers} worker(s), "
          f"log-sync {args.log_sync}, {args.requests} answers x "
          f"{args.rounds} rounds, {args.concurrency} in flight")
    print(f"  {'end to end (main thread CPU per answer)':<44} {min(totals):8.1f} µs   "
          f"(rounds: {', '.join(f'{t:.1f}' for t in totals)})")
    print("  steps alone (CPU µs per call, fastest of runs):")
    for name, us in breakdown:
        print(f"    {name:<42} {us:8.1f} µs")


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--requests", type=int, default=4000, help="answers per measured round")
    p.add_argument("--rounds", type=int, default=3, help="measured rounds (the lowest is the figure)")
    p.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    p.add_argument("--workers", type=int, default=1, help="engine worker processes")
    p.add_argument("--bundle", default="", help="policy bundle directory (default: a one-rule policy)")
    p.add_argument("--log-sync", choices=("full", "normal"), default="full", help="decision-log durability")
    p.add_argument("--calls", type=int, default=200, help="calls per timed run of one step")
    p.add_argument("--repeat", type=int, default=25, help="timed runs per step")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-path-") as workdir:
        asyncio.run(run(args, Path(workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
