"""The Unix-socket relay: the names it connects from carry the caller's credentials and cannot be squatted."""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from tollgate.identity import PeerCredentialRelay, _peercred
from tollgate.identity._callers import uds_caller


async def _peer_seen_by_backend(relay: PeerCredentialRelay, public: Path) -> str:
    """Connect through the relay; what the backend (the gRPC server's place) sees as the peer's address."""
    seen: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        seen.set_result(peer.decode() if isinstance(peer, bytes) else str(peer))
        writer.close()

    server = await asyncio.start_unix_server(backend, path=relay.backend[len("unix:"):])
    await relay.start()
    try:
        _, writer = await asyncio.open_unix_connection(str(public))
        try:
            return await asyncio.wait_for(seen, 10)
        finally:
            writer.close()
    finally:
        await relay.close()
        server.close()
        await server.wait_closed()


def test_each_relayed_connection_comes_from_an_unguessable_name_that_names_its_credentials(tmp_path: Path) -> None:
    public = tmp_path / "s.sock"
    names = [asyncio.run(_peer_seen_by_backend(PeerCredentialRelay(str(public), state_dir=tmp_path), public))
             for _ in range(2)]
    for name in names:
        tag, credentials = name.lstrip("\0").split("/")
        assert tag.startswith("tollgate-relay.")
        uid, gid, pid, number = credentials.split(".")
        assert (int(uid), int(gid), int(pid)) == (os.getuid(), os.getgid(), os.getpid())
        assert int(number) >= 1 << 20  # 60 random bits, not a counter from 0 (below 2**20: one chance in 2**40)
        assert uds_caller(credentials).subject == f"uid:{os.getuid()}"
    assert names[0] != names[1]


def test_a_name_already_bound_by_another_process_is_replaced_by_a_fresh_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    public = tmp_path / "s.sock"
    relay = PeerCredentialRelay(str(public), state_dir=tmp_path)
    tag = relay.peer_prefix[len("unix-abstract:"):]
    squatter = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    squatter.bind(f"\0{tag}{os.getuid()}.{os.getgid()}.{os.getpid()}.7")
    numbers = iter([7, 8])  # the first draw collides with the squatted name
    monkeypatch.setattr(_peercred.secrets, "randbits", lambda bits: next(numbers))
    try:
        name = asyncio.run(_peer_seen_by_backend(relay, public))
    finally:
        squatter.close()
    assert name.lstrip("\0") == f"{tag}{os.getuid()}.{os.getgid()}.{os.getpid()}.8"
