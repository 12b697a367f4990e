"""A real HTTP(S) server on 127.0.0.1 for outbound-HTTP tests: HTTP/1.1 (keep-alive), answers as a script says,
and remembers every request with the connection it came on."""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.pki import Issued


@dataclass(frozen=True)
class Seen:
    """One request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    #: Which connection it came on (a number per accepted connection).
    connection: int


@dataclass(frozen=True)
class Answer:
    status: int = 200
    body: bytes = b"{}"
    headers: tuple[tuple[str, str], ...] = ()
    #: Send the body this many bytes at a time, sleeping between chunks (a slow server).
    drip: int = 0
    drip_pause: float = 0.0
    #: Announce the body's length; without, it ends when the connection closes.
    announce_length: bool = True


#: Picks the answer to a request.
Script = Callable[[Seen], Answer]


@dataclass
class LocalServer:
    script: Script = field(default=lambda seen: Answer())
    tls: Issued | None = None
    seen: list[Seen] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _connections: int = 0

    @property
    def url(self) -> str:
        assert self._server is not None
        scheme = "https" if self.tls else "http"
        return f"{scheme}://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> LocalServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real services do

            def setup(self) -> None:
                super().setup()
                with owner._lock:
                    owner._connections += 1
                    self.number = owner._connections

            def do_GET(self) -> None:
                self._answer()

            def do_POST(self) -> None:
                self._answer()

            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                seen = Seen(self.command, self.path, dict(self.headers.items()), body, self.number)
                with owner._lock:
                    owner.seen.append(seen)
                answer = owner.script(seen)
                self.send_response(answer.status)
                names = {name.lower() for name, _ in answer.headers}
                for name, value in answer.headers:
                    self.send_header(name, value)
                if not answer.announce_length:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                elif "content-length" not in names:
                    self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                if answer.status == 304:
                    return
                if not answer.drip:
                    self.wfile.write(answer.body)
                    return
                for i in range(0, len(answer.body), answer.drip):
                    self.wfile.write(answer.body[i : i + answer.drip])
                    self.wfile.flush()
                    time.sleep(answer.drip_pause)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        if self.tls is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.tls.cert, self.tls.key)
            server.socket = context.wrap_socket(server.socket, server_side=True)
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
