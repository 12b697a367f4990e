"""Outbound HTTP, on httpx2: one client per destination (bundle service, log receiver), its connections kept alive.

Every destination takes the same options (a bearer token, more headers, a CA bundle) and gets the same limits:
a deadline on the whole exchange, not only on each read (a server dripping one byte at a time must not hold a
thread), and a cap on the body read, checked against Content-Length before anything is read and again as bytes
arrive. Bodies are returned as sent, never decoded: a .tar.gz served with `Content-Encoding: gzip` is still the
archive whose digest is checked, and a compressed answer cannot expand past the cap. Proxies are taken from
HTTPS_PROXY / HTTP_PROXY / NO_PROXY, as every HTTP client does.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from types import TracebackType

import httpx2

from tollgate.net._http import HttpOptions, RequestFailed, Response, ssl_context

USER_AGENT = "tollgate"
_CHUNK = 64 * 1024
#: Most of an answer read when the caller names no limit: enough for any error message, and for the short
#: bodies receivers acknowledge with, so that the connection can be kept (a body left unread closes it).
DEFAULT_READ_LIMIT = 64 * 1024


class HttpClient:
    """One destination's HTTP client: requests share its connections; close() when done with it."""

    def __init__(self, options: HttpOptions, *, follow_redirects: bool = False) -> None:
        headers = httpx2.Headers({"User-Agent": USER_AGENT})
        if options.token:
            headers["Authorization"] = f"Bearer {options.token}"
        for name, value in options.headers:  # names are case-insensitive: a line replaces a header of any case
            headers[name] = value
        self._client = httpx2.Client(verify=ssl_context(options.ca_file), headers=headers,
                                     follow_redirects=follow_redirects, trust_env=True)

    def request(self, method: str, url: str, *, timeout: float, body: bytes | None = None,
                headers: Mapping[str, str] | None = None, read_limit: int = DEFAULT_READ_LIMIT) -> Response:
        """Send one request and read its answer, all within timeout seconds. Raises RequestFailed."""
        deadline = time.monotonic() + timeout
        try:
            with self._client.stream(method, url, content=body, headers=headers,
                                     timeout=httpx2.Timeout(timeout)) as answer:
                data, truncated = _read_body(answer, read_limit, deadline, timeout)
                return Response(status=answer.status_code, reason=answer.reason_phrase, headers=answer.headers,
                                body=data, truncated=truncated)
        except (httpx2.HTTPError, httpx2.InvalidURL, httpx2.StreamError, OSError) as exc:
            cause = _innermost(exc)
            raise RequestFailed(f"{cause.__class__.__name__}: {cause}",
                                connect=isinstance(exc, httpx2.ConnectError | httpx2.ConnectTimeout),
                                timed_out=isinstance(exc, httpx2.TimeoutException), cause=cause) from exc

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _read_body(answer: httpx2.Response, limit: int, deadline: float, timeout: float) -> tuple[bytes, bool]:
    length = answer.headers.get("Content-Length", "")
    if length.isdigit() and int(length) > limit:
        return b"", True  # refused before a byte of it is read
    body = bytearray()
    for chunk in answer.iter_raw(_CHUNK):
        body += chunk
        if len(body) > limit:
            return bytes(body[:limit]), True
        if time.monotonic() > deadline:
            raise RequestFailed(f"the exchange took longer than its {timeout:g}s deadline", timed_out=True)
    return bytes(body), False


def _innermost(exc: BaseException) -> BaseException:
    """The exception at the bottom of a chain of wrappers (httpx2 over httpcore2 over the socket's OSError)."""
    seen = {id(exc)}
    while (inner := exc.__cause__ or exc.__context__) is not None and id(inner) not in seen:
        seen.add(id(inner))
        exc = inner
    return exc
