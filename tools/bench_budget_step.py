"""Budget-step figures in process: p50 of one step (hold → spend → reserve) on SQLite and PostgreSQL, with no
and with many unreported reservations of the session, and the round trips a PostgreSQL step makes.

    PYTHONPATH=server python tools/bench_budget_step.py [--steps 300] [--unreported 2000] [--pg-url URL]

Without --pg-url a throwaway PostgreSQL server is started (tests/pg.py). Uses only the ledgers' public calls, so
the same script measures an older tree (PYTHONPATH=/other/tree/server) side by side. Round trips are the waits on
the server's socket a step's connection makes (BoundedConnection.wait), the pool's check included.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tollgate.clock import SystemClock
from tollgate.state import LocalBudgets, StateStore
from tollgate.state.budgets import Budgets
from tollgate.state.postgres import PgBudgets, PgOptions, PgStore
from tollgate.state.postgres._store import BoundedConnection

LIMITS = {"session": {"usd": 1e9}, "team": {"usd": 1e9}}
WAITS = [0]
_wait = BoundedConnection.wait


async def _counted(self: Any, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
    WAITS[0] += 1
    return await _wait(self, gen, interval, timeout)


BoundedConnection.wait = _counted  # type: ignore[method-assign]


def scopes(session: str) -> dict[str, str]:
    return {"session": session, "agent": "bench", "team": "platform", "workflow": "review"}


async def step(ledger: Any, session: str) -> None:
    async with ledger.hold(scopes(session)) as hold:
        await hold.spend()
        await hold.reserve({"usd": 1e-6}, limits=LIMITS)


async def timed(ledger: Any, session: str, steps: int, times: list[float]) -> int:
    """Run steps sequential steps of one session, adding each one's ms to times; the round trips they made."""
    before = WAITS[0]
    for _ in range(steps):
        started = time.perf_counter()
        await step(ledger, session)
        times.append((time.perf_counter() - started) * 1000)
    return WAITS[0] - before


async def compare(cases: dict[str, Any], args: argparse.Namespace) -> None:
    """Every case (name → ledger), fresh and after args.unreported unreported reservations, measured in
    interleaved rounds of 20 steps so the machine's load falls on all alike."""
    for name, ledger in cases.items():
        await timed(ledger, f"{name}-fresh", 20, [])  # warm up
        for _ in range(args.unreported):  # one after another: a burst of one session is the line's to bound
            await step(ledger, f"{name}-crowded")
    for kind in ("fresh", "crowded"):
        times: dict[str, list[float]] = {name: [] for name in cases}
        trips = dict.fromkeys(cases, 0)
        for _ in range(max(1, args.steps // 20)):
            for name, ledger in cases.items():
                trips[name] += await timed(ledger, f"{name}-{kind}", 20, times[name])
        for name in cases:
            what = "fresh session" if kind == "fresh" else f"{args.unreported} unreported first"
            print(f"{name:38s} {what:24s} p50 {statistics.median(times[name]):7.3f} ms  "
                  f"round trips/step {trips[name] / len(times[name]):4.1f}", flush=True)


async def burst(args: argparse.Namespace) -> None:
    """args.burst steps of one session at once on SQLite, each holding its step args.hold_ms (an evaluation),
    unbounded, in the sidecar's default line (256 waiting, state_store_timeout 2 s) and in a shorter one: p50/p99
    of the answers and how many were refused (ScopeOverloaded: DENY scope_overloaded)."""
    try:
        from tollgate.state._local import ScopeOverloaded
    except ImportError:  # an older tree: no bound to show
        return
    from tollgate.state import ScopeLocks

    async def one(ledger: Any, times: list[float], refused: list[int]) -> None:
        started = time.perf_counter()
        try:
            async with ledger.hold(scopes("burst")) as hold:
                await hold.spend()
                await asyncio.sleep(args.hold_ms / 1000)
                await hold.reserve({"usd": 1e-6}, limits=LIMITS)
        except ScopeOverloaded:
            refused.append(1)
        times.append((time.perf_counter() - started) * 1000)

    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp) / "state.db")
        try:
            for name, locks in (("unbounded", ScopeLocks()),
                                ("default 256, 2 s", ScopeLocks(max_waiting=256, max_wait=2.0)),
                                ("bounded 64, 2 s", ScopeLocks(max_waiting=64, max_wait=2.0))):
                ledger = LocalBudgets(Budgets(store, ttl=900, clock=SystemClock()), locks=locks)
                times: list[float] = []
                refused: list[int] = []
                await asyncio.gather(*(one(ledger, times, refused) for _ in range(args.burst)))
                times.sort()
                print(f"sqlite burst of {args.burst} on one session ({name:16s}) p50 {statistics.median(times):7.1f} "
                      f"ms  p99 {times[int(len(times) * 0.99) - 1]:7.1f} ms  refused {len(refused)}", flush=True)
        finally:
            store.close()


async def sqlite(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = StateStore(Path(tmp) / "state.db")
        try:
            await compare({"sqlite": LocalBudgets(Budgets(store, ttl=900, clock=SystemClock()))}, args)
        finally:
            store.close()


async def postgres(args: argparse.Namespace, url: str) -> None:
    import psycopg_pool

    stores = {mode: PgStore(PgOptions(url, timeout=5.0)) for mode in ("as built", "check on every checkout")}
    stores["check on every checkout"].pool._check = psycopg_pool.AsyncConnectionPool.check_connection
    cases: dict[str, Any] = {}
    try:
        for mode, store in stores.items():
            await store.open()
            cases[f"postgresql ({mode})"] = budgets = PgBudgets(store, ttl=900, clock=SystemClock())
            await budgets.start(upgrade=True)
        await compare(cases, args)
    finally:
        for store in stores.values():
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--unreported", type=int, default=2000)
    parser.add_argument("--pg-url", default="")
    parser.add_argument("--burst", type=int, default=128, help="steps of one session at once (0: skip)")
    parser.add_argument("--hold-ms", type=float, default=10.0, help="how long each burst step holds its scope")
    args = parser.parse_args()
    if args.burst:
        asyncio.run(burst(args))
    asyncio.run(sqlite(args))
    if args.pg_url:
        asyncio.run(postgres(args, args.pg_url))
        return
    from tests.pg import running_server

    for server in running_server():
        asyncio.run(postgres(args, server.database()))


if __name__ == "__main__":
    main()
