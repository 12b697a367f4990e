"""One agent run in order: each decision of a session with its approval events and its spend.

The decisions come from the log; what happened after them (who approved, what was actually spent) is
in the server's state store, read read-only when DATA_DIR/state.db is there.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tollgate.decisionlog._query import Query, action_summary, matching
from tollgate.decisionlog._reader import LogReadError, open_read_only, snapshot
from tollgate.state import StateError, StateStore
from tollgate.state.approvals import Approvals
from tollgate.state.budgets import Budgets, ReservationNotFound

#: The state store's file name inside a server's data directory.
STATE_FILE = "state.db"


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


class _State:
    """Approvals and reservations from a read-only state store (None when there is none to read)."""

    def __init__(self, path: Path) -> None:
        self.note = ""
        self._approvals: Approvals | None = None
        self._budgets: Budgets | None = None
        self._store: StateStore | None = None
        if not path.is_file():
            self.note = f"no state store at {path}: approval decisions and spend are not shown"
            return
        try:
            self._store = StateStore(path, read_only=True)
            self._approvals = Approvals(self._store)
            self._budgets = Budgets(self._store)
        except StateError as exc:
            self.note = f"{exc}: approval decisions and spend are not shown"

    def approval(self, approval_id: str) -> ApprovalState | None:
        found = self._approvals.get(approval_id) if self._approvals is not None else None
        if found is None:
            return None
        return ApprovalState(found.id, found.status, found.approvers, found.decided_by, found.decided_at,
                             found.reason)

    def spend(self, reservation_id: str) -> tuple[SpendLine, ...]:
        if self._budgets is None:
            return ()
        try:
            found = self._budgets.get(reservation_id)
        except ReservationNotFound:
            return ()
        return tuple(SpendLine(r.unit, r.amount, r.committed, r.status, r.over_reported) for r in found)

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def timeline(data_dir: str | Path, session: str) -> Timeline:
    """The session's decisions, oldest first, with approval and spend details from DATA_DIR/state.db."""
    if not session:
        raise LogReadError("a session ID is required (input.principal.session_id of the run)")
    db = open_read_only(data_dir)
    state = _State(Path(data_dir) / STATE_FILE)
    try:
        with contextlib.closing(db), snapshot(db):
            steps = tuple(_step(row.seq, row.record(), state) for row in matching(db, Query(session=session)))
    except (sqlite3.Error, ValueError) as exc:
        raise LogReadError(f"cannot read decision log in {data_dir}: {exc}") from exc
    finally:
        state.close()
    return Timeline(session, steps, state.note)


def _step(seq: int, record: Mapping[str, Any], state: _State) -> Step:
    input_doc = record.get("input") if isinstance(record.get("input"), Mapping) else {}
    assert isinstance(input_doc, Mapping)
    approval_id = str(record.get("approval_id") or "")
    status_seen = str(record.get("approval_status") or "")
    event = ("presented" if status_seen else "opened" if record.get("decision") == "require_approval" else ""
             ) if approval_id else ""
    reservation_id = str(record.get("reservation_id") or "")
    reasons = record.get("reasons") if isinstance(record.get("reasons"), list) else []
    assert isinstance(reasons, list)
    return Step(
        seq=seq, timestamp=str(record.get("timestamp", "")), decision_id=str(record.get("decision_id", "")),
        kind=str(input_doc.get("kind", "")), action=action_summary(input_doc, arguments=True),
        decision=str(record.get("decision", "")),
        reasons=tuple(str(r.get("code", "")) for r in reasons if isinstance(r, Mapping)),
        approval_event=event, approval_id=approval_id, approval_status=status_seen,
        approval=state.approval(approval_id) if approval_id else None,
        reservation_id=reservation_id, spend=state.spend(reservation_id) if reservation_id else (),
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
