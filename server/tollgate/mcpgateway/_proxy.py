"""The MCP side of the gateway: an MCP server to the client that forwards to an upstream MCP server, with every
tools/call decided by the gate first."""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TypeAlias

import anyio
import mcp_types as types
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.server.context import HandlerResult, ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.shared._stream_protocols import ReadStream
from mcp.shared.exceptions import MCPError
from mcp.shared.message import SessionMessage
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from pydantic import BaseModel, RootModel, ValidationError

from tollgate.mcpgateway._gate import ToolGate, decision_meta, refusal_text
from tollgate.mcpgateway._pins import ToolDefinitions, call_context

logger = logging.getLogger(__name__)

#: Environment variables a stdio upstream does not inherit: Tollgate's own credentials are not a tool server's
#: business (the admin token approves and kills; `tollgate` commands read it from here).
WITHHELD_ENVIRONMENT = frozenset({"TOLLGATE_ADMIN_TOKEN"})
#: Seconds an upstream has to answer initialize, by default (a first `docker run` may pull an image meanwhile).
UPSTREAM_START_TIMEOUT = 120.0
#: Upstream notifications passed on to the client (on connections that began with initialize; see README).
FORWARDED_NOTIFICATIONS = frozenset({
    "notifications/tools/list_changed", "notifications/resources/list_changed",
    "notifications/prompts/list_changed", "notifications/resources/updated", "notifications/message",
})
#: Pages of tools/list read, at most, when the gateway lists the upstream's tools itself.
MAX_TOOL_PAGES = 100
_RawRequest: TypeAlias = types.Request[dict[str, Any] | None, str]
Handler: TypeAlias = Callable[[ServerRequestContext[Any], Any], Awaitable[HandlerResult]]


class _RawResult(RootModel[dict[str, Any]]):
    """A result as the upstream sent it: plain JSON, never read through a model that would drop fields it does
    not know, so it goes back to the client as it came."""


@dataclass(frozen=True)
class StdioUpstream:
    """An upstream MCP server the gateway starts and talks to over its stdin/stdout. It inherits the gateway's
    environment (where an MCP client puts the server's tokens), less WITHHELD_ENVIRONMENT."""

    command: str
    args: tuple[str, ...] = ()
    cwd: str | None = None


@dataclass(frozen=True)
class HttpUpstream:
    """An upstream MCP server reached over streamable HTTP at `url` (e.g. http://127.0.0.1:8000/mcp)."""

    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


Upstream: TypeAlias = StdioUpstream | HttpUpstream


class NotificationRelay:
    """Passes the upstream's change and log notifications on to the client, once the client is initialized
    (before that there is no one to tell; the client lists everything after it initializes anyway)."""

    def __init__(self) -> None:
        self._client: ServerSession | None = None
        #: Called when the upstream says its tool list changed (the pinned definitions are then listed again).
        self.on_tools_changed: Callable[[], None] | None = None

    def attach(self, client: ServerSession) -> None:
        self._client = client

    async def from_upstream(self, message: IncomingMessage) -> None:
        if isinstance(message, Exception):
            logger.warning("upstream MCP server: transport error: %s", message)
            return
        if message.method == "notifications/tools/list_changed" and self.on_tools_changed is not None:
            self.on_tools_changed()
        if message.method not in FORWARDED_NOTIFICATIONS or self._client is None:
            return
        try:
            await self._client.send_notification(message)
        except Exception as exc:  # the client went away; a notification is advisory, the session goes on
            logger.debug("could not pass %s on to the client: %s", message.method, exc)


@dataclass(frozen=True)
class UpstreamConnection:
    """An initialized session with the upstream, and an event set when the upstream hangs up (its process
    exited, or the HTTP stream ended)."""

    session: ClientSession
    closed: anyio.Event


@asynccontextmanager
async def connect_upstream(upstream: Upstream, relay: NotificationRelay, *,
                           start_timeout: float = UPSTREAM_START_TIMEOUT) -> AsyncIterator[UpstreamConnection]:
    """A session with the upstream server, initialized (the initialize handshake, which every MCP server
    speaks); leaving the context stops a stdio upstream's process."""
    if isinstance(upstream, StdioUpstream):
        env = {k: v for k, v in os.environ.items() if k not in WITHHELD_ENVIRONMENT}
        params = StdioServerParameters(command=upstream.command, args=list(upstream.args), env=env, cwd=upstream.cwd)
        transport = stdio_client(params)
    else:
        transport = _http_transport(upstream)
    started = False
    try:
        async with transport as (read, write):
            watched = _EndWatch(read)
            async with ClientSession(watched, write, message_handler=relay.from_upstream,
                                     client_info=_client_info()) as session:
                try:
                    with anyio.fail_after(start_timeout):
                        await session.initialize()
                except TimeoutError:
                    raise UpstreamUnavailable(
                        f"{describe(upstream)}: no answer to initialize within {start_timeout:g} s") from None
                started = True
                yield UpstreamConnection(session, watched.ended)
    except Exception as exc:
        if started or isinstance(exc, UpstreamUnavailable):
            raise
        raise UpstreamUnavailable(f"{describe(upstream)}: {_reason(exc)}") from exc


class UpstreamUnavailable(Exception):
    """The upstream MCP server could not be started, reached or initialized; the message names it and why."""


def describe(upstream: Upstream) -> str:
    """The upstream as people name it in messages: its command line or its URL."""
    where = " ".join((upstream.command, *upstream.args)) if isinstance(upstream, StdioUpstream) else upstream.url
    return f"upstream MCP server `{where}`"


def _reason(exc: BaseException) -> str:
    # anyio task groups wrap what failed in an exception group; the first leaf is the story.
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _client_info() -> types.Implementation:
    """What the gateway calls itself to the upstream server."""
    try:
        version = importlib.metadata.version("tollgate")
    except importlib.metadata.PackageNotFoundError:
        version = ""
    return types.Implementation(name="tollgate-mcp-gateway", version=version)


class _EndWatch:
    """The upstream's read stream, unchanged, except that its end sets `ended`: the SDK's session then only
    fails each request, and a gateway whose upstream is gone should stop instead, so its client sees it."""

    def __init__(self, inner: ReadStream[SessionMessage | Exception]) -> None:
        self._inner = inner
        self.ended = anyio.Event()

    @property
    def last_context(self) -> Any:
        # The SDK reads the sender's context off context-aware streams (duck-typed); pass it through.
        return getattr(self._inner, "last_context", None)

    async def receive(self) -> SessionMessage | Exception:
        try:
            return await self._inner.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            self.ended.set()
            raise

    async def aclose(self) -> None:
        await self._inner.aclose()

    def __aiter__(self) -> _EndWatch:
        return self

    async def __anext__(self) -> SessionMessage | Exception:
        try:
            return await self.receive()
        except anyio.EndOfStream:
            raise StopAsyncIteration from None

    async def __aenter__(self) -> _EndWatch:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


@asynccontextmanager
async def _http_transport(upstream: HttpUpstream) -> AsyncIterator[Any]:
    import httpx2  # the HTTP client the SDK's transport is built on

    # The SDK's own timeouts for MCP over HTTP: 30 s to connect or send, 300 s to read (a response stream may
    # stay open while a tool runs).
    timeout = httpx2.Timeout(30.0, read=300.0)
    async with httpx2.AsyncClient(headers=dict(upstream.headers), timeout=timeout) as http, \
            streamable_http_client(upstream.url, http_client=http) as streams:
        yield streams


class Proxy:
    """Builds the MCP server the client talks to: the upstream's identity and capabilities, its methods
    forwarded, tools/call through the gate, tools/list optionally without the tools the agent may never use."""

    def __init__(self, upstream: ClientSession, gate: ToolGate, relay: NotificationRelay, *,
                 hide_denied_tools: bool = False) -> None:
        initialized = upstream.initialize_result
        if initialized is None:
            raise ValueError("Proxy: the upstream session must be initialized first")
        self._upstream = upstream
        self._initialized = initialized
        self._gate = gate
        self._relay = relay
        self._hide_denied_tools = hide_denied_tools
        # The upstream's tools as last listed: each call is decided with its tool's pin and annotations.
        self._tools = ToolDefinitions()
        relay.on_tools_changed = self._tools_changed

    def initialization_options(self) -> InitializationOptions:
        """What the client's initialize gets: the upstream's server info, capabilities and instructions."""
        info, init = self._initialized.server_info, self._initialized
        return InitializationOptions(server_name=info.name, server_version=info.version, title=info.title,
                                     description=info.description, capabilities=init.capabilities,
                                     instructions=init.instructions, website_url=info.website_url, icons=info.icons)

    def server(self) -> Server[Any]:
        info = self._initialized.server_info
        server: Server[Any] = Server(info.name, version=info.version, title=info.title,
                                     description=info.description, instructions=self._initialized.instructions,
                                     website_url=info.website_url, icons=info.icons)
        # Only what the upstream declared is served, so a client asking for anything else gets "method not
        # found" from the gateway, as it would from the upstream.
        caps = self._initialized.capabilities
        methods: dict[str, type[BaseModel]] = {}
        if caps.tools is not None:
            methods["tools/list"] = types.PaginatedRequestParams
        if caps.resources is not None:
            methods |= {"resources/list": types.PaginatedRequestParams,
                        "resources/templates/list": types.PaginatedRequestParams,
                        "resources/read": types.ReadResourceRequestParams}
            if caps.resources.subscribe:
                methods |= {"resources/subscribe": types.SubscribeRequestParams,
                            "resources/unsubscribe": types.UnsubscribeRequestParams}
        if caps.prompts is not None:
            methods |= {"prompts/list": types.PaginatedRequestParams, "prompts/get": types.GetPromptRequestParams}
        if caps.completions is not None:
            methods["completion/complete"] = types.CompleteRequestParams
        if caps.logging is not None:
            methods["logging/setLevel"] = types.SetLevelRequestParams
        for method, params_type in methods.items():
            server.add_request_handler(method, params_type, self._forwarder(method))
        if caps.tools is not None:
            server.add_request_handler("tools/call", types.CallToolRequestParams, self._call_tool)
            server.add_request_handler("tools/list", types.PaginatedRequestParams, self._list_tools)
        server.add_notification_handler("notifications/initialized", types.NotificationParams, self._initialized_by)
        return server

    async def _initialized_by(self, ctx: ServerRequestContext[Any], params: types.NotificationParams) -> None:
        self._relay.attach(ctx.session)

    def _forwarder(self, method: str) -> Handler:
        async def forward(ctx: ServerRequestContext[Any], params: BaseModel) -> HandlerResult:
            return await self._forward(ctx)

        return forward

    async def _call_tool(self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams) -> HandlerResult:
        # The arguments decided on are the ones forwarded: both come from the request as it arrived.
        raw_arguments = (ctx.params or {}).get("arguments")
        arguments: Mapping[str, Any] = raw_arguments if isinstance(raw_arguments, Mapping) else {}
        # None when the upstream does not list it, or listing it afresh failed: then no pin matches (fail closed).
        listed = await self._definition(params.name) is not None
        context = self._tools.call_context(params.name) if listed else call_context(None)
        decision = await self._gate.decide_call(params.name, arguments, tool=context)
        if decision.allowed:
            return await self._forward(ctx)
        tool = f"{self._gate.settings.server_name}/{params.name}"
        logger.info("%s not forwarded: %s", tool, decision.message)
        return types.CallToolResult(content=[types.TextContent(text=refusal_text(decision, tool=tool))],
                                    is_error=True, _meta={"tollgate/decision": decision_meta(decision)})

    async def _list_tools(self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams) -> HandlerResult:
        listed = await self._forward(ctx)
        tools = listed.get("tools")
        if not isinstance(tools, list):
            return listed
        # What the client is shown is what the next call is pinned against.
        if (ctx.params or {}).get("cursor") is None:
            self._tools.replace(tools)
        else:
            self._tools.merge(tools)
        if not self._hide_denied_tools:
            return listed
        names = [t["name"] for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str)]
        hidden = await self._gate.hidden_tools(names)
        listed["tools"] = [t for t in tools if not (isinstance(t, dict) and t.get("name") in hidden)]
        return listed

    def _tools_changed(self) -> None:
        self._tools.stale = True

    async def _definition(self, name: str) -> Mapping[str, Any] | None:
        """The tool as the upstream lists it now: listed afresh (every page) when the gateway has not seen it or
        the upstream said its list changed; None when the upstream does not list it."""
        if self._tools.known(name):
            return self._tools.get(name)
        try:
            tools = await list_tools(self._upstream)
        except (MCPError, ValidationError) as exc:
            logger.warning("upstream MCP server: tools/list failed: %s", exc)
            return None
        self._tools.replace(tools)
        return self._tools.get(name)

    async def _forward(self, ctx: ServerRequestContext[Any]) -> dict[str, Any]:
        """The client's request, as it arrived, to the upstream; the upstream's result or error back."""
        # The client asked for progress (a token in the request's _meta, as it came): relay the upstream's.
        meta = (ctx.params or {}).get("_meta")
        wants_progress = isinstance(meta, Mapping) and meta.get("progressToken") is not None
        progress = ctx.session.report_progress if wants_progress else None
        request = _RawRequest(method=ctx.method, params=_upstream_params(ctx.params))
        try:
            result = await self._upstream.send_request(request, _RawResult, progress_callback=progress)
        except ValidationError as exc:
            logger.warning("upstream MCP server: invalid %s result: %s", ctx.method, exc)
            raise MCPError(code=types.INTERNAL_ERROR,
                           message=f"the upstream MCP server answered {ctx.method} with an invalid result") from None
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            # A 2026-era client, an upstream spoken to in the handshake era: add what the newer era requires and
            # the older one never sends. No caching: the answers depend on the agent and on policy that changes.
            return {"resultType": "complete", "ttlMs": 0, "cacheScope": "private", **result.root}
        return result.root


async def list_tools(upstream: ClientSession) -> list[Any]:
    """Every tool the upstream lists (all pages, MAX_TOOL_PAGES at most), as the JSON it sent."""
    tools: list[Any] = []
    cursor: str | None = None
    for _page in range(MAX_TOOL_PAGES):
        params = {"cursor": cursor} if cursor else None
        page = (await upstream.send_request(_RawRequest(method="tools/list", params=params), _RawResult)).root
        listed = page.get("tools")
        tools.extend(listed if isinstance(listed, list) else [])
        next_cursor = page.get("nextCursor")
        cursor = next_cursor if isinstance(next_cursor, str) and next_cursor else None
        if cursor is None:
            break
    return tools


def _upstream_params(params: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The client's params for the upstream, less what belongs to the client's own connection: its progress
    token (the gateway asks for progress with its own and relays it) and the reserved protocol keys."""
    if params is None:
        return None
    forwarded = dict(params)
    meta = forwarded.pop("_meta", None)
    if isinstance(meta, Mapping):
        kept = {k: v for k, v in meta.items()
                if k != "progressToken" and not str(k).startswith("io.modelcontextprotocol/")}
        if kept:
            forwarded["_meta"] = kept
    return forwarded
