"""The one outbound HTTP client, against real local HTTP and HTTPS servers (certificates from tests/pki.py)."""

from __future__ import annotations

import gzip
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.log_receiver import free_port
from tests.net.local_server import Answer, LocalServer, Seen
from tests.pki import TestCA
from tollgate.net import HttpClient, HttpOptions, RequestFailed


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


@pytest.fixture
def https(ca: TestCA) -> Iterator[LocalServer]:
    server = LocalServer(tls=ca.server()).start()
    yield server
    server.stop()


@pytest.fixture
def http() -> Iterator[LocalServer]:
    server = LocalServer().start()
    yield server
    server.stop()


def test_a_private_ca_file_is_trusted_and_the_token_and_headers_go_with_every_request(
        https: LocalServer, ca: TestCA) -> None:
    options = HttpOptions(token="t0k3n", headers=(("X-Scope-OrgID", "tenant-7"),), ca_file=str(ca.cert))
    with HttpClient(options) as client:
        answer = client.request("GET", f"{https.url}/bundle.tar.gz", timeout=10)
    assert (answer.status, answer.ok, answer.body) == (200, True, b"{}")
    headers = https.seen[0].headers
    assert headers["Authorization"] == "Bearer t0k3n"
    assert headers["X-Scope-OrgID"] == "tenant-7"
    assert headers["User-Agent"] == "tollgate"


def test_without_the_ca_file_a_private_ca_is_not_trusted(https: LocalServer) -> None:
    with HttpClient(HttpOptions()) as client, pytest.raises(RequestFailed) as failed:
        client.request("GET", https.url, timeout=10)
    assert failed.value.connect and isinstance(failed.value.cause, ssl.SSLCertVerificationError)
    assert "CERTIFICATE_VERIFY_FAILED" in str(failed.value)
    assert https.seen == []


def test_a_certificate_from_another_ca_is_refused_even_with_a_ca_file(https: LocalServer, tmp_path: Path) -> None:
    other = TestCA(tmp_path / "other", name="another CA")
    with HttpClient(HttpOptions(ca_file=str(other.cert))) as client, pytest.raises(RequestFailed) as failed:
        client.request("GET", https.url, timeout=10)
    assert isinstance(failed.value.cause, ssl.SSLCertVerificationError)


def test_a_headers_file_line_replaces_the_tokens_authorization_whatever_its_case(http: LocalServer) -> None:
    options = HttpOptions(token="t0k3n", headers=(("authorization", "Basic dXNlcjpwYXNz"),))
    with HttpClient(options) as client:
        client.request("GET", http.url, timeout=10)
    sent = {k.lower(): v for k, v in http.seen[0].headers.items()}
    assert sent["authorization"] == "Basic dXNlcjpwYXNz"
    assert [k.lower() for k in http.seen[0].headers].count("authorization") == 1


def test_requests_to_one_destination_share_a_kept_alive_connection(http: LocalServer) -> None:
    with HttpClient(HttpOptions()) as client:
        for i in range(5):
            assert client.request("POST", f"{http.url}/logs", body=b"[%d]" % i, timeout=10).ok
    assert [s.body for s in http.seen] == [b"[0]", b"[1]", b"[2]", b"[3]", b"[4]"]
    assert {s.connection for s in http.seen} == {1}


def test_a_body_over_the_read_limit_is_refused_by_its_content_length_or_as_it_arrives(http: LocalServer) -> None:
    big = b"x" * 5000
    http.script = lambda seen: Answer(body=big, announce_length=seen.path == "/announced")
    with HttpClient(HttpOptions()) as client:
        announced = client.request("GET", f"{http.url}/announced", timeout=10, read_limit=1000)
        unannounced = client.request("GET", f"{http.url}/unannounced", timeout=10, read_limit=1000)
        whole = client.request("GET", f"{http.url}/unannounced", timeout=10, read_limit=5000)
    assert (announced.truncated, announced.body, announced.headers["Content-Length"]) == (True, b"", "5000")
    assert "Content-Length" not in unannounced.headers
    assert (unannounced.truncated, unannounced.body) == (True, big[:1000])
    assert (whole.truncated, whole.body) == (False, big)


def test_a_server_that_drips_its_answer_is_cut_off_at_the_whole_exchanges_deadline(http: LocalServer) -> None:
    # Twenty chunks 0.2 s apart: each read well within its timeout, the whole (4 s) past the 1 s deadline.
    http.script = lambda seen: Answer(body=b"x" * 20 * 65536, drip=65536, drip_pause=0.2)
    started = time.monotonic()
    with HttpClient(HttpOptions()) as client, pytest.raises(RequestFailed) as failed:
        client.request("GET", http.url, timeout=1.0, read_limit=2_000_000)
    assert str(failed.value) == "the exchange took longer than its 1s deadline" and failed.value.timed_out
    assert time.monotonic() - started < 3


def test_bodies_come_back_as_sent_never_decoded(http: LocalServer) -> None:
    archive = gzip.compress(b"a tar file")
    http.script = lambda seen: Answer(body=archive, headers=(("Content-Encoding", "gzip"),))
    with HttpClient(HttpOptions()) as client:
        assert client.request("GET", http.url, timeout=10).body == archive


def test_redirects_are_followed_only_when_asked_and_the_token_stays_with_its_host(http: LocalServer) -> None:
    other = LocalServer().start()
    try:
        def script(seen: Seen) -> Answer:
            if seen.path == "/moved":
                return Answer(status=302, body=b"", headers=(("Location", f"{other.url}/there"),))
            return Answer()

        http.script = script
        with HttpClient(HttpOptions(token="t0k3n")) as client:
            assert client.request("GET", f"{http.url}/moved", timeout=10).status == 302
        with HttpClient(HttpOptions(token="t0k3n"), follow_redirects=True) as client:
            assert client.request("GET", f"{http.url}/moved", timeout=10).status == 200
        assert [s.path for s in other.seen] == ["/there"]
        assert "Authorization" not in other.seen[0].headers  # another host (port): no credentials
    finally:
        other.stop()


def test_no_answer_is_reported_by_its_cause_not_the_librarys_wrapper() -> None:
    with HttpClient(HttpOptions()) as client, pytest.raises(RequestFailed) as failed:
        client.request("GET", f"http://127.0.0.1:{free_port()}/", timeout=5)
    assert str(failed.value) == "ConnectionRefusedError: [Errno 111] Connection refused"
    assert failed.value.connect and not failed.value.timed_out


def test_a_ca_file_that_cannot_be_loaded_is_an_error_at_once(tmp_path: Path) -> None:
    (tmp_path / "not-a-ca.pem").write_text("hello\n")
    with pytest.raises(ssl.SSLError):
        HttpClient(HttpOptions(ca_file=str(tmp_path / "not-a-ca.pem")))
    with pytest.raises(FileNotFoundError):
        HttpClient(HttpOptions(ca_file=str(tmp_path / "missing.pem")))


def test_the_values_import_without_an_http_stack() -> None:
    probe = ("import sys; from tollgate.net import HttpOptions, Response, RequestFailed; "
             "print('httpx2' in sys.modules)")
    ran = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert ran.stdout.strip() == "False"
