"""Outcomes: how a session, or one task in it, ended, as its harness reported it (AuthorizationService.ReportOutcome).

One outcome per (session_id, task_id); task_id "" is the session as a whole. The rules both stores hold every
report to live here (`checked_report`, `settle`), so SQLite and PostgreSQL answer alike:

- the same report again (a harness retrying after a lost answer) is answered with what is stored, unchanged;
- a different report for the same (session, task) is refused (OutcomeExists) unless it says `replace` — a
  merged pull request later reverted is a real change, a harness overwriting what it said by mistake is not
  silently allowed; a replacement keeps first_reported_at and counts the revision up;
- who reported (the caller's authenticated subject), from where (the peer) and when are stored with it, and the
  session's principal (agent, team, workflow, user) as its decisions named it, so the console attributes an
  outcome without reading the log again.

What goes in is bounded: ids at most MAX_IDENTIFIER characters, at most MAX_LABELS labels of the LABEL grammar,
a summary of at most MAX_SUMMARY printable characters (newlines and tabs allowed). The store is written by
harnesses and read by people: nothing a harness writes may carry a terminal escape to an operator's terminal.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import math
import re
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from tollgate.clock import Clock, SystemClock
from tollgate.contract import MAX_IDENTIFIER
from tollgate.encoding import format_time
from tollgate.state._store import StateError, StateStore

#: The outcomes a report may give (the proto's Outcome enum, by name).
OUTCOMES = ("succeeded", "failed", "abandoned")
#: Most labels one outcome carries.
MAX_LABELS = 16
#: A label: a lower-case letter or digit, then up to 63 of [a-z0-9_.:-] ("ci_passed", "pr_merged", "jira:ops-12").
LABEL = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")
#: Longest summary, in characters.
MAX_SUMMARY = 1000
#: Most outcomes one read returns (for_sessions): a page of the console, bounded whatever the table holds.
MAX_READ = 20000
#: The principal fields an outcome keeps from its session's decisions.
PRINCIPAL_FIELDS = ("agent_id", "team", "workflow", "user")
#: The longest `reported_from` kept (a peer address).
MAX_PEER = 300

COMPONENT = "outcomes"
_T = TypeVar("_T")
#: The SQLite component's migrations (PgOutcomes.STEPS are PostgreSQL's).
_SCHEMA = (
    f"""
    CREATE TABLE outcomes (
        session_id TEXT NOT NULL CHECK (length(session_id) BETWEEN 1 AND {MAX_IDENTIFIER}),
        task_id TEXT NOT NULL CHECK (length(task_id) <= {MAX_IDENTIFIER}),
        outcome TEXT NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'abandoned')),
        labels TEXT NOT NULL,
        summary TEXT NOT NULL CHECK (length(summary) <= {MAX_SUMMARY}),
        agent_id TEXT NOT NULL,
        team TEXT NOT NULL,
        workflow TEXT NOT NULL,
        principal_user TEXT NOT NULL,
        reported_by TEXT NOT NULL,
        reported_from TEXT NOT NULL,
        reported_at TEXT NOT NULL,
        first_reported_at TEXT NOT NULL,
        revision INTEGER NOT NULL CHECK (revision >= 1),
        PRIMARY KEY (session_id, task_id)
    );
    CREATE INDEX outcomes_reported_at ON outcomes (reported_at)
    """,
)
#: The columns in the order both stores select them (from_row reads them so).
COLUMNS = ("session_id, task_id, outcome, labels, summary, agent_id, team, workflow, principal_user, reported_by, "
           "reported_from, reported_at, first_reported_at, revision")


class OutcomeError(ValueError):
    """A report that breaks the rules (the message names the field): INVALID_ARGUMENT."""


class OutcomeExists(Exception):
    """A different outcome is already stored for (session, task) and the report did not say replace."""


@dataclass(frozen=True)
class OutcomeReport:
    """What a harness reports, with who it is and what the session's decisions say of its principal."""

    session_id: str
    outcome: str
    task_id: str = ""
    labels: tuple[str, ...] = ()
    summary: str = ""
    #: agent_id, team, workflow, user of the session's principal (as its decisions named it).
    principal: Mapping[str, str] | None = None
    #: The caller's authenticated subject ("" when nothing was proven) and its peer address.
    reported_by: str = ""
    reported_from: str = ""


@dataclass(frozen=True)
class Outcome:
    """One stored outcome."""

    session_id: str
    task_id: str
    outcome: str
    labels: tuple[str, ...]
    summary: str
    agent_id: str
    team: str
    workflow: str
    user: str
    reported_by: str
    reported_from: str
    reported_at: str  # RFC 3339, UTC: this revision
    first_reported_at: str  # RFC 3339, UTC: revision 1
    revision: int

    def same_report(self, other: Outcome) -> bool:
        """Whether other says what this says (outcome, labels, summary): a retry, not a change."""
        return (self.outcome, self.labels, self.summary) == (other.outcome, other.labels, other.summary)


@dataclass(frozen=True)
class Reported:
    """What a report did: the outcome as stored now, and whether the store was left as it was."""

    outcome: Outcome
    unchanged: bool


class OutcomeStore(Protocol):
    """Outcomes in the state store: reported by harnesses, read by the console."""

    async def report(self, report: OutcomeReport, *, replace: bool = False) -> Reported:
        """Store the report (see the module's rules): OutcomeError for one that breaks them, OutcomeExists
        for a different outcome already there without replace; atomic across every replica on the store."""
        ...

    async def get(self, session_id: str, task_id: str = "") -> Outcome | None:
        """The outcome of (session, task), None when none was reported."""
        ...

    async def for_sessions(self, session_ids: Sequence[str]) -> builtins.list[Outcome]:
        """Every outcome (each task's and the session's own) of these sessions, by session then task; at most
        MAX_READ."""
        ...


@dataclass(frozen=True)
class SessionCost:
    """What the ledger holds for one session's run in one unit: committed spend (what ReportUsage reported) and
    live reservations not reported yet; invalid when a value is one the ledger never writes."""

    session_id: str
    committed: float = 0.0
    reserved: float = 0.0
    invalid: bool = False


class OutcomeReader(Protocol):
    """What the console reads: the outcomes of the sessions it shows, and what each of them cost."""

    async def for_sessions(self, session_ids: Sequence[str]) -> builtins.list[Outcome]:
        """As OutcomeStore.for_sessions."""
        ...

    async def costs(self, session_ids: Sequence[str], *, unit: str = "usd") -> dict[str, SessionCost]:
        """Each session's run in the ledger (sessions that spent nothing are absent)."""
        ...


def spent(found: dict[str, SessionCost]) -> dict[str, SessionCost]:
    """found without the sessions that spent nothing (the ledger keeps a zero total for a run whose reservations
    all expired)."""
    return {k: v for k, v in found.items() if v.committed or v.reserved or v.invalid}


def add_costs(found: dict[str, SessionCost], rows: Sequence[Sequence[Any]], *, live: bool) -> None:
    """Fold (session, amount) rows of the totals (live=False) or of the open reservations into found."""
    for session, value in rows:
        amount = value if isinstance(value, int | float) and not isinstance(value, bool) else math.nan
        bad = not (math.isfinite(amount) and 0 <= amount)
        cost = found.get(str(session)) or SessionCost(str(session))
        cost = replace(cost, reserved=cost.reserved + (0.0 if bad else amount)) if live else replace(
            cost, committed=cost.committed + (0.0 if bad else amount))
        found[str(session)] = replace(cost, invalid=True) if bad else cost


def _printable(text: str, *, allow: str = "") -> bool:
    return all(c.isprintable() or c in allow for c in text)


def checked_report(report: OutcomeReport) -> OutcomeReport:
    """The report as stored: labels sorted without duplicates; OutcomeError naming the first field it breaks."""
    for name, value in (("session_id", report.session_id), ("task_id", report.task_id)):
        if len(value) > MAX_IDENTIFIER:
            raise OutcomeError(f"{name}: at most {MAX_IDENTIFIER} characters, not {len(value)}")
        if not _printable(value):
            raise OutcomeError(f"{name}: control characters are not allowed")
    if not report.session_id:
        raise OutcomeError("session_id: required")
    if report.outcome not in OUTCOMES:
        raise OutcomeError(f"outcome: must be one of {', '.join(OUTCOMES)}, not {report.outcome[:40]!r}")
    labels = tuple(sorted(set(report.labels)))
    if len(labels) > MAX_LABELS:
        raise OutcomeError(f"labels: at most {MAX_LABELS}, not {len(labels)}")
    for label in labels:
        if not LABEL.fullmatch(label):
            raise OutcomeError(f"labels: {label[:70]!r} is not a label (a lower-case letter or digit, then up to "
                               "63 of a-z 0-9 _ . : -)")
    if len(report.summary) > MAX_SUMMARY:
        raise OutcomeError(f"summary: at most {MAX_SUMMARY} characters, not {len(report.summary)}")
    if not _printable(report.summary, allow="\n\t"):
        raise OutcomeError("summary: control characters other than newline and tab are not allowed")
    principal = {name: _bounded(str((report.principal or {}).get(name) or ""), MAX_IDENTIFIER)
                 for name in PRINCIPAL_FIELDS}
    return replace(report, labels=labels, principal=principal,
                   reported_by=_bounded(report.reported_by, MAX_IDENTIFIER),
                   reported_from=_bounded(report.reported_from, MAX_PEER))


def _bounded(text: str, limit: int, *, allow: str = "") -> str:
    """text as a person may be shown it: unprintables (but those in allow) as "?", at most limit characters."""
    cleaned = "".join(c if c.isprintable() or c in allow else "?" for c in text)
    return cleaned if len(cleaned) <= limit else cleaned[:limit - 1] + "…"


def settle(report: OutcomeReport, existing: Outcome | None, *, now: str, replace_it: bool) -> Reported:
    """What a checked report does given what is stored (the module's rules): the outcome to write (unchanged:
    nothing to write), or OutcomeExists."""
    principal = report.principal or {}
    new = Outcome(session_id=report.session_id, task_id=report.task_id, outcome=report.outcome,
                  labels=report.labels, summary=report.summary, agent_id=principal.get("agent_id", ""),
                  team=principal.get("team", ""), workflow=principal.get("workflow", ""),
                  user=principal.get("user", ""), reported_by=report.reported_by,
                  reported_from=report.reported_from, reported_at=now, first_reported_at=now, revision=1)
    if existing is None:
        return Reported(new, unchanged=False)
    if existing.same_report(new):
        return Reported(existing, unchanged=True)
    if not replace_it:
        raise OutcomeExists(
            f"session {report.session_id!r}" + (f" task {report.task_id!r}" if report.task_id else "")
            + f" already has the outcome {existing.outcome} (revision {existing.revision}, reported "
            f"{existing.reported_at} by {existing.reported_by or 'an unauthenticated caller'}); report again with "
            "replace to change it")
    return Reported(replace(new, first_reported_at=existing.first_reported_at, revision=existing.revision + 1),
                    unchanged=False)


def row_values(outcome: Outcome) -> tuple[Any, ...]:
    """The outcome's values in COLUMNS' order, times as stored by SQLite (text)."""
    return (outcome.session_id, outcome.task_id, outcome.outcome, json.dumps(list(outcome.labels)),
            outcome.summary, outcome.agent_id, outcome.team, outcome.workflow, outcome.user, outcome.reported_by,
            outcome.reported_from, outcome.reported_at, outcome.first_reported_at, outcome.revision)


def from_row(row: Sequence[Any], *, reported_at: str, first_reported_at: str) -> Outcome:
    """An outcome from a row in COLUMNS' order (times given in Tollgate's spelling); labels that are not a JSON
    list of labels read as none (a row written by hand carries no more than a report could)."""
    try:
        raw = json.loads(str(row[3]))
    except ValueError:
        raw = []
    labels = tuple(x for x in raw if isinstance(x, str) and LABEL.fullmatch(x)) if isinstance(raw, list) else ()
    return Outcome(session_id=_bounded(str(row[0]), MAX_IDENTIFIER), task_id=_bounded(str(row[1]), MAX_IDENTIFIER),
                   outcome=str(row[2]), labels=labels[:MAX_LABELS],
                   summary=_bounded(str(row[4]), MAX_SUMMARY, allow="\n\t"),
                   agent_id=_bounded(str(row[5]), MAX_IDENTIFIER), team=_bounded(str(row[6]), MAX_IDENTIFIER),
                   workflow=_bounded(str(row[7]), MAX_IDENTIFIER), user=_bounded(str(row[8]), MAX_IDENTIFIER),
                   reported_by=_bounded(str(row[9]), MAX_IDENTIFIER), reported_from=_bounded(str(row[10]), MAX_PEER),
                   reported_at=reported_at,
                   first_reported_at=first_reported_at, revision=int(row[13]))


class Outcomes:
    """Outcomes in DATA_DIR/state.db (sync: LocalOutcomes runs it in worker threads)."""

    COMPONENT = COMPONENT

    def __init__(self, store: StateStore, *, clock: Clock = SystemClock()) -> None:
        self._store = store
        self.clock = clock
        store.migrate(COMPONENT, _SCHEMA)

    def report(self, report: OutcomeReport, *, replace: bool = False) -> Reported:
        checked = checked_report(report)
        with self._store.lock, self._store.transaction("record an outcome") as db:
            existing = self._get(db, checked.session_id, checked.task_id)
            done = settle(checked, existing, now=format_time(self.clock.now()), replace_it=replace)
            if not done.unchanged:
                db.execute(f"INSERT OR REPLACE INTO outcomes ({COLUMNS}) VALUES ({', '.join('?' * 14)})",
                           row_values(done.outcome))
        return done

    def get(self, session_id: str, task_id: str = "") -> Outcome | None:
        with self._store.lock:
            try:
                return self._get(self._store.db, session_id, task_id)
            except sqlite3.Error as exc:
                raise StateError(f"state store {self._store.path}: cannot read outcomes ({exc})") from exc

    def for_sessions(self, session_ids: Sequence[str]) -> builtins.list[Outcome]:
        with self._store.lock:
            try:
                return self.read(self._store, session_ids)
            except sqlite3.Error as exc:
                raise StateError(f"state store {self._store.path}: cannot read outcomes ({exc})") from exc

    @staticmethod
    def read(store: StateStore, session_ids: Sequence[str]) -> builtins.list[Outcome]:
        """The outcomes of these sessions on store's connection (sqlite3.Error when it cannot be read)."""
        wanted = sorted(set(session_ids))
        rows: list[Any] = []
        for start in range(0, len(wanted), 500):  # within SQLite's bound on parameters
            chunk = wanted[start:start + 500]
            rows += store.db.execute(
                f"SELECT {COLUMNS} FROM outcomes WHERE session_id IN ({', '.join('?' * len(chunk))}) "
                "ORDER BY session_id, task_id LIMIT ?", (*chunk, MAX_READ - len(rows))).fetchall()
            if len(rows) >= MAX_READ:
                break
        return [from_row(r, reported_at=str(r[11]), first_reported_at=str(r[12])) for r in rows]

    def _get(self, db: sqlite3.Connection, session_id: str, task_id: str) -> Outcome | None:
        row = db.execute(f"SELECT {COLUMNS} FROM outcomes WHERE session_id = ? AND task_id = ?",
                         (session_id, task_id)).fetchone()
        return None if row is None else from_row(row, reported_at=str(row[11]), first_reported_at=str(row[12]))


class LocalOutcomes:
    """Outcomes behind OutcomeStore: every SQLite call in a worker thread."""

    def __init__(self, outcomes: Outcomes) -> None:
        self.outcomes = outcomes

    @classmethod
    def open(cls, store: StateStore, *, clock: Clock = SystemClock()) -> LocalOutcomes:
        """The outcomes of this state.db (creating or migrating its table: blocking, call it at start-up)."""
        return cls(Outcomes(store, clock=clock))

    async def report(self, report: OutcomeReport, *, replace: bool = False) -> Reported:
        return await asyncio.to_thread(self.outcomes.report, report, replace=replace)

    async def get(self, session_id: str, task_id: str = "") -> Outcome | None:
        return await asyncio.to_thread(self.outcomes.get, session_id, task_id)

    async def for_sessions(self, session_ids: Sequence[str]) -> builtins.list[Outcome]:
        return await asyncio.to_thread(self.outcomes.for_sessions, list(session_ids))


class LocalOutcomeReader:
    """OutcomeReader on DATA_DIR/state.db, read-only beside the sidecar that writes it: each read on a connection of
    its own, opened and closed in a worker thread. A state.db no sidecar of this version has served yet has no
    outcomes table: no outcome was reported there."""

    def __init__(self, path: Path, *, clock: Clock = SystemClock()) -> None:
        self.path = path
        self._clock = clock

    async def for_sessions(self, session_ids: Sequence[str]) -> builtins.list[Outcome]:
        def read(store: StateStore) -> builtins.list[Outcome]:
            try:
                return Outcomes.read(store, session_ids)
            except sqlite3.OperationalError as exc:
                if "no such table: outcomes" in str(exc):
                    return []
                raise

        return await asyncio.to_thread(self._read, read)

    async def costs(self, session_ids: Sequence[str], *, unit: str = "usd") -> dict[str, SessionCost]:
        return await asyncio.to_thread(self._read, lambda store: self._costs(store, sorted(set(session_ids)), unit))

    def _read(self, read: Callable[[StateStore], _T]) -> _T:
        store = StateStore(self.path, read_only=True)
        try:
            store.db.execute("BEGIN")  # one snapshot
            return read(store)
        except sqlite3.Error as exc:
            raise StateError(f"state store {self.path}: cannot read outcomes ({exc})") from exc
        finally:
            store.close()

    def _costs(self, store: StateStore, wanted: list[str], unit: str) -> dict[str, SessionCost]:
        found: dict[str, SessionCost] = {}
        now = self._clock.time()
        for start in range(0, len(wanted), 500):
            chunk = wanted[start:start + 500]
            places = ", ".join("?" * len(chunk))
            add_costs(found, store.db.execute(
                f"SELECT value, committed FROM budget_totals WHERE scope = 'session' AND period = 'run' "
                f"AND unit = ? AND value IN ({places})", (unit, *chunk)).fetchall(), live=False)
            add_costs(found, store.db.execute(
                f"SELECT session, SUM(amount) FROM budget_reservations WHERE status = 'reserved' AND unit = ? "
                f"AND expires_at > ? AND session IN ({places}) GROUP BY session", (unit, now, *chunk)).fetchall(),
                live=True)
        return spent(found)


if TYPE_CHECKING:
    _local: type[OutcomeStore] = LocalOutcomes  # mypy holds the adapters to the protocols
    _reader: type[OutcomeReader] = LocalOutcomeReader
