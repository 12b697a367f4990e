"""The fleet's decision log read from the shared store: one record by ID, queries, a session's records in order.

What every sidecar shipped (decisionlog/_pgexport.py) is read here, so `tollgate logs query`, `logs timeline` and
GetDecision answer for the whole fleet without a sidecar's data dir. The filters are Query's, meaning what they
mean on a sidecar's decisions.db; the order is time (then sidecar and its seq), which is a sidecar's append order
for its own records and the only order a fleet's records share.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from tollgate.decisionlog._pgexport import GRACE, INDEXED_CHARS, Watchdog, column_text
from tollgate.decisionlog._query import SESSION_SCAN, ActiveSession, ActiveSessions, Query
from tollgate.decisionlog._record import DecisionRecord
from tollgate.decisionlog._store import PAGE, LogReadError, StoredRecord
from tollgate.encoding import format_time

if TYPE_CHECKING:
    from tollgate.state.postgres import PgStore

_SELECT = ("SELECT decision_id, timestamp, agent_id, session_id, kind, decision, record::text, prev_hash, hash, "
           "request_id, bundle_revision, seq, sidecar_id FROM fleet_decisions")
_ORDER = ("timestamp", "sidecar_id", "seq")
# The newest `scan` records of the window (the time index, read backwards), counted per session; the names are the
# session's newest record's, read by primary key.
_SESSIONS = """
WITH recent AS (
    SELECT decision_id, session_id, decision, timestamp, sidecar_id, seq FROM fleet_decisions
    WHERE timestamp >= %s ORDER BY timestamp DESC, sidecar_id DESC, seq DESC LIMIT %s),
counted AS (
    SELECT session_id, count(*) AS n, count(*) FILTER (WHERE decision = 'deny') AS denials,
           count(*) FILTER (WHERE decision = 'require_approval') AS asked, min(timestamp) AS first,
           max(timestamp) AS last FROM recent GROUP BY session_id),
newest AS (
    SELECT DISTINCT ON (session_id) session_id, decision_id FROM recent
    ORDER BY session_id, timestamp DESC, sidecar_id DESC, seq DESC)
SELECT c.session_id, d.agent_id, d.record->'input'->'principal'->>'user', d.record->'input'->'principal'->>'team',
       d.record->'input'->'principal'->>'workflow', c.n, c.denials, c.asked, c.first, c.last
FROM counted c JOIN newest USING (session_id) JOIN fleet_decisions d ON d.decision_id = newest.decision_id
ORDER BY c.last DESC, c.session_id LIMIT %s
"""


class DecisionLookup(Protocol):
    """Where GetDecision looks when a record is not in this sidecar's own log."""

    async def get(self, decision_id: str) -> DecisionRecord | None:
        """The record with this ID, or None; LogReadError when it cannot be read now."""
        ...


class NoFleetLog:
    """A DecisionLookup with nothing in it: a sidecar on its own (SQLite) has only its own log."""

    async def get(self, decision_id: str) -> DecisionRecord | None:
        return None


@dataclass(frozen=True)
class ShippedRecord(StoredRecord):
    """A record as the fleet's store holds it: its seq is the one in the log of the sidecar that answered."""

    sidecar_id: str = ""


def query_sql(query: Query) -> tuple[str, list[Any]]:
    """Conditions on the store's fleet_decisions table for query (the same matches as on a sidecar's decisions.db)."""
    parts: list[str] = []
    params: list[Any] = []
    if query.decision_id:
        parts.append("decision_id = %s")
        params.append(query.decision_id)
    for column, value in (("agent_id", query.agent), ("session_id", query.session),
                          ("instance_id", query.instance)):
        if value:  # the indexed prefix first, then the whole text
            parts.append(f"left({column}, {INDEXED_CHARS}) = left(%s, {INDEXED_CHARS}) AND {column} = %s")
            params += [column_text(value)] * 2
    for column, value in (("decision", query.decision), ("kind", query.kind)):
        if value:
            parts.append(f"{column} = %s")
            params.append(value)
    if query.since is not None:
        parts.append("timestamp >= %s")
        params.append(query.since)
    if query.until is not None:
        parts.append("timestamp < %s")
        params.append(query.until)
    if query.tool:
        server, slash, name = query.tool.rpartition("/")
        parts.append(f"kind = 'tool' AND left(tool_name, {INDEXED_CHARS}) = left(%s, {INDEXED_CHARS}) "
                     "AND tool_name = %s")
        params += [column_text(name)] * 2
        if slash:
            parts.append("tool_server = %s")
            params.append(column_text(server))
    if query.reason:  # no index of its own: the time bound (fleet_decisions_by_time) and the limit bound it
        parts.append("reason_codes @> ARRAY[%s]::text[]")
        params.append(column_text(query.reason))
    return " AND ".join(parts), params


class PgDecisionReader:
    """Reads the fleet's decision log through a PgStore (the sidecar's pool, or one the CLI opens: `open_reader`).

    Every failure is a LogReadError naming the store (what GetDecision answers UNAVAILABLE and the CLI prints)."""

    def __init__(self, store: PgStore) -> None:
        #: The pool it reads through (the timeline reads the run's approvals and spend on it too).
        self.store = store

    async def get(self, decision_id: str) -> DecisionRecord | None:
        found = await self._select(Query(decision_id=decision_id), limit=1, newest=False)
        return _typed(found[0]) if found else None

    async def find(self, query: Query) -> list[ShippedRecord]:
        """Every matching record, oldest first; with query.limit, the most recent that many."""
        if query.limit is not None:
            return list(reversed(await self._select(query, limit=query.limit, newest=True)))
        return await self._all(query)

    async def session(self, session_id: str) -> list[DecisionRecord]:
        """The session's records in order, typed (what the timeline is made of)."""
        return [_typed(row) for row in await self.find(Query(session=session_id))]

    async def sessions(self, since: datetime, *, limit: int = 50, scan: int = SESSION_SCAN) -> ActiveSessions:
        """The sessions with records at or after since, most recently active first (as SqliteDecisionStore's)."""
        async with self._reading("read") as (conn, watch):
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            rows = await (await conn.execute(_SESSIONS, (since, scan, limit))).fetchall()
            watch.kick()
            counted = await (await conn.execute(
                "SELECT count(*) FROM (SELECT 1 FROM fleet_decisions WHERE timestamp >= %s LIMIT %s) AS w",
                (since, scan))).fetchone()
        scanned = int(counted[0]) if counted else 0
        found = tuple(ActiveSession(str(r[0]), str(r[1]), str(r[2] or ""), str(r[3] or ""), str(r[4] or ""),
                                    int(r[5]), int(r[6]), int(r[7]), format_time(r[8]), format_time(r[9]))
                      for r in rows)
        return ActiveSessions(found, scanned, scanned >= scan)

    async def _all(self, query: Query) -> list[ShippedRecord]:
        # Page by page (keyset on the order), in one repeatable-read transaction: one consistent fleet log.
        found: list[ShippedRecord] = []
        async with self._reading("read") as (conn, watch):
            await conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            after: tuple[Any, ...] | None = None
            while True:
                page = await self._page(conn, query, after=after, limit=PAGE, newest=False)
                watch.kick()
                found += [row for row, _ in page]
                if len(page) < PAGE:
                    return found
                after = page[-1][1]

    async def _select(self, query: Query, *, limit: int, newest: bool) -> list[ShippedRecord]:
        async with self._reading("read") as (conn, _):
            return [row for row, _ in await self._page(conn, query, after=None, limit=limit, newest=newest)]

    async def _page(self, conn: Any, query: Query, *, after: tuple[Any, ...] | None, limit: int,
                    newest: bool) -> list[tuple[ShippedRecord, tuple[Any, ...]]]:
        where, params = query_sql(query)
        if after is not None:
            where = f"({', '.join(_ORDER)}) > (%s, %s, %s)" + (f" AND {where}" if where else "")
            params = [*after, *params]
        direction = " DESC" if newest else ""
        sql = (f"{_SELECT}{' WHERE ' + where if where else ''} "
               f"ORDER BY {', '.join(c + direction for c in _ORDER)} LIMIT %s")
        rows = await (await conn.execute(sql, (*params, limit))).fetchall()
        return [(_shipped(row), (row[1], row[12], row[11])) for row in rows]

    @contextlib.asynccontextmanager
    async def _reading(self, doing: str) -> AsyncIterator[tuple[Any, Watchdog]]:
        """One read-only transaction, each statement in it (BEGIN and COMMIT too) bounded by the store's timeout
        from our side as well (Watchdog: a paused store answers nothing, not even the statement_timeout)."""
        import psycopg

        from tollgate.state import StateError

        bound = self.store.options.timeout + GRACE
        try:
            async with contextlib.AsyncExitStack() as stack:
                # The pool checks a connection before handing it out, and that check waits on a paused store for
                # good: bounded here by cancelling it (psycopg then spends up to 10 s trying to cancel the query).
                try:
                    async with asyncio.timeout(bound):
                        conn = await stack.enter_async_context(
                            self.store.connection(f"{doing} the fleet's decision log"))
                except TimeoutError:
                    raise LogReadError(f"state store {self.store.name}: cannot {doing} the fleet's decision log "
                                       f"(no connection answered within {bound:g}s)") from None
                with Watchdog(conn, bound) as watch:
                    async with conn.transaction():
                        watch.kick()
                        yield conn, watch
        except StateError as exc:  # the store turns every database error into one, its cause kept
            if isinstance(exc.__cause__, psycopg.errors.UndefinedTable):
                raise LogReadError(f"state store {self.store.name}: holds no decision log (hint: run `tollgate "
                                   "state migrate --state-store URL`; sidecars ship their records there once it "
                                   "is)") from exc
            raise LogReadError(str(exc)) from exc


def _shipped(row: tuple[Any, ...]) -> ShippedRecord:
    moment: datetime = row[1]
    return ShippedRecord(seq=int(row[11]), decision_id=row[0], timestamp=format_time(moment), agent_id=row[2],
                         session_id=row[3], kind=row[4], decision=row[5], record_json=row[6], prev_hash=row[7],
                         hash=row[8], request_id=row[9], bundle_revision=row[10], sidecar_id=row[12])


def _typed(row: StoredRecord) -> DecisionRecord:
    try:
        return row.decision_record()
    except ValueError as exc:
        raise LogReadError(f"the fleet's decision log: {exc}") from None


@contextlib.asynccontextmanager
async def open_reader(url: str, *, password_file: str = "", timeout: float = 2.0) -> AsyncIterator[PgDecisionReader]:
    """A reader on a pool of its own (one connection), for a command run beside the fleet; StateError when the
    store cannot be reached within the timeout."""
    from tollgate.state.postgres import PgOptions, PgStore

    store = PgStore(PgOptions(url, timeout=timeout, password_file=password_file, min_connections=1,
                              max_connections=1, application_name="tollgate logs"))
    await store.open()
    try:
        yield PgDecisionReader(store)
    finally:
        await store.close()
