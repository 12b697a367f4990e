"""The engine worker protocol's frames: a 4-byte big-endian length, then that many bytes of payload.

Both ends import this one module: the pool in the server and the worker process (which is why it imports
nothing but `struct`: a worker pays for every module it loads). A frame announcing more than the reader's limit
is refused as soon as its header arrives, before any of it is buffered, and a stream that ends inside a frame is
refused too, so neither end ever acts on half a message.

A worker's answers are marked frames: the payload starts with 8 bytes (big-endian) of the worker process's CPU
time in ns when it finished that evaluation, so the pool knows the CPU mark the next evaluation started from
and its deadline can count CPU spent, not time waited (see tollgate.engine._watch).
"""

from __future__ import annotations

import struct

_HEADER = struct.Struct(">I")
HEADER_SIZE = _HEADER.size
_MARK = struct.Struct(">Q")
#: Bytes of CPU mark at the start of a marked frame's payload.
MARK_SIZE = _MARK.size
_MARKED_HEADER = struct.Struct(">IQ")
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


def marked_header(length: int, cpu_ns: int, *, limit: int = MAX_FRAME) -> bytes:
    """The header of a marked frame whose answer is `length` bytes, and its CPU mark (sent before the answer)."""
    if length + MARK_SIZE > limit:
        raise FrameError(f"a {length + MARK_SIZE}-byte frame is over the {limit}-byte limit")
    return _MARKED_HEADER.pack(length + MARK_SIZE, cpu_ns)


class FrameReader:
    """Turns the bytes of a stream, as they arrive in chunks of any size, into whole payloads.

    With marked, each payload's CPU mark is taken off it, and the last one read is kept in `mark`.
    """

    __slots__ = ("_buffer", "_limit", "_skip", "mark")

    def __init__(self, *, limit: int = MAX_FRAME, marked: bool = False) -> None:
        self._buffer = bytearray()
        self._limit = limit
        self._skip = MARK_SIZE if marked else 0
        #: The CPU mark (ns) of the last marked frame read; None before the first.
        self.mark: int | None = None

    @property
    def partial(self) -> bool:
        """Whether part of a frame is buffered (the stream must not end now)."""
        return bool(self._buffer)

    def feed(self, chunk: bytes) -> list[bytes]:
        """The payloads that chunk completes, in order (often none, often several). Raises FrameError when a
        header announces more than the limit."""
        buf = self._buffer
        if buf:
            buf += chunk
        # With nothing buffered (the usual case: a chunk of whole frames), frames are cut from the chunk itself:
        # one copy per payload, none of the chunk into the buffer.
        data: bytes | bytearray = buf if buf else chunk
        frames: list[bytes] = []
        offset, end, limit, skip, unpack_from = 0, len(data), self._limit, self._skip, _HEADER.unpack_from
        with memoryview(data) as view:
            while end - offset >= HEADER_SIZE:
                (length,) = unpack_from(data, offset)
                if length > limit:
                    raise FrameError(f"a frame announces {length} bytes, over the {limit}-byte limit")
                if length < skip:
                    raise FrameError(f"a {length}-byte frame is shorter than its {skip}-byte CPU mark")
                start = offset + HEADER_SIZE
                if end - start < length:
                    break
                if skip:
                    (self.mark,) = _MARK.unpack_from(data, start)
                frames.append(bytes(view[start + skip : start + length]))
                offset = start + length
            if data is not buf:
                buf += view[offset:]
        if data is buf and offset:
            del buf[:offset]
        return frames

    def finish(self) -> None:
        """The stream ended: raises FrameError if it ended inside a frame."""
        if self._buffer:
            raise FrameError(f"the stream ended inside a frame ({len(self._buffer)} bytes of it arrived)")
