"""The remote OPA engine against an OPA-REST-compatible STAND-IN (tests/opa_standin.py: a real HTTP server
evaluating the repo's rego/ with the embedded engine; no OPA server binary can be installed here)."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.opa_standin import OpaStandIn
from tollgate.engine import UNDEFINED, EngineConfig, EngineError, EvaluationTimeout, WorkerPoolEngine
from tollgate.engine._remote import UNKNOWN_REVISION, RemoteOpaEngine, client_context, is_remote, parse_target

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "decisions.jsonl"


def _inputs() -> list[bytes]:
    lines = SAMPLES.read_text().splitlines()
    return [json.dumps(json.loads(line)["input"]).encode() for line in lines if line.strip()]


@pytest.fixture
def standin() -> Iterator[OpaStandIn]:
    with OpaStandIn() as server:
        yield server


def _run(main: Callable[[RemoteOpaEngine], Awaitable[None]], standin_url: str, **options: Any) -> None:
    """Run main with a started remote engine for standin_url (closed after)."""
    async def go() -> None:
        engine = RemoteOpaEngine(parse_target(standin_url), **options)
        await engine.start()
        try:
            await main(engine)
        finally:
            await engine.close()

    asyncio.run(go())


def test_parse_target() -> None:
    assert parse_target("opa+http://opa.internal:8181").url == "http://opa.internal:8181"
    target = parse_target("opa+https://opa.example.com")
    assert (target.host, target.port, target.tls) == ("opa.example.com", 443, True)
    assert is_remote("opa+http://h:1") and not is_remote("embedded")
    for bad in ("http://h:1", "opa+http://", "opa+http://h:1/v1/data", "opa+http://u:p@h:1"):
        with pytest.raises(ValueError):
            parse_target(bad)


def test_answers_equal_the_embedded_engine_on_the_samples(standin: OpaStandIn) -> None:
    inputs = _inputs()
    assert len(inputs) > 10

    async def main(remote: RemoteOpaEngine) -> None:
        embedded = WorkerPoolEngine(standin.bundle, EngineConfig(workers=1, eval_timeout=5.0))
        await embedded.start()
        try:
            for raw in inputs:
                want = await embedded.evaluate_with_mask(raw)
                got = await remote.evaluate_with_mask(raw)
                assert got.value == want.value, raw
                assert got.mask == want.mask, raw
                assert await remote.evaluate(raw) == want.value
        finally:
            await embedded.close()
        assert remote.revision == standin.bundle.revision

    _run(main, standin.engine_url, eval_timeout=2.0)


def test_revision_from_the_bundle_manifest_without_the_status_plugin(standin: OpaStandIn) -> None:
    standin.status = False

    async def main(engine: RemoteOpaEngine) -> None:
        assert engine.revision == standin.bundle.revision
        assert "GET /v1/data/system/bundles" in standin.requests

    _run(main, standin.engine_url)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_opa_is_an_engine_error() -> None:
    async def main(engine: RemoteOpaEngine) -> None:
        assert engine.revision == UNKNOWN_REVISION
        assert not await engine.healthy()
        with pytest.raises(EngineError) as caught:
            await engine.evaluate_with_mask(_inputs()[0])
        assert caught.value.code == "engine_error"

    _run(main, f"opa+http://127.0.0.1:{_closed_port()}", eval_timeout=2.0)


def test_slow_opa_runs_past_the_deadline(standin: OpaStandIn) -> None:
    async def main(engine: RemoteOpaEngine) -> None:
        standin.delay = 1.0
        with pytest.raises(EvaluationTimeout):
            await engine.evaluate_with_mask(_inputs()[0])

    _run(main, standin.engine_url, eval_timeout=0.05)


def test_health_follows_opa(standin: OpaStandIn) -> None:
    async def main(engine: RemoteOpaEngine) -> None:
        assert await engine.healthy()
        standin.healthy = False
        assert not await engine.healthy()

    _run(main, standin.engine_url)


def test_an_undefined_document_is_undefined(standin: OpaStandIn) -> None:
    async def main(engine: RemoteOpaEngine) -> None:
        assert await engine.evaluate(b"{}") is UNDEFINED

    _run(main, standin.engine_url, entrypoint="tollgate/no_such_rule", eval_timeout=2.0)


# -- opa+https: a private CA, a client certificate (mTLS), a bearer token -----------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """OPA's CA and server certificate, the sidecar's client certificate from that CA, and a CA that signed none."""
    from tests.pki import TestCA

    ca = TestCA(tmp_path_factory.mktemp("pki"))
    server, client = ca.server(), ca.client("spiffe://acme/tollgate/sidecar", file_name="sidecar")
    other = TestCA(tmp_path_factory.mktemp("other-pki"), name="another CA")
    return {"ca": ca.cert, "server_cert": server.cert, "server_key": server.key, "client_cert": client.cert,
            "client_key": client.key, "other_ca": other.cert}


def _server_tls(pki: dict[str, Path], *, client_certs: bool = True) -> ssl.SSLContext:
    """OPA's TLS (--tls-cert-file, --tls-private-key-file), with --tls-ca-cert-file: client certificates required."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(pki["server_cert"], pki["server_key"])
    if client_certs:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(pki["ca"])
    return context


TOKEN = "s3cret-opa-token"


@pytest.fixture
def tls_standin(pki: dict[str, Path]) -> Iterator[OpaStandIn]:
    with OpaStandIn(tls=_server_tls(pki), token=TOKEN) as server:
        yield server


def _tls(pki: dict[str, Path], *, ca: str = "ca", client: bool = True) -> ssl.SSLContext | None:
    return client_context(parse_target("opa+https://127.0.0.1:1"), ca_file=str(pki[ca]),
                          cert_file=str(pki["client_cert"]) if client else "",
                          key_file=str(pki["client_key"]) if client else "")


def test_https_with_a_private_ca_a_client_certificate_and_a_token_answers_as_embedded(
        tls_standin: OpaStandIn, pki: dict[str, Path]) -> None:
    assert tls_standin.engine_url.startswith("opa+https://127.0.0.1:")
    inputs = _inputs()[:8]

    async def main(remote: RemoteOpaEngine) -> None:
        assert await remote.healthy() and remote.unhealthy == ""
        assert remote.revision == tls_standin.bundle.revision
        embedded = WorkerPoolEngine(tls_standin.bundle, EngineConfig(workers=1, eval_timeout=5.0))
        await embedded.start()
        try:
            for raw in inputs:
                want, got = await embedded.evaluate_with_mask(raw), await remote.evaluate_with_mask(raw)
                assert (got.value, got.mask) == (want.value, want.mask), raw
        finally:
            await embedded.close()

    _run(main, tls_standin.engine_url, eval_timeout=2.0, token=TOKEN, context=_tls(pki))
    assert "POST /v1/data/tollgate/decision" in tls_standin.requests


@pytest.mark.parametrize(("case", "options", "why"), [
    ("system-trust-only", {"context": None}, "CERTIFICATE_VERIFY_FAILED"),
    ("another-ca", {"ca": "other_ca"}, "CERTIFICATE_VERIFY_FAILED"),
    # TLS 1.3: the client finishes its handshake before the server checks for a certificate, so the refusal
    # arrives as the server's alert or, when the server has already closed, as a reset: either way, no answer.
    ("no-client-certificate", {"client": False}, "CERTIFICATE_REQUIRED|Connection reset by peer"),
    ("no-token", {"token": ""}, "HTTP 401"),
    ("wrong-token", {"token": "guessed"}, "HTTP 401"),
])
def test_what_does_not_verify_is_an_engine_error_never_an_unverified_answer(
        tls_standin: OpaStandIn, pki: dict[str, Path], case: str, options: dict[str, Any], why: str) -> None:
    """Fail closed: OPA's certificate checked against the wrong trust (or the client's missing, or the token) is an
    EngineError (the authorizer's logged DENY engine_error) and an unhealthy OPA, never a retry without checks."""
    token = options.pop("token", TOKEN)
    context = options.pop("context") if "context" in options else _tls(pki, **options)

    async def main(engine: RemoteOpaEngine) -> None:
        assert not await engine.healthy()
        assert any(cause in engine.unhealthy for cause in why.split("|")), engine.unhealthy
        with pytest.raises(EngineError) as caught:
            await engine.evaluate_with_mask(_inputs()[0])
        assert caught.value.code == "engine_error"
        assert engine.revision == UNKNOWN_REVISION

    _run(main, tls_standin.engine_url, eval_timeout=2.0, token=token, context=context)
    if "token" not in case:  # the TLS handshake failed: no request reached OPA
        assert tls_standin.requests == []
    else:
        assert "POST /v1/data/tollgate/decision" in tls_standin.requests  # refused by OPA: 401


def test_client_context_refuses_what_it_cannot_use(pki: dict[str, Path], tmp_path: Path) -> None:
    https, http = parse_target("opa+https://opa.internal:8181"), parse_target("opa+http://opa.internal:8181")
    assert client_context(http) is None
    context = client_context(https)
    assert context is not None and context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    with pytest.raises(ValueError, match="needs opa\\+https"):
        client_context(http, ca_file=str(pki["ca"]))
    with pytest.raises(ValueError, match="give both"):
        client_context(https, cert_file=str(pki["client_cert"]))
    with pytest.raises(ValueError, match=r"engine_ca_file: .* cannot be loaded"):
        client_context(https, ca_file=str(tmp_path / "missing.pem"))
    (tmp_path / "not-a-key.pem").write_text("not a key\n")
    with pytest.raises(ValueError, match=r"engine_cert_file, engine_key_file: .* cannot be loaded"):
        client_context(https, cert_file=str(pki["client_cert"]), key_file=str(tmp_path / "not-a-key.pem"))
