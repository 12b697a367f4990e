"""Live bundle updates: a real `tollgate serve` polling a real HTTP bundle service (and a directory)."""

from __future__ import annotations

import http.server
import itertools
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.conftest import Server, tool_request, wait_for, write_policy
from tollgate.bundle import build_bundle, sign_bundle
from tollgate.bundle._archive import read_archive, write_archive
from tollgate.v1 import admin_pb2, admin_pb2_grpc
from tollgate.v1 import authorization_pb2 as pb
from tollgate.v1 import authorization_pb2_grpc as pb_grpc

# Allows everything and says which revision decided, so an answer proves which engine made it.
POLICY = """
package tollgate

decision := {{"decision": "allow", "reasons": [{{"code": "revision", "message": "{revision}"}}]}}
"""


class BundleService:
    """A static bundle service like any web server or object store: ETag, If-None-Match, 304."""

    def __init__(self) -> None:
        self.body: bytes | None = None
        self.etag = ""
        self.down = False  # answer 503 to everything
        self.log: list[tuple[str, int]] = []  # (If-None-Match sent, status answered)
        self._lock = threading.Lock()
        service = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                sent = self.headers.get("If-None-Match", "")
                with service._lock:
                    body, etag, down = service.body, service.etag, service.down
                if down or body is None:
                    status = 503 if down else 404
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif sent and sent == etag:
                    status = 304
                    self.send_response(304)
                    self.send_header("ETag", etag)
                    self.end_headers()
                else:
                    status = 200
                    self.send_response(200)
                    self.send_header("ETag", etag)
                    self.send_header("Content-Type", "application/gzip")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                with service._lock:
                    service.log.append((sent, status))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/bundles/prod/bundle.tar.gz"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def publish(self, body: bytes) -> None:
        import hashlib

        with self._lock:
            self.body = body
            self.etag = f'"{hashlib.sha256(body).hexdigest()[:20]}"'

    def requests(self) -> list[tuple[str, int]]:
        with self._lock:
            return list(self.log)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def service() -> Iterator[BundleService]:
    s = BundleService()
    yield s
    s.close()


@pytest.fixture
def make_bundle(tmp_path: Path) -> Callable[..., bytes]:
    """make_bundle(revision, policy=POLICY, key=None) → the bytes of a built (and maybe signed) bundle."""

    def make(revision: str, policy: str = POLICY, key: ec.EllipticCurvePrivateKey | None = None) -> bytes:
        src = write_policy(tmp_path / f"src-{revision}", policy.format(revision=revision))
        out = tmp_path / f"{revision}.tar.gz"
        build_bundle(src, out, revision=revision)
        if key is not None:
            sign_bundle(out, key, keyid="ci-2026")
        return out.read_bytes()

    return make


@pytest.fixture
def signing_key(tmp_path: Path) -> tuple[ec.EllipticCurvePrivateKey, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    keys = tmp_path / "trusted"
    keys.mkdir()
    (keys / "ci-2026.pem").write_bytes(key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return key, keys


def status(server: Server) -> admin_pb2.Status:
    result: admin_pb2.Status = admin_pb2_grpc.AdminServiceStub(server.channel).GetStatus(
        admin_pb2.GetStatusRequest(), timeout=10, metadata=server.admin_metadata)
    return result


def health(server: Server) -> int:
    response = health_pb2_grpc.HealthStub(server.channel).Check(
        health_pb2.HealthCheckRequest(service="tollgate.v1.AuthorizationService"), timeout=10)
    return int(response.status)


def revision_of(server: Server) -> str:
    return status(server).bundle.active_revision


def _tamper(archive: bytes) -> bytes:
    files = read_archive(archive)
    files["tollgate/decision.rego"] += b"\n# an edit after signing\n"
    return write_archive(files)


# -- conditional polling -----------------------------------------------------------------------------------


def test_conditional_polling_sends_if_none_match_and_does_not_download_again_on_304(
        serve, service: BundleService, make_bundle) -> None:
    service.publish(make_bundle("v1"))
    server = serve(bundle=service.url, extra=["--bundle-poll", "0.2"])
    assert server.authorize(tool_request()).bundle_revision == "v1"
    wait_for(lambda: len(service.requests()) >= 5, what="five polls")
    log = service.requests()
    assert log[0] == ("", 200)  # the first fetch is unconditional
    assert all(entry == (service.etag, 304) for entry in log[1:]), log  # then only conditional GETs, answered 304
    bundle = status(server).bundle
    assert bundle.state == admin_pb2.SOURCE_STATE_OK
    assert bundle.etag == service.etag
    assert bundle.last_activation.revision == "v1"
    assert bundle.source == service.url
    # A new revision under a new ETag is downloaded once and activated.
    service.publish(make_bundle("v2"))
    wait_for(lambda: revision_of(server) == "v2", what="v2 to activate")
    assert [s for _, s in service.requests()].count(200) == 2


# -- atomic activation under load ---------------------------------------------------------------------------


def test_revision_switch_under_load_fails_no_request_and_attributes_every_decision(
        serve, service: BundleService, make_bundle) -> None:
    service.publish(make_bundle("v1"))
    server = serve(bundle=service.url, extra=["--bundle-poll", "0.2", "--workers", "2"])
    answers: list[list[pb.AuthorizeResponse]] = [[] for _ in range(6)]
    errors: list[BaseException] = []
    stop = threading.Event()

    def client(n: int) -> None:
        channel = grpc.insecure_channel(server.address)
        stub = pb_grpc.AuthorizationServiceStub(channel)
        try:
            while not stop.is_set():
                answers[n].append(stub.Authorize(tool_request(session_id=f"c{n}"), timeout=10))
        except BaseException as exc:  # any failed request fails the test
            errors.append(exc)
        finally:
            channel.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(len(answers))]
    for t in threads:
        t.start()
    # Enough requests on each side of the switch, counted rather than timed (a busy machine answers fewer a second).
    wait_for(lambda: bool(errors) or all(len(a) >= 30 for a in answers), what="30 answers per client on v1")
    service.publish(make_bundle("v2"))
    wait_for(lambda: bool(errors) or all(a and a[-1].bundle_revision == "v2" for a in answers),
             what="every client on v2")
    on_v1 = [len(a) for a in answers]
    wait_for(lambda: bool(errors) or all(len(a) >= n + 25 for a, n in zip(answers, on_v1, strict=True)),
             what="25 more answers per client on v2")
    stop.set()
    for t in threads:
        t.join(20)
    assert errors == []
    for per_client in answers:
        revisions = [a.bundle_revision for a in per_client]
        assert revisions[0] == "v1" and revisions[-1] == "v2"
        # Each client sees v1 until the switch and v2 after it, never back.
        assert revisions == sorted(revisions)
        for a in per_client:
            assert a.decision == pb.DECISION_ALLOW
            assert a.reasons[0].message == a.bundle_revision  # made by the engine of the revision it names
    # In the decision log, in the order the decisions were made: every one before the swap is v1, every one
    # after it v2 — the switch happens exactly once.
    server.terminate()
    db = sqlite3.connect(server.data_dir / "decisions.db")
    rows = db.execute("SELECT bundle_revision, decision_id FROM decisions ORDER BY timestamp, seq").fetchall()
    logged = [r for r, _ in rows]
    assert len(logged) == sum(len(a) for a in answers) > 300
    switches = sum(1 for a, b in itertools.pairwise(logged) if a != b)
    assert (logged[0], logged[-1], switches) == ("v1", "v2", 1)
    by_id = dict((d, r) for r, d in rows)
    assert all(by_id[a.decision_id] == a.bundle_revision for per_client in answers for a in per_client)


# -- bad bundles --------------------------------------------------------------------------------------------


def test_tampered_and_corrupt_bundles_are_refused_while_the_last_good_one_serves(
        serve, service: BundleService, make_bundle, signing_key) -> None:
    key, keys = signing_key
    service.publish(make_bundle("v1", key=key))
    server = serve(bundle=service.url, extra=["--bundle-poll", "0.2", "--bundle-keys", str(keys)])
    first = status(server).bundle
    assert (first.active_revision, first.last_activation.signed_by) == ("v1", "ci-2026")

    service.publish(_tamper(make_bundle("v2", key=key)))
    wait_for(lambda: status(server).bundle.last_error.reason == "signature", what="the tampered bundle refused")
    bundle = status(server).bundle
    assert bundle.state == admin_pb2.SOURCE_STATE_ERROR
    assert "modified after signing" in bundle.last_error.message
    assert bundle.active_revision == "v1"
    assert server.authorize(tool_request()).bundle_revision == "v1"
    assert health(server) == health_pb2.HealthCheckResponse.SERVING

    service.publish(b"\x1f\x8b this is not a bundle")
    wait_for(lambda: status(server).bundle.last_error.reason == "corrupt", what="the corrupt bundle refused")
    assert status(server).bundle.active_revision == "v1"
    assert server.authorize(tool_request()).bundle_revision == "v1"

    service.publish(make_bundle("v3", key=key))  # a good one after the bad ones
    wait_for(lambda: revision_of(server) == "v3", what="v3 to activate")
    assert status(server).bundle.state == admin_pb2.SOURCE_STATE_OK
    assert server.authorize(tool_request()).bundle_revision == "v3"
    assert "refused a new revision" in server.stderr


def test_a_bundle_that_does_not_compile_or_fails_the_smoke_test_is_refused(
        serve, service: BundleService, make_bundle) -> None:
    service.publish(make_bundle("v1"))
    server = serve(bundle=service.url, extra=["--bundle-poll", "0.2"])
    service.publish(make_bundle("v2", policy="package tollgate\n\ndecision := nope(1) # {revision}\n"))
    wait_for(lambda: status(server).bundle.last_error.reason == "compile", what="the compile error")
    assert "undefined function" in status(server).bundle.last_error.message
    service.publish(make_bundle("v3", policy='package tollgate\n\ndecision := "allow" # {revision}\n'))
    wait_for(lambda: status(server).bundle.last_error.reason == "smoke_test", what="the smoke test failure")
    assert "contract" in status(server).bundle.last_error.message
    assert server.authorize(tool_request()).bundle_revision == "v1"


def test_require_signatures_refuses_an_unsigned_bundle_until_a_signed_one_arrives(
        serve, service: BundleService, make_bundle, signing_key) -> None:
    key, keys = signing_key
    service.publish(make_bundle("v1"))
    server = serve(bundle=service.url, extra=["--bundle-poll", "0.2", "--bundle-keys", str(keys),
                                              "--require-signatures"])
    response = server.authorize(tool_request())
    assert (response.decision, response.reasons[0].code) == (pb.DECISION_DENY, "no_bundle")
    assert health(server) == health_pb2.HealthCheckResponse.NOT_SERVING
    bundle = status(server).bundle
    assert (bundle.state, bundle.last_error.reason) == (admin_pb2.SOURCE_STATE_ERROR, "unsigned")
    assert not status(server).serving

    service.publish(make_bundle("v2", key=key))
    wait_for(lambda: revision_of(server) == "v2", what="the signed bundle")
    assert health(server) == health_pb2.HealthCheckResponse.SERVING
    assert server.authorize(tool_request()).bundle_revision == "v2"


# -- persistence --------------------------------------------------------------------------------------------


def test_starts_from_the_persisted_bundle_when_the_service_is_down(
        serve, service: BundleService, make_bundle, tmp_path: Path) -> None:
    data = tmp_path / "data"
    service.publish(make_bundle("v1"))
    first = serve(bundle=service.url, data_dir=data, extra=["--bundle-poll", "0.2"])
    assert first.authorize(tool_request()).bundle_revision == "v1"
    assert first.terminate() == 0
    assert (data / "bundles" / "last-good.tar.gz").read_bytes() == service.body

    service.down = True
    server = serve(bundle=service.url, data_dir=data, extra=["--bundle-poll", "0.2"])
    assert server.authorize(tool_request()).bundle_revision == "v1"
    assert health(server) == health_pb2.HealthCheckResponse.SERVING
    bundle = status(server).bundle
    assert bundle.last_activation.from_persisted
    assert (bundle.state, bundle.last_error.reason) == (admin_pb2.SOURCE_STATE_ERROR, "download")
    assert "503" in bundle.last_error.message

    # It keeps polling: when the service is back, it asks with the persisted ETag and gets a 304 ...
    service.down = False
    wait_for(lambda: status(server).bundle.state == admin_pb2.SOURCE_STATE_OK, what="the service back")
    assert service.requests()[-1] == (service.etag, 304)
    # ... and a new revision is picked up.
    service.publish(make_bundle("v2"))
    wait_for(lambda: revision_of(server) == "v2", what="v2")


def test_a_url_source_with_nothing_persisted_and_the_service_down_fails_closed_until_it_is_up(
        serve, service: BundleService, make_bundle) -> None:
    service.down = True
    server = serve(bundle=service.url, extra=["--bundle-poll", "0.2"])
    response = server.authorize(tool_request())
    assert (response.decision, response.reasons[0].code) == (pb.DECISION_DENY, "no_bundle")
    assert health(server) == health_pb2.HealthCheckResponse.NOT_SERVING
    assert status(server).bundle.state == admin_pb2.SOURCE_STATE_ERROR
    service.publish(make_bundle("v1"))
    service.down = False
    wait_for(lambda: revision_of(server) == "v1", timeout=30, what="the first bundle")  # after a backoff
    assert health(server) == health_pb2.HealthCheckResponse.SERVING
    assert server.authorize(tool_request()).decision == pb.DECISION_ALLOW


# -- local sources ------------------------------------------------------------------------------------------


def test_a_directory_source_picks_up_an_edit_without_a_restart(serve, tmp_path: Path) -> None:
    policy = write_policy(tmp_path / "rego", POLICY.format(revision="before"))
    server = serve(bundle=policy)
    assert server.authorize(tool_request()).reasons[0].message == "before"
    first = server.authorize(tool_request()).bundle_revision
    write_policy(policy, POLICY.format(revision="after the edit"))
    wait_for(lambda: server.authorize(tool_request()).reasons[0].message == "after the edit", what="the edit")
    assert server.authorize(tool_request()).bundle_revision != first
    # An edit that breaks the policy is refused; the last good one keeps serving.
    write_policy(policy, "package tollgate\n\ndecision := nope(\n")
    wait_for(lambda: status(server).bundle.state == admin_pb2.SOURCE_STATE_ERROR, what="the broken edit refused")
    assert server.authorize(tool_request()).reasons[0].message == "after the edit"


def test_a_tarball_source_picks_up_a_replaced_file(serve, tmp_path: Path, make_bundle) -> None:
    path = tmp_path / "bundle.tar.gz"
    path.write_bytes(make_bundle("v1"))
    server = serve(bundle=path)
    assert server.authorize(tool_request()).bundle_revision == "v1"
    tmp = tmp_path / "next.tar.gz"
    tmp.write_bytes(make_bundle("v2"))
    tmp.replace(path)
    wait_for(lambda: server.authorize(tool_request()).bundle_revision == "v2", what="v2")



def test_a_download_past_the_size_limit_is_refused(serve, service: BundleService, make_bundle) -> None:
    service.publish(make_bundle("v1"))
    server = serve(bundle=service.url, extra=["--bundle-poll", "0.2", "--bundle-size-limit", "100"])
    bundle = status(server).bundle
    assert (bundle.state, bundle.last_error.reason) == (admin_pb2.SOURCE_STATE_ERROR, "too_large")
    assert "100-byte limit" in bundle.last_error.message
    assert server.authorize(tool_request()).reasons[0].code == "no_bundle"


def test_a_gzip_bomb_is_refused_by_the_uncompressed_size_limit(serve, service: BundleService) -> None:
    bomb = write_archive({".manifest": b'{"revision": "bomb"}', "big/data.json": b" " * 8_000_000 + b"{}"})
    assert len(bomb) < 100_000
    service.publish(bomb)
    server = serve(bundle=service.url, extra=["--bundle-size-limit", "1000000"])
    bundle = status(server).bundle
    assert (bundle.last_error.reason, bundle.active_revision) == ("corrupt", "")
    assert "uncompressed size exceeds the 1000000-byte limit" in bundle.last_error.message


# -- status command and metrics -----------------------------------------------------------------------------


def test_tollgate_status_shows_the_active_revision_and_the_last_error(
        serve, service: BundleService, make_bundle) -> None:
    import json
    import subprocess

    from tests.conftest import ADMIN_TOKEN, TOLLGATE

    service.publish(make_bundle("v1"))
    server = serve(bundle=service.url, extra=["--bundle-poll", "0.2"])
    service.publish(b"garbage")
    wait_for(lambda: status(server).bundle.last_error.reason == "corrupt", what="the refusal")
    shown = subprocess.run([*TOLLGATE, "status", "--server", server.address, "--token", ADMIN_TOKEN],
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 0, shown.stderr
    lines = dict(line.split(None, 1) for line in shown.stdout.splitlines() if not line.startswith("last "))
    assert lines["serving"] == "yes"
    assert lines["revision"] == "v1"
    assert lines["source"] == f"{service.url}  [ERROR]"
    assert " corrupt: " in shown.stdout and "not a readable .tar.gz" in shown.stdout
    as_json = subprocess.run([*TOLLGATE, "status", "--server", server.address, "--json"], capture_output=True,
                             text=True, timeout=30, env={**os.environ, "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN})
    doc = json.loads(as_json.stdout)
    assert doc["bundle"]["last_activation"]["revision"] == "v1"
    assert doc["bundle"]["state"] == "SOURCE_STATE_ERROR"


def test_tollgate_status_exits_2_when_nothing_is_served(serve, service: BundleService) -> None:
    import subprocess

    from tests.conftest import ADMIN_TOKEN, TOLLGATE

    service.down = True
    server = serve(bundle=service.url)
    shown = subprocess.run([*TOLLGATE, "status", "--server", server.address, "--token", ADMIN_TOKEN],
                           capture_output=True, text=True, timeout=30)
    assert shown.returncode == 2
    assert "no (every request is denied: no_bundle)" in shown.stdout


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _scrape(port: int) -> dict[str, float]:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    return samples


@pytest.mark.clock
def test_prometheus_metrics_count_activations_failures_and_decisions_by_revision(
        serve, service: BundleService, make_bundle) -> None:
    port = _free_port()
    service.publish(make_bundle("v1"))
    server = serve(bundle=service.url, extra=["--bundle-poll", "0.2", "--metrics-listen", f"127.0.0.1:{port}"])
    for _ in range(3):
        server.authorize(tool_request())
    service.publish(b"garbage")
    wait_for(lambda: status(server).bundle.last_error.reason == "corrupt", what="the refusal")
    service.publish(make_bundle("v2"))
    wait_for(lambda: revision_of(server) == "v2", what="v2")
    server.authorize(tool_request())
    m = _scrape(port)
    assert m["tollgate_bundle_activations_total"] == 2
    assert m['tollgate_bundle_activation_failures_total{reason="corrupt"}'] == 1
    assert m['tollgate_decisions_total{decision="allow",revision="v1"}'] == 3
    assert m['tollgate_decisions_total{decision="allow",revision="v2"}'] == 1
    digest = status(server).bundle.last_activation.digest
    # Label names in the order the exposition writes them: sorted.
    assert m[f'tollgate_bundle_active_info{{digest="{digest}",revision="v2",source="{service.url}"}}'] == 1
    # Within the last minute on the server's clock (not the test's: it may be started elsewhere in time).
    earliest, latest = server.clock_range()
    assert earliest.timestamp() - 60 < m["tollgate_bundle_last_activation_timestamp_seconds"] <= latest.timestamp()


def test_a_directory_that_appears_after_start_up_is_picked_up(serve, tmp_path: Path) -> None:
    server = serve(bundle=tmp_path / "not-yet")
    assert server.authorize(tool_request()).reasons[0].code == "no_bundle"
    assert "no such directory" in status(server).bundle.last_error.message
    write_policy(tmp_path / "not-yet", POLICY.format(revision="arrived"))
    wait_for(lambda: status(server).serving, what="the directory")
    assert server.authorize(tool_request()).reasons[0].message == "arrived"
    assert health(server) == health_pb2.HealthCheckResponse.SERVING


def test_a_metrics_port_in_use_stops_start_up_with_a_message(tmp_path: Path) -> None:
    import socket
    import subprocess

    from tests.conftest import TOLLGATE

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([*TOLLGATE, "serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"),
                                 "--bundle", str(write_policy(tmp_path / "b", POLICY.format(revision="x"))),
                                 "--metrics-listen", f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert f"cannot serve metrics on 127.0.0.1:{port}" in result.stderr


def test_serve_help_lists_the_bundle_source_flags() -> None:
    import subprocess

    from tests.conftest import TOLLGATE

    result = subprocess.run([*TOLLGATE, "serve", "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    for flag in ("--bundle-poll", "--bundle-keys", "--require-signatures", "--bundle-size-limit",
                 "--bundle-timeout", "--metrics-listen"):
        assert flag in result.stdout
