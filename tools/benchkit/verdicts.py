"""Issue 15's five targets as arithmetic on the measured runs: each a few checks, each met or MISSED by how much."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from benchkit.h2load import LoadResult, percentile
from benchkit.poisson import DRAIN_TIMEOUT, Timeline

THROUGHPUT_SHARE = 0.80  # 1: Tollgate's throughput ≥ 0.80× the no-op's
CPU_FACTOR = 2.0  # 2: Tollgate's CPU per decision (whole tree) ≤ 2× the no-op's per answer
P99_MARGIN_MS = 1.0  # 3: Tollgate's p99 ≤ the no-op's p99 at the same rate + 1 ms
P50_LIMIT_MS = 1.0  # 3: and its p50 ≤ 1 ms
MANIFEST_SPREAD = 0.10  # 5: p50 with 10,000 manifests within 10 % of the p50 with 10
RSS_LIMIT_MIB = 250.0  # 5: peak RSS of the tree with two workers


@dataclass(frozen=True)
class Check:
    """One comparison: value against limit (value ≥ limit when at_least, else value ≤ limit)."""

    what: str
    value: float
    limit: float
    unit: str  # "x", "ms", "µs", "MiB", "" (a count)
    at_least: bool = False
    figures: str = ""  # the measured figures side by side, for the reader

    @property
    def met(self) -> bool:
        if math.isnan(self.value) or math.isnan(self.limit):
            return False  # nothing measured is not a met target
        return self.value >= self.limit if self.at_least else self.value <= self.limit

    @property
    def missed_by(self) -> float:
        """How far the value is on the wrong side of the limit (0 when met, nan when not measured)."""
        if math.isnan(self.value) or math.isnan(self.limit):
            return math.nan
        return max(0.0, self.limit - self.value if self.at_least else self.value - self.limit)

    def as_dict(self) -> dict[str, Any]:
        return {"what": self.what, "value": self.value, "limit": self.limit, "unit": self.unit,
                "at_least": self.at_least, "figures": self.figures, "met": self.met, "missed_by": self.missed_by}


@dataclass(frozen=True)
class Verdict:
    """One target: met when every check is."""

    number: int
    title: str
    checks: list[Check]
    notes: list[str] = field(default_factory=list)  # what makes a figure doubtful (a saturated generator)

    @property
    def met(self) -> bool:
        return bool(self.checks) and all(c.met for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {"number": self.number, "title": self.title, "met": self.met,
                "checks": [c.as_dict() for c in self.checks], "notes": self.notes}


def _ratio(a: float, b: float) -> float:
    return a / b if b else math.nan


def throughput(noop: LoadResult, tollgate: LoadResult, *, policy_share: float) -> Verdict:
    share = _ratio(tollgate.throughput, noop.throughput)
    figures = f"Tollgate {tollgate.throughput:,.0f} req/s vs no-op {noop.throughput:,.0f} req/s"
    notes = []
    if policy_share < 1:
        notes.append(f"counting only the policy's own answers: {share * policy_share:.2f}x")
    return Verdict(1, "throughput with --log-sync full vs the no-op servicer",
                   [Check("throughput share", share, THROUGHPUT_SHARE, "x", at_least=True, figures=figures)], notes)


def cpu_per_decision(noop: LoadResult, tollgate: LoadResult) -> Verdict:
    toll_us, noop_us = tollgate.cpu_us_per_request["tree"], noop.cpu_us_per_request["tree"]
    figures = f"Tollgate {toll_us:,.0f} µs (main process {tollgate.cpu_us_per_request['process']:,.0f}) vs no-op" \
              f" {noop_us:,.0f} µs per answer"
    return Verdict(2, "CPU per decision of the whole process tree vs the no-op's per answer",
                   [Check("CPU ratio", _ratio(toll_us, noop_us), CPU_FACTOR, "x", figures=figures)])


def latency(pairs: Sequence[tuple[str, LoadResult, LoadResult]], saturated: Sequence[str]) -> Verdict:
    """pairs: (how, the no-op's run, Tollgate's run) at the same rate; saturated: runs whose generator was."""
    checks: list[Check] = []
    for how, noop, tollgate in pairs:
        checks.append(Check(f"p99 {how}", tollgate.p99_ms, noop.p99_ms + P99_MARGIN_MS, "ms",
                            figures=f"Tollgate {tollgate.p99_ms:.2f} ms vs no-op {noop.p99_ms:.2f} ms + 1 ms,"
                                    f" at {tollgate.rps_target or 0:,.0f} req/s"))
        checks.append(Check(f"p50 {how}", tollgate.p50_ms, P50_LIMIT_MS, "ms",
                            figures=f"Tollgate {tollgate.p50_ms:.2f} ms (no-op {noop.p50_ms:.2f} ms)"))
    notes = [f"the Poisson generator was saturated in {run}: its latencies include its own delay"
             for run in saturated]
    return Verdict(3, "latency at half of Tollgate's saturation rate, paced (h2load) and open loop (Poisson)",
                   checks, notes)


def policy_answers(runs: Sequence[tuple[str, LoadResult]], saturation: LoadResult) -> Verdict:
    """Zero non-policy answers and zero worker retirements in every run below saturation (target, run)."""
    checks = [Check(f"{name} {run.label}: non-policy answers + worker retirements", run.non_policy + run.retirements,
                    0, "", figures=f"{run.non_policy:,} + {run.retirements}; {_answers(run)}") for name, run in runs]
    notes = [f"at saturation (reported, not judged): {saturation.non_policy:,} non-policy answers"
             f" ({_answers(saturation)}), {saturation.retirements} worker retirements"]
    return Verdict(4, "no policy answer changes under load", checks, notes)


def _answers(run: LoadResult) -> str:
    counted = run.decision_log or run.answers
    text = ", ".join(f"{k} {v:,}" for k, v in counted.items()) or "no answers"
    return text + (f"; errors {', '.join(f'{k} {v:,}' for k, v in run.errors.items())}" if run.errors else "")


@dataclass(frozen=True)
class Activation:
    """A new bundle revision activated during a paced run: the window from the change to the swap, plus 1 s."""

    seen: bool  # an answer carried the new revision
    window_s: float  # from the change on disk to the first answer of the new revision
    in_window: int  # requests due in the window
    worst_ms: float  # the slowest of them (failed ones count as the drain timeout)
    p99_outside_ms: float  # the same run's p99 outside the window
    non_policy: int  # in the whole run

    def as_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "window_s": self.window_s, "in_window": self.in_window,
                "worst_ms": self.worst_ms, "p99_outside_ms": self.p99_outside_ms, "non_policy": self.non_policy}


def activation_window(timeline: Timeline, changed_at: float, old_revision: str, non_policy: int) -> Activation:
    """The requests due from the change on disk until 1 s after the first answer of a new revision."""
    firsts = [due for due, rev in zip(timeline.due, timeline.revision, strict=True)
              if rev is not None and rev != old_revision and due >= changed_at]
    seen = bool(firsts)
    swapped = min(firsts) if seen else max(timeline.due, default=changed_at)
    inside: list[float] = []
    outside: list[float] = []
    for due, latency in zip(timeline.due, timeline.latency_ms, strict=True):
        ms = DRAIN_TIMEOUT * 1000 if latency is None else latency
        (inside if changed_at <= due <= swapped + 1.0 else outside).append(ms)
    return Activation(seen=seen, window_s=swapped - changed_at if seen else math.nan, in_window=len(inside),
                      worst_ms=max(inside, default=math.nan), p99_outside_ms=percentile(outside, 99),
                      non_policy=non_policy)


def flat_and_bounded(small: tuple[int, LoadResult], large: tuple[int, LoadResult], activation: Activation,
                     eval_deadline_ms: float, peak_rss_mib: float, workers: int) -> Verdict:
    (n_small, at_small), (n_large, at_large) = small, large
    spread = abs(_ratio(at_large.p50_ms, at_small.p50_ms) - 1) * 100
    checks = [
        Check(f"p50 with {n_large:,} vs {n_small:,} manifests, difference", spread, MANIFEST_SPREAD * 100, "%",
              figures=f"{at_large.p50_ms:.2f} ms vs {at_small.p50_ms:.2f} ms at {at_small.rps_target or 0:,.0f}"
                      " req/s (open loop)"),
        Check("activation: worst latency in its window", activation.worst_ms,
              activation.p99_outside_ms + eval_deadline_ms if activation.seen else math.nan, "ms",
              figures=f"{activation.worst_ms:.2f} ms over {activation.in_window:,} requests in"
                      f" {activation.window_s:.2f} s vs the run's p99 {activation.p99_outside_ms:.2f} ms"
                      f" + the {eval_deadline_ms:g} ms evaluation deadline"
                      + ("" if activation.seen else "; the new revision was never answered")),
        Check("activation: non-policy answers in that run", activation.non_policy, 0, ""),
        Check(f"peak RSS of the tree, {workers} workers", peak_rss_mib, RSS_LIMIT_MIB, "MiB"),
    ]
    return Verdict(5, "flat from 10 to 10,000 manifests; activation under load; peak RSS", checks)
