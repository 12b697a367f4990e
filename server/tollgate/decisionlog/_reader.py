"""Reading a decision log from outside the server: read-only, safe against a live writer, with time windows."""

from __future__ import annotations

import contextlib
import json
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: The decision log's file name inside a server's data directory.
LOG_FILE = "decisions.db"
#: The retention anchors' table: each row says "records up to upto_seq were pruned; the last one hashed last_hash".
PRUNED_TABLE = "decisions_pruned"
#: The columns a StoredRecord is made from, in its field order.
RECORD_COLUMNS = "seq, decision_id, timestamp, agent_id, session_id, kind, decision, record, prev_hash, hash"


class LogReadError(Exception):
    """The decision log cannot be opened or read (the message names the file and what to check)."""


def log_path(data_dir: str | Path) -> Path:
    """DATA_DIR/decisions.db; LogReadError (with a hint) when there is none."""
    path = Path(data_dir) / LOG_FILE
    if not path.is_file():
        raise LogReadError(f"no decision log at {path} (hint: --data-dir is the directory `tollgate serve` used)")
    return path


def open_read_only(data_dir: str | Path) -> sqlite3.Connection:
    """A read-only connection to DATA_DIR/decisions.db that never writes to it, even while a server appends.

    SQLite's read-only mode still reads the WAL, so committed records are seen as soon as they are
    committed. Autocommit: callers wrap reads that must agree with each other in `snapshot`.
    """
    path = log_path(data_dir)
    db: sqlite3.Connection | None = None
    try:
        db = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("SELECT seq FROM decisions LIMIT 0")
    except sqlite3.Error as exc:
        if db is not None:
            db.close()
        raise LogReadError(f"cannot read decision log {path}: {exc} (hint: is it a Tollgate decisions.db?)") from exc
    return db


@contextlib.contextmanager
def snapshot(db: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One read transaction: every read inside sees the same committed log, whatever a server or retention
    does meanwhile (SQLite's WAL keeps the snapshot; it only holds back checkpoints until the block ends)."""
    db.execute("BEGIN")
    try:
        yield db
    finally:
        db.execute("COMMIT")


@dataclass(frozen=True)
class StoredRecord:
    """One row of the log: the record as stored (canonical JSON) with its place in the chain."""

    seq: int
    decision_id: str
    timestamp: str
    agent_id: str
    session_id: str
    kind: str
    decision: str
    record_json: str
    prev_hash: str
    hash: str

    def record(self) -> dict[str, Any]:
        """The record as data (prev_hash included, as it was hashed); ValueError when the JSON is broken."""
        value = json.loads(self.record_json)
        if not isinstance(value, dict):
            raise ValueError(f"seq {self.seq}: the record is not a JSON object")
        return value


def rows(db: sqlite3.Connection, *, where: str = "", params: tuple[Any, ...] = (), after: int = 0,
         upto: int | None = None, batch: int = 1000) -> Iterator[StoredRecord]:
    """Records with seq in (after, upto], in seq order, read `batch` at a time (each batch its own read,
    unless the caller holds a snapshot); `where` adds SQL conditions on the decisions columns."""
    condition = "seq > ?" + ("" if upto is None else " AND seq <= ?") + (f" AND ({where})" if where else "")
    while True:
        bounds = (after,) if upto is None else (after, upto)
        found = db.execute(f"SELECT {RECORD_COLUMNS} FROM decisions WHERE {condition} ORDER BY seq LIMIT {batch}",
                           (*bounds, *params)).fetchall()
        for row in found:
            yield StoredRecord(*row)
        if len(found) < batch:
            return
        after = found[-1][0]


def has_table(db: sqlite3.Connection, name: str) -> bool:
    return db.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)).fetchone() is not None
