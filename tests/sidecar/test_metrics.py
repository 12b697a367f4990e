"""The sidecar's Prometheus metrics: what each observer records, bounded labels, and /metrics on a real server."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, start_server, tool_request
from tests.log_receiver import free_port
from tests.readme import readme_section
from tollgate.clock import ManualClock
from tollgate.decisionlog import DecisionLog, DecisionRecord, LogConfig
from tollgate.engine import RESTART_REASONS
from tollgate.sidecar.metrics import (
    DECISION_BUCKETS,
    MAX_REASON_CODES,
    MAX_REVISIONS,
    SERVER_REASON_CODES,
    Metrics,
    PendingApprovals,
)
from tollgate.state import LocalApprovals, StateError, StateStore
from tollgate.state.approvals import Approval, Approvals
from tollgate.v1 import admin_pb2, admin_pb2_grpc

Samples = dict[str, float]


def _samples(text: str) -> Samples:
    """Every sample as NAME{label="value",...} (labels sorted) → value."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            found[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return found


def _decide(metrics: Metrics, *, kind: str = "tool", decision: str = "allow", reasons: tuple[str, ...] = (),
            revision: str = "v1", latency: float = 0.0007, evaluation: float = 0.00003) -> None:
    metrics.decided(kind=kind, decision=decision, reasons=reasons, revision=revision, latency_seconds=latency,
                    evaluation_seconds=evaluation)


def test_a_decision_lands_in_the_latency_histogram_of_its_kind_and_decision() -> None:
    metrics = Metrics()
    _decide(metrics, kind="model", decision="deny", latency=0.0007, evaluation=0.00003)
    m = _samples(metrics.render())
    assert m['tollgate_decision_duration_seconds_bucket{decision="deny",kind="model",le="0.0005"}'] == 0
    assert m['tollgate_decision_duration_seconds_bucket{decision="deny",kind="model",le="0.001"}'] == 1
    assert m['tollgate_decision_duration_seconds_count{decision="deny",kind="model"}'] == 1
    assert m['tollgate_decision_duration_seconds_sum{decision="deny",kind="model"}'] == pytest.approx(0.0007)
    # Every kind × decision series is there from the start, at zero.
    assert m['tollgate_decision_duration_seconds_count{decision="require_approval",kind="budget"}'] == 0
    assert m['tollgate_policy_evaluation_seconds_bucket{le="5e-05"}'] == 1
    assert m['tollgate_decisions_total{decision="deny",revision="v1"}'] == 1


def test_a_decision_the_policy_was_not_asked_about_has_no_evaluation_time() -> None:
    metrics = Metrics()
    _decide(metrics, decision="deny", reasons=("no_bundle",), revision="", evaluation=0.0)
    m = _samples(metrics.render())
    assert m["tollgate_policy_evaluation_seconds_count"] == 0
    assert m['tollgate_decision_duration_seconds_count{decision="deny",kind="tool"}'] == 1


@pytest.mark.parametrize(("codes", "counted"), [
    (("tool_not_in_manifest", "destructive_action"), {"tool_not_in_manifest": 1, "destructive_action": 1}),
    (("Ticket 4711 for bob@example.com",), {"other": 1}),
    (("x" * 65,), {"other": 1}),
    (("killed", "killed"), {"killed": 2}),
], ids=["policy-codes", "not-a-code-name", "too-long", "server-code"])
def test_reasons_are_counted_by_code(codes: tuple[str, ...], counted: dict[str, int]) -> None:
    metrics = Metrics()
    _decide(metrics, decision="deny", reasons=codes)
    m = _samples(metrics.render())
    assert {k: v for k, v in m.items() if k.startswith("tollgate_decision_reasons_total")} == {
        f'tollgate_decision_reasons_total{{code="{code}"}}': n for code, n in counted.items()}


def test_reason_codes_past_the_limit_are_counted_as_other_but_the_servers_own_still_count() -> None:
    metrics = Metrics()
    for i in range(MAX_REASON_CODES + 40):
        _decide(metrics, decision="deny", reasons=(f"policy_code_{i}",))
    _decide(metrics, decision="deny", reasons=("export_lag",))
    m = _samples(metrics.render())
    codes = {k for k in m if k.startswith("tollgate_decision_reasons_total")}
    assert len(codes) == MAX_REASON_CODES + 2  # the admitted policy codes, other, export_lag
    assert m['tollgate_decision_reasons_total{code="other"}'] == 40
    assert m['tollgate_decision_reasons_total{code="export_lag"}'] == 1
    assert "export_lag" in SERVER_REASON_CODES


def test_revisions_past_the_limit_are_counted_as_other() -> None:
    metrics = Metrics()
    for i in range(MAX_REVISIONS + 5):
        _decide(metrics, revision=f"r{i}")
    m = _samples(metrics.render())
    assert len([k for k in m if k.startswith("tollgate_decisions_total")]) == MAX_REVISIONS + 1
    assert m['tollgate_decisions_total{decision="allow",revision="other"}'] == 5


def test_engine_worker_restarts_are_counted_by_reason_from_zero() -> None:
    metrics = Metrics()
    assert {k: v for k, v in _samples(metrics.render()).items() if "worker_restarts_total" in k} == {
        f'tollgate_engine_worker_restarts_total{{reason="{r}"}}': 0 for r in RESTART_REASONS}
    metrics.engine_worker_restarted("deadline")
    metrics.engine_worker_restarted("deadline")
    metrics.engine_worker_restarted("exited")
    m = _samples(metrics.render())
    assert m['tollgate_engine_worker_restarts_total{reason="deadline"}'] == 2
    assert m['tollgate_engine_worker_restarts_total{reason="exited"}'] == 1
    assert m['tollgate_engine_worker_restarts_total{reason="protocol"}'] == 0


def test_each_group_commit_of_a_real_decision_log_is_observed(tmp_path: Path) -> None:
    metrics = Metrics()

    async def run() -> None:
        decision_log = DecisionLog(LogConfig(path=tmp_path / "decisions.db", synchronous="normal"), observer=metrics)
        decision_log.start(asyncio.get_running_loop())
        try:
            await asyncio.gather(*(decision_log.append(_record(i)) for i in range(5)))
        finally:
            decision_log.close()

    asyncio.run(run())
    m = _samples(metrics.render())
    commits = m["tollgate_decision_log_commit_seconds_count"]
    assert 1 <= commits <= 5
    assert m["tollgate_decision_log_commit_records_count"] == commits
    assert m["tollgate_decision_log_commit_records_sum"] == 5
    assert m["tollgate_decision_log_commit_seconds_sum"] > 0


def _record(i: int) -> DecisionRecord:
    principal = {"agent_id": "a", "session_id": "s"}
    return DecisionRecord(decision_id=f"d{i}", timestamp="2026-01-01T00:00:00.000000Z", decision="allow",
                          bundle_revision="v1", input={"kind": "tool", "principal": principal})


def test_pending_approvals_are_reread_only_after_a_change_or_an_expiry(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 12, 31, 23, 59, 50, tzinfo=UTC))
    store = StateStore(tmp_path / "state.db")
    approvals = Approvals(store, clock=clock)
    pending = PendingApprovals(LocalApprovals(approvals), clock=clock)

    def scraped() -> int:
        asyncio.run(pending.refresh())  # what a scrape does on the event loop before it renders
        return pending()

    try:
        assert scraped() == 0
        for i, ttl in enumerate((5, 60)):
            approvals.open(request_digest=f"d{i}", kind="tool", principal={"agent_id": "a", "session_id": f"s{i}"},
                           action={}, approvers=("rita",), ttl_seconds=ttl, opened_by="a")
        assert scraped() == 2
        store.db.execute("DELETE FROM approvals")  # behind its back: the count stands until something changes
        assert scraped() == 2
        clock.advance(6)  # past the first one's expiry, into the next year
        assert scraped() == 0
    finally:
        store.close()


def test_pending_approvals_keep_their_last_count_while_the_store_is_down(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 12, 31, 23, 59, 50, tzinfo=UTC))
    store = StateStore(tmp_path / "state.db")
    approvals = Approvals(store, clock=clock)
    approvals.open(request_digest="d", kind="tool", principal={"agent_id": "a", "session_id": "s"}, action={},
                   approvers=("rita",), ttl_seconds=60, opened_by="a")

    class Down(LocalApprovals):
        down = False

        async def list(self, **filters: Any) -> list[Approval]:
            if self.down:
                raise StateError("state store: cannot read approvals (connection refused)")
            return await super().list(**filters)

    source = Down(approvals)
    pending = PendingApprovals(source, clock=clock)
    try:
        asyncio.run(pending.refresh())
        source.down = True
        approvals.open(request_digest="e", kind="tool", principal={"agent_id": "a", "session_id": "t"}, action={},
                       approvers=("rita",), ttl_seconds=60, opened_by="a")
        asyncio.run(pending.refresh())  # no exception reaches the scrape
        assert pending() == 1
        source.down = False
        asyncio.run(pending.refresh())
        assert pending() == 2
    finally:
        store.close()


def test_openmetrics_is_served_to_a_scraper_that_asks_for_it() -> None:
    body, content_type = Metrics().exposition("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text; version=1.0.0")
    assert body.endswith(b"# EOF\n")
    assert Metrics().exposition("")[1] == "text/plain; version=0.0.4; charset=utf-8"


# -- /metrics of a real server -----------------------------------------------------------------------------

GROUPS = {"release-managers": ["rita"]}


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, int]]:
    port = free_port()
    server = start_server(tmp_path_factory.mktemp("metrics") / "data", config={"approver_groups": GROUPS},
                          extra=["--metrics-listen", f"127.0.0.1:{port}", "--workers", "2"])
    yield server, port
    server.terminate()


def _scrape(port: int) -> tuple[Samples, str]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
    return _samples(text), text


def test_metrics_of_a_real_server_show_the_histograms_with_their_buckets_and_labels(
        sidecar: tuple[Server, int]) -> None:
    server, port = sidecar
    server.authorize(tool_request())
    m, text = _scrape(port)
    assert "# TYPE tollgate_decision_duration_seconds histogram" in text
    buckets = {float(le) for le in re.findall(
        r'^tollgate_decision_duration_seconds_bucket\{decision="allow",kind="tool",le="([^"]+)"\}', text, re.M)}
    assert buckets == {*DECISION_BUCKETS, float("inf")}
    assert m['tollgate_decision_duration_seconds_count{decision="allow",kind="tool"}'] >= 1
    assert m["tollgate_policy_evaluation_seconds_count"] >= 1
    assert m["tollgate_decision_log_commit_seconds_count"] >= 1
    assert m["tollgate_decision_log_commit_records_sum"] >= 1
    for name in ("tollgate_policy_evaluation_seconds", "tollgate_decision_log_commit_seconds",
                 "tollgate_decision_log_commit_records"):
        assert f"# TYPE {name} histogram" in text


def test_metrics_of_a_real_server_count_reason_codes(sidecar: tuple[Server, int]) -> None:
    server, port = sidecar
    before, _ = _scrape(port)
    answer = server.authorize(tool_request(name="delete_repository"))
    code = answer.reasons[0].code
    after, _ = _scrape(port)
    key = f'tollgate_decision_reasons_total{{code="{code}"}}'
    assert after[key] == before.get(key, 0) + 1


def test_gauges_move_when_an_approval_is_opened_and_a_kill_switch_engaged(sidecar: tuple[Server, int]) -> None:
    server, port = sidecar
    before, _ = _scrape(port)
    merge = tool_request("release-bot", "github", "merge_pull_request",
                         {"owner": "acme", "repo": "app", "pullNumber": 7}, session_id="s-gauges")
    assert server.authorize(merge).approval_id
    admin_pb2_grpc.AdminServiceStub(server.channel).Kill(
        admin_pb2.KillRequest(scope="session", value="s-killed", reason="INC-9", by="alice"), timeout=10,
        metadata=server.admin_metadata)
    after, _ = _scrape(port)
    assert after["tollgate_approvals_pending"] == before["tollgate_approvals_pending"] + 1
    assert after['tollgate_kill_switches_active{scope="session"}'] == 1
    assert 'tollgate_kill_switches_active{scope="session"}' not in before


def test_a_real_server_reports_its_engine_workers_plugins_and_process(sidecar: tuple[Server, int]) -> None:
    _, port = sidecar
    m, _ = _scrape(port)
    assert m["tollgate_engine_workers"] == 2
    assert 0 <= m["tollgate_engine_workers_busy"] <= 2
    assert m['tollgate_plugin_state{plugin="bundle",state="OK"}'] == 1
    assert m['tollgate_plugin_state{plugin="gRPC server",state="OK"}'] == 1
    assert m["process_resident_memory_bytes"] > 0
    assert m["process_open_fds"] > 0
    assert "process_cpu_seconds_total" in m


def test_the_readme_names_every_metric_the_sidecar_exposes() -> None:
    documented = set(re.findall(r"`(tollgate_[a-z_]+)`", readme_section("Metrics")))
    exposed = {m.name + ("_total" if m.type == "counter" else "") for m in Metrics().registry.collect()
               if m.name.startswith("tollgate_")}
    assert exposed == documented
