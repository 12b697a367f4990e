"""Replay recorded decisions against a candidate bundle: which answers a policy change would change.

Each record's logged input document is evaluated again, in-process, by one embedded OPA engine holding
the candidate bundle, and held to the contract through the authorizer's own `policy_outcome`, so a
replayed answer is the answer the server would give with that bundle live (deadline aside: replay has
none). Records come from a data directory's decision log (through its DecisionStore, read-only; the server
may be running) or from a JSON Lines file of records as the log stores them.

The records (reading them) are in _replay_records, the report (and how it renders) in _replay_report; every
public name stays importable from here.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tollgate.authoring._replay_records import (
    BadRecord,
    Recorded,
    RecordedDecision,
    ReplayError,
    Window,
    parse_record,
    read_data_dir,
    read_jsonl,
    read_state_store,
)
from tollgate.authoring._replay_report import (
    ANY,
    DECISION_ORDER,
    Change,
    ReplayReport,
    Transition,
    TransitionReport,
    gate_spelling,
    parse_transitions,
    render_markdown,
    render_text,
    transition_label,
)
from tollgate.bundle import BundleError, load_bundle
from tollgate.contract import DEADLINE_EXCEEDED, DENY, NO_BUNDLE
from tollgate.decision import Outcome, ServerFacts, apply_server_rules, policy_outcome
from tollgate.encoding import canonical_json, format_time, parse_time
from tollgate.engine import EmbeddedOpa, EngineError, decode_envelope

DEFAULT_ENTRYPOINT = "tollgate/decision"
#: Reason codes of logged server DENYs that no policy made (no bundle was loaded, the evaluation ran past its
#: deadline): there is no policy decision to compare a candidate's with.
NOT_COMPARED = frozenset({NO_BUNDLE, DEADLINE_EXCEEDED})
#: Unreadable records kept (with where they were) for the report; the rest are only counted.
MAX_BAD_RECORDS_KEPT = 20
#: A window that holds every record.
_EVERY_RECORD = Window()


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
        """The final answer for one input document: the policy's, or the server's fail-closed DENY, after the
        server's own rules over the facts the logged input carried (apply_server_rules, in the server's order)."""
        facts = ServerFacts.recorded(input_doc)
        policy: Outcome | None = None
        # A caller the server refused was denied before the policy was asked; a bundle cannot change that.
        if facts.asks_policy:
            evaluated: Any
            try:
                evaluated = decode_envelope(self._engine.evaluate_raw(self._path,
                                                                      canonical_json(input_doc).encode()))
            except EngineError as exc:
                evaluated = exc
            policy = policy_outcome(evaluated, entrypoint=self.entrypoint)
        return apply_server_rules(facts, policy)

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> Candidate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the comparison -------------------------------------------------------------------------------


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


def replay(records: Iterable[Recorded], candidate: Candidate, *, source: str = "", window: Window = _EVERY_RECORD,
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


__all__ = [
    "ANY",
    "DECISION_ORDER",
    "DEFAULT_ENTRYPOINT",
    "MAX_BAD_RECORDS_KEPT",
    "NOT_COMPARED",
    "BadRecord",
    "Candidate",
    "Change",
    "Recorded",
    "RecordedDecision",
    "ReplayError",
    "ReplayReport",
    "Transition",
    "TransitionReport",
    "Window",
    "format_time",
    "gate_spelling",
    "parse_record",
    "parse_time",
    "parse_transitions",
    "read_data_dir",
    "read_jsonl",
    "read_state_store",
    "render_markdown",
    "render_text",
    "replay",
    "transition_label",
]
