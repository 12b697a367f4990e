"""Shared fixtures: real `tollgate serve` processes on real sockets, with real bundles and SQLite files."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

import grpc
import pytest

from tests.pg import PostgresServer, running_server
from tollgate.clock import SHIFT_ENV, START_ENV
from tollgate.encoding import format_time, parse_time
from tollgate.v1 import authorization_pb2 as pb
from tollgate.v1 import authorization_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
REGO = ROOT / "rego"
_SCRIPT = Path(sys.executable).parent / "tollgate"
# The console script the README tells people to run (falls back to the module in odd environments).
TOLLGATE = [str(_SCRIPT)] if _SCRIPT.exists() else [sys.executable, "-m", "tollgate_cli.main"]
#: The admin token test servers are started with (unless a test asks for none).
ADMIN_TOKEN = "test-admin-token-7f3a"
#: `--clock-start year-end`: each server's clock starts this many seconds before the next UTC new year, in turn,
#: so the midnight, month end and year end fall before, during and after a test's first requests.
YEAR_END_LEADS = (3.0, 2.0, 1.0)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--clock-start", default="", metavar="TIME",
        help="start the clock of every `tollgate serve` the tests start at TIME (RFC 3339), or 'year-end': a "
             "few seconds before the next UTC new year (through TOLLGATE_TESTING_CLOCK_START, a testing aid)")


def pytest_configure(config: pytest.Config) -> None:
    global _clock_start
    _clock_start = str(config.getoption("--clock-start") or "")
    if _clock_start and _clock_start != "year-end":
        try:
            parse_time(_clock_start)
        except ValueError as exc:
            raise pytest.UsageError(f"--clock-start: {exc} (or 'year-end')") from None


def pytest_report_header(config: pytest.Config) -> str:
    return f"tollgate serve clock: {_clock_start or 'the system clock'}"


_clock_start = ""
_servers_started = 0


def server_clock_start() -> str:
    """The TOLLGATE_TESTING_CLOCK_START the next server gets ("" : the system clock)."""
    global _servers_started
    if _clock_start != "year-end":
        return _clock_start
    lead = YEAR_END_LEADS[_servers_started % len(YEAR_END_LEADS)]
    _servers_started += 1
    return format_time(next_year_end() - timedelta(seconds=lead))


def next_year_end(now: datetime | None = None) -> datetime:
    """The next UTC new year's midnight."""
    return datetime((now or datetime.now(UTC)).year + 1, 1, 1, tzinfo=UTC)


class Server:
    """A running `tollgate serve` subprocess."""

    def __init__(self, proc: subprocess.Popen[str], address: str, data_dir: Path, admin_token: str | None,
                 credentials: grpc.ChannelCredentials | None = None, *, clock_file: Path | None = None,
                 clock_start: str = "", launched_at: float | None = None) -> None:
        self.proc = proc
        self.address = address
        self.data_dir = data_dir
        #: The server's TOLLGATE_TESTING_CLOCK_SHIFT_FILE: advance_clock writes it.
        self.clock_file = clock_file
        self._clock_shift = 0.0
        # Its clock started at clock_start (or is the system clock) some time between launch and ready.
        self._clock_start = parse_time(clock_start) if clock_start else None
        self._ready_at = time.time()
        self._launched_at = self._ready_at if launched_at is None else launched_at
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

    def advance_clock(self, seconds: float) -> None:
        """Move the server's wall clock forward (past a TTL, into the next day) while it runs: no sleeping.

        Written whole and renamed into place; the server reads it on its next clock read."""
        assert self.clock_file is not None, "this server was started without a clock shift file"
        self._clock_shift += seconds
        part = self.clock_file.with_name(self.clock_file.name + ".part")
        part.write_text(f"{self._clock_shift!r}\n")
        os.replace(part, self.clock_file)

    def clock_range(self) -> tuple[datetime, datetime]:
        """The earliest and the latest the server's clock can read now: exact on the system clock; on a started
        one, it started somewhere between launch and ready (the test's process reads the same system clock)."""
        now = time.time()
        if self._clock_start is None:
            earliest = latest = now
        else:
            start = self._clock_start.timestamp()
            earliest, latest = start + now - self._ready_at, start + now - self._launched_at
        return (datetime.fromtimestamp(earliest + self._clock_shift, UTC),
                datetime.fromtimestamp(latest + self._clock_shift, UTC))

    def step_past_midnight(self, *, within: float) -> None:
        """If a UTC midnight may come on the server's clock in the next `within` seconds, move the clock just past
        it, so that what follows runs inside one day (for examples that show one day's figures)."""
        earliest, latest = self.clock_range()
        midnight = datetime.combine(earliest.date() + timedelta(days=1), datetime.min.time(), UTC)
        if midnight <= latest + timedelta(seconds=within):
            self.advance_clock((midnight - earliest).total_seconds() + 1)

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
    file written beside data_dir (DATA_DIR.yaml) and given with --config. The server's clock moves with
    Server.advance_clock (a shift file beside data_dir, DATA_DIR.clock) and starts where --clock-start says."""
    config_args: list[str] = []
    if config is not None:
        config_file = data_dir.with_name(f"{data_dir.name}.yaml")
        config_file.write_text(json.dumps(dict(config)))
        config_args = ["--config", str(config_file)]
    args = [*TOLLGATE, "serve", "--listen", listen, "--data-dir", str(data_dir), "--bundle", str(bundle),
            *(["--admin-token", admin_token] if admin_token else []), *config_args, *(extra or [])]
    clock_file = data_dir.with_name(f"{data_dir.name}.clock")
    clock_file.unlink(missing_ok=True)  # a restarted server starts unshifted, as the fresh Server object thinks
    env = {**os.environ, "PYTHONUNBUFFERED": "1", SHIFT_ENV: str(clock_file)}
    start = server_clock_start()
    if start:
        env[START_ENV] = start
    launched_at = time.time()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                            start_new_session=own_group)
    assert proc.stdout is not None
    deadline = time.monotonic() + ready_timeout
    line = ""
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.startswith("tollgate: serving on "):
            address = line.split()[3]
            server = Server(proc, address, data_dir, admin_token, credentials, clock_file=clock_file,
                            clock_start=start, launched_at=launched_at)
            grpc.channel_ready_future(server.channel).result(timeout=10)
            return server
    proc.kill()
    _, err = proc.communicate()
    raise AssertionError(f"tollgate serve did not become ready (last stdout {line!r}):\n{err}")


class Serve(Protocol):
    """What the `serve` fixture gives a test."""

    def __call__(self, *, bundle: Path | str = REGO, data_dir: Path | None = None, listen: str = "127.0.0.1:0",
                 extra: list[str] | None = None, admin_token: str | None = ADMIN_TOKEN,
                 credentials: grpc.ChannelCredentials | None = None) -> Server: ...


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
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


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One real PostgreSQL server for the whole run (tests/pg.py); a test takes a database of its own from it."""
    yield from running_server()


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """The URL of a new, empty database on the run's PostgreSQL server."""
    return postgres.database()


def wait_for(condition: Callable[[], bool], *, timeout: float = 60.0, what: str = "condition") -> None:
    """Poll condition until it holds: what a fixed sleep would stand in for. AssertionError after timeout seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


async def eventually(condition: Callable[[], bool], *, timeout: float = 20.0, what: str = "condition") -> float:
    """wait_for on an event loop: poll condition without blocking the loop; the seconds it took."""
    began = time.monotonic()
    while not condition():
        assert time.monotonic() - began < timeout, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)
    return time.monotonic() - began


def write_policy(root: Path, rego: str, data: str | None = None) -> Path:
    """A bundle directory with one module at tollgate/decision.rego (and optional root data.json)."""
    (root / "tollgate").mkdir(parents=True, exist_ok=True)
    (root / "tollgate" / "decision.rego").write_text(textwrap.dedent(rego))
    if data is not None:
        (root / "data.json").write_text(data)
    return root


def tool_request(agent: str = "code-reviewer", server: str = "github", name: str = "get_pull_request",
                 arguments: dict[str, object] | None = None, **principal: str) -> pb.AuthorizeRequest:
    # The stub types every keyword as the union of all fields' types; each of these is a string field.
    request = pb.AuthorizeRequest(principal=pb.Principal(agent_id=agent, **principal),  # type: ignore[arg-type]
                                  tool=pb.ToolCall(server=server, name=name))
    request.tool.arguments.update(arguments or {})
    return request
