"""What one decision costs inside the embedded engine: CPU per evaluation of a bundle, and the evaluation steps.

    python tools/rego_cost.py [BUNDLE_DIR ...] [--manifests N,N,...] [--rounds R]

For each bundle directory (default rego/), in one process and interleaved so that load from other tenants
falls on all of them alike: CPU per evaluation (time.process_time, so the engine's Go threads count) of the
decision, the mask rule, both in the one query the engine workers run, and a trivial query with the same
input (the bridge's own cost, mostly parsing the input JSON). Each figure is the median and the minimum
over rounds of 50 evaluations of the sample request (agent code-reviewer, tool github/get_pull_request).
Then OPA's trace of that request: the rules entered (Enter events) and all evaluation steps, for the
decision and for each rule package's deny and require_approval evaluated alone.

With --manifests, each bundle is measured again with N agent manifests in all (copies of code-reviewer's
under agents/agent-NNNNN/, in a temporary directory), to show the cost does not grow with the fleet.

Prints figures only; compare bundles measured in the same run, as ratios (the machine is shared).
"""

from __future__ import annotations

import argparse
import collections
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))

from tollgate.bundle import DataLimits, load_bundle
from tollgate.engine._opa import EmbeddedOpa
from tollgate.engine._worker import _with_mask

SAMPLE: dict[str, Any] = {
    "kind": "tool",
    "tool": {"server": "github", "name": "get_pull_request", "arguments": {"repo": "payments-api", "number": 42}},
    "principal": {"agent_id": "code-reviewer", "session_id": "s1"},
    "now": "2026-12-02T00:00:00Z",
    "state": {"killed": [], "spend": {}, "spend_month": {}},
    "context": {},
}
_BATCH = 50
_PACKAGES = ("agent", "tools", "secrets", "killswitch", "models", "budget")


# A fleet of 10,000 manifests is past the server's default bundle limits (raised with --bundle-data-values).
_FLEET_LIMITS = DataLimits(bytes=1 << 30, values=100_000_000)


def _engine(path: Path) -> EmbeddedOpa:
    bundle = load_bundle(path, size_limit=1 << 30, data_limits=_FLEET_LIMITS)
    engine = EmbeddedOpa(bundle.modules, bundle.data)
    engine.compile()
    return engine


def _cases(engine: EmbeddedOpa) -> dict[str, Callable[[], bytes]]:
    raw = json.dumps(SAMPLE).encode()
    both = _with_mask(engine, "tollgate.decision", "tollgate.log.mask")
    return {
        "trivial": lambda: engine.query_raw(b"x := 1", raw),
        "decision": lambda: engine.evaluate_raw(b"tollgate.decision", raw),
        "mask": lambda: engine.evaluate_raw(b"tollgate.log.mask", raw),
        "decision+mask": lambda: both(b"tollgate.decision", raw),
    }


def measure(engines: dict[str, EmbeddedOpa], rounds: int) -> dict[str, dict[str, list[float]]]:
    """µs of CPU per evaluation, per round, per case, per engine; engines and cases interleaved."""
    cases = {name: _cases(engine) for name, engine in engines.items()}
    samples: dict[str, dict[str, list[float]]] = {name: collections.defaultdict(list) for name in engines}
    for _ in range(rounds):
        for name, by_case in cases.items():
            for case, evaluate in by_case.items():
                start = time.process_time()
                for _ in range(_BATCH):
                    evaluate()
                samples[name][case].append((time.process_time() - start) / _BATCH * 1e6)
    return samples


def steps(engine: EmbeddedOpa, path: str) -> tuple[int, int]:
    """(rules entered, evaluation steps) in OPA's trace of the sample request for data.<path>."""
    _, trace = engine.evaluate_with_trace(path, SAMPLE)
    return sum(1 for event in trace if event.get("op") == "Enter"), len(trace)


def _with_manifests(source: Path, count: int, into: Path) -> Path:
    """A copy of the bundle directory holding count agent manifests in all (copies of code-reviewer's)."""
    target = Path(tempfile.mkdtemp(dir=into)) / source.name
    shutil.copytree(source, target)
    manifest = (source / "agents" / "code-reviewer" / "data.yaml").read_text()
    existing = sum(1 for p in (target / "agents").iterdir() if p.is_dir())
    for i in range(max(0, count - existing)):
        agent = target / "agents" / f"agent-{i:05d}"
        agent.mkdir()
        (agent / "data.yaml").write_text(manifest)
    return target


def _print_cost(samples: dict[str, dict[str, list[float]]]) -> None:
    first = next(iter(samples))
    for name, by_case in samples.items():
        cells = []
        for case, values in by_case.items():
            median = statistics.median(values)
            ratio = median / statistics.median(samples[first][case])
            cells.append(f"{case} {median:6.0f} µs (min {min(values):4.0f}, {ratio:4.2f}x)")
        print(f"{name:28s} " + "  ".join(cells))


def _print_steps(engines: dict[str, EmbeddedOpa]) -> None:
    paths = ["tollgate.decision", "tollgate.log.mask"]
    paths += [f"tollgate.rules.{p}.{rule}" for p in _PACKAGES for rule in ("deny", "require_approval")]
    print(f"{'rules entered / steps':45s}" + "".join(f"{name[-22:]:>24s}" for name in engines))
    for path in paths:
        row = [steps(engine, path) for engine in engines.values()]
        print(f"{path:45s}" + "".join(f"{entered:>14d} / {total:<7d}" for entered, total in row))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bundles", nargs="*", type=Path, default=[Path("rego")], help="bundle directories")
    parser.add_argument("--manifests", default="", help="comma-separated agent counts, e.g. 10,10000")
    parser.add_argument("--rounds", type=int, default=40, help="rounds of 50 evaluations per case")
    args = parser.parse_args(argv)
    engines = {str(path): _engine(path) for path in args.bundles}
    print(f"sample request, {len(json.dumps(SAMPLE))} bytes of input; median over {args.rounds} rounds, "
          "ratio to the first bundle")
    _print_cost(measure(engines, args.rounds))
    _print_steps(engines)
    counts = [int(n) for n in args.manifests.split(",") if n]
    if counts:
        with tempfile.TemporaryDirectory() as tmp:
            for path in args.bundles:
                fleet = {f"{path} with {n} manifests": _engine(_with_manifests(path, n, Path(tmp))) for n in counts}
                _print_cost(measure(fleet, args.rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
