"""The engine slot: the active engine, swapped atomically while requests keep the engine they started with."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterator

from tollgate.engine._base import Engine

log = logging.getLogger(__name__)


class EngineSlot:
    """The active engine. Swapping it is atomic: a request keeps the engine it started with.

    A request leases the engine it reads (`with slot.lease() as engine`); `retire` waits until every
    lease on a replaced engine is returned before closing it, so no request loses its engine mid-way.
    Everything runs on the event loop thread, so plain counters are enough.
    """

    def __init__(self, engine: Engine | None = None) -> None:
        self.current: Engine | None = engine
        self._leases: dict[int, int] = {}  # id(engine) → requests holding it
        self._released: dict[int, asyncio.Event] = {}  # id(engine) → set when its last lease returns

    def swap(self, engine: Engine | None) -> Engine | None:
        old, self.current = self.current, engine
        return old

    @contextlib.contextmanager
    def lease(self) -> Iterator[Engine | None]:
        """The current engine, held until the block ends (None when no bundle is loaded)."""
        engine = self.current
        if engine is None:
            yield None
            return
        key = id(engine)
        self._leases[key] = self._leases.get(key, 0) + 1
        try:
            yield engine
        finally:
            left = self._leases[key] - 1
            if left:
                self._leases[key] = left
            else:
                del self._leases[key]
                released = self._released.pop(key, None)
                if released is not None:
                    released.set()

    def leases(self, engine: Engine) -> int:
        """Requests currently holding engine."""
        return self._leases.get(id(engine), 0)

    async def retire(self, engine: Engine, *, timeout: float) -> None:
        """Close a replaced engine once the requests holding it are done (at most timeout seconds)."""
        started = time.monotonic()
        if self.leases(engine):
            released = self._released.setdefault(id(engine), asyncio.Event())
            try:
                await asyncio.wait_for(released.wait(), timeout)
            except TimeoutError:
                log.warning("engine %s: %d requests still running after %gs; closing it anyway",
                            engine.revision, self.leases(engine), timeout)
        await engine.close(drain=max(timeout - (time.monotonic() - started), 0.0))

