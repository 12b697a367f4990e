"""The gateway's stdin, read so that stopping never waits for the client to write."""

from __future__ import annotations

import asyncio
import os
import stat

#: The longest line (one JSON-RPC message) read from the client: tool arguments can carry whole files.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024


class StdinLines:
    """The lines of stdin as an async iterator of str, read by the event loop itself. The SDK's stdio transport
    reads stdin in a worker thread that a cancellation cannot interrupt and that the interpreter waits for at
    exit: a gateway whose upstream has gone could not stop until its client wrote again. Reading the pipe
    without a thread stops at once (and saves a thread hop per message)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self._reader = reader

    @classmethod
    async def open(cls, fd: int = 0) -> StdinLines | None:
        """Lines of fd when it is a pipe or a socket (what MCP clients give); None for anything else (a file, a
        terminal, /dev/null), which the SDK's own reader then reads: epoll cannot watch every such file."""
        try:
            mode = os.fstat(fd).st_mode
        except OSError:
            return None
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return None
        reader = asyncio.StreamReader(limit=MAX_MESSAGE_BYTES)
        pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
        try:
            await asyncio.get_running_loop().connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), pipe)
        except (OSError, ValueError):
            pipe.close()
            return None
        return cls(reader)

    def __aiter__(self) -> StdinLines:
        return self

    async def __anext__(self) -> str:
        line = await self._reader.readline()
        if not line:
            raise StopAsyncIteration
        return line.decode("utf-8", errors="replace")
