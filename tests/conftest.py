"""Shared fixtures: real `tollgate serve` processes on real sockets, with real bundles and SQLite files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest

from tollgate.v1 import authorization_pb2 as pb
from tollgate.v1 import authorization_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
REGO = ROOT / "rego"
_SCRIPT = Path(sys.executable).parent / "tollgate"
# The console script the README tells people to run (falls back to the module in odd environments).
TOLLGATE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "tollgate_cli.main"]
#: The admin token test servers are started with (unless a test asks for none).
ADMIN_TOKEN = "test-admin-token-7f3a"


class Server:
    """A running `tollgate serve` subprocess."""

    def __init__(self, proc: subprocess.Popen[str], address: str, data_dir: Path, admin_token: str | None,
                 credentials: grpc.ChannelCredentials | None = None) -> None:
        self.proc = proc
        self.address = address
        self.data_dir = data_dir
        #: Call metadata for AdminService RPCs (empty when the server has no admin token).
        self.admin_metadata = [("authorization", f"Bearer {admin_token}")] if admin_token else []
        self.channel = (grpc.secure_channel(address, credentials) if credentials is not None
                        else grpc.insecure_channel(address))
        self.stub = pb_grpc.AuthorizationServiceStub(self.channel)
        self._stderr: list[str] = []
        self._pump = threading.Thread(target=self._drain_stderr, daemon=True)
        self._pump.start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)

    @property
    def stderr(self) -> str:
        return "".join(self._stderr)

    def authorize(self, request: pb.AuthorizeRequest, timeout: float = 10) -> pb.AuthorizeResponse:
        response: pb.AuthorizeResponse = self.stub.Authorize(request, timeout=timeout)
        return response

    def get_decision(self, decision_id: str) -> pb.DecisionRecord:
        record: pb.DecisionRecord = self.stub.GetDecision(pb.GetDecisionRequest(decision_id=decision_id), timeout=10)
        return record

    def terminate(self, timeout: float = 30) -> int:
        self.channel.close()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def kill(self) -> None:
        self.channel.close()
        self.proc.kill()
        self.proc.wait()


def start_server(data_dir: Path, *, bundle: Path | str = REGO, listen: str = "127.0.0.1:0",
                 extra: list[str] | None = None, ready_timeout: float = 60,
                 admin_token: str | None = ADMIN_TOKEN, credentials: grpc.ChannelCredentials | None = None,
                 own_group: bool = False, config: Mapping[str, Any] | None = None) -> Server:
    """Start `tollgate serve` and wait for its ready line (with --admin-token admin_token unless None);
    credentials: for a TLS listener, what the test's own channel connects with; own_group: in a process group
    of its own (its pid is the group id), for tests that signal the whole group; config: the keys of a config
    file written beside data_dir (DATA_DIR.yaml) and given with --config."""
    config_args: list[str] = []
    if config is not None:
        config_file = data_dir.with_name(f"{data_dir.name}.yaml")
        config_file.write_text(json.dumps(dict(config)))
        config_args = ["--config", str(config_file)]
    args = [*TOLLGATE, "serve", "--listen", listen, "--data-dir", str(data_dir), "--bundle", str(bundle),
            *(["--admin-token", admin_token] if admin_token else []), *config_args, *(extra or [])]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=own_group)
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("tollgate: serving on "):
            address = line.split()[3]
            server = Server(proc, address, data_dir, admin_token, credentials)
            grpc.channel_ready_future(server.channel).result(timeout=10)
            return server
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"tollgate serve did not become ready (last stdout {line!r}):\n{err}")


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[object]:
    """Factory: serve(bundle=..., extra=[...]) → Server, stopped at the end of the test."""
    servers: list[Server] = []

    def factory(*, bundle: Path | str = REGO, data_dir: Path | None = None, listen: str = "127.0.0.1:0",
                extra: list[str] | None = None, admin_token: str | None = ADMIN_TOKEN,
                credentials: grpc.ChannelCredentials | None = None) -> Server:
        server = start_server(data_dir or tmp_path / "data", bundle=bundle, listen=listen, extra=extra,
                              admin_token=admin_token, credentials=credentials)
        servers.append(server)
        return server

    yield factory
    for s in servers:
        if s.proc.poll() is None:
            s.kill()


def write_policy(root: Path, rego: str, data: str | None = None) -> Path:
    """A bundle directory with one module at tollgate/decision.rego (and optional root data.json)."""
    (root / "tollgate").mkdir(parents=True, exist_ok=True)
    (root / "tollgate" / "decision.rego").write_text(textwrap.dedent(rego))
    if data is not None:
        (root / "data.json").write_text(data)
    return root


def tool_request(agent: str = "code-reviewer", server: str = "github", name: str = "get_pull_request",
                 arguments: dict[str, object] | None = None, **principal: str) -> pb.AuthorizeRequest:
    request = pb.AuthorizeRequest(principal=pb.Principal(agent_id=agent, **principal),
                                  tool=pb.ToolCall(server=server, name=name))
    request.tool.arguments.update(arguments or {})
    return request
