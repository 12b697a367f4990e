"""The Unix-socket relay that lets the gRPC server know each connection's peer credentials (SO_PEERCRED).

gRPC (grpc.aio) does not expose the peer's uid, gid or pid of a Unix-socket connection: context.peer() is
the peer's *address*, and a client socket has none. So `tollgate serve --listen unix:PATH` listens on PATH
itself, reads SO_PEERCRED from the kernel for each connection it accepts, and relays the bytes to the gRPC
server on a private socket. It connects to that socket from an address that encodes the credentials —
`@tollgate-relay.SERVERPID.RANDOM/UID.GID.PID.N`, in the abstract namespace — which gRPC reports as the
peer, and tollgate.identity reads back. N is a fresh random number for each connection: abstract names are
listed in /proc/net/unix and any local user may bind one, so a name anyone could predict (it was a counter)
could be taken first, and the relay would refuse the connection it was meant for.

Why this is trustworthy: the private socket is in a directory the server creates 0700, so only the
server's own user can connect to it (and that user can read the server's keys anyway); the credentials are
those the kernel recorded when the client connected. Limits: they are of the process that called
connect() (a process that hands its socket to another keeps the first one's), the pid may be reused after
the client exits, and the relay costs one extra hop (0.1–0.25 ms per request at the median, measured here).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import shutil
import socket
import struct
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
_CHUNK = 256 * 1024
#: Longest Unix socket path (sun_path holds 108 bytes with the terminating NUL).
_SUN_PATH_MAX = 107
_BACKEND = "grpc.sock"
#: Fresh names tried for one relayed connection before it is refused: with 60 random bits per name, a second
#: collision means something is binding names as fast as they are listed, not chance.
_BIND_ATTEMPTS = 4


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a connected Unix socket, from the kernel."""
    pid, uid, gid = _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    return pid, uid, gid


class PeerCredentialRelay:
    """Listens on a public Unix socket and relays each connection to the gRPC server's private one."""

    def __init__(self, public_path: str, *, state_dir: Path | None = None) -> None:
        self.public_path = public_path
        self._dir = private_dir(state_dir)
        #: Where the gRPC server listens (unix:PATH).
        self.backend = f"unix:{self._dir / _BACKEND}"
        # Relayed connections come from abstract-namespace addresses named for this relay; gRPC reports them as
        # the peer. Any process may bind such a name, but only this user can reach the backend socket.
        self._tag = f"tollgate-relay.{os.getpid()}.{secrets.token_hex(4)}"
        #: What gRPC reports as the peer of a relayed connection, before UID.GID.PID.N.
        self.peer_prefix = f"unix-abstract:{self._tag}/"
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(self._accept, path=self.public_path)
        # Connecting needs write permission on the socket: the owner and its group (a pod's fsGroup, a group
        # of harness users) may connect, no one else; who they are is then read from the kernel per connection.
        os.chmod(self.public_path, 0o660)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.public_path)
        shutil.rmtree(self._dir, ignore_errors=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._relay(reader, writer)
        finally:
            self._tasks.discard(task)

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("socket")
        try:
            pid, uid, gid = peer_credentials(client)
        except OSError as exc:
            log.warning("unix socket: cannot read the peer credentials (%s); connection closed", exc)
            writer.close()
            return
        try:
            backend = self._bound(uid, gid, pid)
        except OSError as exc:
            log.error("unix socket: cannot bind a relay address for the connection of uid %d pid %d (%s); "
                      "connection closed (hint: a local process may be binding names under @%s/)",
                      uid, pid, exc, self._tag)
            writer.close()
            return
        try:
            await asyncio.get_running_loop().sock_connect(backend, self.backend[len("unix:"):])
        except OSError as exc:
            log.error("unix socket: cannot reach the gRPC server (%s); connection closed", exc)
            backend.close()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_unix_connection(sock=backend)
        await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer), return_exceptions=True)


    def _bound(self, uid: int, gid: int, pid: int) -> socket.socket:
        """A socket bound to an abstract name that carries the credentials and a number no one can guess."""
        attempts = 0
        while True:
            backend = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            backend.setblocking(False)
            try:
                backend.bind(f"\0{self._tag}/{uid}.{gid}.{pid}.{secrets.randbits(60)}")
                return backend
            except OSError as exc:
                backend.close()
                attempts += 1
                if exc.errno != errno.EADDRINUSE or attempts >= _BIND_ATTEMPTS:
                    raise
                log.warning("unix socket: relay address under @%s/ already bound by another process; "
                            "trying another", self._tag)


def private_dir(state_dir: Path | None) -> Path:
    """A new directory only this user may enter: state_dir/relay.PID when its paths fit a socket address (a
    server killed without its shutdown leaves it there, and the next start removes it), else one in $TMPDIR."""
    if state_dir is not None:
        path = state_dir / f"relay.{os.getpid()}"
        if len(os.fsencode(path / _BACKEND)) <= _SUN_PATH_MAX:
            _remove_stale(state_dir)
            path.mkdir(mode=0o700)
            path.chmod(0o700)  # whatever the umask
            return path
    return Path(tempfile.mkdtemp(prefix="tollgate-relay-"))  # 0700


def _remove_stale(state_dir: Path) -> None:
    """Remove relay.PID directories whose process is gone (or is this one: a reused pid)."""
    for stale in state_dir.glob("relay.*"):
        pid = stale.suffix[1:]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(stale, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while chunk := await source.read(_CHUNK):
            sink.write(chunk)
            await sink.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        # Both directions end together: an HTTP/2 connection is not half-closed, so once one side is gone
        # the other has nothing left to answer.
        sink.close()
