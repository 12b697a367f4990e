"""The engine worker protocol's frame codec, alone and at both ends of a real worker process's socket."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tollgate.engine._frames import (
    HEADER_SIZE,
    MARK_SIZE,
    MAX_FRAME,
    FrameError,
    FrameReader,
    encode,
    header,
    marked_header,
)

PAYLOADS = [b"", b"{}", b'{"who": "alice"}', bytes(range(256)) * 300]


def test_frames_round_trip_whatever_the_chunk_boundaries() -> None:
    stream = b"".join(encode(p) for p in PAYLOADS)
    for size in (1, 3, HEADER_SIZE, 7, 1000, len(stream)):
        reader = FrameReader()
        got = [frame for i in range(0, len(stream), size) for frame in reader.feed(stream[i : i + size])]
        assert got == PAYLOADS, f"chunks of {size} bytes"
        assert not reader.partial
        reader.finish()


def test_every_frame_that_arrives_together_comes_out_of_one_feed() -> None:
    reader = FrameReader()
    assert reader.feed(encode(b"one") + encode(b"two") + encode(b"three")[:5]) == [b"one", b"two"]
    assert reader.partial
    assert reader.feed(encode(b"three")[5:]) == [b"three"]


def test_the_header_is_a_4_byte_big_endian_length() -> None:
    assert encode(b"abc") == b"\x00\x00\x00\x03abc"
    assert header(258) == b"\x00\x00\x01\x02"


def test_an_oversized_frame_is_refused_from_its_header_before_anything_is_buffered() -> None:
    reader = FrameReader(limit=10)
    assert reader.feed(encode(b"x" * 10)) == [b"x" * 10]  # the limit itself is allowed
    with pytest.raises(FrameError, match="announces 11 bytes, over the 10-byte limit"):
        reader.feed(header(11, limit=11))  # no payload yet: refused on the header alone


def test_a_payload_over_the_limit_cannot_be_sent() -> None:
    with pytest.raises(FrameError, match="over the 4-byte limit"):
        encode(b"12345", limit=4)
    with pytest.raises(FrameError, match=f"over the {MAX_FRAME}-byte limit"):
        header(MAX_FRAME + 1)


@pytest.mark.parametrize("cut", [1, HEADER_SIZE, HEADER_SIZE + 2], ids=["inside-header", "after-header",
                                                                       "inside-payload"])
def test_a_stream_that_ends_inside_a_frame_is_refused(cut: int) -> None:
    reader = FrameReader()
    assert reader.feed(encode(b"hello")[:cut]) == []
    with pytest.raises(FrameError, match="ended inside a frame"):
        reader.finish()


@pytest.mark.parametrize(("sent", "message"), [
    (header(MAX_FRAME + 1, limit=MAX_FRAME + 1), f"over the {MAX_FRAME}-byte limit"),
    (encode(b'{"entrypoint": "tollgate.decision"}')[:-3], "ended inside a frame"),
], ids=["oversized", "truncated"])
def test_a_worker_refuses_a_bad_first_frame_and_exits(sent: bytes, message: str) -> None:
    parent, child = socket.socketpair()
    with parent:
        proc = subprocess.Popen([sys.executable, "-m", "tollgate.engine._worker", str(child.fileno())],
                                pass_fds=(child.fileno(),), stderr=subprocess.PIPE, text=True)
        child.close()
        parent.sendall(sent)
        parent.shutdown(socket.SHUT_WR)
        _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert message in stderr


def test_marked_frames_lose_their_cpu_mark_and_the_reader_keeps_the_last_one() -> None:
    stream = b"".join(marked_header(len(p), cpu) + p for cpu, p in enumerate(PAYLOADS, start=1000))
    for size in (1, HEADER_SIZE + MARK_SIZE - 1, 7, len(stream)):
        reader = FrameReader(marked=True)
        assert reader.mark is None
        got = [frame for i in range(0, len(stream), size) for frame in reader.feed(stream[i : i + size])]
        assert got == PAYLOADS, f"chunks of {size} bytes"
        assert reader.mark == 999 + len(PAYLOADS)


def test_a_marked_frame_too_short_for_its_mark_is_refused() -> None:
    with pytest.raises(FrameError, match="shorter than its 8-byte CPU mark"):
        FrameReader(marked=True).feed(encode(b"1234567"))
