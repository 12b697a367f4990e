"""What the approvals pages show of one approval (pages/approvals.py): who asked, the whole (masked) request as
readable JSON, what the mask hid, the quorum's count, the time left, the policy's reasons from the decision that
opened it, and the session's recent decisions; and the search by an argument value.

Everything here is read, never guessed: the request is the approval's own copy (masked as the decision log
keeps it, bound to the whole request by its digest), the reasons are the opening record's, and a part the mask
hid is named by its pointer (`approval.masked`), never reconstructed.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tollgate.console._operations import integral, readable_json
from tollgate.decisionlog import DecisionRecord, action_summary
from tollgate.encoding import parse_time
from tollgate.state.approvals import PENDING, Approval

#: The principal fields an approval card shows, in this order, with their labels.
PRINCIPAL_FIELDS = (("agent_id", "Agent"), ("user", "User"), ("team", "Team"), ("workflow", "Workflow"),
                    ("session_id", "Session"), ("instance_id", "Instance"))
#: Longest search text (an argument value: a pull request number, a path, a table).
MAX_SEARCH = 200


@dataclass(frozen=True)
class Step:
    """One decision of the session, as the approval card lists it."""

    decision_id: str
    timestamp: str
    action: str
    decision: str
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ApprovalView:
    """One approval as a card or a page shows it."""

    approval: Approval
    #: (label, value) of the principal fields present.
    principal: tuple[tuple[str, str], ...]
    #: `github/merge_pull_request`, `openai/gpt-4o`, `budget 0.5 usd (model)`.
    title: str
    #: The request's whole action (a tool call's arguments and resources, a model call, a budget request) as
    #: indented JSON, integers as integers.
    request_json: str
    #: What the person sees counted: "1 of 2 approvals" (empty for a single approver's approval).
    tally: str
    #: "12m 30s left", "expired", or "" once it is closed.
    time_left: str
    #: The policy's reasons (code, message) from the decision that opened it; None when that record is not
    #: (yet) in the log the console reads.
    reasons: tuple[tuple[str, str], ...] | None
    #: The session's most recent decisions, oldest first.
    timeline: tuple[Step, ...]

    @property
    def id(self) -> str:
        return self.approval.id

    def voted(self, person: str) -> str:
        """How person voted on it ("approved", "denied" or "")."""
        for vote in self.approval.votes:
            if vote.voter == person:
                return "approved" if vote.approve else "denied"
        return ""


def view(approval: Approval, *, now: datetime, opening: DecisionRecord | None = None,
         session: Sequence[DecisionRecord] = ()) -> ApprovalView:
    """The view of approval as of now, with the reasons of its opening record and the session's decisions."""
    principal = tuple((label, str(approval.principal[key])) for key, label in PRINCIPAL_FIELDS
                      if approval.principal.get(key) not in (None, ""))
    reasons = None if opening is None else tuple((r.code, r.message) for r in opening.reasons)
    steps = tuple(Step(r.decision_id, r.timestamp, action_summary(r.input, arguments=True), r.decision,
                       tuple(r.code for r in r.reasons)) for r in session)
    return ApprovalView(approval, principal, title(approval), readable_json(approval.action), tally(approval),
                        time_left(approval, now), reasons, steps)


def title(approval: Approval) -> str:
    """What was asked, in a few words (the decision log's summary of the same request)."""
    return action_summary({"kind": approval.kind, approval.kind: dict(approval.action)})


def tally(approval: Approval) -> str:
    """How far a quorum has come: "1 of 2 approvals" ("" when one approver decides)."""
    if approval.required <= 1:
        return ""
    return f"{len(approval.approved_by)} of {approval.required} approvals"


def time_left(approval: Approval, now: datetime) -> str:
    """The time until it expires, for people ("1h 5m left"); "expired" past it; "" when it is no longer open."""
    if approval.status == "expired":
        return "expired"
    if approval.status != PENDING:
        return ""
    seconds = int((parse_time(approval.expires_at) - now).total_seconds())
    if seconds <= 0:
        return "expired"
    return f"{duration(seconds)} left"


def duration(seconds: int) -> str:
    """2h 5m, 12m 30s, 45s: the two largest units."""
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    shown = [f"{n}{unit}" for n, unit in parts if n][:2]
    return " ".join(shown) or "0s"


def matches(approval: Approval, search: str) -> bool:
    """Whether the search text is in one of the values the approval shows (the action's: arguments, resources,
    the tool or model; and the principal's), case-insensitive; numbers as shown (812, not 812.0)."""
    needle = search.strip().casefold()
    if not needle:
        return True
    return any(needle in value.casefold() for value in _values(integral(dict(approval.action))))\
        or any(needle in value.casefold() for value in _values(dict(approval.principal)))


def _values(value: Any) -> Iterator[str]:
    """Every leaf value, as text."""
    if isinstance(value, Mapping):
        for item in value.values():
            yield from _values(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _values(item)
    elif isinstance(value, bool):
        yield "true" if value else "false"
    elif value is not None:
        yield str(value)
