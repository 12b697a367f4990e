"""The state store's SQLite file: one connection, WAL, and a version per component's schema."""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import stat
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

#: What SQLite creates beside a database: it gives them the database file's mode, but one left by an
#: earlier run keeps its own.
_SIDE_FILES = ("-wal", "-shm", "-journal")


class StateError(RuntimeError):
    """The state store cannot be read or written (the message names the file)."""


class StateStore:
    """DATA_DIR/state.db: run-time state the server owns (kill switches; later approvals and budgets).

    The server writes it; people's changes (kill switches, approvals, accounts) may come from another process
    on the same file (the console), each in an IMMEDIATE transaction that SQLite orders against the server's,
    heard by the server's change watch (state/_local.py). Each component (a unit such as KillSwitches) owns its
    tables and migrates them with `migrate(component, steps)`: step i brings its schema from version i
    to i + 1, and `schema_versions` records where each component is, so components evolve on their own.
    Writes are serialised by one lock; each change is one transaction, fsynced before it returns.
    """

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = path
        self.lock = threading.Lock()
        #: Opened by a reader beside the server (`tollgate logs timeline`): never writes, never migrates.
        self.read_only = read_only
        if read_only:
            self.db = _open_read_only(path)
            return
        try:
            private_file(path)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            # A kill switch that is not on disk when Kill returns could be lost by a power cut.
            self.db.execute("PRAGMA synchronous=FULL")
            self.db.execute("PRAGMA busy_timeout=5000")
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS schema_versions (component TEXT PRIMARY KEY, version INTEGER NOT NULL)")
        except (sqlite3.Error, OSError) as exc:
            raise StateError(f"state store {path}: cannot open ({exc})") from exc

    def migrate(self, component: str, steps: Sequence[str]) -> None:
        """Bring component's tables to version len(steps), applying the steps it has not had yet.

        A read-only store only checks that the component is at that version (StateError when not)."""
        with self.lock:
            try:
                row = self.db.execute("SELECT version FROM schema_versions WHERE component = ?",
                                      (component,)).fetchone()
                version = row[0] if row else 0
                if self.read_only and version != len(steps):
                    raise StateError(
                        f"state store {self.path}: {component} schema is version {version}, this reader knows "
                        f"{len(steps)} (hint: read it with the tollgate that serves it)")
                if version > len(steps):
                    raise StateError(
                        f"state store {self.path}: {component} schema is version {version}, newer than this "
                        f"server knows ({len(steps)}) (hint: run the newer server, or use another data directory)")
            except sqlite3.Error as exc:
                raise StateError(f"state store {self.path}: cannot migrate {component} ({exc})") from exc
            for number in range(version, len(steps)):
                with self.transaction(f"migrate {component}") as db:
                    _run_script(db, steps[number])
                    db.execute(
                        "INSERT INTO schema_versions (component, version) VALUES (?, ?) "
                        "ON CONFLICT(component) DO UPDATE SET version = excluded.version",
                        (component, number + 1))

    @contextlib.contextmanager
    def transaction(self, doing: str) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction: committed (and fsynced) when the block ends, rolled back when it raises;
        a database error becomes a StateError saying what could not be done ("cannot <doing>"). The caller
        holds `lock` where other threads may write."""
        try:
            self.db.execute("BEGIN IMMEDIATE")
            try:
                yield self.db
                self.db.execute("COMMIT")
            except BaseException:
                self.db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise StateError(f"state store {self.path}: cannot {doing} ({exc})") from exc

    def close(self) -> None:
        with self.lock:
            self.db.close()


def _open_read_only(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise StateError(f"state store {path}: no such file (hint: the data directory `tollgate serve` used)")
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None,
                             check_same_thread=False)
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("SELECT 1 FROM schema_versions LIMIT 0")
    except sqlite3.Error as exc:
        raise StateError(f"state store {path}: cannot open read-only ({exc})") from exc
    return db


def _run_script(db: sqlite3.Connection, script: str) -> None:
    # executescript() would COMMIT the open transaction first; run statement by statement inside it. A piece
    # is run once it is a complete statement (a trigger's body holds several ";").
    statement = ""
    for piece in script.split(";"):
        statement += piece + ";"
        if sqlite3.complete_statement(statement):
            if statement.strip(" \n;"):
                db.execute(statement)
            statement = ""
    if statement.strip(" \n;"):
        db.execute(statement)


def private_dir(path: Path) -> None:
    """Create the directory path (and its parents) for this user alone (0700), whatever the umask; an existing
    one that others may read or enter is made so, and the log says it was."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    _tighten(path, 0o700)


def private_file(path: Path) -> None:
    """Make sure the file path (a database: requests, approvals and spend go into it) exists and only this user
    may read it (0600), whatever the umask, before anything is written; so are the files SQLite keeps beside it.
    """
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    for candidate in (path, *(path.with_name(path.name + side) for side in _SIDE_FILES)):
        if candidate.exists():
            _tighten(candidate, 0o600)


def _tighten(path: Path, mode: int) -> None:
    found = stat.S_IMODE(path.stat().st_mode)
    if found != mode:
        path.chmod(mode)
        if found & 0o077:
            log.warning("%s was mode %o, open to other users; it is now %o (it holds what agents asked)",
                        path, found, mode)
