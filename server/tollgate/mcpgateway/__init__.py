"""An MCP gateway that asks Tollgate before every tool call: a transparent MCP proxy, over stdio to its client,
in front of an upstream MCP server (started over stdio, or reached over streamable HTTP).

    config = GatewayConfig(sidecar="127.0.0.1:50051", principal=Principal("code-reviewer"),
                           upstream=StdioUpstream("github-mcp-server", ("stdio",)), mcp_server_name="github")
    asyncio.run(serve_stdio(config))

Allowed calls reach the upstream untouched; a denied call, or one still waiting for approval, is answered with a
tool error (isError) that carries the reasons and the decision id. Fail closed: no decision, no call.
"""

from __future__ import annotations

import logging
from contextlib import AsyncExitStack
from dataclasses import dataclass
from typing import Any, cast

import anyio
from mcp.server.stdio import stdio_server
from mcp.shared._stream_protocols import ReadStream, WriteStream
from mcp.shared.message import SessionMessage

from tollgate.client import TLS, AsyncClient, Principal
from tollgate.mcpgateway._gate import ARGUMENT_INDEPENDENT, GateSettings, ToolGate, refusal_text
from tollgate.mcpgateway._pins import ANNOTATION_HINTS, annotation_hints, tool_pin
from tollgate.mcpgateway._proxy import (
    FORWARDED_NOTIFICATIONS,
    UPSTREAM_START_TIMEOUT,
    HttpUpstream,
    NotificationRelay,
    Proxy,
    StdioUpstream,
    Upstream,
    UpstreamUnavailable,
    connect_upstream,
    describe,
    list_tools,
)
from tollgate.mcpgateway._stdio import StdinLines

__all__ = [
    "ANNOTATION_HINTS",
    "ARGUMENT_INDEPENDENT",
    "FORWARDED_NOTIFICATIONS",
    "GatewayConfig",
    "HttpUpstream",
    "StdioUpstream",
    "Upstream",
    "UpstreamClosed",
    "UpstreamUnavailable",
    "annotation_hints",
    "print_pins",
    "refusal_text",
    "serve",
    "serve_stdio",
    "tool_pin",
]

logger = logging.getLogger(__name__)

#: The call metadata key a caller token travels in (the sidecar's `token_keys` verify it).
CALLER_TOKEN_METADATA = "tollgate-caller-token"


@dataclass(frozen=True)
class GatewayConfig:
    """One gateway: which sidecar decides, for whom, in front of which MCP server."""

    #: The Tollgate sidecar: HOST:PORT or unix:PATH.
    sidecar: str
    #: Who the agent is (agent_id picks its capability manifest; session_id names the run).
    principal: Principal
    upstream: Upstream
    #: ToolCall.server for every decision; None: the upstream's initialize serverInfo.name.
    mcp_server_name: str | None = None
    #: Seconds a call that needs approval waits for a person before it is answered with a tool error.
    approval_wait: float = 0.0
    #: Leave out of tools/list the tools the policy never allows this agent (whatever the arguments).
    hide_denied_tools: bool = False
    #: Deadline of each Authorize, retries included; past it the call is denied (fail closed).
    decision_timeout: float = 2.0
    #: Seconds the upstream has to answer initialize before the gateway gives up on it.
    upstream_start_timeout: float = UPSTREAM_START_TIMEOUT
    #: TLS to the sidecar (with a client certificate: mTLS, the gateway's caller identity); None: plaintext.
    tls: TLS | None = None
    #: A caller token (JWT) the sidecar verifies as the gateway's caller identity; empty: none.
    caller_token: str = ""


async def serve(config: GatewayConfig, read_stream: ReadStream[SessionMessage | Exception],
                write_stream: WriteStream[SessionMessage]) -> None:
    """Serve one MCP client on the given streams until it goes away; the upstream is connected (and, over
    stdio, started) first and stopped at the end. Raises when the upstream cannot be reached or initialized."""
    async with AsyncExitStack() as stack:
        metadata = [(CALLER_TOKEN_METADATA, config.caller_token)] if config.caller_token else []
        client = await stack.enter_async_context(AsyncClient(config.sidecar, timeout=config.decision_timeout,
                                                             tls=config.tls, metadata=metadata))
        relay = NotificationRelay()
        connection = await stack.enter_async_context(
            connect_upstream(config.upstream, relay, start_timeout=config.upstream_start_timeout))
        upstream = connection.session
        info = upstream.server_info
        server_name = config.mcp_server_name or (info.name if info is not None else "")
        if not server_name:
            raise ValueError("the upstream MCP server gave no name in its serverInfo: pass --mcp-server-name")
        gate = ToolGate(client, GateSettings(principal=config.principal, server_name=server_name,
                                             approval_wait=config.approval_wait))
        proxy = Proxy(upstream, gate, relay, hide_denied_tools=config.hide_denied_tools)
        logger.info("gateway for MCP server %r as agent %r (session %r), decisions from %s", server_name,
                    config.principal.agent_id, config.principal.session_id, config.sidecar)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(_cancel_when_set, connection.closed, tasks.cancel_scope)
            await proxy.server().run(read_stream, write_stream, proxy.initialization_options())
            tasks.cancel_scope.cancel()
        if connection.closed.is_set():
            raise UpstreamClosed(f"{describe(config.upstream)}: closed the connection (it exited or hung up); "
                                 "the gateway stopped, so that its client sees it")


class UpstreamClosed(Exception):
    """The upstream MCP server went away while the gateway was serving."""


#: Seconds between the upstream going away and the gateway stopping: time for the requests in flight to be
#: answered (with the error the SDK gives them) before the client's connection closes.
UPSTREAM_GONE_GRACE = 0.5


async def _cancel_when_set(event: anyio.Event, scope: anyio.CancelScope) -> None:
    await event.wait()
    logger.error("the upstream MCP server closed the connection; stopping")
    await anyio.sleep(UPSTREAM_GONE_GRACE)
    scope.cancel()


async def serve_stdio(config: GatewayConfig) -> None:
    """serve() on this process's stdin and stdout (the way MCP clients start a local server)."""
    lines = await StdinLines.open()
    # stdio_server only iterates the lines of what it is given as stdin (None: it reads stdin itself).
    stdin = cast("anyio.AsyncFile[str] | None", lines)
    async with stdio_server(stdin=stdin) as (read_stream, write_stream):
        await serve(config, read_stream, write_stream)


async def print_pins(upstream: Upstream, server_name: str | None = None, *,
                     start_timeout: float = UPSTREAM_START_TIMEOUT) -> str:
    """The catalog lines pinning every tool the upstream lists now (YAML, to merge into the tool catalog):
    `SERVER/NAME:` then `pin: sha256:...`, its description and annotations as comments for the reviewer."""
    async with connect_upstream(upstream, NotificationRelay(), start_timeout=start_timeout) as connection:
        info = connection.session.server_info
        server = server_name or (info.name if info is not None else "")
        if not server:
            raise ValueError("the upstream MCP server gave no name in its serverInfo: pass --mcp-server-name")
        tools: list[dict[str, Any]] = [t for t in await list_tools(connection.session) if isinstance(t, dict)]
    lines = [f"# Pins of the tools of MCP server {server} ({describe(upstream)}); review, then merge into the catalog."]
    for tool in sorted(tools, key=lambda t: str(t.get("name", ""))):
        description = " ".join(str(tool.get("description") or "").split())
        hints = ", ".join(f"{k}={str(v).lower()}" for k, v in annotation_hints(tool).items())
        lines.append(f"{server}/{tool['name']}:")
        lines.append(f"  # {description}" if description else "  # (no description)")
        if hints:
            lines.append(f"  # annotations (the upstream's claims): {hints}")
        lines.append(f"  pin: {tool_pin(tool)}")
    return "\n".join(lines) + "\n"
