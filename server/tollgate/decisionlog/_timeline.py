"""One agent run in order: each decision of a session with its approval events and its spend.

The decisions come from the log; what happened after them (who approved, what was actually spent) is in
the server's state store, which the caller passes in as a RunState (the log does not depend on the state
store: `tollgate logs timeline` reads DATA_DIR/state.db read-only when it is there).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from tollgate.decisionlog._query import Query, action_summary
from tollgate.decisionlog._record import DecisionRecord
from tollgate.decisionlog._store import DecisionStore, LogReadError, matching
from tollgate.decisionlog._toolruns import ToolRunView, may_have_run, run_dict, run_text


@dataclass(frozen=True)
class ApprovalState:
    """An approval as the state store holds it now."""

    id: str
    status: str
    approvers: tuple[str, ...]
    decided_by: str
    decided_at: str
    reason: str


@dataclass(frozen=True)
class SpendLine:
    """One unit of a reservation: what was held, what was committed, and where it stands."""

    unit: str
    reserved: float
    committed: float
    status: str  # reserved / committed / expired
    over_reported: bool


@dataclass(frozen=True)
class Step:
    """One decision of the run."""

    seq: int
    timestamp: str
    decision_id: str
    kind: str
    action: str  # a short summary: tool server/name and arguments, model and tokens, budget amount
    decision: str
    reasons: tuple[str, ...]  # reason codes
    #: "opened", "presented" (a re-ask that showed the policy approval_status), or "".
    approval_event: str
    approval_id: str
    approval_status: str  # the status the policy saw on a re-ask
    approval: ApprovalState | None
    reservation_id: str
    spend: tuple[SpendLine, ...]
    #: The result its harness reported of the tool call (ReportToolResult), and whether one is looked for here.
    tool_run: ToolRunView | None = None
    tool_run_expected: bool = False

    @property
    def result_text(self) -> str:
        """"ran: ok in 1.2 s" or "no result reported" (shown when tool_run or tool_run_expected)."""
        return run_text(self.tool_run)

    def as_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "seq": self.seq, "timestamp": self.timestamp, "decision_id": self.decision_id, "kind": self.kind,
            "action": self.action, "decision": self.decision, "reasons": list(self.reasons),
        }
        if self.approval_id:
            doc["approval"] = {"event": self.approval_event, "id": self.approval_id,
                               "status_seen": self.approval_status}
            if self.approval is not None:
                doc["approval"].update(status_now=self.approval.status, approvers=list(self.approval.approvers),
                                       decided_by=self.approval.decided_by, decided_at=self.approval.decided_at,
                                       reason=self.approval.reason)
        if self.reservation_id:
            doc["spend"] = {"reservation_id": self.reservation_id, "units": [
                {"unit": s.unit, "reserved": s.reserved, "committed": s.committed, "status": s.status,
                 "over_reported": s.over_reported} for s in self.spend]}
        if self.tool_run is not None or self.tool_run_expected:
            doc["tool_result"] = run_dict(self.tool_run)
        return doc


@dataclass(frozen=True)
class Timeline:
    """A session's decisions in append order, and why state details are missing when they are."""

    session: str
    steps: tuple[Step, ...]
    #: Empty when approvals and spend were read from state.db; otherwise why they were not.
    state_note: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"session": self.session, "steps": [s.as_dict() for s in self.steps],
                **({"state_note": self.state_note} if self.state_note else {})}


class RunState(Protocol):
    """What the state store says now of a run's approvals and reservations."""

    #: Why approvals and spend are not shown ("" when they are read).
    note: str

    def approval(self, approval_id: str) -> ApprovalState | None:
        ...

    def spend(self, reservation_id: str) -> tuple[SpendLine, ...]:
        ...

    def tool_run(self, decision_id: str) -> ToolRunView | None:
        ...


class NoRunState:
    """A RunState with nothing to say (no state store to read)."""

    def __init__(self, note: str = "") -> None:
        self.note = note

    def approval(self, approval_id: str) -> ApprovalState | None:
        return None

    def spend(self, reservation_id: str) -> tuple[SpendLine, ...]:
        return ()

    def tool_run(self, decision_id: str) -> ToolRunView | None:
        return None


def timeline(store: DecisionStore, session: str, *, state: RunState | None = None) -> Timeline:
    """The session's decisions, oldest first, with approval and spend details from state (when given)."""
    if not session:
        raise LogReadError("a session ID is required (input.principal.session_id of the run)")
    known = state if state is not None else NoRunState()
    try:
        with store.snapshot():
            records = [row.decision_record() for row in matching(store, Query(session=session))]
    except ValueError as exc:
        raise LogReadError(f"cannot read decision log: {exc}") from exc
    return session_timeline(session, records, state=known)


def session_timeline(session: str, records: Sequence[DecisionRecord], *, state: RunState | None = None) -> Timeline:
    """The timeline of records already read (the session's, in order): from a sidecar's log or the fleet's store."""
    known = state if state is not None else NoRunState()
    steps = tuple(_step(r, known) for r in records)
    if any(s.tool_run is not None for s in steps):  # a harness that reports results: say where one is missing
        steps = tuple(replace(s, tool_run_expected=may_have_run(s.kind, s.decision)) for s in steps)
    return Timeline(session, steps, known.note)


def _step(record: DecisionRecord, state: RunState) -> Step:
    approval_id = record.approval_id
    status_seen = record.approval_status
    event = ("presented" if status_seen else "opened" if record.decision == "require_approval" else ""
             ) if approval_id else ""
    reservation_id = record.reservation_id
    return Step(
        seq=record.seq, timestamp=record.timestamp, decision_id=record.decision_id, kind=record.kind,
        action=action_summary(record.input, arguments=True), decision=record.decision,
        reasons=tuple(r.code for r in record.reasons), approval_event=event, approval_id=approval_id,
        approval_status=status_seen, approval=state.approval(approval_id) if approval_id else None,
        reservation_id=reservation_id, spend=state.spend(reservation_id) if reservation_id else (),
        tool_run=state.tool_run(record.decision_id) if may_have_run(record.kind, record.decision) else None,
    )


def render_timeline(line: Timeline) -> str:
    """The timeline as text: one line per decision, indented lines for its approval and spend."""
    if not line.steps:
        return f"session {line.session}: no decisions in the log\n"
    first, last = line.steps[0], line.steps[-1]
    out = [f"session {line.session}: {len(line.steps)} decision(s), {first.timestamp} .. {last.timestamp}"]
    for step in line.steps:
        reasons = f"  [{', '.join(step.reasons)}]" if step.reasons else ""
        out.append(f"{step.timestamp}  {step.decision_id}  {step.kind} {step.action}  "
                   f"{step.decision.upper()}{reasons}")
        out.extend(f"    {text}" for text in _details(step))
    if line.state_note:
        out.append(f"(note: {line.state_note})")
    return "\n".join(out) + "\n"


def _details(step: Step) -> Iterator[str]:
    approval = step.approval
    if step.approval_event == "opened":
        whom = f" for {', '.join(approval.approvers)}" if approval and approval.approvers else ""
        yield f"approval {step.approval_id} opened{whom}" + (f"; now {approval.status}" if approval else "")
    elif step.approval_event == "presented":
        text = f"approval {step.approval_id} presented: the policy saw {step.approval_status}"
        if approval is not None and approval.decided_by:
            text += f"; decided by {approval.decided_by} at {approval.decided_at}"
            text += f" ({approval.reason})" if approval.reason else ""
        if step.decision == "allow" and step.approval_status == "approved":
            text += "; used by this decision"
        yield text
    if step.reservation_id:
        units = "; ".join(
            f"{s.unit} reserved {s.reserved:g}, committed {s.committed:g} ({s.status}"
            f"{', over-reported' if s.over_reported else ''})" for s in step.spend) or "not in the state store"
        yield f"spend {step.reservation_id}: {units}"
    if step.tool_run is not None or step.tool_run_expected:
        yield step.result_text
