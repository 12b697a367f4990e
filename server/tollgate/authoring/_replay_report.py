"""Replay's report: which recorded decisions a candidate would change, the gates over it, and how it reads
(text for a terminal, Markdown for a pull request, a stable JSON document)."""

from __future__ import annotations

import html
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from tollgate.authoring._replay_records import BadRecord, RecordedDecision, Window
from tollgate.contract import ALLOW, DENY, REQUIRE_APPROVAL
from tollgate.encoding import canonical_json, format_time

#: Decisions in the order transitions are listed: from the most permissive to the least.
DECISION_ORDER = (ALLOW, REQUIRE_APPROVAL, DENY)

Transition = tuple[str, str]
#: In a gate, every transition.
ANY: Transition = ("*", "*")
_SPELLINGS = {"allow": ALLOW, "deny": DENY, "require_approval": REQUIRE_APPROVAL, "require-approval": REQUIRE_APPROVAL,
              "approval": REQUIRE_APPROVAL}


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
