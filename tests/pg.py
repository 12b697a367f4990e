"""A real PostgreSQL server for the tests: `initdb` into a temp dir, started on a free port, stopped after.

PostgreSQL refuses to run as root, and the tests run as root in CI: the server then runs as `nobody`, in a
directory of its own under /tmp (pytest's own temp dirs are private to root). Each test gets a database of its
own (`PostgresServer.database()`), so tests never see each other's rows. `stop()` and `start()` take the server
down and bring it back on the same port and data, for the tests of a store that goes away mid-run.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

#: Where Debian puts the server binaries (not on PATH): /usr/lib/postgresql/<major>/bin.
_DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"
#: The role and database the tests connect as and to.
SUPERUSER = "tollgate"


def bindir() -> Path:
    """The directory holding initdb and pg_ctl (RuntimeError naming the package when there is none)."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob(_DEBIAN_BINDIRS), key=lambda p: int(Path(p).parent.name), reverse=True)
    for candidate in candidates:
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    raise RuntimeError("PostgreSQL server binaries not found (install Debian's postgresql package: tools/setup.sh "
                       "does when run as root)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PostgresServer:
    """One PostgreSQL cluster in a temp dir, listening on 127.0.0.1 only, trusting local connections."""

    def __init__(self) -> None:
        self.bin = bindir()
        self.root = Path(tempfile.mkdtemp(prefix="tollgate-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        #: As root, each tool runs as nobody through setpriv: subprocess's own user= makes Python fork() rather than
        #: vfork(), and in a test process that runs gRPC its fork handlers then now and then kill the child.
        self._as: list[str] = []
        if os.geteuid() == 0:
            nobody = pwd.getpwnam("nobody")
            os.chown(self.root, nobody.pw_uid, nobody.pw_gid)
            self._as = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
        self.root.chmod(0o700)
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8", "--no-sync",
                  "--locale=C")
        with (self.data / "postgresql.conf").open("a") as conf:
            # Tests: no fsync (the data dir is thrown away), a socket in our own dir, room for three sidecars' pools.
            conf.write(f"listen_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.root}'\n"
                       "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n")
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run([*self._as, str(self.bin / tool), *args], capture_output=True, text=True,
                              cwd=self.root, timeout=120, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{tool} failed ({done.returncode}): {done.stderr or done.stdout}")

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (mode fast: connections are closed; immediate: as a crash would)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def database(self) -> str:
        """A new, empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        try:
            self.stop("immediate")
        except RuntimeError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


def running_server() -> Iterator[PostgresServer]:
    """The generator behind the session fixture: one server for the whole run."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()
