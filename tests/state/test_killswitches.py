"""The state store and its KillSwitches unit: validation, durability, history, and what a switch matches."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from tollgate.clock import ManualClock
from tollgate.state import (
    SCOPES,
    InvalidKillSwitch,
    KillSwitches,
    KillSwitchNotFound,
    StateError,
    StateStore,
    request_targets,
)

pytestmark = pytest.mark.clock


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state.db")


def test_scopes_are_the_ones_the_default_policy_matches() -> None:
    policy = (Path(__file__).resolve().parents[2] / "rego/tollgate/rules/killswitch/killswitch.rego").read_text()
    assert all(f'"{scope}"' in policy for scope in SCOPES)
    assert len(SCOPES) == 10


INVALID = [
    ("unknown-scope", "agnet", "x", "r", "a", "scope: 'agnet' is not a kill switch scope (scopes: agent, instance"),
    ("empty-scope", "", "x", "r", "a", "scope: required (one of agent, "),
    ("empty-value", "agent", "", "r", "a", "value: required for scope agent (e.g. agent=NAME)"),
    ("blank-value", "tool", "  ", "r", "a", "value: required for scope tool"),
    ("padded-value", "agent", " x", "r", "a", "value: ' x' has leading or trailing spaces"),
    ("all-with-value", "all", "x", "r", "a", "value: scope all takes no value or '*', not 'x'"),
    ("no-reason", "agent", "x", " ", "a", "reason: required"),
    ("no-by", "agent", "x", "r", "", "by: required"),
]


@pytest.mark.parametrize(("scope", "value", "reason", "by", "message"), [row[1:] for row in INVALID],
                         ids=[row[0] for row in INVALID])
def test_a_bad_kill_names_the_field_and_changes_nothing(store: StateStore, scope: str, value: str, reason: str,
                                                        by: str, message: str) -> None:
    switches = KillSwitches(store)
    with pytest.raises(InvalidKillSwitch) as refused:
        switches.kill(scope, value, reason=reason, by=by)
    assert str(refused.value).startswith(message)
    assert switches.list() == []
    assert switches.history() == []


def test_kill_is_listed_seen_by_the_policy_view_and_revive_lifts_it(store: StateStore) -> None:
    switches = KillSwitches(store)
    switch = switches.kill("agent", "code-reviewer", reason="INC-7", by="alice")
    assert (switch.scope, switch.value, switch.reason, switch.killed_by) == ("agent", "code-reviewer", "INC-7", "alice")
    assert switch.killed_at.endswith("Z")
    assert switches.list() == [switch]
    assert switches.policy_view() == [{"scope": "agent", "value": "code-reviewer", "reason": "INC-7"}]
    assert switches.revive("agent", "code-reviewer", by="bob") == switch
    assert switches.list() == []
    assert switches.policy_view() == []


def test_all_is_stored_under_star_whether_given_empty_or_star(store: StateStore) -> None:
    switches = KillSwitches(store)
    assert switches.kill("all", "", reason="drill", by="alice").value == "*"
    assert switches.kill("all", "*", reason="drill 2", by="alice").value == "*"
    assert [(s.scope, s.value, s.reason) for s in switches.list()] == [("all", "*", "drill 2")]
    switches.revive("all", "", by="alice")
    assert switches.list() == []


def test_killing_again_replaces_reason_and_who(store: StateStore) -> None:
    switches = KillSwitches(store)
    switches.kill("session", "s-1", reason="first", by="alice")
    switches.kill("session", "s-1", reason="second", by="bob")
    assert [(s.reason, s.killed_by) for s in switches.list()] == [("second", "bob")]


def test_reviving_what_is_not_killed_raises_not_found(store: StateStore) -> None:
    switches = KillSwitches(store)
    with pytest.raises(KillSwitchNotFound, match="agent=x is not killed"):
        switches.revive("agent", "x", by="alice")
    assert switches.history() == []


def test_kill_switches_and_their_history_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    store = StateStore(path)
    switches = KillSwitches(store)
    switches.kill("agent", "a", reason="one", by="alice")
    switches.kill("tool", "github/merge_pull_request", reason="two", by="alice")
    switches.revive("agent", "a", by="bob", reason="fixed")
    store.close()

    reopened = KillSwitches(StateStore(path))
    assert [(s.scope, s.value, s.reason) for s in reopened.list()] == [("tool", "github/merge_pull_request", "two")]
    history = [(h.action, h.scope, h.value, h.reason, h.actor) for h in reopened.history()]
    assert history == [
        ("kill", "agent", "a", "one", "alice"),
        ("kill", "tool", "github/merge_pull_request", "two", "alice"),
        ("revive", "agent", "a", "fixed", "bob"),
    ]
    assert all(h.time.endswith("Z") for h in reopened.history())


def test_schema_versions_are_recorded_per_component(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    KillSwitches(StateStore(path))
    KillSwitches(StateStore(path))  # opening again applies nothing twice
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT component, version FROM schema_versions").fetchall() == [("kill_switches", 1)]
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_schema_newer_than_the_server_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "state.db"
    KillSwitches(StateStore(path))
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_versions SET version = 7 WHERE component = 'kill_switches'")
    with pytest.raises(StateError, match="kill_switches schema is version 7, newer than this server knows"):
        KillSwitches(StateStore(path))


def test_a_failed_write_leaves_the_in_memory_copy_unchanged(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    switches = KillSwitches(store)
    store.db.execute("DROP TABLE kill_switch_history")
    with pytest.raises(StateError, match="cannot record the change"):
        switches.kill("agent", "a", reason="r", by="alice")
    assert switches.list() == []


def test_concurrent_kills_are_all_recorded(store: StateStore) -> None:
    switches = KillSwitches(store)
    threads = [threading.Thread(target=switches.kill, args=("session", f"s-{i}"), kwargs={"reason": "r", "by": "a"})
               for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(switches.list()) == 20
    assert len(switches.history()) == 20


TOOL: dict[str, Any] = {"server": "github", "name": "create_pull_request"}
PRINCIPAL = {"agent_id": "code-reviewer", "instance_id": "i-1", "session_id": "s-1", "workflow": "",
             "team": "platform", "user": "alice", "labels": {}}
TARGETS = [
    ("tool", "tool", PRINCIPAL, TOOL, {("all", "*"), ("agent", "code-reviewer"), ("instance", "i-1"),
                                       ("session", "s-1"), ("team", "platform"), ("user", "alice"),
                                       ("tool", "github/create_pull_request"), ("mcp_server", "github")}),
    ("built-in-tool", "tool", {"agent_id": "a"}, {"server": "", "name": "Bash"},
     {("all", "*"), ("agent", "a"), ("tool", "Bash")}),
    ("server-folded-into-name", "tool", {"agent_id": "a"}, {"server": "", "name": "github/get_me"},
     {("all", "*"), ("agent", "a"), ("tool", "github/get_me"), ("mcp_server", "github")}),
    ("model", "model", {"agent_id": "a"}, {"provider": "anthropic", "model": "claude-sonnet-4-5"},
     {("all", "*"), ("agent", "a"), ("model", "claude-sonnet-4-5"), ("model", "anthropic/claude-sonnet-4-5")}),
    ("budget", "budget", {"agent_id": "a", "team": "t"}, {"amount": 1, "unit": "usd"},
     {("all", "*"), ("agent", "a"), ("team", "t")}),
]


@pytest.mark.parametrize(("kind", "principal", "action", "expected"), [row[1:] for row in TARGETS],
                         ids=[row[0] for row in TARGETS])
def test_request_targets_are_what_a_kill_switch_can_name(kind: str, principal: dict[str, Any],
                                                         action: dict[str, Any], expected: set[Any]) -> None:
    assert request_targets(kind, principal, action) == expected


def test_matching_returns_only_the_switches_that_name_the_request(store: StateStore) -> None:
    switches = KillSwitches(store)
    assert switches.matching("tool", PRINCIPAL, TOOL) == []
    switches.kill("agent", "release-bot", reason="r", by="a")
    switches.kill("mcp_server", "github", reason="r", by="a")
    switches.kill("user", "alice", reason="r", by="a")
    assert [(s.scope, s.value) for s in switches.matching("tool", PRINCIPAL, TOOL)] == [
        ("mcp_server", "github"), ("user", "alice")]


def test_kill_and_revive_times_come_from_the_kill_switches_clock(store: StateStore) -> None:
    clock = ManualClock(datetime(2026, 12, 31, 23, 59, 59, 500000, tzinfo=UTC))
    switches = KillSwitches(store, clock=clock)
    assert switches.kill("agent", "code-reviewer", reason="INC-7", by="alice").killed_at == \
        "2026-12-31T23:59:59.500000Z"
    clock.advance(1)
    switches.revive("agent", "code-reviewer", by="bob")
    assert [(h.action, h.time) for h in switches.history()] == [
        ("kill", "2026-12-31T23:59:59.500000Z"), ("revive", "2027-01-01T00:00:00.500000Z")]
