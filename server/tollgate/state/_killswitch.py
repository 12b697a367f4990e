"""Kill switches: durable stops by scope, and the in-memory view every decision reads."""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tollgate.clock import Clock, SystemClock
from tollgate.contract import MAX_IDENTIFIER
from tollgate.encoding import format_time
from tollgate.state._store import StateError, StateStore

#: What a kill switch can name; the default policy (rego/tollgate/rules/killswitch) matches the same scopes.
SCOPES = ("agent", "instance", "session", "workflow", "team", "user", "tool", "mcp_server", "model", "all")
#: The value an `all` kill switch is stored under.
ALL_VALUE = "*"
#: The longest value a kill switch names: the longest name a request may carry (contract.MAX_IDENTIFIER).
MAX_VALUE = MAX_IDENTIFIER
_PRINCIPAL_FIELDS = {"agent": "agent_id", "instance": "instance_id", "session": "session_id",
                     "workflow": "workflow", "team": "team", "user": "user"}

_SCHEMA = (
    """
    CREATE TABLE kill_switches (
        scope TEXT NOT NULL,
        value TEXT NOT NULL,
        reason TEXT NOT NULL,
        killed_by TEXT NOT NULL,
        killed_at TEXT NOT NULL,
        PRIMARY KEY (scope, value)
    );
    CREATE TABLE kill_switch_history (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        time TEXT NOT NULL,
        action TEXT NOT NULL,
        scope TEXT NOT NULL,
        value TEXT NOT NULL,
        reason TEXT NOT NULL,
        actor TEXT NOT NULL
    )
    """,
)


class InvalidKillSwitch(ValueError):
    """A kill or revive that cannot be carried out as asked; the message starts with the field."""


class KillSwitchNotFound(LookupError):
    """Revive of a scope and value that is not killed."""


@dataclass(frozen=True)
class KillSwitch:
    """One active kill switch."""

    scope: str
    value: str
    reason: str
    killed_by: str
    killed_at: str  # RFC 3339, UTC

    def policy_entry(self) -> dict[str, str]:
        """The entry in input.state.killed."""
        return {"scope": self.scope, "value": self.value, "reason": self.reason}

    def message(self) -> str:
        """The reason message, worded as the default policy words it."""
        if self.scope == "all":
            return f"all requests are stopped by a kill switch: {self.reason}"
        return f"{self.scope} \"{self.value}\" is stopped by a kill switch: {self.reason}"


@dataclass(frozen=True)
class HistoryEntry:
    """One change: a kill or a revive, who made it, when and why."""

    seq: int
    time: str
    action: str  # "kill" or "revive"
    scope: str
    value: str
    reason: str
    actor: str


def validate_target(scope: str, value: str) -> tuple[str, str]:
    """(scope, value) checked and normalised: an `all` kill switch's value is always "*"."""
    if not scope:
        raise InvalidKillSwitch(f"scope: required (one of {', '.join(SCOPES)})")
    if scope not in SCOPES:
        raise InvalidKillSwitch(f"scope: {scope!r} is not a kill switch scope (scopes: {', '.join(SCOPES)})")
    if scope == "all":
        if value not in ("", ALL_VALUE):
            raise InvalidKillSwitch(f"value: scope all takes no value or {ALL_VALUE!r}, not {value!r}")
        return scope, ALL_VALUE
    if not value.strip():
        raise InvalidKillSwitch(f"value: required for scope {scope} (e.g. {scope}=NAME)")
    if value != value.strip():
        raise InvalidKillSwitch(f"value: {value!r} has leading or trailing spaces")
    if len(value) > MAX_VALUE:
        raise InvalidKillSwitch(f"value: at most {MAX_VALUE} characters, got {len(value)}")
    return scope, value


def checked_kill(scope: str, value: str, *, reason: str, by: str) -> tuple[str, str]:
    """The target of a kill, checked as validate_target does, with its reason and author required."""
    target = validate_target(scope, value)
    if not reason.strip():
        raise InvalidKillSwitch("reason: required (say why, e.g. an incident number)")
    if not by.strip():
        raise InvalidKillSwitch("by: required (who kills it)")
    return target


def checked_revive(scope: str, value: str, *, by: str) -> tuple[str, str]:
    """The target of a revive, checked as validate_target does, with its author required."""
    target = validate_target(scope, value)
    if not by.strip():
        raise InvalidKillSwitch("by: required (who revives it)")
    return target


def request_targets(kind: str, principal: Mapping[str, Any], action: Mapping[str, Any]) -> set[tuple[str, str]]:
    """What a request is, as the (scope, value) pairs a kill switch can name (the policy's `_targets`).

    The policy also matches a team kill against the agent's manifest owner team, which only the
    bundle knows; the server's own check covers the team the caller names.
    """
    targets = {("all", ALL_VALUE)}
    for scope, name in _PRINCIPAL_FIELDS.items():
        value = principal.get(name)
        if isinstance(value, str) and value:
            targets.add((scope, value))
    if kind == "tool":
        server, name = str(action.get("server") or ""), str(action.get("name") or "")
        tool_id = f"{server}/{name}" if server else name
        targets.add(("tool", tool_id))
        if "/" in tool_id:
            targets.add(("mcp_server", tool_id.split("/", 1)[0]))
    elif kind == "model":
        provider, model = str(action.get("provider") or ""), str(action.get("model") or "")
        targets.add(("model", model))
        if provider:
            targets.add(("model", f"{provider}/{model}"))
    return targets


class KillSwitches:
    """kill / revive / list over the state store, with an in-memory copy that decisions read.

    The copy is read again from the file in the same call that commits a change, after the commit, so once
    kill() returns the very next decision sees it, and nothing cached can outlive a revive. Another process
    writing the same state.db (a console beside the sidecar) is heard through `reload()`, which the store's
    change watch (state/_local.py ChangeWatch) calls when another connection committed. Decisions never touch
    SQLite. Kill and revive times are read from `clock`.
    """

    COMPONENT = "kill_switches"

    def __init__(self, store: StateStore, *, clock: Clock = SystemClock()) -> None:
        self._store = store
        self.clock = clock
        store.migrate(self.COMPONENT, _SCHEMA)
        self._snapshot = KillSwitchSnapshot({}, [])
        self.reload()

    def reload(self) -> None:
        """Read every active kill switch from the file again and publish them (another process changed them)."""
        with self._store.lock:
            self._publish(self._read())

    def _read(self) -> dict[tuple[str, str], KillSwitch]:
        """The active kill switches in the file (the caller holds the store's lock)."""
        try:
            rows = self._store.db.execute(
                "SELECT scope, value, reason, killed_by, killed_at FROM kill_switches ORDER BY killed_at, scope, value"
            ).fetchall()
        except sqlite3.Error as exc:
            raise StateError(f"state store {self._store.path}: cannot read kill switches ({exc})") from exc
        return {(r[0], r[1]): KillSwitch(*r) for r in rows}

    def kill(self, scope: str, value: str, *, reason: str, by: str) -> KillSwitch:
        """Stop every request that scope=value names; killing it again replaces the reason."""
        scope, value = checked_kill(scope, value, reason=reason, by=by)
        switch = KillSwitch(scope, value, reason, by, format_time(self.clock.now()))
        with self._store.lock:
            self._write(
                ("INSERT INTO kill_switches (scope, value, reason, killed_by, killed_at) VALUES (?, ?, ?, ?, ?) "
                 "ON CONFLICT(scope, value) DO UPDATE SET reason = excluded.reason, killed_by = excluded.killed_by, "
                 "killed_at = excluded.killed_at",
                 (scope, value, reason, by, switch.killed_at)),
                ("kill", switch.killed_at, scope, value, reason, by),
            )
            self._publish(self._read())  # with whatever another process committed since the last reload
        return switch

    def revive(self, scope: str, value: str, *, by: str, reason: str = "") -> KillSwitch:
        """Lift the kill switch on scope=value; returns the one lifted (KillSwitchNotFound if none)."""
        scope, value = checked_revive(scope, value, by=by)
        with self._store.lock:
            # The file, not the copy, in the write's transaction: another process may have engaged or lifted it
            # since the last reload.
            with self._store.transaction("record the change") as db:
                row = db.execute("SELECT scope, value, reason, killed_by, killed_at FROM kill_switches "
                                 "WHERE scope = ? AND value = ?", (scope, value)).fetchone()
                if row is not None:
                    db.execute("DELETE FROM kill_switches WHERE scope = ? AND value = ?", (scope, value))
                    _record(db, ("revive", format_time(self.clock.now()), scope, value, reason, by))
            self._publish(self._read())
        if row is None:
            raise KillSwitchNotFound(f"{scope}={value} is not killed")
        return KillSwitch(*row)

    def list(self) -> list[KillSwitch]:
        """Active kill switches, oldest first."""
        return list(self._snapshot.active.values())

    def history(self) -> builtins.list[HistoryEntry]:
        """Every kill and revive, oldest first."""
        with self._store.lock:
            rows = self._store.db.execute(
                "SELECT seq, time, action, scope, value, reason, actor FROM kill_switch_history ORDER BY seq"
            ).fetchall()
        return [HistoryEntry(*r) for r in rows]

    def snapshot(self) -> KillSwitchSnapshot:
        """The active kill switches as of now; one decision reads one snapshot."""
        return self._snapshot

    def policy_view(self) -> builtins.list[dict[str, str]]:
        """Every active kill switch as input.state.killed holds it (shared; do not modify)."""
        return self._snapshot.policy_view

    def matching(self, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any]) -> builtins.list[KillSwitch]:
        """The active kill switches that name this request."""
        return self._snapshot.matching(kind, principal, action)

    def _write(self, change: tuple[str, tuple[str, ...]], history: tuple[str, ...]) -> None:
        with self._store.transaction("record the change") as db:
            db.execute(*change)
            _record(db, history)

    def _publish(self, active: dict[tuple[str, str], KillSwitch]) -> None:
        # One assignment: a reader on another thread sees the old snapshot or the new one, never a mix.
        self._snapshot = KillSwitchSnapshot(active, [s.policy_entry() for s in active.values()])


def _record(db: sqlite3.Connection, history: tuple[str, ...]) -> None:
    """Add a change (action, time, scope, value, reason, actor) to the history, in the caller's transaction."""
    db.execute("INSERT INTO kill_switch_history (action, time, scope, value, reason, actor) VALUES (?, ?, ?, ?, ?, ?)",
               history)


@dataclass(frozen=True)
class KillSwitchSnapshot:
    """The active kill switches at one moment, never changed: a change publishes a new snapshot."""

    active: dict[tuple[str, str], KillSwitch]
    #: As input.state.killed holds them.
    policy_view: list[dict[str, str]]

    def matching(self, kind: str, principal: Mapping[str, Any], action: Mapping[str, Any]) -> list[KillSwitch]:
        """The kill switches that name this request, by (scope, value)."""
        if not self.active:
            return []
        return [self.active[t] for t in sorted(request_targets(kind, principal, action)) if t in self.active]
