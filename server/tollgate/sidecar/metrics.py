"""Prometheus metrics of one sidecar, on a registry of its own, served as GET /metrics.

Decisions, policy evaluations, decision-log commits and engine worker restarts are observed as they happen
(histograms and counters from prometheus_client, safe from any thread); the rest — the active bundle, exporters,
pending approvals, kill switches, busy engine workers, the process — is read when Prometheus scrapes. A scrape
first refreshes, on the event loop, what comes from the state store (`before_scrape`: the pending approvals, read
with the store's own async calls, never on the loop's thread), then is rendered on a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from tollgate.api._http import HttpRequest, HttpResponse, start_http_server
from tollgate.contract import (
    DEADLINE_EXCEEDED,
    DECISIONS,
    ENGINE_ERROR,
    EXPORT_LAG,
    KILLED,
    KINDS,
    NO_BUNDLE,
    POLICY_CONTRACT,
    STATE_STALE,
    STATE_UNAVAILABLE,
)
from tollgate.decision import BUDGET_EXCEEDED, BUDGET_UNAVAILABLE, SCOPE_OVERLOADED
from tollgate.encoding import format_time
from tollgate.engine import RESTART_REASONS
from tollgate.identity import CALLER_UNAUTHENTICATED, PRINCIPAL_MISMATCH
from tollgate.state import StateError
from tollgate.state.approvals import PENDING

if TYPE_CHECKING:
    from tollgate.clock import Clock
    from tollgate.decisionlog import ExportStatus
    from tollgate.state import ApprovalStore

log = logging.getLogger(__name__)

#: Distinct bundle revisions kept in the decision counter; older ones are folded into revision="other".
MAX_REVISIONS = 50
#: Distinct policy reason codes counted by name; later ones (and codes that are not snake_case names, such as
#: a policy that puts a value into its code) are counted as code="other". The server's own codes always count.
MAX_REASON_CODES = 64
OTHER = "other"
_CODE = re.compile(r"[a-z][a-z0-9_]{0,63}")
#: The reason codes of the server's own DENYs (its rules and fail-closed paths), counted by name from the start.
SERVER_REASON_CODES = frozenset({
    NO_BUNDLE, ENGINE_ERROR, POLICY_CONTRACT, DEADLINE_EXCEEDED, KILLED, EXPORT_LAG, PRINCIPAL_MISMATCH,
    CALLER_UNAUTHENTICATED, BUDGET_EXCEEDED, BUDGET_UNAVAILABLE, SCOPE_OVERLOADED, STATE_UNAVAILABLE, STATE_STALE,
    "approval_denied", "approval_expired", "approval_used", "approval_mismatch", "approval_pending",
})

# Decisions answer in about a millisecond (the p50 target); the tail runs to the evaluation deadline and
# past it under overload, so the buckets span 100 µs to 2.5 s.
DECISION_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# An evaluation takes 20-25 µs with 10,000 manifests loaded; 50 ms is the default deadline.
EVALUATION_BUCKETS = (0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                      0.1)
# A group commit is one fsync of the WAL: well under a millisecond on NVMe, tens of milliseconds on slow disks.
COMMIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# Records per commit, up to the writer's max_batch (512): how many answers shared one fsync.
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The sidecar's metrics on one CollectorRegistry.

    Observed: `decided` (the authorizer's DecisionObserver), `committed` (the decision log's CommitObserver),
    `activated` / `activation_failed` (the bundle activator). Read at each scrape: the sources below, which
    `serve` points at the running parts (each defaults to nothing, so a bare Metrics renders on its own).
    """

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        #: The decision-log exporters' snapshots and the records retention deleted.
        self.exports: Callable[[], Sequence[ExportStatus]] = tuple
        self.pruned: Callable[[], int] = int
        #: Approvals waiting for a person (as before_scrape last read them).
        self.pending_approvals: Callable[[], int] = int
        #: Run on the event loop before each scrape is rendered: refreshes what the state store holds.
        self.before_scrape: Callable[[], Awaitable[None]] = _nothing
        #: The scope of each active kill switch (agent, session, tool, ...).
        self.kill_switch_scopes: Callable[[], Iterable[str]] = tuple
        #: (busy, running) worker processes of the active engine.
        self.engine_workers: Callable[[], tuple[int, int]] = lambda: (0, 0)
        #: Each plugin's state (NOT_READY, OK, WARN, ERROR), by plugin name.
        self.plugin_states: Callable[[], Mapping[str, str]] = dict
        self._active: tuple[str, str, str] | None = None  # (revision, digest, source)
        self._lock = threading.Lock()  # the label sets below are admitted from the loop and the writer thread
        self._revisions: dict[str, None] = {}  # insertion-ordered set of revisions seen in decisions
        self._decision_series: dict[tuple[str, str], Counter] = {}  # (decision, admitted revision) → its series
        self._reason_series: dict[str, Counter] = {}  # admitted reason code → its series
        self._policy_codes = 0  # of them, those that are not the server's own
        self._define()
        self.registry.register(_ScrapedCollector(self))
        ProcessCollector(registry=self.registry)

    def _define(self) -> None:
        r = self.registry
        self._activations = Counter("tollgate_bundle_activations", "Bundle revisions activated (the first one "
                                    "included).", registry=r)
        self._activation_failures = Counter(
            "tollgate_bundle_activation_failures", "Bundle revisions refused or sources that could not be read, "
            "by reason.", ["reason"], registry=r)
        self._last_activation = Gauge("tollgate_bundle_last_activation_timestamp_seconds",
                                      "Unix time of the last successful activation (0 before the first).", registry=r)
        self._decisions = Counter("tollgate_decisions", "Decisions answered, by outcome and bundle revision.",
                                  ["decision", "revision"], registry=r)
        self._reasons = Counter("tollgate_decision_reasons", "Reasons given with decisions, by reason code "
                                f"(the server's own and the first {MAX_REASON_CODES} policy codes; the rest: other).",
                                ["code"], registry=r)
        latency = Histogram("tollgate_decision_duration_seconds", "Time the authorizer took to decide one request "
                            "and commit its record, by kind and decision.", ["kind", "decision"],
                            buckets=DECISION_BUCKETS, registry=r)
        # Every (kind, decision) series exists from the start (9 of them), so a dashboard sees zeros, not gaps.
        self._latency = {(k, d): latency.labels(k, d) for k in KINDS for d in sorted(DECISIONS)}
        self._latency_family = latency
        self._evaluation = Histogram("tollgate_policy_evaluation_seconds", "Time the engine took to evaluate the "
                                     "policy for one decision (queueing for a worker included).",
                                     buckets=EVALUATION_BUCKETS, registry=r)
        self._commit = Histogram("tollgate_decision_log_commit_seconds", "Time one group commit of the decision "
                                 "log took (insert and fsync).", buckets=COMMIT_BUCKETS, registry=r)
        self._batch = Histogram("tollgate_decision_log_commit_records", "Decision records written by one group "
                                "commit.", buckets=BATCH_BUCKETS, registry=r)
        restarts = Counter("tollgate_engine_worker_restarts", "Engine worker processes retired and replaced, by "
                           "reason: deadline (an evaluation ran past it), exited, socket_error, protocol.",
                           ["reason"], registry=r)
        # Every reason's series exists from the start, so an alert on a rise sees zeros, not gaps.
        self._restarts = {reason: restarts.labels(reason) for reason in RESTART_REASONS}

    # -- observed ------------------------------------------------------------------------------------

    def decided(self, *, kind: str, decision: str, reasons: tuple[str, ...], revision: str,
                latency_seconds: float, evaluation_seconds: float) -> None:
        """One decision answered (the authorizer's DecisionObserver); reasons are its codes, evaluation_seconds
        0.0 when the policy was not asked (no bundle, a refused caller)."""
        self._count(decision, revision)
        histogram = self._latency.get((kind, decision))
        if histogram is None:  # not a kind or decision the contract knows: one series for all of them
            histogram = self._latency_family.labels(OTHER, OTHER)
        histogram.observe(latency_seconds)
        if evaluation_seconds > 0:
            self._evaluation.observe(evaluation_seconds)
        for code in reasons:
            reason = self._reason_series.get(code)
            (self._admit_reason(code) if reason is None else reason).inc()

    def _count(self, outcome: str, revision: str) -> None:
        """Count one decision under its bundle revision (at most MAX_REVISIONS of them, then "other")."""
        series = self._decision_series.get((outcome, revision))
        (self._admit_decision(outcome, revision) if series is None else series).inc()

    # The series of each admitted label are kept at hand: labels() takes a lock and builds a key on every call,
    # several microseconds on the decision path. A folded label is looked up anew each time instead, since
    # keeping every name that folded into "other" would grow without bound.

    def _admit_decision(self, outcome: str, revision: str) -> Counter:
        with self._lock:
            if revision not in self._revisions:
                if len(self._revisions) >= MAX_REVISIONS:
                    return self._decisions.labels(outcome, OTHER)  # a sidecar may live through many revisions
                self._revisions[revision] = None
            series = self._decision_series[(outcome, revision)] = self._decisions.labels(outcome, revision)
            return series

    def _admit_reason(self, code: str) -> Counter:
        with self._lock:
            if code not in SERVER_REASON_CODES:
                if self._policy_codes >= MAX_REASON_CODES or not _CODE.fullmatch(code):
                    return self._reasons.labels(OTHER)
                self._policy_codes += 1
            series = self._reason_series[code] = self._reasons.labels(code)
            return series

    def committed(self, *, seconds: float, records: int) -> None:
        """One group commit of the decision log (CommitObserver; called on the writer thread)."""
        self._commit.observe(seconds)
        self._batch.observe(records)

    def activated(self, *, revision: str, digest: str, source: str, when: float) -> None:
        self._activations.inc()
        self._active = (revision, digest, source)
        self._last_activation.set(when)

    def activation_failed(self, reason: str) -> None:
        self._activation_failures.labels(reason).inc()

    def engine_worker_restarted(self, reason: str) -> None:
        """An engine worker was retired (EngineConfig.on_restart; called on the event loop)."""
        self._restarts[reason].inc()

    # -- scraped -------------------------------------------------------------------------------------

    @property
    def active(self) -> tuple[str, str, str] | None:
        """(revision, digest, source) of the active bundle, None before the first activation."""
        return self._active

    def render(self, accept: str = "") -> str:
        """The registry in the exposition format the Accept header asks for (Prometheus text by default)."""
        return self.exposition(accept)[0].decode()

    def exposition(self, accept: str = "") -> tuple[bytes, str]:
        """(body, content type) for a scrape with this Accept header."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


class _ScrapedCollector(Collector):
    """What Metrics reads at scrape time rather than counting as it happens."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        active = GaugeMetricFamily("tollgate_bundle_active_info", "The active bundle revision (value 1).",
                                   labels=["revision", "digest", "source"])
        if m.active is not None:
            active.add_metric(list(m.active), 1)
        yield active
        pending = GaugeMetricFamily("tollgate_approvals_pending", "Approvals waiting for a person's decision.")
        pending.add_metric([], m.pending_approvals())
        yield pending
        scopes: dict[str, int] = {}
        for scope in m.kill_switch_scopes():
            scopes[scope] = scopes.get(scope, 0) + 1
        killed = GaugeMetricFamily("tollgate_kill_switches_active", "Kill switches engaged, by scope.",
                                   labels=["scope"])
        for scope, count in sorted(scopes.items()):
            killed.add_metric([scope], count)
        yield killed
        busy, running = m.engine_workers()
        yield GaugeMetricFamily("tollgate_engine_workers_busy", "Engine worker processes evaluating a policy now.",
                                value=busy)
        yield GaugeMetricFamily("tollgate_engine_workers", "Engine worker processes running.", value=running)
        plugins = GaugeMetricFamily("tollgate_plugin_state", "Each part of the sidecar's state (value 1): NOT_READY, "
                                    "OK, WARN or ERROR; gRPC health is SERVING while the required ones are OK or "
                                    "WARN.", labels=["plugin", "state"])
        for name, state in m.plugin_states().items():
            plugins.add_metric([name, state], 1)
        yield plugins
        yield from _export_families(m.exports(), m.pruned())


def _export_families(exports: Sequence[ExportStatus], pruned: int) -> Iterator[Metric]:
    def family(kind: type[GaugeMetricFamily | CounterMetricFamily], name: str, text: str, labels: Sequence[str],
               samples: Iterable[tuple[Sequence[str], float]]) -> Metric:
        metric = kind(name, text, labels=labels)
        for values, value in samples:
            metric.add_metric(list(values), value)
        return metric

    yield family(GaugeMetricFamily, "tollgate_decision_log_export_lag_records",
                 "Committed decision records the exporter's receiver has not acknowledged yet.", ["exporter"],
                 [((s.name,), s.lag_records) for s in exports])
    yield family(GaugeMetricFamily, "tollgate_decision_log_export_lag_seconds",
                 "Age of the oldest decision record the exporter's receiver has not acknowledged (0 when caught up).",
                 ["exporter"], [((s.name,), s.lag_seconds) for s in exports])
    yield family(CounterMetricFamily, "tollgate_decision_log_export_uploads",
                 "Uploads to the exporter's receiver, by result (ok: a 2xx answer; failed: anything else).",
                 ["exporter", "result"], [((s.name, r), n) for s in exports
                                          for r, n in (("ok", s.uploads_ok), ("failed", s.uploads_failed))])
    yield family(CounterMetricFamily, "tollgate_decision_log_export_records",
                 "Decision records acknowledged by the exporter's receiver (re-sent ones counted again).",
                 ["exporter"], [((s.name,), s.records_exported) for s in exports])
    yield family(GaugeMetricFamily, "tollgate_decision_log_export_state",
                 "The exporter's state (value 1): ok, warn (behind by more than max_lag), error (uploads failing).",
                 ["exporter", "state"], [((s.name, s.state.value), 1) for s in exports])
    yield family(CounterMetricFamily, "tollgate_decision_log_pruned_records",
                 "Decision records deleted by retention since start.", [], [((), pruned)])


class PendingApprovals:
    """The pending-approvals gauge's count. refresh() (on the event loop, before a scrape) reads the store again
    only after a change (the approvals' generation moved) or once the earliest pending approval has expired, not
    at every scrape; calling it (on the scrape's thread) gives the count refresh() last read."""

    def __init__(self, approvals: ApprovalStore, *, clock: Clock) -> None:
        self._approvals = approvals
        self._clock = clock
        self._seen: tuple[int, str, int] | None = None  # (generation, earliest expiry, count)
        self._failing = False

    def __call__(self) -> int:
        return self._seen[2] if self._seen is not None else 0

    async def refresh(self) -> None:
        generation = self._approvals.generation
        seen = self._seen
        if seen is not None and seen[0] == generation and (not seen[1] or format_time(self._clock.now()) < seen[1]):
            return
        try:
            pending = await self._approvals.list(status=PENDING)
        except StateError as exc:  # the gauge keeps the last count; the log says so once per outage
            if not self._failing:
                log.warning("metrics: pending approvals cannot be read, the gauge keeps its last count: %s", exc)
            self._failing = True
            return
        self._failing = False
        self._seen = (generation, min((a.expires_at for a in pending), default=""), len(pending))


async def _nothing() -> None:
    return None


async def start_metrics_server(metrics: Metrics, listen: str) -> tuple[asyncio.Server, str]:
    """Serve GET /metrics on HOST:PORT (port 0 picks one); returns the server and the bound HOST:PORT."""

    async def handle(request: HttpRequest) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(405, b"GET only\n", headers={"Allow": "GET, HEAD"})
        if request.path != "/metrics":
            return HttpResponse(404, b"metrics are at /metrics\n")
        await metrics.before_scrape()
        body, content_type = await asyncio.to_thread(metrics.exposition, request.headers.get("accept", ""))
        return HttpResponse(200, body, content_type)

    return await start_http_server(handle, listen, max_body=0)
