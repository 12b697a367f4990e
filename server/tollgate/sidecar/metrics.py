"""Prometheus metrics: bundle activations and decisions, in the text exposition format, on GET /metrics.

Written by hand rather than with prometheus-client: a handful of counters updated on the event-loop thread
(a dict increment on the decision path, no lock), one small renderer, and an asyncio HTTP endpoint that
needs no thread — less than a dependency and its registry would cost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from tollgate.api._http import HttpRequest, HttpResponse, start_http_server

if TYPE_CHECKING:
    from tollgate.decisionlog import ExportStatus

log = logging.getLogger(__name__)

_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
#: Distinct bundle revisions kept in the decision counter; older ones are folded into revision="other".
MAX_REVISIONS = 50


class Metrics:
    """The sidecar's counters and gauges. Update them from the event loop thread only."""

    def __init__(self) -> None:
        self.activations = 0
        self.activation_failures: dict[str, int] = {}
        self.decisions: dict[tuple[str, str], int] = {}
        self._revisions: dict[str, None] = {}  # insertion-ordered set of revisions seen in decisions
        self.active: tuple[str, str, str] | None = None  # (revision, digest, source)
        self.last_activation = 0.0  # unix time
        #: The decision-log exporters' snapshots and the records retention deleted, read at each scrape.
        self.exports: Callable[[], Sequence[ExportStatus]] = tuple
        self.pruned: Callable[[], int] = int

    def decision(self, outcome: str, revision: str) -> None:
        if revision not in self._revisions:
            if len(self._revisions) >= MAX_REVISIONS:
                revision = "other"  # bound the series: a sidecar may live through many revisions
            self._revisions[revision] = None
        key = (outcome, revision)
        self.decisions[key] = self.decisions.get(key, 0) + 1

    def activated(self, *, revision: str, digest: str, source: str, when: float) -> None:
        self.activations += 1
        self.active = (revision, digest, source)
        self.last_activation = when

    def activation_failed(self, reason: str) -> None:
        self.activation_failures[reason] = self.activation_failures.get(reason, 0) + 1

    def render(self) -> str:
        out: list[str] = []
        _family(out, "tollgate_bundle_activations_total", "counter",
                "Bundle revisions activated (the first one included).", [({}, self.activations)])
        _family(out, "tollgate_bundle_activation_failures_total", "counter",
                "Bundle revisions refused or sources that could not be read, by reason.",
                [({"reason": r}, n) for r, n in sorted(self.activation_failures.items())])
        _family(out, "tollgate_decisions_total", "counter", "Decisions answered, by outcome and bundle revision.",
                [({"decision": d, "revision": r}, n) for (d, r), n in sorted(self.decisions.items())])
        active = [] if self.active is None else [
            ({"revision": self.active[0], "digest": self.active[1], "source": self.active[2]}, 1)]
        _family(out, "tollgate_bundle_active_info", "gauge", "The active bundle revision (value 1).", active)
        _family(out, "tollgate_bundle_last_activation_timestamp_seconds", "gauge",
                "Unix time of the last successful activation (0 before the first).", [({}, self.last_activation)])
        self._render_exports(out)
        return "".join(out)

    def _render_exports(self, out: list[str]) -> None:
        exports = self.exports()
        _family(out, "tollgate_decision_log_export_lag_records", "gauge",
                "Committed decision records the exporter's receiver has not acknowledged yet.",
                [({"exporter": s.name}, s.lag_records) for s in exports])
        _family(out, "tollgate_decision_log_export_lag_seconds", "gauge",
                "Age of the oldest decision record the exporter's receiver has not acknowledged (0 when caught up).",
                [({"exporter": s.name}, s.lag_seconds) for s in exports])
        _family(out, "tollgate_decision_log_export_uploads_total", "counter",
                "Uploads to the exporter's receiver, by result (ok: a 2xx answer; failed: anything else).",
                [({"exporter": s.name, "result": r}, n) for s in exports
                 for r, n in (("ok", s.uploads_ok), ("failed", s.uploads_failed))])
        _family(out, "tollgate_decision_log_export_records_total", "counter",
                "Decision records acknowledged by the exporter's receiver (re-sent ones counted again).",
                [({"exporter": s.name}, s.records_exported) for s in exports])
        _family(out, "tollgate_decision_log_export_state", "gauge",
                "The exporter's state (value 1): ok, warn (behind by more than max_lag), error (uploads failing).",
                [({"exporter": s.name, "state": s.state.value}, 1) for s in exports])
        _family(out, "tollgate_decision_log_pruned_records_total", "counter",
                "Decision records deleted by retention since start.", [({}, self.pruned())])


def _family(out: list[str], name: str, kind: str, help_text: str,
            samples: Iterable[tuple[dict[str, str], float]]) -> None:
    out.append(f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n")
    for labels, value in samples:
        label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
        number = repr(float(value)) if isinstance(value, float) and not value.is_integer() else str(int(value))
        out.append(f"{name}{{{label_text}}} {number}\n" if label_text else f"{name} {number}\n")


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


async def start_metrics_server(metrics: Metrics, listen: str) -> tuple[asyncio.Server, str]:
    """Serve GET /metrics on HOST:PORT (port 0 picks one); returns the server and the bound HOST:PORT."""

    async def handle(request: HttpRequest) -> HttpResponse:
        if request.method not in ("GET", "HEAD"):
            return HttpResponse(405, b"GET only\n", headers={"Allow": "GET, HEAD"})
        if request.path != "/metrics":
            return HttpResponse(404, b"metrics are at /metrics\n")
        return HttpResponse(200, metrics.render().encode(), _CONTENT_TYPE)

    return await start_http_server(handle, listen, max_body=0)
