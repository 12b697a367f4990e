"""A STAND-IN for an OPA server, for the remote engine's tests: no OPA server binary can be installed here.

A real HTTP server (http.server in a thread) answering the parts of OPA's REST API the remote engine uses, by
evaluating a bundle (the repo's rego/ by default) with the embedded engine — the same Go `rego` package OPA
itself runs:

- `POST /v1/data/<path>` with `{"input": ...}` → `{"result": value}`, or `{}` when the document is undefined;
  an evaluation error → 500 `{"code": "internal_error", "message": ...}` as OPA does.
- `GET /v1/data/system/bundles` → `{"result": {NAME: {"manifest": {"revision": R}}}}`.
- `GET /v1/status` → `{"result": {"bundles": {NAME: {"name": NAME, "active_revision": R}}}}` (as with OPA's
  status plugin enabled), or 500 with status=False.
- `GET /health` (any query) → 200 `{}`, or 500 while `healthy` is False.

`delay` (seconds) holds every data answer back, to stand for a slow OPA. With `tls` (a server SSLContext, one
that may require a client certificate) it serves HTTPS, as OPA's `--tls-cert-file` / `--tls-ca-cert-file` do; with
`token` every request without `Authorization: Bearer TOKEN` is a 401 `{"code": "unauthorized", ...}`, as OPA run
with `--authentication=token --authorization=basic` and a system.authz policy that checks input.identity answers.
"""

from __future__ import annotations

import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tollgate.bundle import Bundle, load_bundle
from tollgate.engine import UNDEFINED, EmbeddedOpa, EngineError

REPO = Path(__file__).resolve().parents[1]
BUNDLE_NAME = "tollgate"


class OpaStandIn:
    """An OPA-REST-compatible server on 127.0.0.1 backed by the embedded engine (a stand-in, see module doc)."""

    def __init__(self, bundle: Bundle | None = None, *, status: bool = True, tls: ssl.SSLContext | None = None,
                 token: str = "") -> None:
        self.bundle = bundle or load_bundle(REPO / "rego")
        self.status = status
        self.tls = tls
        self.token = token
        self.healthy = True
        self.delay = 0.0
        self.requests: list[str] = []
        self._engine = EmbeddedOpa(self.bundle.modules, self.bundle.data)
        self._engine.compile()
        self._lock = threading.Lock()
        self._server = _QuietServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        if tls is not None:  # the handshake (and a client's certificate check) happens as a connection is accepted
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
        self._thread = threading.Thread(target=self._server.serve_forever, name="opa-standin", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def engine_url(self) -> str:
        return f"opa+{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> OpaStandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._engine.close()

    def evaluate(self, path: str, input_doc: Any) -> Any:
        with self._lock:
            return self._engine.evaluate(path.strip("/").replace("/", "."), input_doc)

    def __enter__(self) -> OpaStandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up (a deadline) or a stand-in stopped mid-answer: nothing to report


def _handler(standin: OpaStandIn) -> type[BaseHTTPRequestHandler]:
    revision = standin.bundle.revision

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _send(self, code: int, body: Any) -> None:
            raw = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def _authorized(self) -> bool:
            if not standin.token or self.headers.get("Authorization") == f"Bearer {standin.token}":
                return True
            self._send(401, {"code": "unauthorized", "message": "the request is not authorized"})
            return False

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            standin.requests.append(f"GET {path}")
            if not self._authorized():
                return
            if path == "/health":
                self._send(200 if standin.healthy else 500, {} if standin.healthy else {"error": "not ready"})
            elif path == "/v1/status" and standin.status:
                self._send(200, {"result": {"bundles": {BUNDLE_NAME: {"name": BUNDLE_NAME,
                                                                      "active_revision": revision}}}})
            elif path == "/v1/status":
                self._send(500, {"code": "internal_error", "message": "status plugin not enabled"})
            elif path == "/v1/data/system/bundles":
                self._send(200, {"result": {BUNDLE_NAME: {"manifest": {"revision": revision}}}})
            else:
                self._send(404, {"code": "resource_not_found", "message": path})

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            standin.requests.append(f"POST {path}")
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
            if not self._authorized():
                return
            if not path.startswith("/v1/data/"):
                self._send(404, {"code": "resource_not_found", "message": path})
                return
            if standin.delay:
                time.sleep(standin.delay)
            try:
                value = standin.evaluate(path[len("/v1/data/"):], body.get("input"))
            except EngineError as exc:
                self._send(500, {"code": "internal_error", "message": exc.message})
                return
            self._send(200, {} if value is UNDEFINED else {"result": value})

    return Handler
