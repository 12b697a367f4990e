"""Which decision records to find (by decision ID, agent, session, instance, decision, tool, reason code and
time), and how a record reads in a line of a listing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tollgate.decisionlog._record import RECORD_DECISIONS as DECISIONS

#: The kinds of request a record answers.
KINDS = ("tool", "model", "budget")


@dataclass(frozen=True)
class Query:
    """Which records to find; empty fields match everything. Times are timezone-aware."""

    decision_id: str = ""
    agent: str = ""
    session: str = ""
    #: input.principal.instance_id (not a column: read from the record's JSON).
    instance: str = ""
    decision: str = ""
    #: tool, model or budget.
    kind: str = ""
    #: SERVER/NAME, or NAME for that tool name on any server (read from the record's JSON).
    tool: str = ""
    #: A reason code the decision gave (any of its reasons; read from the record's JSON on a sidecar's log, from
    #: the reason_codes column in the fleet's store). Unindexed on both: bound it with since/until and limit.
    reason: str = ""
    #: Records at or after this time.
    since: datetime | None = None
    #: Records before this time.
    until: datetime | None = None
    #: Only the most recent this many matches (None: all).
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.decision and self.decision not in DECISIONS:
            raise ValueError(f"decision {self.decision!r} is not one of {', '.join(DECISIONS)}")
        if self.kind and self.kind not in KINDS:
            raise ValueError(f"kind {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, not {self.limit}")


#: Records `sessions` reads at most (the newest of the window): a busy fleet's window stays one bounded read.
SESSION_SCAN = 50_000


@dataclass(frozen=True)
class ActiveSession:
    """One session's decisions inside a window, from the log alone (agent, user, team and workflow as its newest
    record in the window names them)."""

    session: str
    agent: str
    user: str
    team: str
    workflow: str
    decisions: int
    denials: int
    #: Decisions that answered require_approval.
    approvals_asked: int
    first: str  # RFC 3339: the first and last decision of the window
    last: str


@dataclass(frozen=True)
class ActiveSessions:
    """The sessions with decisions since a time, most recently active first."""

    sessions: tuple[ActiveSession, ...]
    #: Records read: SESSION_SCAN (or the scan given) when the window held more (only its newest were read).
    scanned: int
    capped: bool


def action_summary(input_doc: Mapping[str, Any], *, arguments: bool = False) -> str:
    """What a request asked for, in a few words: `github/merge_pull_request`, `openai/gpt-4o (1200 tokens)`,
    `budget 0.50 usd (model)`. With arguments, a tool call's argument names and short values follow."""
    kind = input_doc.get("kind")
    action = input_doc.get(kind) if isinstance(kind, str) else None
    if not isinstance(action, Mapping):
        return str(kind or "(unknown)")
    if kind == "tool":
        text = _joined(action.get("server"), action.get("name"))
        args = action.get("arguments")
        if arguments and isinstance(args, Mapping) and args:
            text += " " + ", ".join(f"{k}={_short(v)}" for k, v in sorted(args.items()))
        return text
    if kind == "model":
        tokens = action.get("input_tokens")
        return _joined(action.get("provider"), action.get("model")) + (f" ({tokens} input tokens)" if tokens else "")
    if kind == "budget":
        category = action.get("category")
        return (f"budget {action.get('amount', 0)} {action.get('unit', '')}".rstrip()
                + (f" ({category})" if category else ""))
    return str(kind)


def _joined(owner: Any, name: Any) -> str:
    if not name:
        return "(unknown)"
    return f"{owner}/{name}" if owner else str(name)


def _short(value: Any, width: int = 24) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= width else text[: width - 1] + "…"


def first_reason(record: Mapping[str, Any]) -> str:
    """The first reason's code (and how many more), or "" when the decision gave none."""
    reasons = record.get("reasons")
    if not isinstance(reasons, list) or not reasons or not isinstance(reasons[0], Mapping):
        return ""
    code = str(reasons[0].get("code", ""))
    return code + (f" (+{len(reasons) - 1})" if len(reasons) > 1 else "")
