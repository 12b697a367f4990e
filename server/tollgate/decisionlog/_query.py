"""Which decision records to find (by decision ID, agent, session, instance, decision, tool and time), and
how a record reads in a line of a listing."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tollgate.decisionlog._record import RECORD_DECISIONS as DECISIONS


@dataclass(frozen=True)
class Query:
    """Which records to find; empty fields match everything. Times are timezone-aware."""

    decision_id: str = ""
    agent: str = ""
    session: str = ""
    #: input.principal.instance_id (not a column: read from the record's JSON).
    instance: str = ""
    decision: str = ""
    #: SERVER/NAME, or NAME for that tool name on any server (read from the record's JSON).
    tool: str = ""
    #: Records at or after this time.
    since: datetime | None = None
    #: Records before this time.
    until: datetime | None = None
    #: Only the most recent this many matches (None: all).
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.decision and self.decision not in DECISIONS:
            raise ValueError(f"decision {self.decision!r} is not one of {', '.join(DECISIONS)}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"limit must be at least 1, not {self.limit}")


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
