"""Tool results: what became of a tool call Tollgate decided, as its harness reported it (ReportToolResult).

One result per decision. The rules both stores hold every report to live here (`checked_result`, `settle`), so
SQLite and PostgreSQL answer alike:

- the same report again (a hook retried after a lost answer) is answered with what is stored, unchanged; a
  duration the sidecar measured counts as the same whenever it was measured;
- a different report for the same decision is refused (ToolResultExists): a result is what happened, once;
- a result for a decision that opened an approval still pending closes that approval in the same transaction:
  its expiry is brought forward to now and its reason says why (`close_reason`). It then reads as expired
  everywhere (the approvals list, the console inbox, WaitForApproval), can never be approved nor used, and
  the outbox's expiry sweep tells its approvers. An approval already decided is left as it is.

What goes in is bounded: ids at most MAX_IDENTIFIER printable characters, a result class of RESULTS (never the
tool's output: it may hold secrets), a duration from 0 to MAX_DURATION_MS.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from tollgate.clock import Clock, SystemClock
from tollgate.contract import MAX_IDENTIFIER
from tollgate.encoding import format_time
from tollgate.state._store import StateError, StateStore

#: The result classes a report may give (the proto's ToolResult enum, by name).
RESULTS = ("ok", "error", "interrupted")
#: Longest duration a report may give: 7 days, in milliseconds.
MAX_DURATION_MS = 7 * 24 * 3600 * 1000
#: Longest close reason and peer address kept.
MAX_REASON = 300
MAX_PEER = 300
#: Most results one read returns (a timeline page).
MAX_READ = 20000

COMPONENT = "tool_results"
#: The columns in the order both stores select and insert them (from_row reads them so).
COLUMN_NAMES = ("decision_id", "request_id", "session_id", "agent_id", "tool", "result", "duration_ms",
                "duration_measured", "reported_by", "reported_from", "reported_at", "approval_closed")
COLUMNS = ", ".join(COLUMN_NAMES)


def table_sql(*, text: str, boolean: str) -> str:
    """The table, in each store's spelling of text and boolean (times are RFC 3339 text in one fixed width)."""
    return f"""
    CREATE TABLE tool_results (
        decision_id {text} PRIMARY KEY CHECK (length(decision_id) BETWEEN 1 AND {MAX_IDENTIFIER}),
        request_id {text} NOT NULL,
        session_id {text} NOT NULL,
        agent_id {text} NOT NULL,
        tool {text} NOT NULL,
        result {text} NOT NULL CHECK (result IN ('ok', 'error', 'interrupted')),
        duration_ms bigint NOT NULL CHECK (duration_ms BETWEEN 0 AND {MAX_DURATION_MS}),
        duration_measured {boolean} NOT NULL,
        reported_by {text} NOT NULL,
        reported_from {text} NOT NULL,
        reported_at {text} NOT NULL,
        approval_closed {text} NOT NULL
    );
    CREATE INDEX tool_results_session ON tool_results (session_id)
    """


#: The SQLite component's migrations (PgToolResults.STEPS are PostgreSQL's).
_SCHEMA = (table_sql(text="TEXT", boolean="INTEGER"),)
#: Close a still-pending approval: (expires_at, decided_at, reason, id, now). Written with %s; SQLite uses ?.
CLOSE_APPROVAL_SQL = ("UPDATE approvals SET expires_at = %s, decided_at = %s, reason = %s "
                      "WHERE id = %s AND status = 'pending' AND expires_at > %s")


class ToolResultError(ValueError):
    """A report that breaks the rules (the message names the field): INVALID_ARGUMENT."""


class ToolResultExists(Exception):
    """A different result is already stored for the decision: ALREADY_EXISTS."""


@dataclass(frozen=True)
class ToolResultReport:
    """What a harness reports of one decided tool call, with what the decision record says of it."""

    decision_id: str
    result: str
    duration_ms: int
    #: The sidecar measured the duration from the decision's timestamp (the report gave none).
    duration_measured: bool = False
    request_id: str = ""
    session_id: str = ""
    agent_id: str = ""
    #: server/name as the decision named the tool.
    tool: str = ""
    #: The caller's authenticated subject ("" when nothing was proven) and its peer address.
    reported_by: str = ""
    reported_from: str = ""
    #: The approval the decision opened: closed by this result if still pending ("" for none), and why.
    approval_id: str = ""
    close_reason: str = ""


@dataclass(frozen=True)
class ToolRun:
    """One stored result."""

    decision_id: str
    request_id: str
    session_id: str
    agent_id: str
    tool: str
    result: str
    duration_ms: int
    duration_measured: bool
    reported_by: str
    reported_from: str
    reported_at: str  # RFC 3339, UTC
    #: The approval this result closed ("" when none was pending).
    approval_closed: str

    def same_report(self, other: ToolRun) -> bool:
        """Whether other says what this says: a retry, not a change."""
        if self.result != other.result or self.duration_measured != other.duration_measured:
            return False
        return self.duration_measured or self.duration_ms == other.duration_ms


@dataclass(frozen=True)
class Recorded:
    """What a report did: the result as stored now, and whether the store was left as it was."""

    run: ToolRun
    unchanged: bool


class ToolResultStore(Protocol):
    """Tool results in the state store: reported by harnesses, read by timelines."""

    async def report(self, report: ToolResultReport) -> Recorded:
        """Store the report (see the module's rules): ToolResultError for one that breaks them, ToolResultExists
        for a different result already there; atomic across every replica on the store."""
        ...

    async def for_decisions(self, decision_ids: Sequence[str]) -> dict[str, ToolRun]:
        """The results of these decisions (decisions without one are absent); at most MAX_READ."""
        ...


def _bounded(text: str, limit: int) -> str:
    cleaned = "".join(c if c.isprintable() else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit - 1] + "…"


def checked_result(report: ToolResultReport) -> ToolResultReport:
    """The report as stored; ToolResultError naming the first field it breaks."""
    for name, value in (("decision_id", report.decision_id), ("request_id", report.request_id)):
        if len(value) > MAX_IDENTIFIER:
            raise ToolResultError(f"{name}: at most {MAX_IDENTIFIER} characters, not {len(value)}")
        if not value.isprintable():
            raise ToolResultError(f"{name}: control characters are not allowed")
    if not report.decision_id:
        raise ToolResultError("decision_id: required")
    if report.result not in RESULTS:
        raise ToolResultError(f"result: must be one of {', '.join(RESULTS)}, not {report.result[:40]!r}")
    if isinstance(report.duration_ms, bool) or not 0 <= report.duration_ms <= MAX_DURATION_MS:
        raise ToolResultError(f"duration_ms: must be from 0 to {MAX_DURATION_MS} (7 days), not "
                              f"{report.duration_ms}")
    return replace(report, session_id=_bounded(report.session_id, MAX_IDENTIFIER),
                   agent_id=_bounded(report.agent_id, MAX_IDENTIFIER), tool=_bounded(report.tool, 2 * MAX_IDENTIFIER),
                   reported_by=_bounded(report.reported_by, MAX_IDENTIFIER),
                   reported_from=_bounded(report.reported_from, MAX_PEER),
                   approval_id=_bounded(report.approval_id, MAX_IDENTIFIER),
                   close_reason=_bounded(report.close_reason, MAX_REASON))


def settle(report: ToolResultReport, existing: ToolRun | None, *, now: str) -> Recorded:
    """What a checked report does given what is stored: the result to write (its approval_closed filled in by
    the store), the stored one unchanged, or ToolResultExists."""
    new = ToolRun(decision_id=report.decision_id, request_id=report.request_id, session_id=report.session_id,
                  agent_id=report.agent_id, tool=report.tool, result=report.result, duration_ms=report.duration_ms,
                  duration_measured=report.duration_measured, reported_by=report.reported_by,
                  reported_from=report.reported_from, reported_at=now, approval_closed="")
    if existing is None:
        return Recorded(new, unchanged=False)
    if existing.same_report(new):
        return Recorded(existing, unchanged=True)
    took = describe_duration(existing.duration_ms, measured=existing.duration_measured)
    raise ToolResultExists(
        f"decision {report.decision_id} already has the result {existing.result} ({took}, reported "
        f"{existing.reported_at} by {existing.reported_by or 'an unauthenticated caller'}); a result is reported once")


def describe_duration(duration_ms: int, *, measured: bool) -> str:
    """"in 1.2 s" (or "1.2 s after the decision" when the sidecar measured it from the decision's timestamp)."""
    seconds = duration_ms / 1000
    spelled = f"{seconds:.1f} s" if seconds < 100 else f"{seconds:.0f} s"
    return f"{spelled} after the decision" if measured else f"in {spelled}"


def row_values(run: ToolRun) -> tuple[Any, ...]:
    return (run.decision_id, run.request_id, run.session_id, run.agent_id, run.tool, run.result, run.duration_ms,
            run.duration_measured, run.reported_by, run.reported_from, run.reported_at, run.approval_closed)


def from_row(row: Sequence[Any]) -> ToolRun:
    """A result from a row in COLUMNS' order; text as a person may be shown it."""
    return ToolRun(decision_id=_bounded(str(row[0]), MAX_IDENTIFIER), request_id=_bounded(str(row[1]), MAX_IDENTIFIER),
                   session_id=_bounded(str(row[2]), MAX_IDENTIFIER), agent_id=_bounded(str(row[3]), MAX_IDENTIFIER),
                   tool=_bounded(str(row[4]), 2 * MAX_IDENTIFIER), result=str(row[5]) if row[5] in RESULTS else "?",
                   duration_ms=int(row[6]), duration_measured=bool(row[7]),
                   reported_by=_bounded(str(row[8]), MAX_IDENTIFIER), reported_from=_bounded(str(row[9]), MAX_PEER),
                   reported_at=str(row[10]), approval_closed=_bounded(str(row[11]), MAX_IDENTIFIER))


class ToolResults:
    """Tool results in DATA_DIR/state.db (sync: LocalToolResults runs it in worker threads). approvals_changed
    is called after a result closed an approval, so this process's watchers (WaitForApproval) re-read."""

    COMPONENT = COMPONENT

    def __init__(self, store: StateStore, *, clock: Clock = SystemClock(),
                 approvals_changed: Callable[[], None] = lambda: None) -> None:
        self._store = store
        self.clock = clock
        self._approvals_changed = approvals_changed
        if not store.read_only:
            store.migrate(COMPONENT, _SCHEMA)

    def report(self, report: ToolResultReport) -> Recorded:
        checked = checked_result(report)
        now = format_time(self.clock.now())
        with self._store.lock, self._store.transaction("record a tool result") as db:
            row = db.execute(f"SELECT {COLUMNS} FROM tool_results WHERE decision_id = ?",
                             (checked.decision_id,)).fetchone()
            done = settle(checked, None if row is None else from_row(row), now=now)
            if not done.unchanged:
                closed = checked.approval_id and db.execute(
                    CLOSE_APPROVAL_SQL.replace("%s", "?"),
                    (now, now, checked.close_reason, checked.approval_id, now)).rowcount == 1
                done = Recorded(replace(done.run, approval_closed=checked.approval_id if closed else ""), False)
                db.execute(f"INSERT INTO tool_results ({COLUMNS}) VALUES ({', '.join('?' * len(COLUMN_NAMES))})",
                           row_values(done.run))
        if done.run.approval_closed and not done.unchanged:
            self._approvals_changed()
        return done

    def for_decisions(self, decision_ids: Sequence[str]) -> dict[str, ToolRun]:
        wanted = sorted(set(decision_ids))
        rows: list[Any] = []
        with self._store.lock:
            try:
                for start in range(0, len(wanted), 500):  # within SQLite's bound on parameters
                    chunk = wanted[start:start + 500]
                    rows += self._store.db.execute(
                        f"SELECT {COLUMNS} FROM tool_results WHERE decision_id IN ({', '.join('?' * len(chunk))}) "
                        "LIMIT ?", (*chunk, MAX_READ - len(rows))).fetchall()
                    if len(rows) >= MAX_READ:
                        break
            except sqlite3.OperationalError as exc:
                if "no such table: tool_results" in str(exc):  # a state.db no sidecar of this version served
                    return {}
                raise StateError(f"state store {self._store.path}: cannot read tool results ({exc})") from exc
            except sqlite3.Error as exc:
                raise StateError(f"state store {self._store.path}: cannot read tool results ({exc})") from exc
        return {run.decision_id: run for run in map(from_row, rows)}


class LocalToolResults:
    """Tool results behind ToolResultStore: every SQLite call in a worker thread."""

    def __init__(self, results: ToolResults) -> None:
        self.results = results

    @classmethod
    def open(cls, store: StateStore, *, clock: Clock = SystemClock(),
             approvals_changed: Callable[[], None] = lambda: None) -> LocalToolResults:
        """The tool results of this state.db (creating or migrating its table: blocking, call it at start-up)."""
        return cls(ToolResults(store, clock=clock, approvals_changed=approvals_changed))

    async def report(self, report: ToolResultReport) -> Recorded:
        return await asyncio.to_thread(self.results.report, report)

    async def for_decisions(self, decision_ids: Sequence[str]) -> dict[str, ToolRun]:
        return await asyncio.to_thread(self.results.for_decisions, list(decision_ids))


def read_tool_results(path: Path, decision_ids: Sequence[str]) -> dict[str, ToolRun]:
    """The results of these decisions in a state.db read-only beside the sidecar that writes it (none when it has
    no tool_results table yet); StateError when it cannot be read."""
    store = StateStore(path, read_only=True)
    try:
        return ToolResults(store).for_decisions(decision_ids)
    finally:
        store.close()


if TYPE_CHECKING:
    _local: type[ToolResultStore] = LocalToolResults  # mypy holds the adapter to the protocol
