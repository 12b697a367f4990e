"""The HTTP(S) bundle source against a real local bundle service: conditional polling, limits, and the token,
headers and CA options as `tollgate serve` configures them."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.log_receiver import free_port
from tests.net.local_server import Answer, LocalServer, Seen
from tests.pki import TestCA
from tollgate.bundle import FetchError, HttpSource, open_source
from tollgate.net import HttpOptions
from tollgate.sidecar.config import ConfigError, ServeConfig

ARCHIVE = b"\x1f\x8b pretend this is a bundle"
ETAG = '"v1"'


def _service(seen: Seen) -> Answer:
    if seen.headers.get("If-None-Match") == ETAG:
        return Answer(status=304, body=b"", headers=(("ETag", ETAG),))
    return Answer(body=ARCHIVE, headers=(("ETag", ETAG), ("Content-Type", "application/gzip")))


@pytest.fixture
def ca(tmp_path: Path) -> TestCA:
    return TestCA(tmp_path / "pki")


@pytest.fixture
def service(ca: TestCA) -> Iterator[LocalServer]:
    server = LocalServer(script=_service, tls=ca.server()).start()
    yield server
    server.stop()


def _files(tmp_path: Path, ca: TestCA, **extra: Any) -> ServeConfig:
    (tmp_path / "token").write_text("  bundle-t0k3n\n")
    (tmp_path / "headers").write_text("# the CDN's key\nX-Api-Key: k-123\n")
    return ServeConfig(bundle="https://127.0.0.1/prod/bundle.tar.gz", bundle_token_file=str(tmp_path / "token"),
                       bundle_headers_file=str(tmp_path / "headers"), bundle_ca_file=str(ca.cert), **extra).validate()


def test_a_private_service_is_polled_with_its_token_headers_and_ca_and_answers_304_once_fetched(
        tmp_path: Path, ca: TestCA, service: LocalServer) -> None:
    options = _files(tmp_path, ca).bundle_http()
    assert options == HttpOptions(token="bundle-t0k3n", headers=(("X-Api-Key", "k-123"),), ca_file=str(ca.cert))
    source = open_source(f"{service.url}/prod/bundle.tar.gz", http=options)
    try:
        fetched = source.fetch("")
        assert fetched is not None
        assert (fetched.archive, fetched.etag) == (ARCHIVE, ETAG)
        assert fetched.digest == hashlib.sha256(ARCHIVE).hexdigest()
        assert source.fetch(ETAG) is None
    finally:
        source.close()
    first, second = service.seen
    assert first.headers["Authorization"] == "Bearer bundle-t0k3n" and first.headers["X-Api-Key"] == "k-123"
    assert "If-None-Match" not in first.headers and second.headers["If-None-Match"] == ETAG
    assert first.headers["Accept-Encoding"] == "identity"


def test_without_the_ca_file_the_poll_fails_with_a_hint(service: LocalServer) -> None:
    source = HttpSource(f"{service.url}/prod/bundle.tar.gz")
    with pytest.raises(FetchError, match=r"unreachable .*CERTIFICATE_VERIFY_FAILED.*hint: bundle_ca_file") as failed:
        source.fetch("")
    assert failed.value.reason == "download"
    source.close()


@pytest.mark.parametrize(("answer", "message", "reason"), [
    (Answer(status=503, body=b"down"), "HTTP 503 Service Unavailable", "download"),
    (Answer(body=b"x" * 101), "101 bytes, over the 100-byte limit", "too_large"),
    (Answer(body=b"x" * 101, announce_length=False), "larger than the 100-byte limit", "too_large"),
], ids=["server-error", "announced-too-large", "too-large-as-it-arrives"])
def test_a_poll_that_gets_no_bundle_says_why(answer: Answer, message: str, reason: str) -> None:
    server = LocalServer(script=lambda seen: answer).start()
    source = HttpSource(f"{server.url}/b.tar.gz", size_limit=100)
    try:
        with pytest.raises(FetchError, match=message) as failed:
            source.fetch("")
        assert failed.value.reason == reason
    finally:
        source.close()
        server.stop()


def test_an_unreachable_service_and_a_slow_one_are_told_apart() -> None:
    with pytest.raises(FetchError, match=r"unreachable \(ConnectionRefusedError"):
        HttpSource(f"http://127.0.0.1:{free_port()}/b.tar.gz").fetch("")
    slow = LocalServer(script=lambda seen: Answer(body=b"x" * 40 * 1024, drip=1024, drip_pause=0.1)).start()
    try:
        with pytest.raises(FetchError, match="download took longer than 1s"):
            HttpSource(f"{slow.url}/b.tar.gz", timeout=1.0).fetch("")
    finally:
        slow.stop()


def test_a_ca_file_that_cannot_be_loaded_fails_the_poll_not_the_process(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    source = HttpSource("https://127.0.0.1:1/b.tar.gz", http=HttpOptions(ca_file=str(tmp_path / "ca.pem")))
    with pytest.raises(FetchError, match="cannot load the CA file"):
        source.fetch("")


@pytest.mark.parametrize(("settings", "message"), [
    ({"bundle": "rego", "bundle_token_file": "/t"}, "bundle_token_file: needs an http(s):// bundle"),
    ({"bundle": "b.tar.gz", "bundle_headers_file": "/h"}, "bundle_headers_file: needs an http(s):// bundle"),
    ({"bundle": "http://b/x.tar.gz", "bundle_ca_file": "/ca"}, "bundle_ca_file: needs an https:// bundle"),
    ({"bundle": "https://b/x.tar.gz", "bundle_ca_file": "/nowhere/ca.pem"},
     "bundle_ca_file: cannot load '/nowhere/ca.pem' as PEM CA certificates (No such file or directory)"),
], ids=["token-without-service", "headers-without-service", "ca-over-plain-http", "ca-missing"])
def test_bad_bundle_service_settings_name_the_key(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ServeConfig(**settings).validate()


@pytest.mark.parametrize(("content", "message"), [
    ("X-Api-Key k-123\n", "headers:1: not a `Name: value` header line"),
    ("If-None-Match: *\n", "headers:1: If-None-Match is set by the bundle poller itself"),
    ("Authorization: Basic eA==\n", "has an Authorization line and bundle_token_file gives a token too"),
], ids=["no-colon", "own-header", "two-credentials"])
def test_a_bad_bundle_headers_file_names_the_line(tmp_path: Path, ca: TestCA, content: str, message: str) -> None:
    config = _files(tmp_path, ca)
    (tmp_path / "headers").write_text(content)
    with pytest.raises(ConfigError, match=f"bundle_headers_file: .*{message}"):
        config.bundle_http()


def test_an_empty_token_file_is_refused(tmp_path: Path, ca: TestCA) -> None:
    config = _files(tmp_path, ca)
    (tmp_path / "token").write_text("\n")
    with pytest.raises(ConfigError, match=r"bundle_token_file: .* is empty"):
        config.bundle_http()
