"""`tollgate mcp-gateway`: an MCP server over stdio that asks Tollgate before forwarding each tool call upstream."""

from __future__ import annotations

import argparse
import sys
import uuid
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from tollgate_cli._common import DEFAULT_SERVER, EXIT_ERROR, add_tls_flags

ORDER = 70  # position in `tollgate --help`
COMMANDS = ("mcp-gateway",)  # the top-level command register() adds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    gw = sub.add_parser(
        "mcp-gateway", help="front an MCP server, asking Tollgate before every tool call",
        usage="tollgate mcp-gateway --server ADDR --agent-id ID [options] (-- COMMAND [ARGS...] | --upstream-url URL)",
        description="Speaks MCP over stdio to its client and forwards to the upstream MCP server that COMMAND "
                    "starts (or that --upstream-url names). Every tools/call is authorized first: allowed calls "
                    "pass through untouched; others get a tool error with the reasons and the decision id.")
    gw.add_argument("--server", default=DEFAULT_SERVER, help="the Tollgate sidecar, HOST:PORT or unix:PATH "
                                                             "(default %(default)s)")
    gw.add_argument("--agent-id", default=None,
                    help="principal.agent_id: whose capability manifest applies (required, but with --print-pins)")
    gw.add_argument("--print-pins", action="store_true",
                    help="print the catalog pins of the upstream's tools (YAML to merge into the tool catalog) "
                         "and exit; no sidecar is asked")
    gw.add_argument("--session-id", default=None, help="principal.session_id (default: a fresh id per run)")
    for name in ("instance-id", "team", "workflow", "user"):
        gw.add_argument(f"--{name}", default="", help=f"principal.{name.replace('-', '_')}")
    gw.add_argument("--mcp-server-name", default=None,
                    help="ToolCall.server for every decision (default: the upstream's serverInfo.name)")
    gw.add_argument("--approval-wait", type=float, default=0.0, metavar="SECONDS",
                    help="how long a call that needs approval waits for it (default 0: answer at once with a "
                         "tool error naming the approval; the same call made again after approval goes through)")
    gw.add_argument("--hide-denied-tools", action="store_true",
                    help="leave out of tools/list the tools the policy never allows this agent")
    gw.add_argument("--timeout", type=float, default=2.0,
                    help="seconds each decision may take, retries included; then the call is denied (default 2)")
    gw.add_argument("--upstream-start-timeout", type=float, default=120.0, metavar="SECONDS",
                    help="how long the upstream has to answer initialize (default %(default)g)")
    gw.add_argument("--upstream-url", default=None, help="a streamable-HTTP MCP server instead of COMMAND")
    gw.add_argument("--upstream-header", action="append", default=[], metavar="'NAME: VALUE'",
                    help="an HTTP header for --upstream-url (repeatable), e.g. 'Authorization: Bearer ...'")
    add_tls_flags(gw)
    gw.add_argument("--caller-token-file", default=None, metavar="PATH",
                    help="a caller token (JWT) the sidecar verifies as this gateway's identity")
    gw.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                    help="gateway log level, on stderr (default %(default)s)")
    gw.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...: the upstream MCP server (stdio)")
    gw.set_defaults(func=_mcp_gateway)


def _mcp_gateway(args: argparse.Namespace) -> int:
    import asyncio
    import logging

    from tollgate.client import TLS, Principal
    from tollgate.mcpgateway import (
        GatewayConfig,
        HttpUpstream,
        StdioUpstream,
        Upstream,
        UpstreamClosed,
        UpstreamUnavailable,
        print_pins,
        serve_stdio,
    )

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if bool(command) == bool(args.upstream_url):
        return _usage("give the upstream MCP server either as `-- COMMAND ARGS...` or as --upstream-url URL "
                      "(exactly one)")
    upstream: Upstream
    if args.upstream_url:
        headers = {}
        for header in args.upstream_header:
            name, sep, value = header.partition(":")
            if not sep or not name.strip():
                return _usage(f"--upstream-header {header!r}: expected 'NAME: VALUE'")
            headers[name.strip()] = value.strip()
        upstream = HttpUpstream(args.upstream_url, headers=headers)
    elif args.upstream_header:
        return _usage("--upstream-header applies to --upstream-url only")
    else:
        upstream = StdioUpstream(command[0], tuple(command[1:]))
    if args.approval_wait < 0 or args.timeout <= 0 or args.upstream_start_timeout <= 0:
        return _usage("--approval-wait must be 0 or more, --timeout and --upstream-start-timeout more than 0 "
                      "(seconds)")
    if bool(args.tls_cert) != bool(args.tls_key):
        return _usage("--tls-cert and --tls-key go together (the client certificate and its key)")
    if (args.tls_cert or args.tls_key) and not args.tls_ca:
        return _usage("--tls-cert/--tls-key need --tls-ca (the CA the sidecar's certificate chains to)")
    if args.print_pins:
        return _print_pins(print_pins(upstream, args.mcp_server_name, start_timeout=args.upstream_start_timeout))
    if not args.agent_id:
        return _usage("--agent-id is required (whose capability manifest applies)")
    tls = TLS(root_ca=args.tls_ca, client_cert=args.tls_cert, client_key=args.tls_key) if args.tls_ca else None
    caller_token = ""
    if args.caller_token_file:
        try:
            caller_token = Path(args.caller_token_file).read_text().strip()
        except OSError as exc:
            return _usage(f"--caller-token-file {args.caller_token_file}: {exc.strerror}")
    # stdout is the MCP channel: everything the gateway has to say goes to stderr.
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="tollgate mcp-gateway: %(levelname)s %(name)s: %(message)s")
    principal = Principal(args.agent_id, session_id=args.session_id or f"mcp-{uuid.uuid4().hex}",
                          instance_id=args.instance_id, team=args.team, workflow=args.workflow, user=args.user)
    config = GatewayConfig(sidecar=args.server, principal=principal, upstream=upstream,
                           mcp_server_name=args.mcp_server_name, approval_wait=args.approval_wait,
                           hide_denied_tools=args.hide_denied_tools, decision_timeout=args.timeout,
                           upstream_start_timeout=args.upstream_start_timeout, tls=tls, caller_token=caller_token)
    try:
        asyncio.run(serve_stdio(config))
    except KeyboardInterrupt:
        return 0
    except Exception as exc:
        # anyio task groups wrap what failed in exception groups; the first leaf is the story.
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        if isinstance(leaf, UpstreamClosed | UpstreamUnavailable):  # the message names the upstream and what befell it
            return _usage(str(leaf))
        return _usage(f"{type(leaf).__name__}: {leaf}")
    return 0


def _print_pins(listing: Coroutine[Any, Any, str]) -> int:
    import asyncio

    try:
        text = asyncio.run(listing)
    except Exception as exc:
        leaf: BaseException = exc
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        return _usage(str(leaf) if str(leaf) else type(leaf).__name__)
    sys.stdout.write(text)
    return 0


def _usage(message: str) -> int:
    print(f"tollgate mcp-gateway: {message}", file=sys.stderr)
    return EXIT_ERROR
