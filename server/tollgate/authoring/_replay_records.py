"""Replay's records: the recorded decisions it decides again, read from a decision log, an export or the fleet's store.

A data directory's decisions.db is read through the DecisionStore (read-only; the server may be running); the
fleet's log through a PgDecisionReader on the shared store (`read_state_store`); a file holds one record per
line in either of the shapes `tollgate logs export` writes: Tollgate JSON Lines (`--format jsonl`, the record
with seq and hash; its signed checkpoint lines are skipped) or OPA decision-log events (`--format opa`, the
record's own fields under `tollgate`), gzip-compressed or not (told by the file's first bytes, not its name).
A line or row that is not a record is a BadRecord: reported with where it was, never silently skipped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gzip
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, cast

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


_CHECKPOINT = "tollgate.checkpoint"  # a jsonl export's signed checkpoint lines: not records


def parse_line(line: bytes, where: str) -> RecordedDecision | None:
    """One export line: a Tollgate record, or an OPA decision-log event (read back into the record it was made
    from); None for a checkpoint line; ValueError says what is wrong."""
    try:
        value = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return parse_record(line, where)  # says what is wrong as the log's reader does
    if isinstance(value, dict) and value.get("type") == _CHECKPOINT:
        return None
    if isinstance(value, dict) and "decision" not in value and isinstance(value.get("tollgate"), dict):
        value = from_opa_event(value)
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return RecordedDecision.of(DecisionRecord.from_dict(value), where)


def from_opa_event(event: Mapping[str, Any]) -> dict[str, Any]:
    """The decision record an OPA event (decisionlog._events.opa_event) was made from, as far as replay reads it:
    the OPA fields back in the record's names, Tollgate's extras from under `tollgate`, time to microseconds."""
    bundles = event.get("bundles")
    ours = bundles.get("tollgate") if isinstance(bundles, Mapping) else None
    timestamp = event.get("timestamp")
    if isinstance(timestamp, str) and "." in timestamp and timestamp.endswith("Z"):
        head, _, fraction = timestamp.partition(".")
        timestamp = f"{head}.{fraction.removesuffix('Z')[:6]}Z"
    metrics = event.get("metrics")
    nanoseconds = metrics.get("timer_server_handler_ns", 0) if isinstance(metrics, Mapping) else 0
    record: dict[str, Any] = {
        "decision_id": event.get("decision_id"), "timestamp": timestamp, "input": event.get("input"),
        "result": event.get("result"), "policy_path": event.get("path", ""),
        "requested_by": event.get("requested_by", ""),
        "bundle_revision": ours.get("revision", "") if isinstance(ours, Mapping) else "",
        "latency_us": int(nanoseconds) // 1000 if isinstance(nanoseconds, int) else 0,
        "erased": event.get("erased", []), "masked": event.get("masked", []),
    }
    record.update(event["tollgate"])
    return record


Recorded = RecordedDecision | BadRecord


def read_jsonl(path: str | Path, window: Window = Window()) -> Iterator[Recorded]:
    """Records from an export file, one record or OPA event per line (blank lines are allowed), gzipped or not.

    The file is opened now (ReplayError if it cannot be) and read as the iterator is consumed.
    """
    p = Path(path)
    try:
        raw = p.open("rb")
        handle: IO[bytes] = raw
        if raw.peek(2)[:2] == b"\x1f\x8b":  # gzip's magic number
            handle = cast(IO[bytes], gzip.GzipFile(fileobj=raw, mode="rb"))
    except OSError as exc:
        raise ReplayError(f"cannot read decisions file {p}: {exc.strerror or exc}") from exc
    return _jsonl_records(handle, window)


def _jsonl_records(handle: IO[bytes], window: Window) -> Iterator[Recorded]:
    kept: collections.deque[RecordedDecision] | None = (
        collections.deque(maxlen=window.limit) if window.limit is not None else None)
    with handle:
        for number, line in enumerate(_lines(handle), start=1):
            if not line.strip():
                continue
            try:
                record = parse_line(line.rstrip(b"\r\n"), f"line {number}")
            except ValueError as exc:
                yield BadRecord(f"line {number}", str(exc))
                continue
            if record is None:
                continue
            if not window.holds(_aware(record.timestamp)):
                continue
            if kept is None:
                yield record
            else:
                kept.append(record)
    if kept is not None:
        yield from kept


def _lines(handle: IO[bytes]) -> Iterator[bytes]:
    try:
        yield from handle
    except (OSError, EOFError) as exc:  # a corrupt or cut .gz
        raise ReplayError(f"cannot read the decisions file: {exc}") from exc


def read_state_store(url: str, window: Window = Window(), *, password_file: str = "",
                     timeout: float = 2.0) -> Iterator[Recorded]:
    """Records from the fleet's decision log in the shared store (PostgreSQL), oldest first.

    Read now, whole, in one consistent snapshot (ReplayError if the store cannot be read)."""
    from tollgate.decisionlog import open_reader
    from tollgate.state import StateError
    from tollgate.state.postgres import is_postgres_url, redact

    if not is_postgres_url(url):
        raise ReplayError(f"--state-store: must be a postgresql:// URL, not {redact(url)!r}")
    query = Query(since=window.since, until=window.until, limit=window.limit)

    async def run() -> list[Recorded]:
        async with open_reader(url, password_file=password_file, timeout=timeout) as reader:
            rows = await reader.find(query)
        found: list[Recorded] = []
        for row in rows:
            try:
                found.append(parse_record(row.record_json, f"{row.decision_id}"))
            except ValueError as exc:
                found.append(BadRecord(row.decision_id, str(exc)))
        return found

    try:
        return iter(asyncio.run(run()))
    except (LogReadError, StateError) as exc:
        raise ReplayError(f"the fleet's decision log: {exc}") from exc


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
