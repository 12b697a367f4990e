"""The report: per policy, every run's figures and the five targets' verdicts; then one table of all verdicts."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from benchkit.h2load import LoadResult
from benchkit.verdicts import Check, Verdict


@dataclass
class PolicyReport:
    """One policy's part of the benchmark: its runs by target, memory, activation and verdicts."""

    policy: str
    bundle: str
    revision: str = ""
    decision: str = ""  # the answer to the benchmark's request, e.g. ALLOW
    expected: str = ""  # how that answer appears in the decision log
    runs: dict[str, list[LoadResult]] = field(default_factory=dict)  # by target: noop, tollgate, manifests-N
    peak_rss_mib: float = math.nan  # the tree's, before the activation run (two engines live during it)
    main_rss_mib: float = math.nan
    processes: int = 0
    peak_rss_during_activation_mib: float = math.nan
    manifests_rss_mib: dict[str, float] = field(default_factory=dict)
    activation: dict[str, Any] = field(default_factory=dict)
    verdicts: list[Verdict] = field(default_factory=list)


@dataclass
class Report:
    """The whole benchmark."""

    settings: dict[str, Any]
    machine: dict[str, Any]
    policies: dict[str, PolicyReport]
    noop_peak_rss_mib: float = math.nan
    problems: list[str] = field(default_factory=list)  # requests errored or a server misbehaved: exit 1
    notes: list[str] = field(default_factory=list)  # worth reading; the figures stand


def _ms(value: float) -> str:
    return "-" if math.isnan(value) else f"{value:.2f}"


def _num(value: float, fmt: str = ",.0f") -> str:
    return "-" if math.isnan(value) else format(value, fmt)


def table(rows: list[tuple[str, ...]], left: int) -> list[str]:
    """Columns padded to their widest cell; the first `left` columns flush left, the rest right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]

    def line(row: tuple[str, ...]) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in enumerate(cells)).rstrip()

    return [line(r) for r in rows]


def _runs_table(policy: PolicyReport) -> list[str]:
    rows: list[tuple[str, ...]] = [
        ("", "", "", "", "", "", "server", "CPU µs per answer", "", "", "load gen", "others", "non-", ""),
        ("target", "run", "req/s", "p50 ms", "p99 ms", "max ms", "cores", "tree", "process", "main thread",
         "cores", "cores", "policy", "retired"),
    ]
    for name, runs in policy.runs.items():
        for run in runs:
            gen = run.generator_cores if run.generator == "poisson" else run.cpu.generator
            rows.append((name, run.label, _num(run.throughput), _ms(run.p50_ms), _ms(run.p99_ms), _ms(run.max_ms),
                         f"{run.cpu.tree:.2f}", _num(run.cpu_us_per_request["tree"]),
                         _num(run.cpu_us_per_request["process"]), _num(run.cpu_us_per_request["main_thread"]),
                         f"{gen:.2f}", f"{run.cpu.other:.2f}", f"{run.non_policy:,}", str(run.retirements)))
    return table(rows, left=2)


def _value(check: Check) -> str:
    if check.unit == "x":
        return f"{check.value:.2f}x"
    if check.unit == "%":
        return f"{check.value:.1f} %"
    if check.unit == "":
        return f"{check.value:,.0f}"
    return f"{check.value:,.2f} {check.unit}"


def verdict_word(check: Check) -> str:
    """met, or MISSED by how much (in the check's unit), or not measured."""
    if math.isnan(check.value) or math.isnan(check.limit):
        return "MISSED (not measured)"
    if check.met:
        return "met"
    by = dataclasses.replace(check, value=check.missed_by)
    return f"MISSED by {_value(by)}"


def _check_line(check: Check) -> str:
    sign = ">=" if check.at_least else "<="
    limit = _value(dataclasses.replace(check, value=check.limit))
    line = f"    {check.what}: {_value(check)} (target {sign} {limit}): {verdict_word(check)}"
    return line + (f"\n      {check.figures}" if check.figures else "")


def render_verdicts(verdicts: list[Verdict]) -> list[str]:
    lines = []
    for v in verdicts:
        lines.append(f"  {v.number}. {v.title}: {'met' if v.met else 'MISSED'}")
        lines += [_check_line(c) for c in v.checks]
        lines += [f"    note: {n}" for n in v.notes]
    return lines


def _policy_lines(policy: PolicyReport) -> list[str]:
    lines = [f"== {policy.policy}: bundle {policy.bundle} (revision {policy.revision}), the request is answered"
             f" {policy.decision} ==", ""]
    lines += _runs_table(policy)
    lines += ["(tree: the server with its engine workers, reaped ones included; load gen: h2load's or the Poisson",
              " generator's own CPU; others: everything else on the machine; non-policy: answers that were not",
              " the policy's, from the decision log, plus failed requests; retired: engine workers replaced)", ""]
    lines.append(f"peak RSS: {_num(policy.peak_rss_mib, '.1f')} MiB summed over {policy.processes} processes"
                 f" (main process {_num(policy.main_rss_mib, '.1f')}); during the activation (old and new engine)"
                 f" {_num(policy.peak_rss_during_activation_mib, '.1f')} MiB; "
                 + ", ".join(f"{k}: {v:.1f} MiB" for k, v in policy.manifests_rss_mib.items()))
    lines += ["", "targets:"]
    lines += render_verdicts(policy.verdicts)
    return [*lines, ""]


def _summary(report: Report) -> list[str]:
    names = list(report.policies)
    first = next(iter(report.policies.values()), None)
    if first is None:
        return []
    rows: list[tuple[str, ...]] = [("target", *names)]
    for i, verdict in enumerate(first.verdicts):
        cells = []
        for name in names:
            v = report.policies[name].verdicts[i]
            cells.append("met" if v.met else "MISSED")
        rows.append((f"{verdict.number}. {verdict.title}", *cells))
    return ["verdicts:", *table(rows, left=1), ""]


def render(report: Report) -> str:
    s, m = report.settings, report.machine
    lines = [
        f"Tollgate {m['tollgate']}; {m['h2load']}; {m['cpus']} CPUs ({m['cpu_model']}); Python {m['python']}",
        f"workers {s['workers']}, log-sync {s['log_sync']}; {s['duration_s']:g} s per run after a"
        f" {s['warmup_s']:g} s warm-up; saturation -c {s['connections']} -m {s['streams']}; paced runs at half of"
        f" Tollgate's saturation (h2load -c {s['half_connections']} -m {s['half_streams']}, and open loop);"
        f" manifests {s['manifests'][0]:,} and {s['manifests'][1]:,}",
        "",
    ]
    for policy in report.policies.values():
        lines += _policy_lines(policy)
    lines += _summary(report)
    if report.problems:
        lines.append("PROBLEMS (requests errored or a server misbehaved):")
        lines += [f"  - {p}" for p in report.problems]
    else:
        lines.append("checks: every HTTP 200 carried an answer; decision-log rows match; clean exits")
    if report.notes:
        lines.append("notes:")
        lines += [f"  - {n}" for n in report.notes]
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    if isinstance(value, Verdict):
        return value.as_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def report_json(report: Report) -> str:
    return json.dumps(_plain(report), indent=2, default=str)
