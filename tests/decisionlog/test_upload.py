"""Decision-log uploads over the one outbound HTTP client: a kept-alive connection per exporter, Retry-After."""

from __future__ import annotations

import gzip
import json
import threading
import time
from pathlib import Path

from tests.conftest import wait_for
from tests.decisionlog.test_export import _fill, _record
from tests.net.local_server import Answer, LocalServer, Seen
from tollgate.decisionlog import ExporterConfig, HttpTransport, LogExporter, OpaEncoder


def test_an_exporter_sends_every_batch_over_one_kept_alive_connection(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    ids = _fill(path, [_record(i) for i in range(30)])
    receiver = LocalServer().start()  # HTTP/1.1, as real receivers are
    config = ExporterConfig(
        name="otlp", url=f"{receiver.url}/v1/logs", batch_records=10, min_delay=0.05, max_delay=0.2,
        token="s3cret", headers=(("X-Scope-OrgID", "tenant-7"),))
    exporter = LogExporter(path, config, HttpTransport(config, OpaEncoder()))
    try:
        exporter.start()
        wait_for(lambda: exporter.status.cursor == 30)
        exporter.stop(1)
    finally:
        receiver.stop()
    assert [s.connection for s in receiver.seen] == [1, 1, 1]
    assert [e["decision_id"] for s in receiver.seen for e in json.loads(gzip.decompress(s.body))] == ids
    headers = receiver.seen[0].headers
    assert (headers["Content-Encoding"], headers["Content-Type"]) == ("gzip", "application/json")
    assert (headers["Authorization"], headers["X-Scope-OrgID"]) == ("Bearer s3cret", "tenant-7")


def test_a_receivers_retry_after_holds_the_next_try_back(tmp_path: Path) -> None:
    path = tmp_path / "decisions.db"
    _fill(path, [_record(i) for i in range(3)])
    arrived: list[float] = []
    lock = threading.Lock()

    def answer(seen: Seen) -> Answer:
        with lock:
            arrived.append(time.monotonic())
            first = len(arrived) == 1
        return Answer(status=503, body=b"busy", headers=(("Retry-After", "1"),)) if first else Answer()

    receiver = LocalServer(script=answer).start()
    # Without Retry-After the exporter would try again within 50-100 ms.
    config = ExporterConfig(name="opa", url=f"{receiver.url}/logs", min_delay=0.05, max_delay=5.0)
    exporter = LogExporter(path, config, HttpTransport(config, OpaEncoder()))
    try:
        exporter.start()
        wait_for(lambda: "503 Service Unavailable: busy" in exporter.status.last_error)
        wait_for(lambda: exporter.status.cursor == 3)
        exporter.stop(1)
    finally:
        receiver.stop()
    assert len(arrived) == 2 and arrived[1] - arrived[0] >= 0.95
