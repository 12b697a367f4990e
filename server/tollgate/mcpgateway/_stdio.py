"""The gateway's stdin, read so that stopping never waits for the client to write."""

from __future__ import annotations

import asyncio
import os
import threading

#: Lines read ahead of the gateway; past it the reading thread waits (backpressure, bounded memory).
_READ_AHEAD = 64


class StdinLines:
    """The lines of a file descriptor (stdin by default) as an async iterator of str, read by a daemon thread.
    The SDK's stdio transport reads stdin in a worker thread that a cancellation cannot interrupt and that the
    interpreter waits for at exit: a gateway whose upstream has gone could not stop until its client wrote
    again. This one stops at once. The thread reads with os.read, holding no lock of sys.stdin's that the
    interpreter would need at exit, and dies with the process."""

    def __init__(self, fd: int = 0) -> None:
        self._fd = fd
        self._lines: asyncio.Queue[str | None] = asyncio.Queue(_READ_AHEAD)
        self._loop = asyncio.get_running_loop()
        threading.Thread(target=self._pump, name="tollgate-mcp-stdin", daemon=True).start()

    def _pump(self) -> None:
        pending = b""
        try:
            while chunk := os.read(self._fd, 65536):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    if not self._put(line.decode("utf-8", errors="replace") + "\n"):
                        return
        except OSError:  # stdin closed under us: the same as its end
            pass
        if pending and not self._put(pending.decode("utf-8", errors="replace")):
            return
        self._put(None)

    def _put(self, line: str | None) -> bool:
        try:
            asyncio.run_coroutine_threadsafe(self._lines.put(line), self._loop).result()
        except (RuntimeError, asyncio.CancelledError):  # the loop is closed or closing: nobody reads any more
            return False
        return True

    def __aiter__(self) -> StdinLines:
        return self

    async def __anext__(self) -> str:
        line = await self._lines.get()
        if line is None:
            raise StopAsyncIteration
        return line
