"""A real PostgreSQL server for the tests: a copy of a data dir `initdb` made once per test process, in a temp dir,
started on a free port, stopped after.

PostgreSQL refuses to run as root, and the tests run as root in CI: the server then runs as `nobody`, in a
directory of its own under /tmp (pytest's own temp dirs are private to root). Each test gets a database of its
own (`PostgresServer.database()`), so tests never see each other's rows. `stop()` and `start()` take the server
down and bring it back on the same port and data, for the tests of a store that goes away mid-run.
"""

from __future__ import annotations

import atexit
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
#: How many free ports a new server tries before giving up (each taken by someone else before the server bound it).
_BIND_ATTEMPTS = 5


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
        self._as = _owner(self.root)
        self._run_as_owner(["cp", "-a", str(_template(self.bin)), str(self.data)])
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(f"unix_socket_directories = '{self.root}'\n")  # a socket in our own dir
        self.port = 0
        for attempt in range(_BIND_ATTEMPTS):
            # Picked just before the start, and again when another process (another xdist worker's test) bound it
            # in between: a port is free when free_port() returns it, not necessarily a moment later.
            self.port = free_port()
            with (self.data / "postgresql.conf").open("a") as conf:
                conf.write(f"port = {self.port}\n")  # the last one in the file counts
            try:
                self.start()
                return
            except RuntimeError:
                if attempt + 1 == _BIND_ATTEMPTS or "could not bind" not in self.log():
                    raise

    def _run(self, tool: str, *args: str) -> None:
        self._run_as_owner([str(self.bin / tool), *args])

    def _run_as_owner(self, argv: list[str]) -> None:
        _run(self._as, argv, cwd=self.root)

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


def _owner(root: Path) -> list[str]:
    """The prefix that runs a tool as the owner of root: as root, the server and its tools run as nobody through
    setpriv (subprocess's own user= makes Python fork() rather than vfork(), and in a test process that runs gRPC
    its fork handlers then now and then kill the child). root is made nobody's, and private to it."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(root, nobody.pw_uid, nobody.pw_gid)
        prefix = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
    root.chmod(0o700)
    return prefix


def _run(owner: list[str], argv: list[str], *, cwd: Path) -> None:
    """Run argv (prefixed by owner, from _owner); RuntimeError with its output when it fails."""
    done = subprocess.run([*owner, *argv], capture_output=True, text=True, cwd=cwd, timeout=120, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} failed ({done.returncode}): {done.stderr or done.stdout}")


#: Per bindir: the data dir initdb made once in this process.
_templates: dict[Path, Path] = {}


def _template(bin_dir: Path) -> Path:
    """A data dir `initdb` made once per test process (each xdist worker its own), which every server copies: a
    copy costs a fraction of an initdb. It never runs, so each copy starts as initdb left it; removed at exit."""
    made = _templates.get(bin_dir)
    if made is None:
        root = Path(tempfile.mkdtemp(prefix="tollgate-pg-template-"))
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        made = root / "data"
        _run(_owner(root), [str(bin_dir / "initdb"), "-D", str(made), "-U", SUPERUSER, "--auth=trust", "-E",
              "UTF8", "--no-sync", "--locale=C"], cwd=root)
        with (made / "postgresql.conf").open("a") as conf:
            # Tests: no fsync (the data dir is thrown away), room for three sidecars' pools.
            conf.write("listen_addresses = '127.0.0.1'\nfsync = off\nsynchronous_commit = off\n"
                       "full_page_writes = off\nmax_connections = 200\n")
        _templates[bin_dir] = made
    return made
