"""Decision-log export from a real `tollgate serve`: OPA /logs and OTLP receivers that fail, recover and restart."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, ROOT, TOLLGATE, start_server, tool_request, wait_for
from tests.log_receiver import LogReceiver, free_port
from tollgate.v1 import admin_pb2, admin_pb2_grpc

FAST = ["--decision-log-min-delay", "0.1", "--decision-log-max-delay", "0.5"]


def _opa_ids(receiver: LogReceiver) -> list[str]:
    return [e["decision_id"] for body in receiver.accepted() if isinstance(body, list) for e in body]


def _otlp_ids(receiver: LogReceiver) -> list[str]:
    ids = []
    for body in receiver.accepted():
        if isinstance(body, dict):
            for record in body["resourceLogs"][0]["scopeLogs"][0]["logRecords"]:
                attrs = {a["key"]: a["value"] for a in record["attributes"]}
                ids.append(attrs["tollgate.decision_id"]["stringValue"])
    return ids


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text: str = response.read().decode()
        return text


def test_every_decision_reaches_both_receivers_once_after_they_recover(tmp_path: Path) -> None:
    def flaky(body: Any, index: int) -> int:
        return 500 if index < 3 else 200

    opa, otlp = LogReceiver(answer=flaky).start(), LogReceiver().start()
    metrics_port = free_port()
    server = start_server(tmp_path / "data", extra=[
        "--decision-log-service", opa.url, "--otlp-endpoint", otlp.url, "--metrics-listen",
        f"127.0.0.1:{metrics_port}", *FAST])
    try:
        answered = [server.authorize(tool_request(session_id="run-1")).decision_id for _ in range(30)]
        wait_for(lambda: _opa_ids(opa) == answered and _otlp_ids(otlp) == answered)
        text = _metrics(metrics_port)
        assert 'tollgate_decision_log_export_uploads_total{exporter="opa",result="failed"} 3' in text
        assert 'tollgate_decision_log_export_lag_records{exporter="opa"} 0' in text
        assert 'tollgate_decision_log_export_records_total{exporter="otlp"} 30' in text
        assert [u.status for u in opa.uploads][:3] == [500, 500, 500]
        assert opa.uploads[-1].path == "/logs" and otlp.uploads[-1].path == "/v1/logs"

        status = admin_pb2_grpc.AdminServiceStub(server.channel).GetStatus(
            admin_pb2.GetStatusRequest(), metadata=server.admin_metadata, timeout=10)
        exports = {e.name: e for e in status.exports}
        assert exports["opa"].url == f"{opa.url}/logs" and exports["otlp"].url == f"{otlp.url}/v1/logs"
        assert exports["opa"].state == admin_pb2.EXPORT_STATE_OK and exports["opa"].cursor == 30
        assert (exports["opa"].uploads_failed, exports["opa"].lag_records) == (3, 0)
        assert exports["opa"].HasField("last_upload")
        shown = subprocess.run([*TOLLGATE, "status", "--server", server.address, "--token", ADMIN_TOKEN],
                               capture_output=True, text=True, cwd=ROOT, timeout=30)
        assert f"export opa   {opa.url}/logs  [OK]  behind 0 records" in shown.stdout, shown.stdout + shown.stderr
        assert server.terminate() == 0
    finally:
        server.kill()
        opa.stop()
        otlp.stop()
    assert _opa_ids(opa) == answered  # nothing re-sent on a clean run and shutdown


def test_decisions_made_while_the_receiver_is_down_are_delivered_after_a_restart(tmp_path: Path) -> None:
    port = free_port()  # the receiver is down: connections are refused
    data = tmp_path / "data"
    server = start_server(data, extra=["--decision-log-service", f"http://127.0.0.1:{port}", *FAST])
    try:
        answered = [server.authorize(tool_request(session_id="run-2")).decision_id for _ in range(20)]
        started = time.monotonic()
        assert server.terminate() == 0  # the final flush fails and must not hold up the shutdown
        assert time.monotonic() - started < 15
    finally:
        server.kill()
    assert "decision log export opa" in server.stderr

    receiver = LogReceiver(port=port).start()
    again = start_server(data, extra=["--decision-log-service", receiver.url, *FAST])
    try:
        more = [again.authorize(tool_request(session_id="run-2")).decision_id for _ in range(5)]
        wait_for(lambda: _opa_ids(receiver) == answered + more)
        assert again.terminate() == 0
    finally:
        again.kill()
        receiver.stop()


@pytest.mark.clock
def test_fail_closed_on_lag_denies_until_the_export_catches_up(tmp_path: Path) -> None:
    port = free_port()
    server = start_server(tmp_path / "data", extra=[
        "--decision-log-service", f"http://127.0.0.1:{port}", "--decision-log-max-lag", "1",
        "--decision-log-fail-closed-on-lag", *FAST])
    receiver = LogReceiver(port=port)
    try:
        first = server.authorize(tool_request(session_id="run-3"))
        assert first.decision == 1  # ALLOW: nothing is behind yet
        # The receiver is down: once that first record is more than a second old, answers are refused (the
        # server's clock is moved on rather than waited for).
        server.advance_clock(2)
        wait_for(lambda: server.authorize(tool_request(session_id="run-3")).decision == 2)
        refused = server.authorize(tool_request(session_id="run-3"))
        assert [r.code for r in refused.reasons] == ["export_lag"]
        assert "decision log export opa is" in refused.reasons[0].message
        record = server.get_decision(refused.decision_id)  # refused answers are logged like any other
        assert record.decision_id == refused.decision_id

        receiver.start()
        wait_for(lambda: server.authorize(tool_request(session_id="run-3")).decision == 1)
        wait_for(lambda: refused.decision_id in _opa_ids(receiver))
        assert server.terminate() == 0
    finally:
        server.kill()
        receiver.stop()
