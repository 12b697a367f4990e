"""The remote OPA engine against an OPA-REST-compatible STAND-IN (tests/opa_standin.py: a real HTTP server
evaluating the repo's rego/ with the embedded engine; no OPA server binary can be installed here)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.opa_standin import OpaStandIn
from tollgate.engine import UNDEFINED, EngineConfig, EngineError, EvaluationTimeout, WorkerPoolEngine
from tollgate.engine._remote import UNKNOWN_REVISION, RemoteOpaEngine, is_remote, parse_target

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
