"""What an outbound HTTP exchange is made of: a destination's options, an answer, a failure (no HTTP stack here,
so a configuration can name them without loading one; tollgate.net._client sends the requests)."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True)
class HttpOptions:
    """How one destination is reached."""

    #: Sent as `Authorization: Bearer TOKEN` with every request; "" sends none.
    token: str = ""
    #: More headers sent with every request (a headers file's `Name: value` lines), after the token's, so an
    #: Authorization line among them replaces it.
    headers: tuple[tuple[str, str], ...] = ()
    #: PEM file of the CA certificates the server's certificate must chain to, in place of the system's trust
    #: store (a private CA); "" trusts the system's.
    ca_file: str = ""


@dataclass(frozen=True)
class Response:
    """An answer: its status, headers and (up to the read limit) body as sent."""

    status: int
    reason: str
    headers: Mapping[str, str] = field(repr=False)
    body: bytes = field(repr=False)
    #: The body was longer than the read limit (by Content-Length or as it arrived); `body` holds its start.
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class RequestFailed(Exception):
    """No answer: the server could not be reached, the connection broke, or the exchange ran past its deadline.

    The message is the underlying cause (`ConnectionRefusedError: [Errno 111] Connection refused`), not the
    HTTP library's wrapper around it.
    """

    def __init__(self, message: str, *, connect: bool = False, timed_out: bool = False,
                 cause: BaseException | None = None) -> None:
        super().__init__(message)
        #: Whether it failed before a connection was made (refused, unresolvable, TLS handshake).
        self.connect = connect
        #: Whether time ran out: a connect, a read or the whole exchange's deadline.
        self.timed_out = timed_out
        #: The innermost exception, for callers that explain some of them (a certificate not trusted).
        self.cause = cause


def ssl_context(ca_file: str = "") -> ssl.SSLContext:
    """TLS that verifies servers against ca_file, or against the system's trust store when it is "" (which
    SSL_CERT_FILE may replace). Raises OSError or ssl.SSLError when the file cannot be loaded."""
    return ssl.create_default_context(cafile=ca_file or None)
