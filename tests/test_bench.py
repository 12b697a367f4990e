"""tools/bench.py keeps measuring issue 15's five targets: its pure parts (percentiles, the Poisson schedule, the
verdict arithmetic, the activation window, the report, the manifest bundles), a tiny real run of both policies, its
refusals of bad arguments, and the page that documents its options."""

from __future__ import annotations

import itertools
import json
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT, TOLLGATE

sys.path.insert(0, str(ROOT / "tools"))  # benchkit is tools/bench.py's package, beside it

from benchkit import verdicts
from benchkit.bundles import DEFAULT_LIBRARY, ONE_RULE, manifest_bundle, new_revision
from benchkit.h2load import LoadResult, percentile
from benchkit.poisson import Timeline, poisson_schedule
from benchkit.procs import CpuUse
from benchkit.report import PolicyReport, Report, render, report_json, verdict_word

TOOL = ROOT / "tools" / "bench.py"


def _run(phase: str = "half", *, p50: float = 0.5, p99: float = 1.5, throughput: float = 1000.0,
         generator: str = "poisson", non_policy: int = 0, retirements: int = 0, tree_us: float = 500.0) -> LoadResult:
    cpu = CpuUse(tree=tree_us * throughput / 1e6, process=0.3, main_thread=0.2, generator=0.1, other=0.0)
    return LoadResult(phase=phase, generator=generator, clients=4, streams=0, rps_target=throughput,
                      duration_s=10.0, throughput=throughput, succeeded=int(throughput * 10),
                      started=int(throughput * 10), failed=0, data_bytes=0, p50_ms=p50, p99_ms=p99, max_ms=p99 * 2,
                      cpu=cpu, cpu_us_per_request=cpu.per_request_us(throughput), answers={"allow": 10},
                      generator_cores=0.1, send_lag_p99_ms=0.2, non_policy=non_policy, retirements=retirements)


# -- percentiles and the schedule ----------------------------------------------------------------


@pytest.mark.parametrize("values, pct, expected", [
    ([5.0, 1.0, 3.0, 2.0, 4.0], 50, 3.0),
    ([float(n) for n in range(1, 101)], 99, 99.0),
    ([float(n) for n in range(1, 101)], 100, 100.0),
    ([7.0], 99, 7.0),
    ([1.0, 2.0], 50, 1.0),
], ids=["median-of-five", "p99-of-100", "p100", "one-value", "lower-of-two"])
def test_a_percentile_is_the_nearest_rank_an_observed_value_never_an_interpolation(
        values: list[float], pct: float, expected: float) -> None:
    assert percentile(values, pct) == expected


def test_the_percentile_of_nothing_is_not_a_number() -> None:
    assert math.isnan(percentile([], 50))


def test_the_poisson_schedule_is_seeded_sorted_within_the_run_and_has_the_asked_rate() -> None:
    offsets = poisson_schedule(500.0, 20.0, seed=15)
    assert offsets == poisson_schedule(500.0, 20.0, seed=15)  # both targets get the same schedule
    assert offsets != poisson_schedule(500.0, 20.0, seed=16)
    assert offsets == sorted(offsets) and 0 < offsets[0] and offsets[-1] < 20.0
    assert len(offsets) == pytest.approx(10_000, rel=0.05)
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    mean = sum(gaps) / len(gaps)
    # Exponential gaps: the standard deviation equals the mean (a fixed pacing would have none).
    sd = math.sqrt(sum((g - mean) ** 2 for g in gaps) / len(gaps))
    assert mean == pytest.approx(1 / 500, rel=0.05) and sd == pytest.approx(mean, rel=0.1)


@pytest.mark.parametrize("rate, duration", [(0.0, 10.0), (100.0, 0.0)], ids=["no-rate", "no-time"])
def test_a_schedule_without_rate_or_time_sends_nothing(rate: float, duration: float) -> None:
    assert poisson_schedule(rate, duration, seed=1) == []


# -- verdict arithmetic --------------------------------------------------------------------------


@pytest.mark.parametrize("value, limit, at_least, met, by", [
    (0.85, 0.80, True, True, 0.0),
    (0.25, 0.80, True, False, 0.55),
    (3.0, 2.0, False, False, 1.0),
    (2.0, 2.0, False, True, 0.0),
], ids=["share-met", "share-missed", "cpu-missed", "on-the-limit-is-met"])
def test_a_check_says_met_or_missed_by_how_much(value: float, limit: float, at_least: bool, met: bool,
                                                by: float) -> None:
    check = verdicts.Check("x", value, limit, "x", at_least=at_least)
    assert check.met is met and check.missed_by == pytest.approx(by)
    assert verdict_word(check) == ("met" if met else f"MISSED by {by:.2f}x")


def test_nothing_measured_is_not_a_met_target() -> None:
    check = verdicts.Check("p99", math.nan, 2.0, "ms")
    assert not check.met and verdict_word(check) == "MISSED (not measured)"
    assert not verdicts.Verdict(9, "empty", []).met


def test_the_five_targets_compare_tollgate_with_the_noop_as_the_issue_says() -> None:
    noop_sat, toll_sat = _run("saturation", throughput=4000, tree_us=300), _run("saturation", throughput=3300,
                                                                               tree_us=700)
    assert verdicts.throughput(noop_sat, toll_sat, policy_share=1.0).met  # 0.825x
    assert not verdicts.throughput(noop_sat, _run(throughput=3000), policy_share=1.0).met  # 0.75x
    assert not verdicts.cpu_per_decision(noop_sat, toll_sat).met  # 700 / 300 > 2
    assert verdicts.cpu_per_decision(noop_sat, _run(throughput=3300, tree_us=600)).met
    # p99 within the no-op's own p99 at the same rate + 1 ms, and p50 <= 1 ms, for every generator.
    fine = verdicts.latency([("paced", _run(p99=9.0), _run(p50=0.9, p99=9.9))], [])
    assert fine.met
    late = verdicts.latency([("paced", _run(p99=9.0), _run(p50=0.9, p99=10.1))], [])
    assert not late.met and late.checks[0].missed_by == pytest.approx(0.1)
    assert not verdicts.latency([("open", _run(p99=9.0), _run(p50=1.1, p99=2.0))], []).met
    runs = [("tollgate", _run()), ("manifests-10", _run())]
    assert verdicts.policy_answers(runs, _run("saturation", non_policy=3)).met  # saturation is reported only
    assert not verdicts.policy_answers([*runs, ("tollgate", _run(retirements=1))], _run("saturation")).met
    assert not verdicts.policy_answers([*runs, ("tollgate", _run(non_policy=1))], _run("saturation")).met


def _timeline() -> Timeline:
    # 100 requests 0.1 s apart; the bundle changes at 3.0 s, the first answer of the new revision is due at 4.0 s.
    due = [n / 10 for n in range(100)]
    revision = ["old" if t < 4.0 else "new" for t in due]
    latency: list[float | None] = [80.0 if 3.0 <= t <= 5.0 else 2.0 for t in due]
    latency[10] = 6.0  # outside the window: the run's own tail
    return Timeline(due, latency, list(revision))


def test_the_activation_window_runs_from_the_change_to_a_second_after_the_first_new_answer() -> None:
    found = verdicts.activation_window(_timeline(), 3.0, "old", non_policy=0)
    assert found.seen and found.window_s == pytest.approx(1.0)
    assert found.in_window == 21 and found.worst_ms == 80.0  # due 3.0 .. 5.0 s
    assert found.p99_outside_ms == 6.0
    line = _timeline()
    never = verdicts.activation_window(Timeline(line.due, line.latency_ms, ["old"] * 100), 3.0, "old", non_policy=0)
    assert not never.seen and math.isnan(never.window_s)


def test_target_five_needs_flat_manifests_an_unstalled_activation_and_bounded_memory() -> None:
    found = verdicts.activation_window(_timeline(), 3.0, "old", non_policy=0)
    ok = verdicts.flat_and_bounded((10, _run(p50=0.50)), (10_000, _run(p50=0.54)), found, 50.0, 200.0, 2)
    assert [c.met for c in ok.checks] == [True, False, True, True]  # 80 ms > 6 ms + 50 ms
    lenient = verdicts.activation_window(_timeline(), 3.0, "old", non_policy=0)
    flat = verdicts.flat_and_bounded((10, _run(p50=0.50)), (10_000, _run(p50=0.56)), lenient, 100.0, 260.0, 2)
    assert [c.met for c in flat.checks] == [False, True, True, False]  # 12 % apart; 260 MiB


# -- the report ----------------------------------------------------------------------------------


def _report() -> Report:
    policy = PolicyReport("default", "rego", revision="sha256:abc", decision="ALLOW", expected="allow",
                          peak_rss_mib=180.0, main_rss_mib=70.0, processes=3)
    policy.runs = {"noop": [_run("saturation", throughput=4000, generator="h2load")],
                   "tollgate": [_run("saturation", throughput=1000, generator="h2load")]}
    noop, toll = policy.runs["noop"][0], policy.runs["tollgate"][0]
    policy.verdicts = [verdicts.throughput(noop, toll, policy_share=1.0), verdicts.cpu_per_decision(noop, toll)]
    settings = {"duration_s": 10, "warmup_s": 3, "connections": 8, "streams": 16, "half_connections": 8,
                "half_streams": 4, "workers": 2, "log_sync": "full", "manifests": [10, 10_000]}
    machine = {"tollgate": "abc1234", "h2load": "h2load nghttp2/1.52.0", "cpus": 2, "cpu_model": "EPYC",
               "python": "3.11.7"}
    return Report(settings, machine, {"default": policy, "one-rule": policy})


def test_the_report_prints_each_target_with_its_figures_and_verdict_and_a_table_of_all() -> None:
    text = render(_report())
    assert "throughput share: 0.25x (target >= 0.80x): MISSED by 0.55x" in text
    assert "Tollgate 1,000 req/s vs no-op 4,000 req/s" in text
    assert re.search(r"^1\. throughput .*MISSED +MISSED$", text, re.M)
    assert "checks: every HTTP 200 carried an answer" in text


def test_the_json_report_carries_every_figure_and_verdict() -> None:
    report: dict[str, Any] = json.loads(report_json(_report()))
    default = report["policies"]["default"]
    assert [v["number"] for v in default["verdicts"]] == [1, 2]
    check = default["verdicts"][0]["checks"][0]
    assert check["met"] is False and check["missed_by"] == pytest.approx(0.55) and check["figures"]
    assert default["runs"]["tollgate"][0]["cpu"]["tree"] == pytest.approx(0.5)


# -- bundles -------------------------------------------------------------------------------------


@pytest.mark.parametrize("policy", [DEFAULT_LIBRARY, ONE_RULE], ids=["default-library", "one-rule"])
def test_a_manifest_bundle_holds_exactly_that_many_manifests_and_tollgate_check_accepts_it(
        policy: Path, tmp_path: Path) -> None:
    bundle = manifest_bundle(policy, tmp_path / "bundle", 12)
    assert len([d for d in (bundle / "agents").iterdir() if d.is_dir()]) == 12
    assert (bundle / "agents" / "code-reviewer").is_dir()  # the agent the benchmark's request names
    done = subprocess.run([*TOLLGATE, "check", str(bundle)], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0 and "12 manifests" in done.stdout and "no problems" in done.stdout, done.stdout


def test_a_new_revision_changes_the_bytes_of_the_bundle_but_not_what_it_decides(tmp_path: Path) -> None:
    bundle = manifest_bundle(ONE_RULE, tmp_path / "bundle", 10)
    before = (bundle / "tollgate" / "decision.rego").read_text()
    new_revision(bundle, 1)
    after = (bundle / "tollgate" / "decision.rego").read_text()
    assert after.startswith(before) and after != before and after[len(before):].strip().startswith("#")


def test_the_one_rule_policy_allows_the_benchmarks_tool_call_and_denies_another() -> None:
    def decide(tool: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*TOLLGATE, "eval", "--bundle", str(ONE_RULE), "--agent", "code-reviewer",
                               "--tool", tool], capture_output=True, text=True, cwd=ROOT, timeout=120)

    allowed, denied = decide("github/get_pull_request"), decide("github/merge_pull_request")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr  # exit 0: ALLOW
    assert denied.returncode == 2 and "tool_not_allowed" in denied.stdout, denied.stdout + denied.stderr


# -- the command ---------------------------------------------------------------------------------


@pytest.mark.timeout(420)  # two policies, seven servers started, an activation run of 10 s each
def test_a_tiny_run_reports_all_five_targets_for_both_policies() -> None:
    done = subprocess.run([sys.executable, str(TOOL), "--quick", "--duration", "1", "--warmup", "1",
                           "--manifests", "10,20", "--json"], capture_output=True, text=True, cwd=ROOT, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report: dict[str, Any] = json.loads(done.stdout)
    assert report["problems"] == []
    assert set(report["policies"]) == {"default", "one-rule"}
    for policy in report["policies"].values():
        assert policy["decision"] == "ALLOW"
        assert [v["number"] for v in policy["verdicts"]] == [1, 2, 3, 4, 5]
        assert all(v["checks"] and isinstance(v["met"], bool) for v in policy["verdicts"])
        runs = {(target, run["phase"], run["generator"]) for target, rs in policy["runs"].items() for run in rs}
        assert {("noop", "saturation", "h2load"), ("tollgate", "saturation", "h2load"), ("noop", "half", "h2load"),
                ("tollgate", "half", "h2load"), ("noop", "half", "poisson"), ("tollgate", "half", "poisson"),
                ("tollgate", "activation", "poisson"), ("manifests-10", "fixed rate", "poisson"),
                ("manifests-20", "fixed rate", "poisson")} <= runs
        assert policy["activation"]["seen"], policy["activation"]
        assert 0 < policy["peak_rss_mib"] < 1024


@pytest.mark.parametrize("argv, message", [
    (["--duration", "0"], "--duration must be 1 or more"),
    (["--warmup", "0.5"], "invalid int value"),
    (["--workers", "0"], "--workers must be 1 or more"),
    (["--manifests", "10"], "--manifests must be SMALL,LARGE"),
    (["--manifests", "5,100"], "--manifests must be SMALL,LARGE"),
    (["--manifests", "ten,100"], "expected two whole numbers"),
    (["--only", "other"], "invalid choice"),
], ids=["zero-duration", "fractional-warmup", "no-workers", "one-count", "below-the-library", "not-a-number",
        "no-policy"])
def test_bad_arguments_are_refused_before_anything_starts(argv: list[str], message: str) -> None:
    done = subprocess.run([sys.executable, str(TOOL), *argv], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 2 and message in done.stderr, done.stderr


def test_the_benchmarks_page_lists_every_option_of_the_tool_and_no_other() -> None:
    page = (ROOT / "docs" / "BENCHMARKS.md").read_text()
    section = page[page.index("## Running it"):]
    options_table = section[:section.index("### What it does")]
    documented = set(re.findall(r"`(--[a-z][a-z-]*)", options_table))
    done = subprocess.run([sys.executable, str(TOOL), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    options = set(re.findall(r"^  (--[a-z][a-z-]*)", done.stdout, re.M)) - {"--help"}
    assert documented == options
