"""The engine worker protocol's frames: a 4-byte big-endian length, then that many bytes of payload.

Both ends import this one module: the pool in the server and the worker process (which is why it imports
nothing but `struct`: a worker pays for every module it loads). A frame announcing more than the reader's limit
is refused as soon as its header arrives, before any of it is buffered, and a stream that ends inside a frame is
refused too, so neither end ever acts on half a message.
"""

from __future__ import annotations

import struct

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
#: Largest payload either end sends or accepts. The first frame carries the whole bundle as JSON (the bundle size
#: limit is 256 MiB by default), so the bound sits well above that; a length past it is a corrupt stream.
MAX_FRAME = 1 << 30


class FrameError(Exception):
    """A frame that cannot be sent or read: over the size limit, or cut off by the end of the stream."""


def header(length: int, *, limit: int = MAX_FRAME) -> bytes:
    """The 4-byte header of a payload of `length` bytes (sent before it, so the payload is not copied)."""
    if length > limit:
        raise FrameError(f"a {length}-byte frame is over the {limit}-byte limit")
    return _HEADER.pack(length)


def encode(payload: bytes, *, limit: int = MAX_FRAME) -> bytes:
    """One whole frame: the header, then the payload."""
    return header(len(payload), limit=limit) + payload


class FrameReader:
    """Turns the bytes of a stream, as they arrive in chunks of any size, into whole payloads."""

    __slots__ = ("_buffer", "_limit")

    def __init__(self, *, limit: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self._limit = limit

    @property
    def partial(self) -> bool:
        """Whether part of a frame is buffered (the stream must not end now)."""
        return bool(self._buffer)

    def feed(self, chunk: bytes) -> list[bytes]:
        """The payloads that chunk completes, in order (often none, often several). Raises FrameError when a
        header announces more than the limit."""
        buf = self._buffer
        buf += chunk
        frames: list[bytes] = []
        offset, end, limit, unpack_from = 0, len(buf), self._limit, _HEADER.unpack_from
        while end - offset >= HEADER_SIZE:
            (length,) = unpack_from(buf, offset)
            if length > limit:
                raise FrameError(f"a frame announces {length} bytes, over the {limit}-byte limit")
            start = offset + HEADER_SIZE
            if end - start < length:
                break
            frames.append(bytes(buf[start : start + length]))
            offset = start + length
        if offset:
            del buf[:offset]
        return frames

    def finish(self) -> None:
        """The stream ended: raises FrameError if it ended inside a frame."""
        if self._buffer:
            raise FrameError(f"the stream ended inside a frame ({len(self._buffer)} bytes of it arrived)")
