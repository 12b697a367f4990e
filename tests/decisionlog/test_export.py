"""Decision-log export and retention against real SQLite files and a real HTTP receiver on a real socket."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import TOLLGATE, wait_for
from tests.log_receiver import LogReceiver, free_port
from tollgate.clock import ManualClock
from tollgate.decisionlog import (
    DecisionLog,
    DecisionRecord,
    ExporterConfig,
    ExportState,
    HttpTransport,
    LogConfig,
    LogExporter,
    LogRetention,
    LogShipping,
    OpaEncoder,
    OtlpEncoder,
    ShippingConfig,
    SqliteDecisionStore,
)
from tollgate.decisionlog._checkpoint import Checkpoint, CheckpointKey
from tollgate.decisionlog._otlp import trace_context
from tollgate.decisionlog._sqlite import record_hash
from tollgate.encoding import format_time
from tollgate.ids import new_decision_id
from tollgate.sidecar.config import ConfigError, ServeConfig, parse_duration
from tollgate.sidecar.metrics import Metrics

OPA_FIELDS = {"decision_id", "labels", "bundles", "path", "input", "result", "timestamp", "metrics", "requested_by"}


def _record(i: int, *, timestamp: str | None = None, kind: str = "tool",
            context: dict[str, Any] | None = None) -> dict[str, Any]:
    action = ({"server": "github", "name": f"tool_{i}"} if kind == "tool"
              else {"provider": "anthropic", "model": "claude-x", "max_output_tokens": 2000})
    return {
        "decision_id": new_decision_id(), "timestamp": timestamp or format_time(datetime.now(UTC)),
        "input": {"kind": kind, "principal": {"agent_id": "code-reviewer", "session_id": "run-7",
                                              "instance_id": "i-1"},
                  kind: action, "context": context or {}},
        "result": {"decision": "allow"}, "decision": "allow", "reasons": [], "request_id": "",
        "bundle_revision": "r1", "policy_path": "tollgate/decision", "latency_us": 42,
    }


def _fill(path: Path, records: list[dict[str, Any]]) -> list[str]:
    """Append records through the real writer; returns their decision IDs in seq order."""
    log = DecisionLog(LogConfig(path=path, synchronous="normal"))

    async def run() -> None:
        log.start(asyncio.get_running_loop())
        for r in records:  # one by one: seq order is list order
            await log.append(DecisionRecord.from_dict(r))

    asyncio.run(run())
    log.close()
    return [r["decision_id"] for r in records]


def _exporter(path: Path, url: str, **overrides: Any) -> LogExporter:
    settings: dict[str, Any] = {"name": "opa", "url": f"{url}/logs", "min_delay": 0.05, "max_delay": 0.2,
                                "batch_records": 500, **overrides}
    config = ExporterConfig(**settings)
    return LogExporter(path, config, HttpTransport(config, OpaEncoder()))


def _ids(bodies: list[Any]) -> list[str]:
    return [event["decision_id"] for body in bodies for event in body]


@pytest.fixture
def receiver() -> Iterator[LogReceiver]:
    r = LogReceiver().start()
    yield r
    r.stop()


def test_a_clean_run_delivers_every_record_exactly_once_in_order_as_gzipped_opa_events(
        tmp_path: Path, receiver: LogReceiver) -> None:
    path = tmp_path / "decisions.db"
    ids = _fill(path, [_record(i) for i in range(1200)])
    exporter = _exporter(path, receiver.url, token="s3cret")
    exporter.start()
    wait_for(lambda: exporter.status.cursor == 1200)
    exporter.stop(1)

    assert _ids(receiver.accepted()) == ids
    assert [len(b) for b in receiver.accepted()] == [500, 500, 200]  # batch_records
    upload = receiver.uploads[0]
    assert upload.path == "/logs"
    assert upload.headers["Content-Encoding"] == "gzip"
    assert upload.headers["Content-Type"] == "application/json"
    assert upload.headers["Authorization"] == "Bearer s3cret"
    event = upload.body[0]
    assert OPA_FIELDS <= set(event)
    assert event["bundles"] == {"tollgate": {"revision": "r1"}}
    assert event["path"] == "tollgate/decision"
    assert event["tollgate"]["seq"] == 1 and len(event["tollgate"]["hash"]) == 64  # receivers can dedupe by seq
    status = exporter.status
    assert (status.state, status.uploads_ok, status.uploads_failed, status.records_exported) == (
        ExportState.OK, 3, 0, 1200)
    assert SqliteDecisionStore.open(path).cursor("opa") == 1200


def test_refused_connections_500s_and_413s_delay_records_but_lose_none(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    ids = _fill(path, [_record(i) for i in range(300)])
    port = free_port()  # nothing listens yet: connection refused

    def answer(body: Any, index: int) -> int:
        if index < 3:
            return 500
        return 413 if len(body) > 40 else 200  # the receiver's body limit: ~40 records

    exporter = _exporter(path, f"http://127.0.0.1:{port}", batch_records=200)
    exporter.start()
    wait_for(lambda: exporter.status.uploads_failed >= 2)
    refused = exporter.status
    assert refused.state is ExportState.ERROR and "ConnectionRefused" in refused.last_error
    assert refused.lag_records == 300 and refused.cursor == 0
    receiver = LogReceiver(answer=answer, port=port).start()
    try:
        wait_for(lambda: exporter.status.cursor == 300)
        exporter.stop(1)
    finally:
        receiver.stop()

    statuses = [u.status for u in receiver.uploads]
    assert statuses[:3] == [500, 500, 500] and 413 in statuses
    # Only acknowledged batches move the cursor, so the accepted ones are the records exactly once, in order.
    assert _ids(receiver.accepted()) == ids
    assert all(len(b) <= 40 for b in receiver.accepted())
    assert exporter.status.state is ExportState.OK and exporter.status.lag_records == 0


def test_the_cursor_survives_a_restart_and_the_next_exporter_sends_only_what_is_new(
        tmp_path: Path, receiver: LogReceiver) -> None:
    path = tmp_path / "decisions.db"
    first = _fill(path, [_record(i) for i in range(50)])
    exporter = _exporter(path, receiver.url)
    exporter.start()
    wait_for(lambda: exporter.status.cursor == 50)
    exporter.stop(1)
    second = _fill(path, [_record(i) for i in range(30)])

    again = _exporter(path, receiver.url)
    again.start()
    wait_for(lambda: again.status.cursor == 80)
    again.stop(1)
    assert _ids(receiver.accepted()) == first + second


def test_stop_makes_a_final_flush_within_its_deadline(tmp_path: Path, receiver: LogReceiver) -> None:
    path = tmp_path / "decisions.db"
    ids = _fill(path, [_record(i) for i in range(20)])
    exporter = _exporter(path, receiver.url, min_delay=60.0, max_delay=60.0)  # would wait a minute between looks
    exporter.start()
    wait_for(lambda: exporter.status.cursor == 20)
    more = _fill(path, [_record(i) for i in range(5)])
    started = time.monotonic()
    exporter.stop(2)  # wakes the wait and uploads what was committed meanwhile
    assert time.monotonic() - started < 2
    assert _ids(receiver.accepted()) == ids + more


def test_a_failing_receiver_at_shutdown_gets_one_try_and_the_records_wait_on_disk(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    _fill(path, [_record(i) for i in range(10)])
    exporter = _exporter(path, f"http://127.0.0.1:{free_port()}", min_delay=30.0, max_delay=30.0)
    exporter.start()
    wait_for(lambda: exporter.status.uploads_failed >= 1)
    started = time.monotonic()
    exporter.stop(0.5)
    assert time.monotonic() - started < 2
    assert SqliteDecisionStore.open(path).cursor("opa") == 0


def test_one_record_larger_than_the_receiver_takes_stays_and_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    ids = _fill(path, [_record(i) for i in range(3)])
    receiver = LogReceiver(answer=lambda body, i: 413).start()
    exporter = _exporter(path, receiver.url)
    try:
        exporter.start()
        wait_for(lambda: "alone is too large" in exporter.status.last_error)
        exporter.stop(0.2)
    finally:
        receiver.stop()
    assert ids[0] in exporter.status.last_error
    assert exporter.status.state is ExportState.ERROR and exporter.status.cursor == 0


def test_a_record_that_cannot_be_encoded_holds_the_export_at_it_and_says_why(
        tmp_path: Path, receiver: LogReceiver) -> None:
    path = tmp_path / "decisions.db"
    good = _fill(path, [_record(i) for i in range(3)])
    _fill(path, [_record(3, timestamp="2026-11-21T00:00:00.1234567890Z")])  # too precise for an OPA event
    exporter = _exporter(path, receiver.url, batch_records=3)
    exporter.start()
    wait_for(lambda: "ValueError" in exporter.status.last_error)
    assert exporter.status.state is ExportState.ERROR and exporter.status.cursor == 3
    exporter.stop(0.2)
    assert _ids(receiver.accepted()) == good


def test_lag_past_max_lag_is_warn_while_uploads_work(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    hour_ago = format_time(datetime.now(UTC) - timedelta(hours=1))
    _fill(path, [_record(i, timestamp=hour_ago) for i in range(40)])
    gate = threading.Event()

    def answer(body: Any, index: int) -> int:
        if index >= 1:
            gate.wait(10)  # hold the second upload so the lag is visible after the first
        return 200

    receiver = LogReceiver(answer=answer).start()
    exporter = _exporter(path, receiver.url, batch_records=10, max_lag=60.0)
    try:
        exporter.start()
        wait_for(lambda: exporter.status.cursor == 10)
        wait_for(lambda: exporter.status.state is ExportState.WARN)
        status = exporter.status
        assert status.lagging and status.lag_records == 30 and status.lag_seconds > 3500
        metrics = Metrics()
        metrics.exports = lambda: [exporter.status]
        text = metrics.render()
        assert 'tollgate_decision_log_export_lag_records{exporter="opa"} 30' in text
        assert 'tollgate_decision_log_export_state{exporter="opa",state="warn"} 1' in text
        assert 'tollgate_decision_log_export_uploads_total{exporter="opa",result="ok"} 1' in text
        assert "tollgate_decision_log_export_lag_seconds" in text
        gate.set()
        wait_for(lambda: exporter.status.cursor == 40)
        wait_for(lambda: exporter.status.state is ExportState.OK)
        exporter.stop(1)
    finally:
        gate.set()
        receiver.stop()


# -- OTLP ----------------------------------------------------------------------------------------------------


def _attrs(record: dict[str, Any]) -> dict[str, Any]:
    return {a["key"]: next(iter(a["value"].values())) for a in record["attributes"]}


def test_otlp_body_is_resource_logs_with_one_log_record_per_decision_and_genai_attributes() -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    tool = _record(1, context={"traceparent": parent}) | {"seq": 7, "decision": "deny",
                                                           "reasons": [{"code": "tool_not_in_manifest"}]}
    model = _record(2, kind="model", timestamp="2026-11-21T10:00:00.123456Z")
    import json

    doc = json.loads(OtlpEncoder(service_version="1.2.3").encode([tool, model]))
    (resource_logs,) = doc["resourceLogs"]
    assert {"key": "service.name", "value": {"stringValue": "tollgate"}} in resource_logs["resource"]["attributes"]
    (scope_logs,) = resource_logs["scopeLogs"]
    assert scope_logs["scope"]["name"] == "tollgate.decisionlog"
    first, second = scope_logs["logRecords"]

    assert first["traceId"] == "4bf92f3577b34da6a3ce929d0e0e4736" and first["spanId"] == "00f067aa0ba902b7"
    assert (first["severityNumber"], first["severityText"]) == (13, "WARN")
    assert first["body"]["stringValue"] == "deny tool github/tool_1: tool_not_in_manifest"
    attrs = _attrs(first)
    assert attrs["gen_ai.operation.name"] == "execute_tool" and attrs["gen_ai.tool.name"] == "tool_1"
    assert attrs["gen_ai.agent.id"] == "code-reviewer" and attrs["gen_ai.conversation.id"] == "run-7"
    assert attrs["tollgate.decision"] == "deny" and attrs["tollgate.decision_id"] == tool["decision_id"]
    assert attrs["tollgate.reasons"] == {"values": [{"stringValue": "tool_not_in_manifest"}]}
    assert attrs["tollgate.bundle.revision"] == "r1" and attrs["tollgate.seq"] == "7"

    assert second["timeUnixNano"] == "1795255200123456000"  # 2026-11-21T10:00:00.123456Z, integer exact
    assert "traceId" not in second
    attrs = _attrs(second)
    assert attrs["gen_ai.provider.name"] == "anthropic" and attrs["gen_ai.request.model"] == "claude-x"
    assert attrs["gen_ai.request.max_tokens"] == "2000" and "gen_ai.operation.name" not in attrs


@pytest.mark.parametrize(("context", "expected"), [
    ({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
     ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")),
    ({"trace_id": "4BF92F3577B34DA6A3CE929D0E0E4736"}, ("4bf92f3577b34da6a3ce929d0e0e4736", "")),
    ({"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01"}, ("", "")),
    ({"trace_id": "not-hex"}, ("", "")),
    ({}, ("", "")),
], ids=["traceparent", "trace-id-uppercase", "all-zero-invalid", "malformed", "absent"])
def test_trace_context_comes_from_the_request_context(context: dict[str, Any], expected: tuple[str, str]) -> None:
    assert trace_context(context) == expected


def test_opa_and_otlp_exporters_keep_cursors_of_their_own(tmp_path: Path, receiver: LogReceiver) -> None:
    path = tmp_path / "decisions.db"
    ids = _fill(path, [_record(i) for i in range(25)])
    shipping = LogShipping(path, ShippingConfig(opa_service=receiver.url, otlp_endpoint=receiver.url,
                                                otlp_headers=(("x-api-key", "k-123"),), min_delay=0.05, max_delay=0.2))
    shipping.start()
    wait_for(lambda: all(s.cursor == 25 for s in shipping.statuses()))
    shipping.stop(1)
    opa = [u.body for u in receiver.uploads if u.path == "/logs"]
    otlp = [u.body for u in receiver.uploads if u.path == "/v1/logs"]
    assert _ids(opa) == ids
    otlp_ids = [_attrs(r)["tollgate.decision_id"] for b in otlp for r in b["resourceLogs"][0]["scopeLogs"][0]
                ["logRecords"]]
    assert otlp_ids == ids
    # The OTLP headers go to the collector only.
    assert {u.headers.get("x-api-key") for u in receiver.uploads if u.path == "/v1/logs"} == {"k-123"}
    assert {u.headers.get("x-api-key") for u in receiver.uploads if u.path == "/logs"} == {None}
    db = SqliteDecisionStore.open(path)
    assert (db.cursor("opa"), db.cursor("otlp")) == (25, 25)


def _checkpoint(path: Path, seq: int) -> Checkpoint:
    """Sign record seq's hash as the sidecar's publisher does, into the log's checkpoint table."""
    key = CheckpointKey(algorithm="hmac-sha256", key_id="hmac:test", secret=b"k" * 32)
    with SqliteDecisionStore.open(path) as store:
        checkpoint = Checkpoint(seq, str(store.hash_at(seq)), format_time(datetime.now(UTC))).signed(key)
        store.save_checkpoint(checkpoint)
    return checkpoint


def _otlp_events(receiver: LogReceiver) -> list[tuple[str, int]]:
    """(event name, seq) of every OTLP log record accepted, in arrival order."""
    return [(r["eventName"], int(_attrs(r).get("tollgate.seq") or _attrs(r)["tollgate.checkpoint.seq"]))
            for u in receiver.uploads if u.path == "/v1/logs" and u.status == 200
            for r in u.body["resourceLogs"][0]["scopeLogs"][0]["logRecords"]]


def test_otlp_sends_each_checkpoint_once_after_its_records_and_opa_sends_none(tmp_path: Path,
                                                                              receiver: LogReceiver) -> None:
    path = tmp_path / "decisions.db"
    ids = _fill(path, [_record(i) for i in range(3)])
    first = _checkpoint(path, 3)
    shipping = LogShipping(path, ShippingConfig(opa_service=receiver.url, otlp_endpoint=receiver.url,
                                                min_delay=0.05, max_delay=0.2))
    shipping.start()
    wait_for(lambda: len(_otlp_events(receiver)) == 4)
    _checkpoint(path, 3)  # published while the exporter is caught up: an upload of its own
    wait_for(lambda: len(_otlp_events(receiver)) == 5)
    shipping.stop(1)
    ids += _fill(path, [_record(3)])
    _checkpoint(path, 4)
    again = LogShipping(path, ShippingConfig(opa_service=receiver.url, otlp_endpoint=receiver.url,
                                             min_delay=0.05, max_delay=0.2))
    again.start()  # resumes from the cursor: only record 4 and its checkpoint are new
    wait_for(lambda: len(_otlp_events(receiver)) == 7 and all(s.cursor == 4 for s in again.statuses()))
    again.stop(1)
    checkpoint = "tollgate.checkpoint"
    assert _otlp_events(receiver) == [("tollgate.decision", 1), ("tollgate.decision", 2), ("tollgate.decision", 3),
                                      (checkpoint, 3), (checkpoint, 3), ("tollgate.decision", 4), (checkpoint, 4)]
    assert _ids([u.body for u in receiver.uploads if u.path == "/logs"]) == ids  # decision events only
    sent = next(r for u in receiver.uploads if u.path == "/v1/logs"
                for r in u.body["resourceLogs"][0]["scopeLogs"][0]["logRecords"] if r["eventName"] == checkpoint)
    attrs = _attrs(sent)
    assert (attrs["tollgate.checkpoint.hash"], attrs["tollgate.checkpoint.time"]) == (first.hash, first.time)
    assert (attrs["tollgate.checkpoint.key_id"], attrs["tollgate.checkpoint.algorithm"]) == ("hmac:test",
                                                                                           "hmac-sha256")
    assert attrs["tollgate.checkpoint.signature"] == first.signature
    with SqliteDecisionStore.open(path) as store:
        assert (store.cursor("otlp"), store.cursor_checkpoints("otlp"), store.cursor_checkpoints("opa")) == (4, 3, 0)


def test_a_cursor_table_from_before_checkpoints_is_given_the_count(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    _fill(path, [_record(0)])
    db = sqlite3.connect(path)
    db.executescript("CREATE TABLE export_cursors (name TEXT PRIMARY KEY, seq INTEGER NOT NULL, updated_at TEXT "
                     "NOT NULL); INSERT INTO export_cursors VALUES ('otlp', 1, '2026-01-01T00:00:00Z');")
    db.close()
    with SqliteDecisionStore.open(path) as store:
        assert (store.cursor("otlp"), store.cursor_checkpoints("otlp")) == (1, 0)
        store.save_cursor("otlp", 1, checkpoints=2)
        assert store.cursor_checkpoints("otlp") == 2


# -- retention -----------------------------------------------------------------------------------------------


def _seqs(path: Path) -> list[int]:
    return [r[0] for r in sqlite3.connect(path).execute("SELECT seq FROM decisions ORDER BY seq")]


def test_retention_deletes_only_old_exported_records_and_leaves_an_anchor_the_chain_continues_from(
        tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    old = format_time(datetime.now(UTC) - timedelta(days=40))
    _fill(path, [_record(i, timestamp=old) for i in range(100)] + [_record(i) for i in range(10)])
    db = SqliteDecisionStore.open(path)
    db.save_cursor("opa", 60)  # the OPA receiver has 1..60; the OTLP collector 1..80
    db.save_cursor("otlp", 80)
    retention = LogRetention(path, window=timedelta(days=30), exporters=["opa", "otlp"], batch=25)
    assert retention.prune() == 60
    assert _seqs(path)[0] == 61 and len(_seqs(path)) == 50

    db.save_cursor("opa", 110)
    assert retention.prune() == 20  # 61..80: otlp's cursor now holds back the rest of the old records
    db.save_cursor("otlp", 110)
    assert retention.prune() == 20  # 81..100; 101..110 are inside the window
    assert retention.prune() == 0
    retention.stop()
    assert _seqs(path) == list(range(101, 111))

    anchors = db.connection.execute("SELECT upto_seq, last_hash FROM decisions_pruned ORDER BY upto_seq").fetchall()
    assert [a[0] for a in anchors] == [60, 80, 100]  # one anchor per sweep, however many batches it took
    rows = db.connection.execute("SELECT record, prev_hash, hash FROM decisions ORDER BY seq").fetchall()
    prev = anchors[-1][1]
    for body, prev_hash, digest in rows:
        assert prev_hash == prev and digest == record_hash(prev_hash, body)
        prev = digest
    # The chain check people run accepts the pruned log from its newest anchor.
    verified = subprocess.run([*TOLLGATE, "logs", "verify", "--data-dir", str(tmp_path)], capture_output=True,
                              text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_retention_without_exporters_never_deletes_the_newest_record(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    old = format_time(datetime.now(UTC) - timedelta(days=2))
    ids = _fill(path, [_record(i, timestamp=old) for i in range(5)])
    assert LogRetention(path, window=timedelta(days=1)).prune() == 4
    assert _seqs(path) == [5]
    # The writer still continues the chain from the record it kept.
    more = _fill(path, [_record(9)])
    rows = sqlite3.connect(path).execute("SELECT record, prev_hash FROM decisions ORDER BY seq").fetchall()
    assert ids[-1] in rows[0][0] and more[0] in rows[1][0]
    last_hash = sqlite3.connect(path).execute("SELECT hash FROM decisions WHERE seq = 5").fetchone()[0]
    assert rows[1][1] == last_hash


def test_retention_in_small_batches_does_not_stall_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    old = format_time(datetime.now(UTC) - timedelta(days=2))
    _fill(path, [_record(i, timestamp=old) for i in range(3000)])
    retention = LogRetention(path, window=timedelta(days=1), batch=100)
    log = DecisionLog(LogConfig(path=path, synchronous="normal"))
    slowest = 0.0

    async def write_while_pruning() -> None:
        nonlocal slowest
        log.start(asyncio.get_running_loop())
        pruning = asyncio.get_running_loop().run_in_executor(None, retention.prune)
        for i in range(300):
            started = time.perf_counter()
            await log.append(DecisionRecord.from_dict(_record(i)))
            slowest = max(slowest, time.perf_counter() - started)
        # 3000 once the first new record has made record 3000 no longer the newest.
        assert await pruning in (2999, 3000)

    asyncio.run(write_while_pruning())
    log.close()
    retention.stop()
    assert _seqs(path)[-300:] == list(range(3001, 3301)) and len(_seqs(path)) in (300, 301)
    assert slowest < 1.0  # each append waited at most for one short delete batch


def test_a_configured_exporter_without_a_cursor_holds_back_everything(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    _fill(path, [_record(i, timestamp=format_time(datetime.now(UTC) - timedelta(days=9))) for i in range(5)])
    assert LogRetention(path, window=timedelta(days=1), exporters=["opa"]).prune() == 0



def test_retention_and_export_lag_read_the_shipping_clock(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    _fill(path, [_record(i, timestamp="2026-12-31T12:00:00.000000Z") for i in range(20)])
    clock = ManualClock(datetime(2027, 1, 1, 11, 59, 59, tzinfo=UTC))
    gate = threading.Event()

    def answer(body: Any, index: int) -> int:
        if index >= 1:
            gate.wait(10)  # hold the second upload: ten records stay owed
        return 200

    receiver = LogReceiver(answer=answer).start()
    shipping = LogShipping(path, ShippingConfig(opa_service=receiver.url, batch_records=10, min_delay=0.05,
                                                max_delay=0.2, retention=timedelta(days=1)), clock=clock)
    exporter, retention = shipping.exporters[0], shipping.retention
    assert retention is not None
    try:
        exporter.start()
        wait_for(lambda: exporter.status.cursor == 10)
        wait_for(lambda: exporter.status.lag_records == 10)
        # Against the shipping clock, the records are a day old less one second: that is their lag.
        assert exporter.status.lag_seconds == pytest.approx(86399, abs=1)
        assert exporter.status.last_upload is not None and exporter.status.last_upload.year == 2027
        assert retention.prune() == 0  # not yet older than the one-day window
        clock.advance(2)
        assert retention.prune() == 10  # the exported ones; the other ten are owed to the receiver
    finally:
        gate.set()
        exporter.stop(1)
        retention.stop()
        receiver.stop()


# -- configuration -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [("30d", 30 * 86400), ("12h", 43200), ("90m", 5400), ("1.5s", 1.5)],
                         ids=["days", "hours", "minutes", "fractional-seconds"])
def test_retention_durations(text: str, seconds: float) -> None:
    assert parse_duration("decision_log_retention", text).total_seconds() == seconds


@pytest.mark.parametrize(("settings", "message"), [
    ({"decision_log_retention": "30"}, "decision_log_retention: must be a positive number and a unit"),
    ({"decision_log_retention": "-1d"}, "decision_log_retention"),
    ({"decision_log_service": "ftp://logs"}, "decision_log_service: must be an http(s)://"),
    ({"otlp_endpoint": "collector:4318"}, "otlp_endpoint: must be an http(s)://"),
    ({"decision_log_resource": "logs"}, "decision_log_resource: must be a path"),
    ({"decision_log_token_file": "/t"}, "decision_log_token_file: needs decision_log_service"),
    ({"decision_log_min_delay": 5.0, "decision_log_max_delay": 1.0}, "decision_log_max_delay"),
    ({"decision_log_batch_records": 0}, "decision_log_batch_records"),
    ({"decision_log_fail_closed_on_lag": True}, "decision_log_fail_closed_on_lag: needs an exporter"),
    ({"decision_log_fail_closed_on_lag": True, "otlp_endpoint": "http://c:4318", "decision_log_max_lag": 0.0},
     "decision_log_fail_closed_on_lag: needs decision_log_max_lag above 0"),
], ids=["no-unit", "negative", "scheme", "no-scheme", "relative-resource", "token-without-service",
        "max-below-min", "zero-batch", "fail-closed-without-exporter", "fail-closed-without-limit"])
def test_bad_export_settings_name_the_key(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ServeConfig(**settings).validate()


def test_the_token_file_becomes_the_bearer_token(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("  abc123\n")
    config = ServeConfig(decision_log_service="http://logs:8080", decision_log_token_file=str(tmp_path / "token"),
                         decision_log_retention="7d").validate()
    shipping = config.log_shipping()
    assert shipping.opa_token == "abc123" and shipping.retention == timedelta(days=7)


def test_the_otlp_headers_file_is_read_line_by_line(tmp_path: Path) -> None:
    headers = tmp_path / "otlp-headers"
    headers.write_text("# the vendor's ingest key\nx-api-key: k-123\n\nX-Scope-OrgID:  tenant-7 \n")
    config = ServeConfig(otlp_endpoint="http://collector:4318", otlp_headers_file=str(headers)).validate()
    assert config.log_shipping().otlp_headers == (("x-api-key", "k-123"), ("X-Scope-OrgID", "tenant-7"))


@pytest.mark.parametrize(("content", "message"), [
    ("x-api-key k-123\n", "otlp-headers:1: not a `Name: value` header line"),
    ("ok: 1\nbad name: 2\n", "otlp-headers:2: not a `Name: value` header line"),
    ("Content-Type: text/plain\n", "otlp-headers:1: Content-Type is set by the exporter itself"),
], ids=["no-colon", "space-in-name", "own-header"])
def test_a_bad_otlp_headers_file_names_the_line(tmp_path: Path, content: str, message: str) -> None:
    headers = tmp_path / "otlp-headers"
    headers.write_text(content)
    config = ServeConfig(otlp_endpoint="http://collector:4318", otlp_headers_file=str(headers)).validate()
    with pytest.raises(ConfigError, match=f"otlp_headers_file: .*{message}"):
        config.log_shipping()
    with pytest.raises(ConfigError, match="otlp_headers_file: needs otlp_endpoint"):
        ServeConfig(otlp_headers_file=str(headers)).validate()


def test_the_readme_example_is_a_valid_configuration(tmp_path: Path) -> None:
    from tests.readme import readme_section
    from tollgate.sidecar.config import load_config

    section = readme_section("Exporting the decision log")
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "tollgate.yaml").write_text(example)
    config = load_config(str(tmp_path / "tollgate.yaml"), {})
    assert config.decision_log_service == "https://logs.example.com" and config.decision_log_retention == "30d"
    for flag in ("--decision-log-batch-records", "--decision-log-min-delay", "--decision-log-max-delay",
                 "--decision-log-max-lag", "--decision-log-fail-closed-on-lag", "--decision-log-batch-bytes"):
        assert flag in section
