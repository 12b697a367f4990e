"""The shared HTTP/1.1 server (metrics, AuthZEN): keep-alive, limits and its plain answers, on a real socket."""

from __future__ import annotations

import asyncio

import pytest

from tollgate.api._http import MAX_HEAD_BYTES, HttpRequest, HttpResponse, start_http_server
from tollgate.sidecar.metrics import Metrics, start_metrics_server


async def _echo(request: HttpRequest) -> HttpResponse:
    return HttpResponse(200, f"{request.method} {request.path} {len(request.body)}".encode())


async def _exchange(address: str, raw: bytes) -> bytes:
    host, port = address.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(raw)
    writer.write_eof()  # nothing more to send: the server need not linger for the rest of a refused request
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)  # until the server closes
    writer.close()
    return data


async def _served(raw: bytes, *, max_body: int = 100) -> bytes:
    server, address = await start_http_server(_echo, "127.0.0.1:0", max_body=max_body)
    try:
        return await _exchange(address, raw)
    finally:
        server.close()


def test_keep_alive_answers_several_requests_on_one_connection() -> None:
    answer = asyncio.run(_served(b"POST /a?x=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc"
                                 b"GET /b HTTP/1.1\r\nConnection: close\r\n\r\n"))
    assert answer.count(b"HTTP/1.1 200 OK") == 2
    assert b"POST /a 3" in answer and b"GET /b 0" in answer
    assert answer.rstrip().endswith(b"GET /b 0")


@pytest.mark.parametrize(("raw", "status"), [
    (b"POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", b"413"),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", b"411"),
    (b"GARBAGE\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nContent-Length: lots\r\n\r\n", b"400"),
    (b"GET / HTTP/1.1\r\nX-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n\r\n", b"431"),
    (b"POST / HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n", b"400"),
    (b"POST / HTTP/1.1\r\nContent-Length: " + "\u0661".encode() + b"\r\n\r\n", b"400"),
    (b"POST / HTTP/1.1\r\nContent-Length: " + b"9" * 5000 + b"\r\n\r\n", b"413"),
], ids=["body-too-large", "chunked", "request-line", "content-length", "head-too-large",
        "content-length-superscript-two", "content-length-arabic-indic-digit", "content-length-5000-digits"])
def test_requests_it_cannot_serve_get_a_status_and_the_connection_closes(raw: bytes, status: bytes) -> None:
    answer = asyncio.run(_served(raw))
    assert answer.startswith(b"HTTP/1.1 " + status)
    assert b"Connection: close" in answer


def test_leading_zeros_in_content_length_are_still_a_small_body() -> None:
    answer = asyncio.run(_served(b"POST / HTTP/1.1\r\nContent-Length: 00000000000003\r\nConnection: close\r\n\r\nabc"))
    assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"POST / 3")


def test_http_1_0_closes_after_one_answer() -> None:
    answer = asyncio.run(_served(b"GET / HTTP/1.0\r\n\r\n"))
    assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer


@pytest.mark.parametrize(("raw", "status"), [
    (b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n", b"200"),
    (b"HEAD /metrics HTTP/1.1\r\nConnection: close\r\n\r\n", b"200"),
    (b"GET /other HTTP/1.1\r\nConnection: close\r\n\r\n", b"404"),
    (b"DELETE /metrics HTTP/1.1\r\nConnection: close\r\n\r\n", b"405"),
], ids=["get", "head", "elsewhere", "delete"])
def test_metrics_endpoint_answers_on_the_shared_server(raw: bytes, status: bytes) -> None:
    async def run() -> bytes:
        server, address = await start_metrics_server(Metrics(), "127.0.0.1:0")
        try:
            return await _exchange(address, raw)
        finally:
            server.close()

    answer = asyncio.run(run())
    assert answer.startswith(b"HTTP/1.1 " + status)
    if raw.startswith(b"HEAD"):
        assert answer.endswith(b"\r\n\r\n")  # the head only


def test_expect_100_continue_is_answered_before_the_body_is_read() -> None:
    async def run() -> bytes:
        server, address = await start_http_server(_echo, "127.0.0.1:0", max_body=100)
        try:
            host, port = address.rsplit(":", 1)
            reader, writer = await asyncio.open_connection(host, int(port))
            writer.write(b"POST /e HTTP/1.1\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            writer.write(b"body")
            rest = await asyncio.wait_for(reader.read(), 5)
            writer.close()
            return interim + rest
        finally:
            server.close()

    answer = asyncio.run(run())
    assert answer.startswith(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK")
    assert answer.endswith(b"POST /e 4")
