"""Benchmark spend on a ledger with many rows: a budget request's latency, and a bystander's tool calls meanwhile.

    python tools/bench_budgets.py [--rows 200000] [--seconds 10] [--json]

Seeds a fresh state.db with --rows committed reservations of today (UTC), all in the scopes the budget client
spends in (agent code-reviewer, team platform, workflow review; each in its own session), then starts
`tollgate serve` on it and, for --seconds, runs two clients on their own channels at once: one sends budget
requests in those scopes one after another, the other sends tool calls (no spend) one after another. Prints
each one's p50, p95 and max in milliseconds. A ledger whose spend queries grow with the day's rows slows the
budget client; one whose I/O runs on the event loop slows the bystander too.

Exits 0 when both clients got answers, 1 when the server failed to start or a call failed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import grpc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "server"))

from tollgate.state import StateStore  # noqa: E402 - after the path it lives on
from tollgate.state.budgets import TOTALS_FROM_ROWS, Budgets  # noqa: E402
from tollgate.v1 import authorization_pb2 as pb  # noqa: E402
from tollgate.v1 import authorization_pb2_grpc as pb_grpc  # noqa: E402


def seed(data_dir: Path, rows: int) -> None:
    """rows committed reservations of today, in one agent, team and workflow (a session each)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    store = StateStore(data_dir / "state.db")
    Budgets(store)  # creates (or migrates) the ledger's tables
    now = time.time()
    stamp = datetime.fromtimestamp(now, UTC)
    day, month = stamp.strftime("%Y-%m-%d"), stamp.strftime("%Y-%m")
    with store.lock, store.transaction("seed") as db:
        db.executemany(
            "INSERT INTO budget_reservations (id, session, agent, team, workflow, unit, amount, committed, status, "
            "day, month, created_at, expires_at, decision_id, requested_by) "
            "VALUES (?, ?, 'code-reviewer', 'platform', 'review', 'usd', 0.000001, 0.000001, 'committed', ?, ?, "
            "?, ?, '', '')",
            ((f"rsv-seed-{i}", f"seed-{i}", day, month, now, now + 900) for i in range(rows)))
        db.execute("DELETE FROM budget_totals")  # the running totals count the seeded rows too
        for statement in TOTALS_FROM_ROWS:
            db.execute(statement)
    store.close()


def start(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "tollgate"), "serve", "--listen", "127.0.0.1:0",
                             "--data-dir", str(data_dir), "--bundle", str(ROOT / "rego")],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT)
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("tollgate: serving on "):
            return proc, line.split()[3]
    proc.kill()
    raise SystemExit("tollgate serve did not start")


def client(address: str, request: pb.AuthorizeRequest, until: float, out: list[float], errors: list[str]) -> None:
    with grpc.insecure_channel(address) as channel:
        stub = pb_grpc.AuthorizationServiceStub(channel)
        while time.monotonic() < until:
            started = time.perf_counter()
            try:
                stub.Authorize(request, timeout=10)
            except grpc.RpcError as exc:
                errors.append(str(exc.code()))
                continue
            out.append((time.perf_counter() - started) * 1000)


def figures(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"n": len(ordered), "p50_ms": round(statistics.median(ordered), 2),
            "p95_ms": round(ordered[int(len(ordered) * 0.95) - 1], 2), "max_ms": round(ordered[-1], 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = Path(tmp) / "data"
        seed(data_dir, args.rows)
        proc, address = start(data_dir)
        try:
            # In the seeded rows' agent, team and workflow: every scope it is counted under holds 200,000 rows.
            spend = pb.AuthorizeRequest(principal=pb.Principal(agent_id="code-reviewer", team="platform",
                                                               workflow="review", session_id="bench"),
                                        budget=pb.BudgetRequest(amount=0.000001, unit="usd", category="model"))
            tool = pb.AuthorizeRequest(principal=pb.Principal(agent_id="code-reviewer", session_id="other"),
                                       tool=pb.ToolCall(server="github", name="get_pull_request"))
            until = time.monotonic() + args.seconds
            budget_ms: list[float] = []
            tool_ms: list[float] = []
            errors: list[str] = []
            threads = [threading.Thread(target=client, args=(address, spend, until, budget_ms, errors)),
                       threading.Thread(target=client, args=(address, tool, until, tool_ms, errors))]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    if not budget_ms or not tool_ms:
        print(f"no answers (errors: {errors[:5]})", file=sys.stderr)
        return 1
    result = {"rows": args.rows, "budget_request": figures(budget_ms), "tool_call": figures(tool_ms),
              "errors": len(errors)}
    if args.json:
        print(json.dumps(result))
    else:
        for name in ("budget_request", "tool_call"):
            f = result[name]
            print(f"{name:<15} n={f['n']:<6} p50 {f['p50_ms']} ms  p95 {f['p95_ms']} ms  max {f['max_ms']} ms")
        print(f"rows {args.rows}, errors {len(errors)}")
    return 0 if not errors else 1


if __name__ == "__main__":
    raise SystemExit(main())
