"""The `postgresql` exporter's transport: each batch of a sidecar's decision log into the fleet's store.

The sidecar's decisions.db stays the first, durable copy (the answer never waits on the network); LogExporter
ships from it with its persisted cursor, batches, backoff and lag, and this transport writes a batch in one
transaction: INSERT ... ON CONFLICT (decision_id) DO NOTHING, so a batch sent again (a crash between the insert
and the cursor update, an exporter restarted on an old cursor) is absorbed and every record is in the store once.

The table, `fleet_decisions` (component "decisions" of the shared store, migrated with `migrate_decisions`;
named apart from a sidecar's own `decisions` table, whose shape it does not have), keeps the record as the
sidecar stored it, byte for byte (the masked canonical JSON that was hashed: never more than the local record),
beside copies of the fields `tollgate logs query` and the timeline look up, each indexed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from tollgate.decisionlog._export import ExportRow, UploadError
from tollgate.encoding import parse_time

if TYPE_CHECKING:
    import psycopg

    from tollgate.decisionlog._checkpoint import Checkpoint
    from tollgate.state.postgres import PgStore

log = logging.getLogger(__name__)

#: The component name in the store's tollgate_schema.
DECISIONS_COMPONENT = "decisions"
#: The cursor's name in the sidecar's export_cursors.
POSTGRESQL = "postgresql"
#: Characters of a caller-given text (agent, session, instance, tool) the indexes hold. A principal field may be as
#: long as a request (1 MiB): a whole one would pass btree's ~2.7 kB entry limit and fail the insert, which would
#: stop the sidecar's shipping for good. Queries compare the prefix (indexed) and then the whole column.
INDEXED_CHARS = 256
#: Seconds past the statement_timeout before a Watchdog cuts the connection itself: the server's own timeout, a
#: clean error, comes first whenever the server still runs.
GRACE = 1.0

# The record column is `json`, not `jsonb`: json keeps the text as given, so `hash` still proves the record read
# back from the store, and `logs query` prints it exactly as from the sidecar's own log. jsonb would rewrite it
# (keys reordered, 1e+20 printed as 100000000000000000000) and refuses "\u0000", which a tool argument may hold:
# that record could never ship. Queries never read inside it: what they filter on has a column of its own.
_STEP_1 = f"""
CREATE TABLE fleet_decisions (
    decision_id TEXT PRIMARY KEY,
    sidecar_id TEXT NOT NULL,            -- which sidecar answered (its fleet id)
    seq BIGINT NOT NULL,                 -- the record's seq in that sidecar's own log
    timestamp TIMESTAMPTZ NOT NULL,
    agent_id TEXT NOT NULL,              -- input.principal.agent_id
    session_id TEXT NOT NULL,            -- input.principal.session_id
    instance_id TEXT NOT NULL,           -- input.principal.instance_id
    kind TEXT NOT NULL,                  -- tool, model, budget
    decision TEXT NOT NULL,              -- allow, deny, require_approval
    tool_server TEXT NOT NULL,           -- input.tool.server of a tool call ('' otherwise)
    tool_name TEXT NOT NULL,             -- input.tool.name of a tool call ('' otherwise)
    reason_codes TEXT[] NOT NULL,
    bundle_revision TEXT NOT NULL,
    request_id TEXT NOT NULL,
    record JSON NOT NULL,                -- the record as the sidecar stored and hashed it
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    shipped_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX fleet_decisions_by_time ON fleet_decisions (timestamp, sidecar_id, seq);
CREATE INDEX fleet_decisions_by_agent ON fleet_decisions (left(agent_id, {INDEXED_CHARS}), timestamp);
CREATE INDEX fleet_decisions_by_session ON fleet_decisions (left(session_id, {INDEXED_CHARS}), timestamp);
CREATE INDEX fleet_decisions_by_instance ON fleet_decisions (left(instance_id, {INDEXED_CHARS}), timestamp);
CREATE INDEX fleet_decisions_by_tool ON fleet_decisions (left(tool_name, {INDEXED_CHARS}), timestamp)
    WHERE kind = 'tool';
CREATE INDEX fleet_decisions_by_sidecar ON fleet_decisions (sidecar_id, seq);
"""
#: The component's migration steps: step i brings the schema from version i to i + 1 (PgStore.migrate).
DECISIONS_STEPS: tuple[str, ...] = (_STEP_1,)

_COLUMNS = ("decision_id, sidecar_id, seq, timestamp, agent_id, session_id, instance_id, kind, decision, "
            "tool_server, tool_name, reason_codes, bundle_revision, request_id, record, prev_hash, hash")
_INSERT = (f"INSERT INTO fleet_decisions ({_COLUMNS}) VALUES ({', '.join(['%s'] * 17)}) "
           "ON CONFLICT (decision_id) DO NOTHING")
# Rows that hold one of the batch's decision IDs but are not this sidecar's record: the store kept another.
_CONFLICTS = ("SELECT d.decision_id, d.sidecar_id FROM fleet_decisions d "
              "JOIN unnest(%s::text[], %s::text[]) AS b(id, hash) ON d.decision_id = b.id "
              "WHERE d.sidecar_id <> %s OR d.hash <> b.hash")


async def migrate_decisions(store: PgStore, *, upgrade: bool) -> int:
    """Create or upgrade the fleet_decisions table (see PgStore.migrate); returns how many steps were applied."""
    return await store.migrate(DECISIONS_COMPONENT, DECISIONS_STEPS, upgrade=upgrade)


def column_text(value: Any) -> str:
    """A record's text as its column holds it: PostgreSQL text cannot hold NUL, so NUL reads as U+FFFD (the record
    itself keeps it, escaped). Queries compare through the same function."""
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else ""


def row_values(sidecar_id: str, row: ExportRow) -> tuple[Any, ...]:
    """The INSERT's parameters for one record (ValueError when the body is not a decision record's JSON)."""
    record = json.loads(row.body)
    if not isinstance(record, dict):
        raise ValueError(f"seq {row.seq}: the record is not a JSON object")
    inp = _mapping(record.get("input"))
    principal = _mapping(inp.get("principal"))
    kind = column_text(inp.get("kind"))
    tool = _mapping(inp.get("tool")) if kind == "tool" else {}
    reasons = record.get("reasons")
    codes = [column_text(r.get("code")) for r in reasons if isinstance(r, Mapping)] if isinstance(reasons, list) else []
    return (column_text(record.get("decision_id")), sidecar_id, row.seq, parse_time(row.timestamp),
            column_text(principal.get("agent_id")), column_text(principal.get("session_id")),
            column_text(principal.get("instance_id")), kind, column_text(record.get("decision")),
            column_text(tool.get("server")), column_text(tool.get("name")), codes,
            column_text(record.get("bundle_revision")), column_text(record.get("request_id")), row.body,
            column_text(record.get("prev_hash")), row.hash)


def _mapping(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class PgTransport:
    """Batches into the shared store's fleet_decisions table, on one connection of the exporter's own.

    A synchronous psycopg connection: the exporter runs on a thread of its own, never on the event loop, so a
    blocking call waits there and nowhere else; the sidecar's async pool stays for the decision path. The
    connection is made at the first batch, not at start, so a store that is down when the sidecar starts delays
    shipping (lag grows, records wait in decisions.db) instead of stopping the sidecar.
    """

    #: The fleet's copy is the records; checkpoints prove a sidecar's own log and stay with it (and its OTLP or
    #: jsonl exports).
    carries_checkpoints = False

    def __init__(self, url: str, *, sidecar_id: str, password_file: str = "", timeout: float = 2.0) -> None:
        from tollgate.state.postgres import PgOptions, PgStore

        if not sidecar_id:
            raise ValueError("decision log export postgresql: a sidecar_id is required (the fleet id of this sidecar)")
        # The store's own connection settings (password file, bounded connect, statement and lock timeouts): built
        # by PgStore and used here for one synchronous connection; its pool is never opened.
        options = PgStore(PgOptions(url, timeout=timeout, password_file=password_file))
        self._url = url
        self._connect_kwargs = options.connect_kwargs
        #: The URL as status and messages show it (no password).
        self.target = options.name
        self._sidecar_id = sidecar_id
        self._conn: psycopg.Connection[Any] | None = None
        #: Records the store already held under their decision ID from another sidecar or with another hash.
        self.conflicts = 0

    def open(self) -> None:
        """Nothing to open yet: the connection is made by the first batch (see the class)."""

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def send(self, batch: Sequence[ExportRow], checkpoints: Sequence[Checkpoint], *, timeout: float) -> None:
        import psycopg

        from tollgate.state.postgres._store import _why  # the store's one-line error, without libpq's details

        values = [row_values(self._sidecar_id, row) for row in batch]  # before the store: a bad row is no store error
        try:
            conn = self._connect(timeout)
            with Watchdog(conn, timeout + GRACE), conn.transaction():
                # The batch may take the upload timeout, not the decision path's state_store_timeout.
                conn.execute("SELECT set_config('statement_timeout', %s, true)", (f"{max(1, int(timeout * 1000))}",))
                with conn.cursor() as cur:
                    cur.executemany(_INSERT, values)
                    cur.execute(_CONFLICTS, ([v[0] for v in values], [r.hash for r in batch], self._sidecar_id))
                    conflicts = cur.fetchall()
        except psycopg.Error as exc:
            self.close()  # a broken or half-used connection is not reused: the next batch connects again
            raise UploadError(f"{self.target}: cannot store {len(batch)} decision records ({_why(exc)})") from exc
        if conflicts:
            self.conflicts += len(conflicts)
            shown = ", ".join(f"{d} (held from sidecar {s!r})" for d, s in conflicts[:5])
            log.warning("decision log export %s: %d record(s) not stored: the store already holds another record "
                        "under decision ID %s; they stay in this sidecar's log", POSTGRESQL, len(conflicts), shown)

    def _connect(self, timeout: float) -> psycopg.Connection[Any]:
        import psycopg

        if self._conn is None or self._conn.closed:
            conn = psycopg.connect(self._url, **self._connect_kwargs)  # connect_timeout bounds it (client side)
            try:
                with Watchdog(conn, timeout + GRACE):
                    _check_schema(conn, self.target)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn


class Watchdog:
    """Bounds calls on a PostgreSQL connection from our side: once `seconds` pass without a kick(), the
    connection's socket is shut down under whatever call waits on it, which then fails as a lost connection does.

    statement_timeout is the server's to enforce, and TCP keeps a connection to a paused server (or across a
    network that drops packets silently) open: without this a call waits there for good. A sync connection's
    call blocks its thread (the exporter: its lag frozen, no WARN, no decision_log_fail_closed_on_lag while records
    pile up); an async one would hold GetDecision or `tollgate logs` until psycopg's own cancel gives up.
    """

    def __init__(self, conn: psycopg.Connection[Any] | psycopg.AsyncConnection[Any], seconds: float) -> None:
        self._fd = conn.pgconn.socket
        self._seconds = seconds
        self._timer: threading.Timer | None = None

    def __enter__(self) -> Watchdog:
        self.kick()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()  # a cut racing the end of the call fails only the next use, which is retried

    def kick(self) -> None:
        """A call finished: the next one gets the whole bound again."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = threading.Timer(self._seconds, self._cut)
        self._timer.daemon = True
        self._timer.start()

    def _cut(self) -> None:
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self._fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)  # shuts the connection down for every descriptor of it


def _check_schema(conn: psycopg.Connection[Any], target: str) -> None:
    """UploadError with the hint unless the store's decisions schema is the one this code writes."""
    import psycopg

    try:
        row = conn.execute("SELECT version FROM tollgate_schema WHERE component = %s",
                           (DECISIONS_COMPONENT,)).fetchone()
    except psycopg.errors.UndefinedTable:
        row = None
    version = int(row[0]) if row else 0
    if version != len(DECISIONS_STEPS):
        newer = version > len(DECISIONS_STEPS)
        raise UploadError(f"{target}: the decisions schema is version {version}, this tollgate writes version "
                          f"{len(DECISIONS_STEPS)} (hint: " + ("run the newer tollgate)" if newer else
                                                              "run `tollgate state migrate --state-store URL`)"))
