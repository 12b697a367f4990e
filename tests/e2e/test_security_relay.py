"""Attacks on the Unix-socket relay over a real server: a local user squatting the names relayed connections use."""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import grpc

from tests.conftest import Serve, tool_request
from tollgate.v1 import authorization_pb2 as pb
from tollgate.v1 import authorization_pb2_grpc as pb_grpc

#: How many of the next per-connection names the squatter takes (the old names counted up from 0 per relay).
SQUATTED = 256


def _relay_names(server_pid: int) -> list[str]:
    """The abstract names of the relay's connections, as any local user reads them in /proc/net/unix: those of the
    server with that pid only (the tag starts with it), not another test's that runs at the same time."""
    names = []
    for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
        fields = line.split()
        if len(fields) == 8 and fields[7].startswith(f"@tollgate-relay.{server_pid}."):
            names.append(fields[7][1:])
    return names


@contextlib.contextmanager
def _squat(names: list[str]) -> Iterator[int]:
    """Bind each abstract name (as another local user could); yields how many were free to take."""
    held: list[socket.socket] = []
    try:
        for name in names:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.bind("\0" + name)
            except OSError:
                s.close()
                continue
            held.append(s)
        yield len(held)
    finally:
        for s in held:
            s.close()


def test_names_pre_bound_by_a_local_user_do_not_block_a_connection_through_the_relay(
        serve: Serve, tmp_path: Path) -> None:
    socket_path = tmp_path / "s.sock"  # pytest keeps tmp_path short enough for a socket address
    server = serve(listen=f"unix:{socket_path}")
    assert server.authorize(tool_request()).decision == pb.DECISION_ALLOW  # the server's own channel is relayed
    seen = _relay_names(server.proc.pid)
    assert seen, "no relayed connection is listed in /proc/net/unix"
    tag = seen[0].split("/")[0]
    # What the squatter predicts: this relay's tag, this client's uid, gid and pid, and the next counter values.
    predicted = [f"{tag}/{os.getuid()}.{os.getgid()}.{os.getpid()}.{n}" for n in range(SQUATTED)]
    with _squat(predicted) as taken:
        assert taken >= SQUATTED - len(seen)
        # A connection of its own (not the server object's, which is already relayed).
        options = [("grpc.use_local_subchannel_pool", 1)]
        with grpc.insecure_channel(f"unix:{socket_path}", options=options) as channel:
            response = pb_grpc.AuthorizationServiceStub(channel).Authorize(tool_request(), timeout=10)
    assert response.decision == pb.DECISION_ALLOW
    record = server.get_decision(response.decision_id)
    assert record.decision_id == response.decision_id
