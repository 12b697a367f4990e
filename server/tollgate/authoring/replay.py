"""Replay recorded decisions against a candidate bundle: which answers a policy change would change.

Each record's logged input document is evaluated again, in-process, by one embedded OPA engine holding
the candidate bundle, and held to the contract through the authorizer's own `policy_outcome`, so a
replayed answer is the answer the server would give with that bundle live (deadline aside: replay has
none). Records come from a data directory's `decisions.db` (opened read-only; the server may be running)
or from a JSON Lines file of records as the log stores them.
"""

from __future__ import annotations

import collections
import contextlib
import html
import json
import re
import sqlite3
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

from tollgate.bundle import BundleError, load_bundle
from tollgate.contract import ALLOW, DEADLINE_EXCEEDED, DENY, NO_BUNDLE, REQUIRE_APPROVAL
from tollgate.decision import (
    Outcome,
    enforce_approval,
    enforce_kill_switches,
    policy_outcome,
    recorded_caller_refusal,
    recorded_kill_switches,
)
from tollgate.decisionlog import LogReadError, Query, open_read_only, rows
from tollgate.encoding import canonical_json, format_time, parse_time
from tollgate.engine import EmbeddedOpa, EngineError, decode_envelope
from tollgate.state.approvals import APPROVED

DEFAULT_ENTRYPOINT = "tollgate/decision"
#: Decisions in the order transitions are listed: from the most permissive to the least.
DECISION_ORDER = (ALLOW, REQUIRE_APPROVAL, DENY)
#: Reason codes of logged server DENYs that no policy made (no bundle was loaded, the evaluation ran past its
#: deadline): there is no policy decision to compare a candidate's with.
NOT_COMPARED = frozenset({NO_BUNDLE, DEADLINE_EXCEEDED})
#: Unreadable records kept (with where they were) for the report; the rest are only counted.
MAX_BAD_RECORDS_KEPT = 20
_BATCH = 1000  # rows per read transaction on a live decision log

Transition = tuple[str, str]
#: In a gate, every transition.
ANY: Transition = ("*", "*")
_SPELLINGS = {"allow": ALLOW, "deny": DENY, "require_approval": REQUIRE_APPROVAL, "require-approval": REQUIRE_APPROVAL,
              "approval": REQUIRE_APPROVAL}


class ReplayError(Exception):
    """Replay cannot run: the records or the candidate bundle cannot be read or compiled."""


# -- time windows ---------------------------------------------------------------------------------



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


# -- reading records ------------------------------------------------------------------------------


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
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not JSON ({exc.msg} at column {exc.colno})") from None
    except ValueError as exc:  # not UTF-8
        raise ValueError(f"not JSON ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    decision_id = _field(value, "decision_id", str)
    timestamp = _field(value, "timestamp", str)
    try:
        datetime.fromisoformat(timestamp)
    except ValueError:
        raise ValueError(f"timestamp {timestamp!r} is not an RFC 3339 time") from None
    decision = _field(value, "decision", str)
    if decision not in DECISION_ORDER:
        raise ValueError(f"decision {decision!r} is not one of {', '.join(DECISION_ORDER)}")
    reasons = value.get("reasons", [])
    if not isinstance(reasons, list) or not all(isinstance(r, dict) and isinstance(r.get("code"), str)
                                                for r in reasons):
        raise ValueError("reasons must be an array of objects with a code")
    obligations = value.get("obligations") or {}
    if not isinstance(obligations, dict):
        raise ValueError("obligations must be an object")
    input_doc = _field(value, "input", dict)
    return RecordedDecision(
        where=where, decision_id=decision_id, timestamp=timestamp, decision=decision,
        reasons=tuple(r["code"] for r in reasons), obligations=obligations,
        bundle_revision=str(value.get("bundle_revision", "")), input=input_doc,
        masked=bool(value.get("erased") or value.get("masked")),
    )


def _field(record: Mapping[str, Any], name: str, kind: type) -> Any:
    value = record.get(name)
    if name not in record:
        raise ValueError(f"{name} is missing")
    if not isinstance(value, kind):
        raise ValueError(f"{name} must be {'an object' if kind is dict else 'a string'}")
    return value


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
    """Records from DATA_DIR/decisions.db, read-only and in short transactions, so a live server is undisturbed.

    The log is opened now (ReplayError if it cannot be); the replay covers the records committed by
    then, in append order.
    """
    where, params = Query(since=window.since, until=window.until).where()
    try:
        db = open_read_only(data_dir)
    except LogReadError as exc:
        raise ReplayError(str(exc)) from exc
    path = Path(data_dir) / "decisions.db"
    try:
        last = db.execute("SELECT coalesce(max(seq), 0) FROM decisions").fetchone()[0]
        after = 0
        if window.limit is not None:
            row = db.execute(
                "SELECT min(seq) FROM (SELECT seq FROM decisions WHERE seq <= ?"
                f"{' AND ' + where if where else ''} ORDER BY seq DESC LIMIT ?)",
                (last, *params, window.limit)).fetchone()
            after = (row[0] or last + 1) - 1
    except sqlite3.Error as exc:
        db.close()
        raise ReplayError(f"cannot read decision log {path}: {exc} (hint: is it a Tollgate decisions.db?)") from exc
    return _db_records(db, path, where, params, after, last)


def _db_records(db: sqlite3.Connection, path: Path, where: str, params: tuple[Any, ...], after: int,
                last: int) -> Iterator[Recorded]:
    with contextlib.closing(db):
        try:
            for stored in rows(db, where=where, params=params, after=after, upto=last, batch=_BATCH):
                try:
                    yield parse_record(stored.record_json, f"seq {stored.seq}")
                except ValueError as exc:
                    yield BadRecord(f"seq {stored.seq}", str(exc))
        except sqlite3.Error as exc:
            raise ReplayError(f"cannot read decision log {path}: {exc}") from exc


def _aware(timestamp: str) -> datetime:
    moment = datetime.fromisoformat(timestamp)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# -- the candidate --------------------------------------------------------------------------------


class Candidate:
    """A candidate bundle compiled into one in-process engine, deciding as the server would."""

    def __init__(self, path: str | Path, *, entrypoint: str = DEFAULT_ENTRYPOINT) -> None:
        try:
            bundle = load_bundle(path)
        except BundleError as exc:
            raise ReplayError(f"candidate {exc}") from exc
        self.source = str(path)
        self.revision = bundle.revision
        self.entrypoint = entrypoint
        self._path = entrypoint.strip("/").replace("/", ".").encode()
        try:
            self._engine = EmbeddedOpa(bundle.modules, bundle.data)
        except EngineError as exc:
            raise ReplayError(f"candidate bundle {path} does not compile: {exc.message}") from exc
        try:
            # Like the server's engine workers: refuse a bundle that does not compile now, rather than
            # report an engine_error for every record.
            self._engine.compile()
        except EngineError as exc:
            self.close()
            raise ReplayError(f"candidate bundle {path} does not compile: {exc.message}") from exc

    def decide(self, input_doc: Mapping[str, Any]) -> Outcome:
        """The final answer for one input document: the policy's, or the server's fail-closed DENY."""
        # A caller the server refused was denied before the policy was asked; a bundle cannot change that.
        outcome = recorded_caller_refusal(input_doc)
        if outcome is None:
            evaluated: Any
            try:
                evaluated = decode_envelope(self._engine.evaluate_raw(self._path,
                                                                      canonical_json(input_doc).encode()))
            except EngineError as exc:
                evaluated = exc
            outcome = policy_outcome(evaluated, entrypoint=self.entrypoint)
        # The server's own kill-switch rule, over the kill switches the logged input carried.
        killed = recorded_kill_switches(input_doc)
        if killed:
            return enforce_kill_switches(outcome, killed)
        # And its approval rule: an ALLOW on an approval the logged input shows was not approved is a DENY.
        state = input_doc.get("state")
        approval = state.get("approval") if isinstance(state, dict) else None
        if (isinstance(approval, dict) and outcome.result.decision == ALLOW
                and approval.get("status") != APPROVED):
            return enforce_approval(outcome, str(approval.get("id", "")), str(approval.get("status", "")))
        return outcome

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> Candidate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the comparison -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    """One record whose answer differs under the candidate."""

    record: RecordedDecision
    decision: str
    reasons: tuple[str, ...]
    obligations: Mapping[str, Any]
    error: str  # the detail behind a server DENY from the candidate (engine_error, policy_contract)

    @property
    def transition(self) -> Transition:
        return (self.record.decision, self.decision)

    def as_dict(self) -> dict[str, Any]:
        r = self.record
        after: dict[str, Any] = {"decision": self.decision, "reasons": list(self.reasons),
                                 "obligations": dict(self.obligations)}
        if self.error:
            after["error"] = self.error
        return {
            "decision_id": r.decision_id, "timestamp": r.timestamp, "agent": r.agent, "tool": r.tool,
            "kind": r.kind,
            "before": {"decision": r.decision, "reasons": list(r.reasons), "obligations": dict(r.obligations)},
            "after": after,
        }


@dataclass(frozen=True)
class TransitionReport:
    """Every record that moved from one decision to another, counted by agent and tool, with examples."""

    transition: Transition
    count: int
    by_agent: Mapping[str, int]
    by_tool: Mapping[str, int]
    examples: tuple[Change, ...]

    @property
    def label(self) -> str:
        return transition_label(self.transition)


@dataclass(frozen=True)
class ReplayReport:
    """What replaying recorded decisions against a candidate bundle would change."""

    candidate: str
    revision: str
    entrypoint: str
    source: str
    window: Window
    #: Records evaluated against the candidate and compared.
    replayed: int
    #: Records whose decision differs.
    changed: int
    #: Transitions, most frequent first.
    transitions: tuple[TransitionReport, ...]
    #: agent → transition → count, for changed records.
    by_agent: Mapping[str, Mapping[Transition, int]]
    #: tool id → transition → count, for changed records.
    by_tool: Mapping[str, Mapping[Transition, int]]
    #: Same decision, different reason codes (informational).
    reason_changes: int
    reason_examples: tuple[Change, ...]
    #: Same decision and reasons, different obligations (informational).
    obligation_changes: int
    obligation_examples: tuple[Change, ...]
    #: Records logged as a server DENY that no policy made, by reason code; not replayed.
    not_compared: Mapping[str, int]
    #: Bundle revisions the replayed records were decided under, with counts.
    recorded_revisions: Mapping[str, int]
    bad_records: int
    bad_examples: tuple[BadRecord, ...]
    seconds: float = 0.0
    #: Replayed records the decision-log mask had changed, and how many of those changed decision.
    masked_records: int = 0
    masked_changed: int = 0

    def count(self, transition: Transition) -> int:
        return next((t.count for t in self.transitions if t.transition == transition), 0)

    def tripped(self, fail_on: Collection[Transition]) -> tuple[TransitionReport, ...]:
        """The transitions that occurred among these (ANY: every one): what fails a gate."""
        return tuple(t for t in self.transitions if ANY in fail_on or t.transition in fail_on)

    def as_dict(self, fail_on: Collection[Transition] = ()) -> dict[str, Any]:
        """The machine-readable report (`--format json`); its shape is stable. `gate` is null without fail_on."""
        gate = None
        if fail_on:
            tripped = self.tripped(fail_on)
            gate = {"fail_on": gate_spelling(fail_on).split(","), "passed": not tripped and not self.bad_records,
                    "tripped": {transition_label(t.transition, "→"): t.count for t in tripped}}
        return {
            "gate": gate,
            "candidate": {"bundle": self.candidate, "revision": self.revision, "entrypoint": self.entrypoint},
            "source": {
                "path": self.source,
                "since": format_time(self.window.since) if self.window.since else None,
                "until": format_time(self.window.until) if self.window.until else None,
                "limit": self.window.limit,
            },
            "recorded_revisions": dict(self.recorded_revisions),
            "replayed": self.replayed,
            "changed": self.changed,
            "transitions": [
                {"from": t.transition[0], "to": t.transition[1], "count": t.count, "by_agent": dict(t.by_agent),
                 "by_tool": dict(t.by_tool), "examples": [c.as_dict() for c in t.examples]}
                for t in self.transitions
            ],
            "by_agent": {a: _keyed(counts) for a, counts in self.by_agent.items()},
            "by_tool": {a: _keyed(counts) for a, counts in self.by_tool.items()},
            "reason_changes": {"count": self.reason_changes, "examples": [c.as_dict() for c in self.reason_examples]},
            "obligation_changes": {"count": self.obligation_changes,
                                   "examples": [c.as_dict() for c in self.obligation_examples]},
            "not_compared": dict(self.not_compared),
            "masked_records": {"count": self.masked_records, "changed": self.masked_changed},
            "bad_records": {"count": self.bad_records,
                            "first": [{"where": b.where, "message": b.message} for b in self.bad_examples]},
        }


def transition_label(transition: Transition, arrow: str = " → ") -> str:
    return f"{transition[0]}{arrow}{transition[1]}"


def parse_transitions(text: str) -> frozenset[Transition]:
    """`allow→deny,deny->allow` → {("allow", "deny"), ("deny", "allow")}; `any` → {ANY}. ValueError if unknown."""
    found = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if part.lower() == "any":
            found.add(ANY)
            continue
        before, arrow, after = part.replace("->", "→").partition("→")
        old, new = _SPELLINGS.get(before.strip().lower()), _SPELLINGS.get(after.strip().lower())
        if not arrow or old is None or new is None or old == new:
            raise ValueError(f"{part!r} is not a transition: write FROM→TO (or FROM->TO) with two different "
                             "decisions from allow, deny, require_approval; or any")
        found.add((old, new))
    if not found:
        raise ValueError("name at least one transition, e.g. allow→deny, or any")
    return frozenset(found)


def gate_spelling(fail_on: Collection[Transition]) -> str:
    """The canonical spelling of a gate: `allow→deny,deny→allow` (or `any`)."""
    if ANY in fail_on:
        return "any"
    return ",".join(transition_label(t, "→") for t in sorted(fail_on))


def _keyed(counts: Mapping[Transition, int]) -> dict[str, int]:
    return {transition_label(t, "→"): n for t, n in counts.items()}


@dataclass
class _Tally:
    examples: int
    replayed: int = 0
    transitions: collections.Counter[Transition] = field(default_factory=collections.Counter)
    agents: dict[Transition, collections.Counter[str]] = field(default_factory=dict)
    tools: dict[Transition, collections.Counter[str]] = field(default_factory=dict)
    examples_by: dict[Transition, list[Change]] = field(default_factory=dict)
    reason_changes: int = 0
    reason_examples: list[Change] = field(default_factory=list)
    obligation_changes: int = 0
    obligation_examples: list[Change] = field(default_factory=list)
    not_compared: collections.Counter[str] = field(default_factory=collections.Counter)
    revisions: collections.Counter[str] = field(default_factory=collections.Counter)
    bad: int = 0
    bad_examples: list[BadRecord] = field(default_factory=list)
    masked: int = 0
    masked_changed: int = 0

    def add(self, record: RecordedDecision, outcome: Outcome) -> None:
        self.replayed += 1
        if record.masked:
            self.masked += 1
            self.masked_changed += outcome.result.decision != record.decision
        self.revisions[record.bundle_revision] += 1
        result = outcome.result
        codes = tuple(r.code for r in result.reasons)
        change = Change(record, result.decision, codes, result.obligations, outcome.error)
        if result.decision != record.decision:
            t = change.transition
            self.transitions[t] += 1
            self.agents.setdefault(t, collections.Counter())[record.agent] += 1
            self.tools.setdefault(t, collections.Counter())[record.tool] += 1
            shown = self.examples_by.setdefault(t, [])
            if len(shown) < self.examples:
                shown.append(change)
        elif sorted(codes) != sorted(record.reasons):
            self.reason_changes += 1
            if len(self.reason_examples) < self.examples:
                self.reason_examples.append(change)
        elif dict(result.obligations) != dict(record.obligations):
            self.obligation_changes += 1
            if len(self.obligation_examples) < self.examples:
                self.obligation_examples.append(change)

    def report(self, candidate: Candidate, source: str, window: Window, seconds: float) -> ReplayReport:
        rank = {d: i for i, d in enumerate(DECISION_ORDER)}
        order = sorted(self.transitions, key=lambda t: (-self.transitions[t], rank[t[0]], rank[t[1]]))
        by_agent: dict[str, dict[Transition, int]] = {}
        by_tool: dict[str, dict[Transition, int]] = {}
        for t in order:
            for agent, n in self.agents[t].items():
                by_agent.setdefault(agent, {})[t] = n
            for tool, n in self.tools[t].items():
                by_tool.setdefault(tool, {})[t] = n
        return ReplayReport(
            candidate=candidate.source, revision=candidate.revision, entrypoint=candidate.entrypoint,
            source=source, window=window, replayed=self.replayed, changed=sum(self.transitions.values()),
            transitions=tuple(
                TransitionReport(t, self.transitions[t], _most_common(self.agents[t]), _most_common(self.tools[t]),
                                 tuple(self.examples_by[t]))
                for t in order
            ),
            by_agent=_by_total(by_agent), by_tool=_by_total(by_tool),
            reason_changes=self.reason_changes, reason_examples=tuple(self.reason_examples),
            obligation_changes=self.obligation_changes, obligation_examples=tuple(self.obligation_examples),
            not_compared=_most_common(self.not_compared), recorded_revisions=_most_common(self.revisions),
            bad_records=self.bad, bad_examples=tuple(self.bad_examples), seconds=seconds,
            masked_records=self.masked, masked_changed=self.masked_changed,
        )


def _most_common(counter: collections.Counter[str]) -> dict[str, int]:
    return dict(sorted(counter.items(), key=lambda kv: (-kv[1], kv[0])))


def _by_total(table: dict[str, dict[Transition, int]]) -> dict[str, Mapping[Transition, int]]:
    return dict(sorted(table.items(), key=lambda kv: (-sum(kv[1].values()), kv[0])))


def replay(records: Iterable[Recorded], candidate: Candidate, *, source: str = "", window: Window = Window(),
           examples: int = 5, on_bad_record: Callable[[BadRecord], None] | None = None) -> ReplayReport:
    """Decide every record's input again with the candidate and report what changed.

    Records logged as a server DENY without a policy decision (no_bundle, deadline_exceeded) are counted,
    not compared. Bad records are counted, the first few kept, and each passed to on_bad_record.
    """
    started = time.perf_counter()
    tally = _Tally(examples=max(0, examples))
    for record in records:
        if isinstance(record, BadRecord):
            tally.bad += 1
            if len(tally.bad_examples) < MAX_BAD_RECORDS_KEPT:
                tally.bad_examples.append(record)
            if on_bad_record is not None:
                on_bad_record(record)
            continue
        if record.decision == DENY and len(record.reasons) == 1 and record.reasons[0] in NOT_COMPARED:
            tally.not_compared[record.reasons[0]] += 1
            continue
        tally.add(record, candidate.decide(record.input))
    return tally.report(candidate, source, window, time.perf_counter() - started)


# -- rendering ------------------------------------------------------------------------------------


def render_text(report: ReplayReport) -> str:
    """The report for a terminal."""
    lines = [
        f"Replayed {_n(report.replayed, 'decision')} from {report.source}{_window_note(report.window)} against"
        f" {report.candidate} (revision {report.revision}) in {report.seconds:.2f}s."
    ]
    if report.changed:
        lines.append(f"{_n(report.changed, 'decision')} would change:")
        width = max(len(t.label) for t in report.transitions)
        lines += [f"  {t.label:<{width}}  {t.count}" for t in report.transitions]
        for title, table in (("By agent:", report.by_agent), ("By tool:", report.by_tool)):
            lines += ["", title]
            width = max(len(k) for k in table)
            lines += [f"  {name:<{width}}  " + ", ".join(f"{transition_label(t)}: {n}" for t, n in counts.items())
                      for name, counts in table.items()]
        for t in report.transitions:
            if t.examples:
                lines += ["", f"{t.label}: {t.count}{_shown(len(t.examples), t.count)}"]
                lines += _text_examples(t.examples)
    elif report.replayed:
        lines.append("No decision changes.")
    else:
        lines.append("Nothing to compare: no recorded policy decisions" + (" in the window." if _window_note(
            report.window) else "."))
    if report.reason_changes:
        lines += ["", f"Reason codes changed, same decision: {report.reason_changes}"
                  + _shown(len(report.reason_examples), report.reason_changes)]
        lines += _text_examples(report.reason_examples)
    if report.obligation_changes:
        lines += ["", f"Obligations changed, same decision and reasons: {report.obligation_changes}"
                  + _shown(len(report.obligation_examples), report.obligation_changes)]
        lines += [f"  {c.record.decision_id}  {c.record.agent}  {c.record.tool}  "
                  f"{canonical_json(c.record.obligations)} → {canonical_json(c.obligations)}"
                  for c in report.obligation_examples]
    lines += _text_footnotes(report)
    return "\n".join(lines) + "\n"


def _text_examples(changes: Sequence[Change]) -> list[str]:
    if not changes:
        return []
    agent_width = max(len(c.record.agent) for c in changes)
    tool_width = max(len(c.record.tool) for c in changes)
    out = []
    for c in changes:
        r = c.record
        before = f"{r.decision}: " if r.decision == c.decision else ""
        out.append(f"  {r.decision_id}  {r.agent:<{agent_width}}  {r.tool:<{tool_width}}  "
                   f"{before}{_codes(r.reasons)} → {_codes(c.reasons)}" + (f"  ({c.error})" if c.error else ""))
    return out


def _text_footnotes(report: ReplayReport) -> list[str]:
    lines = []
    if report.masked_records:
        lines += ["", f"Masked: {_n(report.masked_records, 'replayed record')} had members erased or replaced by the"
                  " decision-log mask and were evaluated as logged (erased members absent); "
                  f"{report.masked_changed} of them changed decision."]
    if report.not_compared:
        lines += ["", f"Not compared: {_n(sum(report.not_compared.values()), 'record')} logged as a server DENY"
                  " without a policy decision ("
                  + ", ".join(f"{code} {n}" for code, n in report.not_compared.items()) + ")."]
    if report.bad_records:
        lines += ["", f"{_n(report.bad_records, 'record')} could not be read"
                  + _shown(len(report.bad_examples), report.bad_records) + ":"]
        lines += [f"  {b.where}: {b.message}" for b in report.bad_examples]
    return lines


def render_markdown(report: ReplayReport, fail_on: Collection[Transition] = ()) -> str:
    """The report as a pull-request comment (GitHub-flavoured Markdown), with the gate's verdict under fail_on."""
    if report.changed:
        heading = f"### Tollgate replay: {report.changed} of {_n(report.replayed, 'decision')} would change"
    elif report.replayed:
        heading = f"### Tollgate replay: no decision changes ({_n(report.replayed, 'decision')} replayed)"
    else:
        heading = "### Tollgate replay: nothing to compare (no recorded policy decisions)"
    lines = [
        heading, "",
        f"Candidate {_code(report.candidate)} (revision {_code(report.revision)}) replayed against"
        f" {_n(report.replayed, 'recorded decision')} from {_code(report.source)}"
        + _window_note(report.window) + ".",
    ]
    if fail_on:
        gate = f"Gate {_code('--fail-on ' + gate_spelling(fail_on))}"
        tripped = report.tripped(fail_on)
        if report.bad_records:
            lines += ["", f"**{gate}: error**: {_n(report.bad_records, 'record')} could not be read."]
        elif tripped:
            lines += ["", f"**{gate}: failed**: " + ", ".join(f"{t.label}: {t.count}" for t in tripped) + "."]
        else:
            lines += ["", f"**{gate}: passed**."]
    if report.changed:
        lines += ["", "| transition | decisions |", "| --- | ---: |"]
        lines += [f"| {t.label} | {t.count} |" for t in report.transitions]
        for t in report.transitions:
            lines += [
                "", f"<details><summary><b>{html.escape(t.label)}</b>: {t.count}</summary>", "",
                "By agent: " + ", ".join(f"{_code(a)} {n}" for a, n in t.by_agent.items()) + "  ",
                "By tool: " + ", ".join(f"{_code(a)} {n}" for a, n in t.by_tool.items()),
            ]
            if t.examples:
                lines += ["", f"Examples{_shown(len(t.examples), t.count)}:", ""]
                lines += _md_examples(t.examples)
            lines += ["", "</details>"]
    if report.reason_changes:
        lines += ["", "<details><summary>Reason codes changed, same decision: "
                  f"{report.reason_changes}</summary>", ""]
        lines += _md_examples(report.reason_examples, decision=True)
        lines += ["", "</details>"]
    if report.obligation_changes:
        lines += ["", "<details><summary>Obligations changed, same decision and reasons: "
                  f"{report.obligation_changes}</summary>", "",
                  "| decision | agent | tool | obligations before | obligations after |",
                  "| --- | --- | --- | --- | --- |"]
        lines += [f"| {_code(c.record.decision_id)} | {_code(c.record.agent)} | {_code(c.record.tool)} | "
                  f"{_code(canonical_json(c.record.obligations))} | {_code(canonical_json(c.obligations))} |"
                  for c in report.obligation_examples]
        lines += ["", "</details>"]
    notes = [line for line in _text_footnotes(report) if line]
    if notes:
        lines += [""] + [f"> {_escape(line.strip())}" + ("  " if i < len(notes) - 1 else "")
                         for i, line in enumerate(notes)]
    return "\n".join(lines) + "\n"


def _md_examples(changes: Iterable[Change], *, decision: bool = False) -> list[str]:
    head = "| decision | agent | tool |" + (" decision |" if decision else "") + " reasons before | reasons after |"
    out = [head, "| --- " * (head.count("|") - 1) + "|"]
    for c in changes:
        r = c.record
        after = _md_codes(c.reasons) + (f" ({_code(c.error)})" if c.error else "")
        out.append(f"| {_code(r.decision_id)} | {_code(r.agent)} | {_code(r.tool)} |"
                   + (f" {r.decision} |" if decision else "")
                   + f" {_md_codes(r.reasons)} | {after} |")
    return out


def _window_note(window: Window) -> str:
    parts = []
    if window.since:
        parts.append(f"since {format_time(window.since)}")
    if window.until:
        parts.append(f"until {format_time(window.until)}")
    if window.limit is not None:
        parts.append(f"the latest {window.limit}")
    return f" ({', '.join(parts)})" if parts else ""


def _code(text: str) -> str:
    """Text from the log (agent and tool names are the caller's) as an inert code span in a table cell."""
    text = " ".join(str(text).split()).replace("`", "'").replace("|", "\\|")
    return f"`{text}`" if text else "—"


def _escape(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>|#])", r"\\\1", text)


def _md_codes(codes: tuple[str, ...]) -> str:
    return ", ".join(_code(c) for c in codes) if codes else "—"


def _codes(codes: tuple[str, ...]) -> str:
    return ",".join(codes) if codes else "(none)"



def _n(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _shown(shown: int, total: int) -> str:
    return "" if shown == total else f" (first {shown})"


__all__ = [
    "ANY",
    "DEFAULT_ENTRYPOINT",
    "BadRecord",
    "Candidate",
    "Change",
    "RecordedDecision",
    "ReplayError",
    "ReplayReport",
    "TransitionReport",
    "Window",
    "format_time",
    "gate_spelling",
    "parse_record",
    "parse_time",
    "parse_transitions",
    "read_data_dir",
    "read_jsonl",
    "render_markdown",
    "render_text",
    "replay",
    "transition_label",
]
