"""Finding decision records: by decision ID, agent, session, instance, decision, tool and time."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tollgate.decisionlog._reader import RECORD_COLUMNS, StoredRecord, rows
from tollgate.encoding import format_time

DECISIONS = ("allow", "deny", "require_approval")


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

    def where(self) -> tuple[str, tuple[Any, ...]]:
        """SQL conditions on the decisions table and their parameters ("" when there are none).

        decision_id, agent_id, session_id and timestamp have indexes; instance and tool are read with
        json_extract from the rows the indexed conditions leave.
        """
        parts: list[str] = []
        params: list[Any] = []
        for column, value in (("decision_id", self.decision_id), ("agent_id", self.agent),
                              ("session_id", self.session), ("decision", self.decision)):
            if value:
                parts.append(f"{column} = ?")
                params.append(value)
        if self.since is not None:
            parts.append("timestamp >= ?")
            params.append(format_time(self.since))
        if self.until is not None:
            parts.append("timestamp < ?")
            params.append(format_time(self.until))
        if self.instance:
            parts.append("json_extract(record, '$.input.principal.instance_id') = ?")
            params.append(self.instance)
        if self.tool:
            server, slash, name = self.tool.rpartition("/")
            parts.append("kind = 'tool' AND json_extract(record, '$.input.tool.name') = ?")
            params.append(name)
            if slash:
                parts.append("json_extract(record, '$.input.tool.server') = ?")
                params.append(server)
        return " AND ".join(parts), tuple(params)


def find(db: sqlite3.Connection, query: Query) -> list[StoredRecord]:
    """The matching records in append order (with a limit: the most recent `limit` of them)."""
    where, params = query.where()
    if query.limit is None:
        return list(rows(db, where=where, params=params))
    found = db.execute(f"SELECT {RECORD_COLUMNS} FROM decisions {'WHERE ' + where if where else ''} "
                       "ORDER BY seq DESC LIMIT ?", (*params, query.limit)).fetchall()
    return [StoredRecord(*row) for row in reversed(found)]


def matching(db: sqlite3.Connection, query: Query, *, after: int = 0) -> Iterator[StoredRecord]:
    """Every matching record with seq above `after`, in append order, read in batches (no limit)."""
    where, params = query.where()
    return rows(db, where=where, params=params, after=after)


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
