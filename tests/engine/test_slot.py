"""Swapping engines: a request keeps the engine it leased; a replaced engine closes after its requests."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import write_policy
from tollgate.bundle import load_bundle
from tollgate.engine import EngineConfig, EngineError, EngineSlot, Evaluation, WorkerPoolEngine

# About a tenth of a second of work per evaluation: long enough to be in flight across a swap.
SLOW = """
package tollgate

decision := {"n": n, "who": input.who} if {
    n := count([x | some x in numbers.range(1, 300000)])
}
"""


class FakeEngine:
    """An engine whose evaluations finish when the test says so."""

    def __init__(self, revision: str) -> None:
        self.revision = revision
        self.release = asyncio.Event()
        self.closed_with: float | None = None

    async def evaluate(self, input_json: bytes) -> Any:
        if self.closed_with is not None:
            raise EngineError("closed", "engine has been closed")
        await self.release.wait()
        return {"revision": self.revision}

    async def evaluate_with_mask(self, input_json: bytes) -> Evaluation:
        return Evaluation(await self.evaluate(input_json))

    async def close(self, *, drain: float = 0.0) -> None:
        self.closed_with = drain


def test_a_replaced_engine_is_closed_only_after_the_requests_holding_it_finish() -> None:
    async def main() -> None:
        old, new = FakeEngine("v1"), FakeEngine("v2")
        slot = EngineSlot(old)

        async def request() -> Any:
            with slot.lease() as engine:
                assert engine is not None
                return await engine.evaluate(b"{}")

        in_flight = [asyncio.create_task(request()) for _ in range(3)]
        await asyncio.sleep(0)
        assert slot.leases(old) == 3
        assert slot.swap(new) is old
        retire = asyncio.create_task(slot.retire(old, timeout=10))
        new.release.set()
        assert await request() == {"revision": "v2"}  # new requests take the new engine at once
        await asyncio.sleep(0.05)
        assert old.closed_with is None and not retire.done()  # still held by three requests
        old.release.set()
        assert await asyncio.gather(*in_flight) == [{"revision": "v1"}] * 3
        await asyncio.wait_for(retire, 1)
        assert old.closed_with is not None and slot.leases(old) == 0

    asyncio.run(main())


def test_retire_gives_up_waiting_after_its_timeout() -> None:
    async def main() -> None:
        old = FakeEngine("v1")
        slot = EngineSlot(old)

        async def stuck() -> None:
            with slot.lease() as engine:
                assert engine is not None
                await engine.evaluate(b"{}")

        task = asyncio.create_task(stuck())
        await asyncio.sleep(0)
        slot.swap(None)
        started = time.monotonic()
        await slot.retire(old, timeout=0.2)
        assert 0.15 < time.monotonic() - started < 1.0
        assert old.closed_with == 0.0
        task.cancel()

    asyncio.run(main())


def test_pool_close_with_drain_lets_evaluations_in_flight_finish(tmp_path: Path) -> None:
    bundle = load_bundle(write_policy(tmp_path / "b", SLOW))

    async def main() -> None:
        engine = WorkerPoolEngine(bundle, EngineConfig(workers=2, eval_timeout=5.0))
        await engine.start()
        in_flight = [asyncio.create_task(engine.evaluate(json.dumps({"who": i}).encode())) for i in range(6)]
        await asyncio.sleep(0.02)
        await engine.close(drain=10)
        answers = await asyncio.gather(*in_flight)
        assert [a["who"] for a in answers] == list(range(6))  # type: ignore[index]
        with pytest.raises(EngineError, match="closed"):
            await engine.evaluate(b'{"who": 7}')

    asyncio.run(main())


def test_pool_close_without_drain_fails_what_is_in_flight(tmp_path: Path) -> None:
    bundle = load_bundle(write_policy(tmp_path / "b", SLOW))

    async def main() -> None:
        engine = WorkerPoolEngine(bundle, EngineConfig(workers=1, eval_timeout=5.0))
        await engine.start()
        in_flight = [asyncio.create_task(engine.evaluate(json.dumps({"who": i}).encode())) for i in range(3)]
        await asyncio.sleep(0.02)
        await engine.close()
        results = await asyncio.gather(*in_flight, return_exceptions=True)
        assert all(isinstance(r, EngineError) and r.code == "closed" for r in results)

    asyncio.run(main())
