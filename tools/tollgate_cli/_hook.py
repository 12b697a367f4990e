"""`tollgate hook claude-code`: a Claude Code PreToolUse hook that asks the sidecar about each tool call, and a
PostToolUse / PostToolUseFailure hook that reports what became of it (the result class and duration, never the
tool's output)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from tollgate_cli._common import DEFAULT_SERVER

ORDER = 25  # position in `tollgate --help`
COMMANDS = ("hook",)  # the top-level command register() adds

#: The agent whose capability manifest applies when --agent-id is not given (rego/agents/claude-code).
DEFAULT_AGENT = "claude-code"
# Claude Code's built-in tools and the argument naming the file each touches; the policy confines these to the
# workspace, and the hook also names them as path: resources.
_PATH_ARGUMENTS = {"Read": "file_path", "Write": "file_path", "Edit": "file_path", "MultiEdit": "file_path",
                   "NotebookEdit": "notebook_path", "Glob": "path", "Grep": "path"}
# Arguments holding file contents: the policy needs none of them whole, and a large Write would pass the
# sidecar's request size limit (a DENY) and fill the decision log. They are cut to this many characters.
_CONTENT_ARGUMENTS = frozenset({"content", "old_string", "new_string", "new_source"})
_CONTENT_LIMIT = 4096
_PERMISSION = {"allow": "allow", "deny": "deny", "require_approval": "ask"}
#: The events after a tool call ran; the hook reports them and never blocks (PostToolUse cannot undo the call).
POST_EVENTS = ("PostToolUse", "PostToolUseFailure")
#: Longest a report may take: Claude Code waits for the hook before it goes on.
REPORT_TIMEOUT = 2.0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    hook = sub.add_parser("hook", help="agent harness hooks that ask the sidecar before each tool call")
    harness = hook.add_subparsers(metavar="HARNESS", required=True)
    claude = harness.add_parser(
        "claude-code", help="Claude Code hook: PreToolUse asks the sidecar; PostToolUse(Failure) reports the result",
        description="Reads Claude Code's hook JSON on stdin. PreToolUse: asks the sidecar and prints the permission "
                    "decision as hook JSON (exit 0); no answer from the sidecar, or input it cannot read: deny. "
                    "PostToolUse and PostToolUseFailure: reports the result class (ok, error, interrupted) and the "
                    f"duration, within {REPORT_TIMEOUT:g} s, prints nothing and exits 0 whatever happens.")
    claude.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT or unix:PATH (default %(default)s)")
    claude.add_argument("--agent-id", default=DEFAULT_AGENT, help="principal.agent_id (default %(default)s)")
    claude.add_argument("--user", default="", help="principal.user: the person Claude Code works for")
    claude.add_argument("--ca", help="TLS: the CA certificate (PEM) the sidecar's certificate is checked against")
    claude.add_argument("--cert", help="mutual TLS: this client's certificate chain (PEM)")
    claude.add_argument("--key", help="mutual TLS: this client's private key (PEM)")
    claude.add_argument("--timeout", type=float, default=2.0,
                        help="seconds to wait for an answer, retries included (default %(default)s)")
    claude.add_argument("--wait-approval", type=float, default=0.0, metavar="SECONDS",
                        help="on require_approval wait this long for a person to decide in Tollgate, then answer "
                             "allow or deny (keep it under the hook's timeout in settings.json); 0, the default, "
                             "answers ask: Claude Code prompts its user")
    claude.set_defaults(func=_claude_code)


@dataclass(frozen=True)
class ToolCall:
    """What a PreToolUse event asks about, as a Tollgate tool call."""

    session_id: str
    server: str
    name: str
    arguments: dict[str, Any]
    resources: tuple[str, ...]
    context: dict[str, Any]
    request_id: str


def read_event(text: str) -> ToolCall:
    """Claude Code's PreToolUse JSON → ToolCall; ValueError naming the field when it is not one."""
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"stdin is not JSON ({exc})") from exc
    if not isinstance(event, dict):
        raise ValueError("stdin must be a JSON object (Claude Code's hook input)")
    if event.get("hook_event_name") != "PreToolUse":
        raise ValueError(f"hook_event_name: {event.get('hook_event_name')!r}; this hook answers PreToolUse only, "
                         "and reports PostToolUse and PostToolUseFailure (register it under those in settings.json)")
    tool_name, tool_input = event.get("tool_name"), event.get("tool_input", {})
    if not isinstance(tool_name, str) or not tool_name:
        raise ValueError("tool_name: required, a string")
    if not isinstance(tool_input, dict):
        raise ValueError("tool_input: must be a JSON object")
    cwd = event["cwd"] if isinstance(event.get("cwd"), str) else ""
    server, name = _tool_id(tool_name)
    context = {"harness": "claude-code", "cwd": cwd, "tool_name": tool_name}
    if isinstance(event.get("permission_mode"), str):
        context["permission_mode"] = event["permission_mode"]
    tool_use_id = event.get("tool_use_id")
    return ToolCall(
        session_id=str(event.get("session_id") or ""), server=server, name=name,
        arguments=_trimmed(tool_input), resources=_resources(tool_name, tool_input, cwd), context=context,
        # Claude Code gives each tool call an id: a hook run twice for it is answered from the log.
        request_id=f"claude-code:{tool_use_id}" if isinstance(tool_use_id, str) and tool_use_id else "",
    )


@dataclass(frozen=True)
class ToolResult:
    """What a PostToolUse or PostToolUseFailure event says of the call that ran, as ReportToolResult takes it."""

    request_id: str
    result: str  # ok / error / interrupted
    duration_ms: int | None  # None: the event carries none, the sidecar measures from the decision


def read_result(event: Mapping[str, Any]) -> ToolResult:
    """Claude Code's PostToolUse / PostToolUseFailure JSON → ToolResult; ValueError naming the field. Only the
    result class is taken from tool_response, never its content (it may hold secrets)."""
    tool_use_id = event.get("tool_use_id")
    if not isinstance(tool_use_id, str) or not tool_use_id:
        raise ValueError("tool_use_id: required, a string (it links the result to the PreToolUse decision)")
    if event.get("hook_event_name") == "PostToolUseFailure":
        result = "interrupted" if event.get("is_interrupt") is True else "error"
    else:
        result = _result_class(event.get("tool_response"))
    duration = event.get("duration_ms")
    if not isinstance(duration, int | float) or isinstance(duration, bool) or not 0 <= duration < 2**53:
        duration = None  # also NaN and the infinities
    return ToolResult(f"claude-code:{tool_use_id}", result, None if duration is None else int(duration))


def _result_class(response: Any) -> str:
    """ok, unless the tool's response says it was interrupted (Bash) or is an error (MCP's isError)."""
    if not isinstance(response, dict):
        return "ok"
    if response.get("interrupted") is True:
        return "interrupted"
    if response.get("is_error") is True or response.get("isError") is True or response.get("success") is False:
        return "error"
    return "ok"


def _tool_id(tool_name: str) -> tuple[str, str]:
    """mcp__<server>__<tool> is an MCP server's tool; any other name is a built-in (server "", as catalogued)."""
    if tool_name.startswith("mcp__"):
        server, sep, tool = tool_name[len("mcp__"):].partition("__")
        if sep and server and tool:
            return server, tool
    return "", tool_name


def _resources(tool_name: str, tool_input: Mapping[str, Any], cwd: str) -> tuple[str, ...]:
    argument = _PATH_ARGUMENTS.get(tool_name)
    path = tool_input.get(argument) if argument else None
    if tool_name in ("Glob", "Grep") and not path:
        path = cwd  # they search the working directory when given no path
    if isinstance(path, str) and path:
        return (f"path:{os.path.normpath(os.path.join(cwd or '/', path))}",)
    if tool_name == "WebFetch" and isinstance(tool_input.get("url"), str):
        return (f"url:{tool_input['url']}",)
    return ()


def _trimmed(value: Any, key: str = "") -> Any:
    if isinstance(value, dict):
        return {k: _trimmed(v, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_trimmed(v, key) for v in value]
    if key in _CONTENT_ARGUMENTS and isinstance(value, str) and len(value) > _CONTENT_LIMIT:
        return f"{value[:_CONTENT_LIMIT]}… [{len(value) - _CONTENT_LIMIT} more characters not sent to Tollgate]"
    return value


def hook_output(permission: str, reason: str) -> dict[str, Any]:
    return {"hookSpecificOutput": {"hookEventName": "PreToolUse", "permissionDecision": permission,
                                   "permissionDecisionReason": reason}}


def _expiry(client: Any, decision: Any) -> str:
    """When an approval the hook answered `ask` for stops being pending, as the reason says it."""
    from tollgate.client import TollgateError

    try:
        state = client.wait_for_approval(decision.approval_id, 0.2)  # its state now: a decision takes a person
    except TollgateError:
        state = None
    if state is None or state.expires_at is None:
        return "stays pending in Tollgate for its approvers until its ttl_seconds run out, then expires"
    if state.decided:
        return f"is already {state.status}"
    return (f"stays pending in Tollgate for its approvers until {state.expires_at:%Y-%m-%d %H:%M:%S} UTC, "
            "then expires")


def _claude_code(args: argparse.Namespace) -> int:
    # Whatever happens, Claude Code gets an answer on stdout and exit 0: a crash or another exit code would
    # let the tool call go ahead (Claude Code treats a failing hook as a non-blocking error).
    stdin = sys.stdin.read()
    if _posted(stdin):
        _report(args, stdin)
        return 0
    try:
        output = _answer(args, stdin)
    except Exception as exc:  # anything unforeseen: fail closed
        print(f"tollgate hook claude-code: {type(exc).__name__}: {exc}", file=sys.stderr)
        output = hook_output("deny", f"Tollgate hook failed ({type(exc).__name__}: {exc}); denied (fail closed)")
    print(json.dumps(output))
    return 0


def _posted(stdin: str) -> bool:
    """Whether stdin is a PostToolUse or PostToolUseFailure event (anything else is answered as a PreToolUse)."""
    try:
        event = json.loads(stdin)
    except ValueError:
        return False
    return isinstance(event, dict) and event.get("hook_event_name") in POST_EVENTS


def _report(args: argparse.Namespace, stdin: str) -> None:
    """Report the result; never block the agent: whatever fails is said on stderr, the exit is 0, nothing is
    printed (the call already ran: there is nothing to decide)."""
    from tollgate.client import TLS, Client

    try:
        result = read_result(json.loads(stdin))
        tls = TLS(root_ca=args.ca, client_cert=args.cert, client_key=args.key) if args.ca or args.cert else None
        timeout = min(args.timeout, REPORT_TIMEOUT)
        with Client(args.server, timeout=timeout, tls=tls) as client:
            client.report_tool_result(result.result, request_id=result.request_id, duration_ms=result.duration_ms,
                                      timeout=timeout)
    except Exception as exc:  # the sidecar down, a result already reported, input it cannot read
        print(f"tollgate hook claude-code: the tool result was not reported ({type(exc).__name__}: {exc})",
              file=sys.stderr)


def _answer(args: argparse.Namespace, stdin: str) -> dict[str, Any]:
    from tollgate.client import TLS, Client, Decision, Principal, TollgateError, tool_request

    try:
        call = read_event(stdin)
    except ValueError as exc:
        print(f"tollgate hook claude-code: {exc}", file=sys.stderr)
        return hook_output("deny", f"Tollgate could not read the hook input ({exc}); denied")
    principal = Principal(args.agent_id, session_id=call.session_id, user=args.user)
    request = tool_request(principal, call.server, call.name, call.arguments, resources=call.resources,
                           context=call.context, request_id=call.request_id or None)
    try:
        tls = TLS(root_ca=args.ca, client_cert=args.cert, client_key=args.key) if args.ca or args.cert else None
        client = Client(args.server, timeout=args.timeout, tls=tls)
    except ValueError as exc:  # plaintext to another machine, or unreadable certificate files
        print(f"tollgate hook claude-code: {exc}", file=sys.stderr)
        return hook_output("deny", f"Tollgate hook is misconfigured ({exc}; see --ca, --cert, --key); denied")
    try:
        with client:
            if args.wait_approval > 0:
                decision: Decision = client.authorize_with_approval(request, wait=args.wait_approval,
                                                                    timeout=args.timeout)
            else:
                decision = client.authorize(request)
                expiry = _expiry(client, decision) if decision.decision == "require_approval" else ""
    except TollgateError as exc:  # InvalidRequest: the sidecar refused the request's shape
        return hook_output("deny", f"Tollgate refused the request ({exc}); denied")
    if decision.failed_closed:
        print(f"tollgate hook claude-code: {decision.error}", file=sys.stderr)
        return hook_output("deny", f"Tollgate sidecar at {args.server} did not answer ({decision.error}); "
                           "denied (fail closed). Start it with `tollgate serve` or check --server.")
    reason = f"Tollgate: {decision.message}"
    if decision.decision == "require_approval" and args.wait_approval > 0:
        # The approvers were given their time and did not decide: the keyboard may not decide for them.
        return hook_output("deny", f"Tollgate: approval {decision.approval_id} was not decided within "
                           f"{args.wait_approval:g} s; ask again once it is approved: {decision.message}")
    if decision.decision == "require_approval":
        # The person at the keyboard answers Claude Code's prompt; Tollgate's approval is not theirs to decide. If
        # they let the call run, the PostToolUse report closes the approval (nobody is left to decide it); if they
        # refuse, no PostToolUse comes and it stays pending for its approvers until its expiry, which the reason
        # names (the approval decides only a later call that presents it).
        reason = (f"Tollgate: approval {decision.approval_id} is needed "
                  f"(`tollgate approvals approve {decision.approval_id}`): {decision.message}. Answering this "
                  f"prompt decides this call only; the approval {expiry} (if you let the call run, the PostToolUse "
                  "hook closes it: answered at the keyboard)")
    return hook_output(_PERMISSION[decision.decision], reason)
