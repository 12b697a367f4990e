"""The sidecar process: durability, drain, GetDecision, idempotency, listeners, config, standard services."""

from __future__ import annotations

import concurrent.futures
import http.server
import json
import os
import signal
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.conftest import Serve, start_server, tool_request, wait_for, write_policy
from tollgate.v1 import authorization_pb2 as pb

pytestmark = pytest.mark.clock

ALLOW_ALL = """
package tollgate

decision := {"decision": "allow", "reasons": [{"code": "ok", "message": "allowed"}], "obligations": {"n": 1}}
"""

# About a quarter of a second of work per evaluation: far past a 1 ms deadline.
SLOW_ALLOW = """
package tollgate

decision := {"decision": "allow", "reasons": [{"code": "n", "message": sprintf("%d", [n])}]} if {
    n := count([x | some x in numbers.range(1, 200000)])
}
"""

# An evaluation for an agent named held-* calls the test's Hold endpoint (data.hold) and waits there until the test
# releases it; any other (the server's own smoke test of a new bundle) is allowed at once.
HELD_ALLOW = """
package tollgate

decision := {"decision": "allow", "reasons": [{"code": "held", "message": "released"}]} if _released

_released if not startswith(object.get(input, ["principal", "agent_id"], ""), "held-")

_released if {
    startswith(input.principal.agent_id, "held-")
    url := sprintf("%s/%s", [data.hold, input.principal.agent_id])
    http.send({"method": "GET", "url": url, "timeout": "60s"}).status_code == 200
}
"""


class Hold:
    """An HTTP endpoint a policy calls that holds each evaluation until released: the test knows which requests
    the server is evaluating (they are in flight) and when they may finish."""

    def __init__(self) -> None:
        self.arrived: list[str] = []
        self.released = threading.Event()
        hold = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                hold.arrived.append(self.path.lstrip("/"))
                hold.released.wait(60)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: object) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.released.set()
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def hold() -> Iterator[Hold]:
    h = Hold()
    yield h
    h.close()


def test_every_answered_decision_survives_sigkill(serve: Serve, tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = serve(bundle=write_policy(tmp_path / "b", ALLOW_ALL), data_dir=data)
    received: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(n: int) -> None:
        channel = grpc.insecure_channel(server.address)
        from tollgate.v1 import authorization_pb2_grpc as pb_grpc

        stub = pb_grpc.AuthorizationServiceStub(channel)
        i = 0
        while not stop.is_set():
            try:
                r = stub.Authorize(tool_request(agent=f"agent-{n}", session_id=str(i)), timeout=5)
            except grpc.RpcError:
                return  # the server is gone: this request was never answered
            with lock:
                received.append(r.decision_id)
            i += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(16)]
    for t in threads:
        t.start()
    wait_for(lambda: len(received) > 200)
    server.proc.send_signal(signal.SIGKILL)  # mid-load: answers are leaving the process right now
    server.proc.wait()
    stop.set()
    for t in threads:
        t.join(10)
    assert len(received) > 100
    restarted = serve(bundle=write_policy(tmp_path / "b", ALLOW_ALL), data_dir=data)
    for decision_id in received:
        assert restarted.get_decision(decision_id).decision_id == decision_id
    assert len(set(received)) == len(received)


def test_get_decision_returns_the_logged_record(serve: Serve, tmp_path: Path) -> None:
    server = serve(bundle=write_policy(tmp_path / "b", ALLOW_ALL))
    request = tool_request(arguments={"repo": "payments-api", "number": 42}, session_id="s-1", team="platform")
    request.tool.resources.append("repo:payments-api")
    request.context.update({"ticket": "SEC-1"})
    response = server.authorize(request)
    record = server.get_decision(response.decision_id)
    assert record.decision_id == response.decision_id
    assert record.decision == pb.DECISION_ALLOW
    assert record.principal.agent_id == "code-reviewer"
    assert record.principal.session_id == "s-1"
    assert record.tool.name == "get_pull_request"
    assert dict(record.tool.arguments) == {"repo": "payments-api", "number": 42}
    assert list(record.tool.resources) == ["repo:payments-api"]
    assert record.context["ticket"] == "SEC-1"
    assert record.bundle_revision == response.bundle_revision
    assert record.input["kind"] == "tool"
    assert record.result.struct_value["decision"] == "allow"
    assert dict(record.obligations) == {"n": 1}
    assert record.policy_path == "tollgate/decision"
    assert len(record.hash) == 64 and len(record.prev_hash) == 64
    assert record.timestamp.seconds > 0


def test_get_decision_unknown_id_is_not_found(serve: Serve, tmp_path: Path) -> None:
    server = serve(bundle=write_policy(tmp_path / "b", ALLOW_ALL))
    with pytest.raises(grpc.RpcError) as err:
        server.get_decision("01234567-89ab-7def-8123-456789abcdef")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as err:
        server.get_decision("")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_decision_ids_are_unique_and_time_ordered(serve: Serve, tmp_path: Path) -> None:
    server = serve(bundle=write_policy(tmp_path / "b", ALLOW_ALL))
    ids = [server.authorize(tool_request()).decision_id for _ in range(50)]
    assert len(set(ids)) == 50
    assert ids == sorted(ids)


def test_sigterm_drains_in_flight_requests_flushes_the_log_and_exits_0(serve: Serve, tmp_path: Path,
                                                                       hold: Hold) -> None:
    server = serve(bundle=write_policy(tmp_path / "b", HELD_ALLOW, json.dumps({"hold": hold.url})),
                   extra=["--workers", "6", "--eval-timeout-ms", "20000"])
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(server.authorize, tool_request(agent=f"held-{i}"), 60) for i in range(6)]
        wait_for(lambda: len(hold.arrived) == 6)  # all six are in flight, each held mid-evaluation
        server.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "shutting down: draining" in server.stderr)  # they finish during the drain
        hold.released.set()
        responses = [f.result() for f in futures]
    assert server.proc.wait(60) == 0
    assert [r.decision for r in responses] == [pb.DECISION_ALLOW] * 6
    db = sqlite3.connect(server.data_dir / "decisions.db")
    logged = {row[0] for row in db.execute("SELECT decision_id FROM decisions")}
    assert {r.decision_id for r in responses} <= logged
    assert not (server.data_dir / "decisions.db-wal").exists() or (
        server.data_dir / "decisions.db-wal").stat().st_size == 0


def test_sigterm_to_the_whole_process_group_drains_without_losing_the_engine_workers(tmp_path: Path,
                                                                                     hold: Hold) -> None:
    # systemd (KillMode=control-group), `timeout` and `kill -- -PGID` signal every process of the group: the
    # engine workers must leave shutdown to the server, which still needs them to drain in-flight requests.
    server = start_server(tmp_path / "data", bundle=write_policy(tmp_path / "b", HELD_ALLOW,
                                                                 json.dumps({"hold": hold.url})),
                          extra=["--workers", "4", "--eval-timeout-ms", "20000"], own_group=True)
    try:
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(server.authorize, tool_request(agent=f"held-{i}"), 60) for i in range(4)]
            wait_for(lambda: len(hold.arrived) == 4)  # every worker holds one, mid-evaluation
            os.killpg(server.proc.pid, signal.SIGTERM)
            wait_for(lambda: "shutting down: draining" in server.stderr)
            hold.released.set()
            responses = [f.result() for f in futures]
        assert server.proc.wait(60) == 0
    finally:
        server.terminate()
    assert [r.decision for r in responses] == [pb.DECISION_ALLOW] * 4
    server._pump.join(10)  # everything the server wrote before it exited
    assert "starting a replacement" not in server.stderr and "decision log flushed" in server.stderr


def test_same_request_id_and_request_gets_the_same_decision(serve: Serve, tmp_path: Path) -> None:
    server = serve(bundle=write_policy(tmp_path / "b", ALLOW_ALL))
    request = tool_request(arguments={"n": 1})
    request.request_id = "req-1"
    first = server.authorize(request)
    again = server.authorize(request)
    assert again.decision_id == first.decision_id
    changed = tool_request(arguments={"n": 2})
    changed.request_id = "req-1"
    other = server.authorize(changed)
    assert other.decision_id != first.decision_id
    assert server.get_decision(other.decision_id).previous_decision_id == first.decision_id


def test_serves_on_a_unix_socket(serve: Serve, tmp_path: Path) -> None:
    sock = tmp_path / "tollgate.sock"
    server = serve(bundle=write_policy(tmp_path / "b", ALLOW_ALL), listen=f"unix:{sock}")
    assert server.address == f"unix:{sock}"
    assert server.authorize(tool_request()).decision == pb.DECISION_ALLOW


def test_config_file_sets_every_flag_and_flags_override_it(tmp_path: Path) -> None:
    bundle = write_policy(tmp_path / "b", SLOW_ALLOW)
    config = tmp_path / "tollgate.yaml"
    config.write_text(f"bundle: {bundle}\ndata-dir: {tmp_path / 'from-config'}\neval_timeout_ms: 1\nworkers: 1\n")
    server = start_server(tmp_path / "from-flag", bundle=bundle, extra=["--config", str(config)])
    try:
        response = server.authorize(tool_request())
        # eval_timeout_ms came from the file: under 1 ms the policy cannot answer its smoke test, so it is refused
        # (activated, it would answer every request deadline_exceeded) and nothing is served.
        assert response.reasons[0].code == "no_bundle"
        wait_for(lambda: "ran past the evaluation deadline on 3 tries" in server.stderr, timeout=10,
                 what="the smoke test's three tries")
        assert "did not finish within 1." in server.stderr, server.stderr
        assert (tmp_path / "from-flag" / "decisions.db").exists()  # --data-dir beat data-dir
        assert not (tmp_path / "from-config").exists()
    finally:
        server.kill()


def test_config_file_with_an_unknown_key_is_refused_naming_it(tmp_path: Path) -> None:
    import subprocess

    from tests.conftest import TOLLGATE

    config = tmp_path / "bad.yaml"
    config.write_text("listen: 127.0.0.1:0\nbundel: rego\n")
    result = subprocess.run([*TOLLGATE, "serve", "--config", str(config)], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode != 0
    assert "bundel" in result.stderr


def test_health_and_reflection_work_for_generic_grpc_tools(serve: Serve, tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    server = serve(bundle=write_policy(tmp_path / "b", ALLOW_ALL))
    health = health_pb2_grpc.HealthStub(server.channel)
    for service in ("", "tollgate.v1.AuthorizationService"):
        status = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status
        assert status == health_pb2.HealthCheckResponse.SERVING
    stub = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    answers = list(stub.ServerReflectionInfo(iter([
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="tollgate.v1.AuthorizationService"),
    ]), timeout=5))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"tollgate.v1.AuthorizationService", "grpc.health.v1.Health"} <= names
    assert answers[1].file_descriptor_response.file_descriptor_proto


def test_serves_an_opa_bundle_tarball_with_the_revision_from_its_manifest(serve: Serve, tmp_path: Path) -> None:
    import io
    import json
    import tarfile

    from tests.conftest import REGO

    bundle = tmp_path / "bundle.tar.gz"
    with tarfile.open(bundle, "w:gz") as tar:
        manifest = json.dumps({"revision": "2026.11.21-1", "roots": ["tollgate", "agents", "catalog"]}).encode()
        info = tarfile.TarInfo(".manifest")
        info.size = len(manifest)
        tar.addfile(info, io.BytesIO(manifest))
        for path in sorted(REGO.rglob("*")):
            if path.is_file() and not path.name.endswith("_test.rego"):
                tar.add(path, arcname=str(path.relative_to(REGO)))
    server = serve(bundle=bundle)
    response = server.authorize(tool_request(arguments={"owner": "acme", "repo": "payments-api", "pullNumber": 1}))
    assert response.decision == pb.DECISION_ALLOW
    assert response.bundle_revision == "2026.11.21-1"
    assert server.get_decision(response.decision_id).bundle_revision == "2026.11.21-1"
