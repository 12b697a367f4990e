"""Replay's records: the recorded decisions it decides again, read from a decision log or a JSON Lines file.

A data directory's decisions.db is read through the DecisionStore (read-only; the server may be running); a
file holds one record per line, as the log stores them (or as `tollgate logs export --format jsonl` writes
them). A line or row that is not a record is a BadRecord: reported with where it was, never silently skipped.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from tollgate.decisionlog import DecisionRecord, DecisionStore, LogReadError, Query, matching, open_read_only

_BATCH = 1000  # records per read on a live decision log


class ReplayError(Exception):
    """Replay cannot run: the records or the candidate bundle cannot be read or compiled."""


@dataclass(frozen=True)
class Window:
    """Which recorded decisions to replay (times are timezone-aware, as parse_time returns them)."""

    #: Records at or after this time.
    since: datetime | None = None
    #: Records before this time.
    until: datetime | None = None
    #: Only the most recent this many records in the window (None: all).
    limit: int | None = None

    def holds(self, moment: datetime) -> bool:
        return (self.since is None or moment >= self.since) and (self.until is None or moment < self.until)


@dataclass(frozen=True)
class RecordedDecision:
    """What one decision-log record says was asked and answered."""

    where: str  # where it was read ("line 12", "seq 40"), for messages
    decision_id: str
    timestamp: str
    decision: str
    reasons: tuple[str, ...]  # reason codes, as logged
    obligations: Mapping[str, Any]
    bundle_revision: str
    input: Mapping[str, Any]  # the policy input as logged: members the mask erased are absent, masked ones replaced
    masked: bool = False  # the decision-log mask erased or replaced members of this record before it was written

    @classmethod
    def of(cls, record: DecisionRecord, where: str) -> RecordedDecision:
        return cls(where=where, decision_id=record.decision_id, timestamp=record.timestamp,
                   decision=record.decision, reasons=tuple(r.code for r in record.reasons),
                   obligations=record.obligations, bundle_revision=record.bundle_revision, input=record.input,
                   masked=bool(record.erased or record.masked))

    @property
    def kind(self) -> str:
        return str(self.input.get("kind", ""))

    @property
    def agent(self) -> str:
        principal = self.input.get("principal")
        agent = principal.get("agent_id") if isinstance(principal, dict) else None
        return agent if isinstance(agent, str) and agent else "(unknown)"

    @property
    def tool(self) -> str:
        """The tool id: server/name for a tool call, provider/model for a model call, "budget" for a spend."""
        kind = self.kind
        if kind == "budget":
            return "budget"
        action = self.input.get(kind)
        if not isinstance(action, dict) or kind not in ("tool", "model"):
            return "(unknown)"
        owner, name = (action.get("server"), action.get("name")) if kind == "tool" else (
            action.get("provider"), action.get("model"))
        if not isinstance(name, str) or not name:
            return "(unknown)"
        return f"{owner}/{name}" if isinstance(owner, str) and owner else name


@dataclass(frozen=True)
class BadRecord:
    """A line or row that is not a decision record; reported, never silently skipped."""

    where: str
    message: str


def parse_record(text: str | bytes, where: str) -> RecordedDecision:
    """One record as canonical JSON (a `record` column, a JSON Lines line); ValueError says what is wrong."""
    return RecordedDecision.of(DecisionRecord.from_json(text), where)


Recorded = RecordedDecision | BadRecord


def read_jsonl(path: str | Path, window: Window = Window()) -> Iterator[Recorded]:
    """Records from a JSON Lines file, one record per line (blank lines are allowed).

    The file is opened now (ReplayError if it cannot be) and read as the iterator is consumed.
    """
    p = Path(path)
    try:
        handle = p.open("rb")
    except OSError as exc:
        raise ReplayError(f"cannot read decisions file {p}: {exc.strerror or exc}") from exc
    return _jsonl_records(handle, window)


def _jsonl_records(handle: BinaryIO, window: Window) -> Iterator[Recorded]:
    kept: collections.deque[RecordedDecision] | None = (
        collections.deque(maxlen=window.limit) if window.limit is not None else None)
    with handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = parse_record(line.rstrip(b"\r\n"), f"line {number}")
            except ValueError as exc:
                yield BadRecord(f"line {number}", str(exc))
                continue
            if not window.holds(_aware(record.timestamp)):
                continue
            if kept is None:
                yield record
            else:
                kept.append(record)
    if kept is not None:
        yield from kept


def read_data_dir(data_dir: str | Path, window: Window = Window()) -> Iterator[Recorded]:
    """Records from DATA_DIR/decisions.db, read-only and a page at a time, so a live server is undisturbed.

    The log is opened now (ReplayError if it cannot be); the replay covers the records committed by
    then, in append order.
    """
    query = Query(since=window.since, until=window.until, limit=window.limit)
    try:
        store = open_read_only(data_dir)
    except LogReadError as exc:
        raise ReplayError(str(exc)) from exc
    try:
        after, upto = store.span(query)
    except LogReadError as exc:
        store.close()
        raise ReplayError(f"{exc} (hint: is it a Tollgate decisions.db?)") from exc
    return _stored_records(store, query, after, upto)


def _stored_records(store: DecisionStore, query: Query, after: int, upto: int) -> Iterator[Recorded]:
    with contextlib.closing(store):
        try:
            for stored in matching(store, query, after=after, upto=upto, batch=_BATCH):
                try:
                    yield parse_record(stored.record_json, f"seq {stored.seq}")
                except ValueError as exc:
                    yield BadRecord(f"seq {stored.seq}", str(exc))
        except LogReadError as exc:
            raise ReplayError(str(exc)) from exc


def _aware(timestamp: str) -> datetime:
    moment = datetime.fromisoformat(timestamp)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
