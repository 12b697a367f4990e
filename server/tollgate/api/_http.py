"""A small HTTP/1.1 server on asyncio streams, for the sidecar's HTTP endpoints (metrics, AuthZEN).

Enough HTTP for a few JSON and text endpoints and nothing more: keep-alive, Content-Length bodies (chunked
request bodies are refused with 411), a header and a body size limit (431, 413), an idle timeout, and
plain answers to what it cannot parse (400). No thread and no dependency; the handlers run on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: Largest request head (request line and headers), in bytes.
MAX_HEAD_BYTES = 16 * 1024
#: Seconds a kept-alive connection may sit idle, or a request take to arrive, before it is closed.
IDLE_TIMEOUT = 30.0
#: After an error answer, how long and how much of the rest of a request is read and dropped before closing.
LINGER_SECONDS = 2.0
LINGER_BYTES = 8 * 1024 * 1024

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 405: "Method Not Allowed",
            411: "Length Required", 413: "Content Too Large", 431: "Request Header Fields Too Large",
            500: "Internal Server Error", 503: "Service Unavailable"}


@dataclass(frozen=True)
class HttpRequest:
    method: str
    #: The path, without the query string.
    path: str
    #: Header names in lower case; a repeated header keeps its last value.
    headers: Mapping[str, str]
    body: bytes = b""
    #: The client certificate verified by TLS, as ssl.SSLSocket.getpeercert() gives it (None without one).
    peer_certificate: Mapping[str, Any] | None = None


@dataclass(frozen=True)
class HttpResponse:
    status: int
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: Mapping[str, str] = field(default_factory=dict)


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]
#: Formats the server's own error answers (status, message), e.g. as JSON for a JSON API.
ErrorFormat = Callable[[int, str], HttpResponse]


def plain_error(status: int, message: str) -> HttpResponse:
    return HttpResponse(status, f"{message}\n".encode())


async def start_http_server(handler: Handler, listen: str, *, max_body: int = 1024 * 1024,
                            tls: ssl.SSLContext | None = None,
                            errors: ErrorFormat = plain_error) -> tuple[asyncio.Server, str]:
    """Serve handler on HOST:PORT (port 0 picks one); returns the server and the bound HOST:PORT."""
    host, port = listen.rsplit(":", 1)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _serve_connection(handler, reader, writer, max_body=max_body, errors=errors)

    server = await asyncio.start_server(connection, host.strip("[]"), int(port), limit=MAX_HEAD_BYTES, ssl=tls)
    bound = server.sockets[0].getsockname()
    return server, f"{host}:{bound[1]}"


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def _serve_connection(handler: Handler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *,
                            max_body: int, errors: ErrorFormat) -> None:
    certificate = writer.get_extra_info("peercert")  # set when TLS verified a client certificate
    try:
        while True:
            try:
                request, keep_alive = await _read_request(reader, writer, max_body=max_body,
                                                          certificate=certificate)
            except _BadRequest as exc:
                await _write(writer, errors(exc.status, str(exc)), head_only=False, keep_alive=False)
                await _linger(reader)
                return
            if request is None:
                return  # the client closed, or stayed idle past the timeout
            try:
                response = await handler(request)
            except Exception:
                log.exception("http %s %s: unexpected error", request.method, request.path)
                response = errors(500, "internal error")
            await _write(writer, response, head_only=request.method == "HEAD", keep_alive=keep_alive)
            if not keep_alive:
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


async def _linger(reader: asyncio.StreamReader) -> None:
    """Read (and drop) what the client is still sending, briefly, before closing: closing a socket with unread
    data resets the connection, and the client may lose the error answer it was about to read."""
    deadline = asyncio.get_running_loop().time() + LINGER_SECONDS
    dropped = 0
    with contextlib.suppress(TimeoutError, ConnectionError):
        while dropped < LINGER_BYTES:
            chunk = await asyncio.wait_for(reader.read(65536), max(deadline - asyncio.get_running_loop().time(), 0))
            if not chunk:
                return
            dropped += len(chunk)


async def _read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, max_body: int,
                        certificate: Mapping[str, Any] | None = None) -> tuple[HttpRequest | None, bool]:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), IDLE_TIMEOUT)
    except (TimeoutError, asyncio.IncompleteReadError):
        return None, False
    except asyncio.LimitOverrunError as exc:
        raise _BadRequest(431, f"request head over {MAX_HEAD_BYTES} bytes") from exc
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _BadRequest(400, "request line: expected METHOD TARGET HTTP/1.x")
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip():
            raise _BadRequest(400, f"header line {line[:40]!r}: expected NAME: VALUE")
        headers[name.lower()] = value.strip()
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    if "transfer-encoding" in headers:
        raise _BadRequest(411, "chunked bodies are not accepted: send Content-Length")
    length = _content_length(headers.get("content-length", "0"), max_body)
    if length and headers.get("expect", "").lower() == "100-continue":
        # The client (curl, for any body over 1 KiB) waits for this before it sends the body.
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()
    try:
        body = await asyncio.wait_for(reader.readexactly(length), IDLE_TIMEOUT) if length else b""
    except TimeoutError as exc:
        raise _BadRequest(400, "body: fewer bytes arrived than content-length announced") from exc
    return HttpRequest(method, target.split("?", 1)[0], headers, body, certificate or None), keep_alive


def _content_length(text: str, max_body: int) -> int:
    """The body's length, as ASCII digits only: str.isdigit() also takes "²" and "١", which int() refuses or
    reads, and a number of thousands of digits is over int()'s limit long before it is over max_body."""
    if not (text.isascii() and text.isdigit()):
        raise _BadRequest(400, f"content-length: {text[:40]!r} is not a number of bytes (ASCII digits)")
    if len(text.lstrip("0")) > len(str(max_body)):
        raise _BadRequest(413, f"content-length: {text[:40]}{'...' if len(text) > 40 else ''} bytes is over the "
                               f"limit of {max_body}")
    length = int(text)
    if length > max_body:
        raise _BadRequest(413, f"body is {length} bytes, over the limit of {max_body}")
    return length


async def _write(writer: asyncio.StreamWriter, response: HttpResponse, *, head_only: bool, keep_alive: bool) -> None:
    reason = _REASONS.get(response.status, "Unknown")
    extra = "".join(f"{k}: {v}\r\n" for k, v in response.headers.items())
    writer.write((f"HTTP/1.1 {response.status} {reason}\r\nContent-Type: {response.content_type}\r\n"
                  f"Content-Length: {len(response.body)}\r\n{extra}"
                  f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n").encode("latin-1"))
    if not head_only:
        writer.write(response.body)
    await writer.drain()
