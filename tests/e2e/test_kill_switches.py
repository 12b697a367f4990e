"""Kill switches on real servers: kill → the next decision is denied, revive restores it, admin RPCs need the token."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from tests.conftest import ADMIN_TOKEN, TOLLGATE, Server, start_server, tool_request, write_policy
from tollgate.v1 import admin_pb2, admin_pb2_grpc
from tollgate.v1 import authorization_pb2 as pb

pytestmark = pytest.mark.clock  # times shown and windows read on a server's clock


def admin(server: Server) -> admin_pb2_grpc.AdminServiceStub:
    return admin_pb2_grpc.AdminServiceStub(server.channel)


def kill(server: Server, scope: str, value: str, reason: str = "incident INC-7",
         by: str = "alice") -> admin_pb2.KillSwitch:
    switch: admin_pb2.KillSwitch = admin(server).Kill(
        admin_pb2.KillRequest(scope=scope, value=value, reason=reason, by=by), timeout=10,
        metadata=server.admin_metadata)
    return switch


def revive(server: Server, scope: str, value: str, by: str = "alice") -> admin_pb2.KillSwitch:
    switch: admin_pb2.KillSwitch = admin(server).Revive(
        admin_pb2.ReviveRequest(scope=scope, value=value, by=by), timeout=10, metadata=server.admin_metadata)
    return switch


def listed(server: Server) -> list[tuple[str, str]]:
    response = admin(server).ListKills(admin_pb2.ListKillsRequest(), timeout=10, metadata=server.admin_metadata)
    return [(s.scope, s.value) for s in response.kill_switches]


def model_request(agent: str = "code-reviewer", provider: str = "anthropic", model: str = "claude-sonnet-4-5",
                  **principal: str) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(principal=pb.Principal(agent_id=agent, **principal),
                               model=pb.ModelCall(provider=provider, model=model, input_tokens=100,
                                                  max_output_tokens=1000, data_classes=["source-code"]))


def answer(response: pb.AuthorizeResponse) -> tuple[str, list[str]]:
    return pb.Decision.Name(response.decision), [r.code for r in response.reasons]


def killed_messages(response: pb.AuthorizeResponse) -> list[str]:
    return [r.message for r in response.reasons if r.code == "killed"]


def test_killing_an_agent_denies_its_next_request_and_spares_other_agents(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    mine, other = tool_request(session_id="s-1"), tool_request(agent="release-bot")
    assert answer(server.authorize(mine)) == ("DECISION_ALLOW", [])
    assert answer(server.authorize(other)) == ("DECISION_ALLOW", [])

    switch = kill(server, "agent", "code-reviewer")
    assert (switch.scope, switch.value, switch.reason, switch.killed_by) == (
        "agent", "code-reviewer", "incident INC-7", "alice")
    denied = server.authorize(mine)
    assert answer(denied) == ("DECISION_DENY", ["killed"])
    assert killed_messages(denied) == ['agent "code-reviewer" is stopped by a kill switch: incident INC-7']
    assert answer(server.authorize(other)) == ("DECISION_ALLOW", [])
    # The policy saw the kill switch, and the record says so.
    record = json_format.MessageToDict(server.get_decision(denied.decision_id).input)
    assert record["state"]["killed"] == [{"scope": "agent", "value": "code-reviewer", "reason": "incident INC-7"}]

    revived = revive(server, "agent", "code-reviewer", by="bob")
    assert (revived.scope, revived.value, revived.killed_by) == ("agent", "code-reviewer", "alice")
    assert answer(server.authorize(mine)) == ("DECISION_ALLOW", [])
    assert listed(server) == []
    # Each admin action is in the server log, with who asked and how they authenticated.
    assert "admin: kill agent=code-reviewer by 'alice' (admin token, peer " in server.stderr
    assert "admin: revive agent=code-reviewer by 'bob' (admin token, peer " in server.stderr


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = start_server(tmp_path_factory.mktemp("kills"))
    yield server
    server.kill()


# (scope, value, a request it stops, a request it does not touch)
SCOPE_TABLE = [
    ("agent", "code-reviewer", tool_request(), tool_request(agent="release-bot")),
    ("instance", "i-1", tool_request(instance_id="i-1"), tool_request(instance_id="i-2")),
    ("session", "s-1", tool_request(session_id="s-1"), tool_request(session_id="s-2")),
    ("workflow", "nightly", tool_request(workflow="nightly"), tool_request(workflow="weekly")),
    ("team", "payments", tool_request(team="payments"), tool_request(team="search")),
    # The policy also stops the team that owns the agent in its manifest, whatever team the caller names.
    ("team", "platform", tool_request(team="someone-else"), tool_request(agent="release-bot")),
    ("user", "alice", tool_request(user="alice"), tool_request(user="bob")),
    ("tool", "github/get_pull_request", tool_request(), tool_request(name="list_pull_requests")),
    ("mcp_server", "github", tool_request(), tool_request(agent="data-analyst", server="slack", name="post_message")),
    ("model", "claude-sonnet-4-5", model_request(), model_request(model="claude-haiku-4-5")),
    ("model", "anthropic/claude-sonnet-4-5", model_request(), tool_request()),
]


@pytest.mark.parametrize(("scope", "value", "stopped", "spared"), SCOPE_TABLE,
                         ids=[f"{s}={v}" for s, v, _, _ in SCOPE_TABLE])
def test_each_scope_stops_the_requests_it_names(shared: Server, scope: str, value: str,
                                                stopped: pb.AuthorizeRequest, spared: pb.AuthorizeRequest) -> None:
    spared_before = answer(shared.authorize(spared))
    kill(shared, scope, value)
    try:
        denied = shared.authorize(stopped)
        assert pb.Decision.Name(denied.decision) == "DECISION_DENY"
        assert killed_messages(denied) == [f'{scope} "{value}" is stopped by a kill switch: incident INC-7']
        assert answer(shared.authorize(spared)) == spared_before
    finally:
        revive(shared, scope, value)
    assert "killed" not in answer(shared.authorize(stopped))[1]


def test_all_stops_every_request_until_revived(shared: Server) -> None:
    switch = kill(shared, "all", "", reason="maintenance")
    assert switch.value == "*"
    try:
        for request in (tool_request(), tool_request(agent="release-bot"), model_request(),
                        pb.AuthorizeRequest(principal=pb.Principal(agent_id="nobody"),
                                            budget=pb.BudgetRequest(amount=1, unit="usd"))):
            denied = shared.authorize(request)
            assert pb.Decision.Name(denied.decision) == "DECISION_DENY"
            assert killed_messages(denied) == ["all requests are stopped by a kill switch: maintenance"]
    finally:
        revive(shared, "all", "*")
    assert answer(shared.authorize(tool_request())) == ("DECISION_ALLOW", [])


def test_killing_again_replaces_the_reason(shared: Server) -> None:
    kill(shared, "session", "s-9", reason="first")
    try:
        kill(shared, "session", "s-9", reason="second", by="bob")
        assert listed(shared) == [("session", "s-9")]
        assert killed_messages(shared.authorize(tool_request(session_id="s-9"))) == [
            'session "s-9" is stopped by a kill switch: second']
    finally:
        revive(shared, "session", "s-9")


INVALID = [
    ("unknown-scope", admin_pb2.KillRequest(scope="agnet", value="x", reason="r", by="a"), "scope: 'agnet' is not"),
    ("no-scope", admin_pb2.KillRequest(value="x", reason="r", by="a"), "scope: required"),
    ("no-value", admin_pb2.KillRequest(scope="agent", reason="r", by="a"), "value: required for scope agent"),
    ("all-with-value", admin_pb2.KillRequest(scope="all", value="x", reason="r", by="a"), "value: scope all takes"),
    ("no-reason", admin_pb2.KillRequest(scope="agent", value="x", by="a"), "reason: required"),
    ("no-by", admin_pb2.KillRequest(scope="agent", value="x", reason="r"), "by: required"),
]


@pytest.mark.parametrize(("request_", "message"), [(r, m) for _, r, m in INVALID], ids=[i for i, _, _ in INVALID])
def test_a_bad_kill_is_invalid_argument_naming_the_field(shared: Server, request_: admin_pb2.KillRequest,
                                                         message: str) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        admin(shared).Kill(request_, timeout=10, metadata=shared.admin_metadata)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details().startswith(message)
    assert listed(shared) == []


def test_reviving_what_is_not_killed_is_not_found(shared: Server) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        revive(shared, "agent", "never-killed")
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert refused.value.details() == "agent=never-killed is not killed"


def test_a_retried_request_id_is_not_answered_past_a_kill(shared: Server) -> None:
    request = tool_request(session_id="s-retry")
    request.request_id = "retry-1"
    allowed = shared.authorize(request)
    assert answer(allowed) == ("DECISION_ALLOW", [])
    kill(shared, "session", "s-retry")
    try:
        denied = shared.authorize(request)
        assert answer(denied) == ("DECISION_DENY", ["killed"])
        assert shared.get_decision(denied.decision_id).previous_decision_id == allowed.decision_id
    finally:
        revive(shared, "session", "s-retry")


def test_kill_switches_survive_a_restart(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "data"
    first = serve(data_dir=data)
    kill(first, "agent", "code-reviewer")
    kill(first, "tool", "github/merge_pull_request")
    revive(first, "tool", "github/merge_pull_request")
    assert first.terminate() == 0

    second = serve(data_dir=data)
    assert listed(second) == [("agent", "code-reviewer")]
    assert answer(second.authorize(tool_request())) == ("DECISION_DENY", ["killed"])
    assert "kill switches active: agent=code-reviewer" in second.stderr
    revive(second, "agent", "code-reviewer")
    assert second.terminate() == 0

    third = serve(data_dir=data)
    assert listed(third) == []
    assert answer(third.authorize(tool_request())) == ("DECISION_ALLOW", [])


NO_KILL_RULE = """
package tollgate

decision := {"decision": "allow", "reasons": [], "obligations": {"route_model": "small"}}
"""


def test_the_server_denies_a_killed_request_even_when_the_policy_has_no_kill_rule(  # type: ignore[no-untyped-def]
        serve, tmp_path: Path) -> None:
    server = serve(bundle=write_policy(tmp_path / "policy", NO_KILL_RULE))
    kill(server, "mcp_server", "github")
    denied = server.authorize(tool_request())
    assert answer(denied) == ("DECISION_DENY", ["killed"])
    assert killed_messages(denied) == ['mcp_server "github" is stopped by a kill switch: incident INC-7']
    assert not denied.obligations.fields
    with sqlite3.connect(server.data_dir / "decisions.db") as db:
        (logged,) = db.execute("SELECT record FROM decisions WHERE decision_id = ?", (denied.decision_id,)).fetchone()
    record = json.loads(logged)
    assert record["result"]["decision"] == "allow"  # the policy's own answer stays on record
    assert record["error"] == "kill switch enforced by the server: the policy did not deny this request as killed"
    assert answer(server.authorize(tool_request(server="slack", name="post_message"))) == ("DECISION_ALLOW", [])


ADMIN_CALLS = {
    "GetStatus": lambda stub, md: stub.GetStatus(admin_pb2.GetStatusRequest(), timeout=10, metadata=md),
    "Kill": lambda stub, md: stub.Kill(admin_pb2.KillRequest(scope="agent", value="code-reviewer", reason="r",
                                                             by="mallory"), timeout=10, metadata=md),
    "Revive": lambda stub, md: stub.Revive(admin_pb2.ReviveRequest(scope="agent", value="code-reviewer",
                                                                   by="mallory"), timeout=10, metadata=md),
    "ListKills": lambda stub, md: stub.ListKills(admin_pb2.ListKillsRequest(), timeout=10, metadata=md),
}


@pytest.mark.parametrize("method", list(ADMIN_CALLS))
def test_admin_rpcs_are_refused_without_the_admin_token(shared: Server, method: str) -> None:
    kill(shared, "agent", "code-reviewer")  # so that a Revive getting through would show
    try:
        for metadata, detail in [
            ([], "admin RPCs need the admin token"),
            ([("authorization", "Bearer wrong-token")], "admin token is not valid"),
            ([("authorization", f"Basic {ADMIN_TOKEN}")], "admin RPCs need the admin token"),
            ([("authorization", f"Bearer {ADMIN_TOKEN}x")], "admin token is not valid"),
        ]:
            with pytest.raises(grpc.RpcError) as refused:
                ADMIN_CALLS[method](admin(shared), metadata)
            assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED, metadata
            assert refused.value.details().startswith(detail)
        assert listed(shared) == [("agent", "code-reviewer")]
        assert f"admin: {method} from " in shared.stderr
    finally:
        revive(shared, "agent", "code-reviewer")
    # Agents need no credential to ask for decisions.
    assert answer(shared.authorize(tool_request())) == ("DECISION_ALLOW", [])


def test_without_a_configured_token_every_admin_rpc_is_refused(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve(admin_token=None)
    for method, call in ADMIN_CALLS.items():
        for metadata in ([], [("authorization", "Bearer anything")], [("authorization", "Bearer ")]):
            with pytest.raises(grpc.RpcError) as refused:
                call(admin(server), metadata)
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, method
            assert "no admin token" in refused.value.details()
            assert "--admin-token" in refused.value.details()
    assert "no admin token configured" in server.stderr
    assert answer(server.authorize(tool_request())) == ("DECISION_ALLOW", [])


def test_the_admin_token_can_come_from_a_file_or_the_config(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    token_file = tmp_path / "admin-token"
    token_file.write_text("from-a-file\n")
    server = serve(admin_token=None, extra=["--admin-token-file", str(token_file)])
    assert admin(server).ListKills(admin_pb2.ListKillsRequest(), timeout=10,
                                   metadata=[("authorization", "Bearer from-a-file")]).kill_switches == []
    server.terminate()
    config = tmp_path / "tollgate.yaml"
    config.write_text("admin_token: from-the-config\n")
    server = serve(admin_token=None, extra=["--config", str(config)])
    assert admin(server).ListKills(admin_pb2.ListKillsRequest(), timeout=10,
                                   metadata=[("authorization", "Bearer from-the-config")]).kill_switches == []


def tollgate(*argv: str, token: str | None = ADMIN_TOKEN) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "TOLLGATE_ADMIN_TOKEN"}
    if token is not None:
        env["TOLLGATE_ADMIN_TOKEN"] = token
    return subprocess.run([*TOLLGATE, *argv], capture_output=True, text=True, timeout=60, env=env)


def test_the_cli_kills_lists_and_revives(shared: Server) -> None:
    at = ["--server", shared.address]
    killed = tollgate("kill", "agent=code-reviewer", "--reason", "INC-7: leaking secrets", "--as", "alice", *at)
    assert killed.returncode == 0, killed.stderr
    assert killed.stdout.startswith("killed agent=code-reviewer  by alice  at ")
    assert killed.stdout.rstrip().endswith(": INC-7: leaking secrets")
    assert answer(shared.authorize(tool_request())) == ("DECISION_DENY", ["killed"])
    everything = tollgate("kill", "all", "--reason", "drill", "--as", "alice", "--token", ADMIN_TOKEN, *at, token=None)
    assert everything.returncode == 0, everything.stderr

    kills = tollgate("kills", *at)
    assert kills.returncode == 0, kills.stderr
    lines = kills.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["agent=code-reviewer", "all=*"]
    assert lines[0].endswith("alice  INC-7: leaking secrets")
    as_json = json.loads(tollgate("kills", "--json", *at).stdout)
    assert [(k["scope"], k["value"], k["killed_by"]) for k in as_json] == [
        ("agent", "code-reviewer", "alice"), ("all", "*", "alice")]

    revived = tollgate("revive", "agent=code-reviewer", "--as", "bob", *at)
    assert revived.returncode == 0, revived.stderr
    assert revived.stdout.startswith("revived agent=code-reviewer  (killed ")
    assert tollgate("revive", "all", *at).returncode == 0
    assert tollgate("kills", *at).stdout == "no kill switches are active\n"
    assert answer(shared.authorize(tool_request())) == ("DECISION_ALLOW", [])


def test_the_cli_says_why_the_sidecar_refused(shared: Server) -> None:
    at = ["--server", shared.address]
    no_token = tollgate("kill", "agent=x", "--reason", "r", *at, token=None)
    assert no_token.returncode == 1
    assert "UNAUTHENTICATED: admin RPCs need the admin token" in no_token.stderr
    bad_scope = tollgate("kill", "agnet=x", "--reason", "r", *at)
    assert bad_scope.returncode == 1
    assert "INVALID_ARGUMENT: scope: 'agnet' is not a kill switch scope" in bad_scope.stderr
    not_killed = tollgate("revive", "agent=x", *at)
    assert (not_killed.returncode, not_killed.stderr) == (
        1, f"tollgate revive: {shared.address}: NOT_FOUND: agent=x is not killed\n")
    status_without = tollgate("status", *at, token=None)
    assert status_without.returncode == 1 and "UNAUTHENTICATED" in status_without.stderr
    assert tollgate("status", *at).returncode == 0
