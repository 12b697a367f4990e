"""Envoy external authorization on a real sidecar: `envoy.service.auth.v3.Authorization/Check` through a real gRPC
client built from the Envoy API protos on PyPI (xds-protos).

No Envoy binary can be installed on this machine (it is neither a Debian nor a PyPI package here), so the test is
the client Envoy's ext_authz filter would be: the CheckRequest it sends (attributes.request.http with the body of
with_request_body, attributes.source.principal) and the CheckResponse it acts on. An MCP `tools/call` is allowed,
denied or pending exactly as Authorize answers the same call, and each answer is a logged decision; any other HTTP
request is an `http` tool call; a header may not claim an agent the caller may not speak for; bodies are bounded.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from envoy.service.auth.v3 import attribute_context_pb2 as attrs
from envoy.service.auth.v3 import external_auth_pb2 as ext
from envoy.service.auth.v3 import external_auth_pb2_grpc as ext_grpc
from google.rpc import code_pb2

from tests.conftest import Server, tool_request
from tests.pki import TestCA
from tests.readme import readme_section
from tollgate.api._envoy import EnvoySettings
from tollgate.sidecar.config import ConfigError, load_config
from tollgate.v1 import authorization_pb2 as pb

PR = {"owner": "acme", "repo": "payments-api", "pullNumber": 42}
MCP_SERVERS = {"mcp.github.internal": "github", "/mcp/jira": "jira"}
REVIEWER = "spiffe://acme/agents/code-reviewer"
PROXY = "spiffe://acme/gateway/envoy"
STRANGER = "spiffe://acme/other/proxy"


def check_request(*, method: str = "POST", host: str = "mcp.github.internal", path: str = "/mcp",
                  headers: dict[str, str] | None = None, body: bytes = b"", source: str = "") -> ext.CheckRequest:
    http = attrs.AttributeContext.HttpRequest(method=method, host=host, path=path, raw_body=body,
                                              headers={":authority": host, ":path": path, ":method": method,
                                                       **(headers or {})})
    attributes = attrs.AttributeContext(request=attrs.AttributeContext.Request(http=http),
                                        source=attrs.AttributeContext.Peer(principal=source))
    return ext.CheckRequest(attributes=attributes)


def tools_call(name: str, arguments: dict[str, Any]) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": 7, "method": "tools/call",
                       "params": {"name": name, "arguments": arguments}}).encode()


def mcp_check(agent: str, tool: str, arguments: dict[str, Any] | None = None, **kw: Any) -> ext.CheckRequest:
    headers = {"x-tollgate-agent": agent, "x-tollgate-session": "s-envoy", "content-type": "application/json"}
    return check_request(headers={**headers, **kw.pop("headers", {})},
                         body=tools_call(tool, PR if arguments is None else arguments), **kw)


def check(server: Server, request: ext.CheckRequest, channel: grpc.Channel | None = None) -> ext.CheckResponse:
    response: ext.CheckResponse = ext_grpc.AuthorizationStub(channel or server.channel).Check(request, timeout=10)
    return response


def headers_of(options: Any) -> dict[str, str]:
    return {o.header.key: o.header.value for o in options}


def record(server: Server, decision_id: str) -> dict[str, Any]:
    with sqlite3.connect(server.data_dir / "decisions.db") as db:
        row = db.execute("SELECT record FROM decisions WHERE decision_id = ?", (decision_id,)).fetchone()
    assert row is not None, f"{decision_id} is not in the decision log"
    found: dict[str, Any] = json.loads(row[0])
    return found


def logged(server: Server) -> int:
    with sqlite3.connect(server.data_dir / "decisions.db") as db:
        count: int = db.execute("SELECT count(*) FROM decisions").fetchone()[0]
    return count


def denied(response: ext.CheckResponse) -> dict[str, Any]:
    assert response.WhichOneof("http_response") == "denied_response", response
    body: dict[str, Any] = json.loads(response.denied_response.body)
    return body


@pytest.fixture
def sidecar(serve: Callable[..., Server], tmp_path: Path) -> Server:
    config = tmp_path / "envoy.yaml"
    config.write_text(json.dumps({"envoy": {"mcp_servers": MCP_SERVERS, "max_body_bytes": 4096}}))
    return serve(extra=["--config", str(config)])


@pytest.mark.parametrize(("agent", "tool", "expected"), [
    ("code-reviewer", "get_pull_request", pb.DECISION_ALLOW),
    ("code-reviewer", "merge_pull_request", pb.DECISION_DENY),
    ("release-bot", "merge_pull_request", pb.DECISION_REQUIRE_APPROVAL),
], ids=["allow", "deny", "require-approval"])
def test_mcp_tools_call_is_answered_as_authorize_answers_it_and_logged(
        sidecar: Server, agent: str, tool: str, expected: int) -> None:
    wanted = sidecar.authorize(tool_request(agent, "github", tool, PR))
    assert wanted.decision == expected
    before = logged(sidecar)
    response = check(sidecar, mcp_check(agent, tool))
    assert logged(sidecar) == before + 1
    if expected == pb.DECISION_ALLOW:
        assert response.status.code == code_pb2.OK
        decision_id = headers_of(response.ok_response.headers)["x-tollgate-decision-id"]
        assert headers_of(response.ok_response.response_headers_to_add)["x-tollgate-decision-id"] == decision_id
        assert response.dynamic_metadata["decision"] == "allow"
    else:
        assert response.status.code == code_pb2.PERMISSION_DENIED
        assert response.denied_response.status.code == 403
        body = denied(response)
        decision_id = body["decision_id"]
        assert headers_of(response.denied_response.headers)["x-tollgate-decision-id"] == decision_id
        assert [r["code"] for r in body["reasons"]] == [r.code for r in wanted.reasons]
        if expected == pb.DECISION_REQUIRE_APPROVAL:
            assert body["decision"] == "require_approval"
            assert body["approval_id"]
            assert headers_of(response.denied_response.headers)["x-tollgate-approval-id"] == body["approval_id"]
        else:
            assert body["decision"] == "deny"
    logged_record = record(sidecar, decision_id)
    assert logged_record["input"]["principal"]["agent_id"] == agent
    assert logged_record["input"]["principal"]["session_id"] == "s-envoy"
    assert logged_record["input"]["tool"]["server"] == "github"
    assert logged_record["input"]["tool"]["name"] == tool
    assert logged_record["input"]["tool"]["arguments"] == PR


def test_a_path_prefix_route_names_the_mcp_server(sidecar: Server) -> None:
    response = check(sidecar, mcp_check("code-reviewer", "get_issue", {"key": "PAY-1"}, host="gw.internal",
                                        path="/mcp/jira/session"))
    decision_id = denied(response)["decision_id"]
    assert record(sidecar, decision_id)["input"]["tool"]["server"] == "jira"


def test_a_plain_http_request_is_an_http_tool_call_denied_by_the_default_library(sidecar: Server) -> None:
    response = check(sidecar, check_request(method="GET", host="api.example.com", path="/v1/repos?page=2",
                                            headers={"x-tollgate-agent": "code-reviewer"}))
    body = denied(response)
    assert response.denied_response.status.code == 403
    # No catalog entry and no manifest lists an `http` tool: an operator opts in per agent.
    assert {r["code"] for r in body["reasons"]} == {"tool_not_in_manifest", "unknown_tool"}
    tool = record(sidecar, body["decision_id"])["input"]["tool"]
    assert (tool["server"], tool["name"]) == ("http", "GET")
    assert tool["arguments"] == {"method": "GET", "host": "api.example.com", "path": "/v1/repos", "query": "page=2"}


def test_an_mcp_request_other_than_tools_call_is_an_http_call_naming_the_method(sidecar: Server) -> None:
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/list"}).encode()
    response = check(sidecar, check_request(headers={"x-tollgate-agent": "code-reviewer"}, body=body))
    logged_record = record(sidecar, denied(response)["decision_id"])
    assert logged_record["input"]["tool"]["server"] == "http"
    assert logged_record["input"]["context"] == {"mcp_server": "github", "mcp_method": "tools/list"}


@pytest.mark.parametrize(("request_kw", "status", "says"), [
    ({"body": b"x" * 5000}, 413, "over the limit of 4096"),
    ({"body": tools_call("get_pull_request", PR), "headers": {"x-envoy-auth-partial-body": "true"}}, 413,
     "part of it"),
    ({"body": b""}, 400, "with_request_body"),
    ({"body": b'[{"jsonrpc": "2.0", "method": "tools/call"}]'}, 400, "batch"),
    ({"body": b'{"method": "tools/list", "method": "tools/call", "params": {"name": "merge_pull_request"}}'}, 400,
     "appears twice"),
    ({"body": tools_call("get_pull_request", PR), "path": "/public/../mcp"}, 400, "not normalised"),
], ids=["oversized", "partial", "no-body", "batch", "duplicate-key", "dot-segments"])
def test_an_mcp_request_that_cannot_be_decided_whole_is_refused_and_decides_nothing(
        sidecar: Server, request_kw: dict[str, Any], status: int, says: str) -> None:
    before = logged(sidecar)
    kw = {"headers": {"x-tollgate-agent": "code-reviewer", **request_kw.pop("headers", {})}, **request_kw}
    response = check(sidecar, check_request(**kw))
    assert response.denied_response.status.code == status
    assert response.status.code != code_pb2.OK
    assert says in denied(response)["error_description"]
    assert logged(sidecar) == before


def test_no_agent_header_and_no_callers_entry_is_refused(sidecar: Server) -> None:
    response = check(sidecar, check_request(body=tools_call("get_pull_request", PR)))
    assert response.denied_response.status.code == 403
    assert "x-tollgate-agent" in denied(response)["error_description"]


# Callers: the source principal, believed from a trusted proxy only ------------------------------------------


@pytest.fixture
def mtls_sidecar(serve: Callable[..., Server], tmp_path: Path) -> tuple[Server, TestCA]:
    ca = TestCA(tmp_path / "pki")
    cert = ca.server()
    proxy = ca.client(PROXY)
    config = tmp_path / "mtls.yaml"
    config.write_text(json.dumps({
        "tls_cert": str(cert.cert), "tls_key": str(cert.key), "tls_client_ca": str(ca.cert),
        "tls_require_client_cert": True,
        "callers": [{"id": REVIEWER, "agents": ["code-reviewer"]}, {"id": PROXY, "agents": []},
                    {"id": STRANGER, "agents": []}],
        "envoy": {"mcp_servers": MCP_SERVERS, "trusted_proxies": [PROXY]},
    }))
    server = serve(extra=["--config", str(config)],
                   credentials=grpc.ssl_channel_credentials(ca.cert.read_bytes(), *proxy.pair()))
    return server, ca


def test_the_source_principal_of_a_trusted_proxy_names_its_one_agent(mtls_sidecar: tuple[Server, TestCA]) -> None:
    server, _ = mtls_sidecar
    response = check(server, check_request(body=tools_call("get_pull_request", PR), source=REVIEWER))
    assert response.status.code == code_pb2.OK, response
    decision_id = headers_of(response.ok_response.headers)["x-tollgate-decision-id"]
    logged_record = record(server, decision_id)
    assert logged_record["input"]["principal"]["agent_id"] == "code-reviewer"
    assert logged_record["input"]["auth"]["method"] == "envoy"
    assert logged_record["input"]["auth"]["subject"] == REVIEWER
    assert logged_record["input"]["auth"]["proxy"] == PROXY


def test_a_header_claiming_another_agent_is_a_logged_principal_mismatch(mtls_sidecar: tuple[Server, TestCA]) -> None:
    server, _ = mtls_sidecar
    response = check(server, mcp_check("release-bot", "merge_pull_request", source=REVIEWER))
    body = denied(response)
    assert [r["code"] for r in body["reasons"]] == ["principal_mismatch"]
    assert record(server, body["decision_id"])["decision"] == "deny"


def test_an_untrusted_proxy_cannot_lend_its_caller_an_identity(mtls_sidecar: tuple[Server, TestCA]) -> None:
    server, ca = mtls_sidecar
    stranger = ca.client(STRANGER)
    with grpc.secure_channel(server.address, grpc.ssl_channel_credentials(ca.cert.read_bytes(), *stranger.pair()),
                             options=[("grpc.ssl_target_name_override", "localhost")]) as channel:
        response = check(server, mcp_check("code-reviewer", "get_pull_request", source=REVIEWER), channel)
    body = denied(response)
    assert [r["code"] for r in body["reasons"]] == ["principal_mismatch"]
    auth = record(server, body["decision_id"])["input"]["auth"]
    assert (auth["subject"], auth["untrusted_source_principal"]) == (STRANGER, REVIEWER)


# Settings ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("envoy", "says"), [
    ({"mcp_server": {}}, "envoy: unknown key 'mcp_server'"),
    ({"mcp_servers": {"MCP.Example.com": "github"}}, "envoy: mcp_servers: 'MCP.Example.com' is not a route"),
    ({"principal_headers": {"agent": "x-agent"}}, "envoy: principal_headers: 'agent' is not a principal field"),
    ({"max_body_bytes": -1}, "envoy: max_body_bytes: must be 0"),
    ("mcp_servers: [", "envoy: not YAML or JSON"),
], ids=["unknown-key", "route-case", "principal-field", "negative-size", "flag-not-yaml"])
def test_an_unusable_envoy_setting_is_a_config_error_naming_the_key(envoy: Any, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        load_config(None, {"envoy": envoy})


def test_routes_match_whole_segments_and_the_longest_prefix_wins() -> None:
    flag = json.dumps({"mcp_servers": {"/mcp": "a", "/mcp/jira": "jira", "gw.internal/mcp": "gw",
                                       "mcp.github.internal": "github"}})  # as --envoy gives it: YAML text
    settings = EnvoySettings.parse(load_config(None, {"envoy": flag}).envoy)
    assert settings.mcp_server("gw.internal:8443", "/mcp/jira/x") == "jira"
    assert settings.mcp_server("gw.internal", "/mcp/x") == "gw"
    assert settings.mcp_server("other", "/mcp") == "a"
    assert settings.mcp_server("other", "/mcpx") == ""
    assert settings.mcp_server("MCP.github.internal:443", "/") == "github"


def test_the_readme_settings_load_as_shown() -> None:
    section = readme_section("Envoy external authorization")
    block = re.search(r"```yaml\n# tollgate.yaml\n(.*?)```", section, re.S)
    assert block, "README's Envoy section has no tollgate.yaml block"
    settings = EnvoySettings.parse(yaml.safe_load(block.group(1))["envoy"])
    assert settings.mcp_server("mcp.github.internal", "/mcp") == "github"
    assert settings.mcp_server("gw", "/mcp/jira/x") == "jira"
    assert settings.trusted_proxies == {PROXY}
    assert "with_request_body" in section and "envoy.filters.http.ext_authz" in section
