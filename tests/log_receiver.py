"""A real HTTP log receiver for export tests: http.server on port 0 in a thread, answering as a script says."""

from __future__ import annotations

import gzip
import json
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Upload:
    """One POST the receiver saw: its path, headers, decoded JSON body and the status it answered."""

    path: str
    headers: dict[str, str]
    body: Any
    status: int


#: Decides the answer to an upload from the decoded body and how many uploads came before it.
Answer = Callable[[Any, int], int]


def always_ok(body: Any, index: int) -> int:
    return 200


@dataclass
class LogReceiver:
    """POSTs are gunzipped and parsed; `answer` picks each status; `accepted` holds the 2xx-answered bodies."""

    answer: Answer = always_ok
    port: int = 0
    uploads: list[Upload] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> LogReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                data = gzip.decompress(raw) if self.headers.get("Content-Encoding") == "gzip" else raw
                body = json.loads(data)
                with receiver._lock:
                    status = receiver.answer(body, len(receiver.uploads))
                    receiver.uploads.append(Upload(self.path, dict(self.headers.items()), body, status))
                payload = b"{}" if status < 300 else b"not now"
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def accepted(self) -> list[Any]:
        """The bodies answered with a 2xx, in arrival order."""
        with self._lock:
            return [u.body for u in self.uploads if 200 <= u.status < 300]


def free_port() -> int:
    """A port nothing listens on (for a while): connections to it are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
