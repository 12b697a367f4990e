# METADATA
# title: Tool calls
# description: >-
#   Least privilege for tool calls: the tool must be in the catalog (which gives its effect)
#   and in the agent's manifest; destructive tools need a human approval. Tools whose catalog
#   entry names an argument kind are also judged by data.tollgate.arguments.<kind>, and every
#   "path:" resource must lie inside the agent's workspace.
package tollgate.rules.tools

import data.tollgate.rules.agent
import data.tollgate.arguments.filesystem

_effects := {"read", "write", "destructive"}

_argument_kinds := {"filesystem", "sql", "browser", "shell"}

# METADATA
# title: tool_id
# description: >-
#   "<server>/<name>", or "<name>" for a harness built-in (server ""). Undefined unless
#   server and name are strings; such calls are denied as invalid_request.
tool_id := name if {
	input.kind == "tool"
	input.tool.server == ""
	name := input.tool.name
	is_string(name)
}

tool_id := concat("/", [server, name]) if {
	input.kind == "tool"
	server := input.tool.server
	is_string(server)
	server != ""
	name := input.tool.name
	is_string(name)
}

# METADATA
# title: entry
# description: The tool's catalog entry; undefined for an unknown tool.
entry := data.catalog.tools[tool_id]

# METADATA
# title: call_arguments
# description: The arguments of the tool call ({} when absent).
default call_arguments := {}

call_arguments := input.tool.arguments if is_object(input.tool.arguments)

# METADATA
# title: permitted
# description: >-
#   The tool has a valid catalog entry and is in the agent's manifest. Only such calls can be
#   allowed; argument rules judge only them.
permitted if {
	entry
	_in_manifest
	_valid_effect
	not _invalid_argument_kind
}

# Negations are always over helper rules: OPA evaluates the references inside `not f(ref)`
# before negating, so an undefined ref would make a deny rule silently fail.
_in_manifest if tool_id in agent.manifest.tools

_valid_effect if entry.effect in _effects

_valid_argument_kind if entry.arguments.kind in _argument_kinds

_invalid_argument_kind if {
	entry.arguments
	not _valid_argument_kind
}

# METADATA
# title: deny
# description: Reasons to deny the tool call.
# One rule for every call that is not permitted, so a permitted call is through it at `not permitted`.
deny contains reason if {
	input.kind == "tool"
	not permitted
	some reason in _refusals
}

_refusals := _admission_denials if count(_admission_denials) > 0

# Fail closed: a known agent's call that is not permitted is denied even if no specific
# reason explains why (that would be a bug in the reasons below).
_refusals := {{"code": "policy_incomplete", "message": message}} if {
	count(_admission_denials) == 0
	agent.manifest
	message := sprintf("tool call %v is not permitted", [object.get(input, ["tool", "name"], "")])
}

# Arguments that are not an object cannot be judged, so they are not passed.
deny contains {"code": "invalid_tool_arguments", "message": "tool.arguments must be an object"} if {
	input.kind == "tool"
	input.tool.arguments != call_arguments
}

# Why a call is not permitted; only evaluated for such calls, which keeps the common path short.
_admission_denials contains {"code": "invalid_request", "message": message} if {
	not tool_id
	message := "a tool call needs tool.server and tool.name as strings"
}

_admission_denials contains {"code": "unknown_tool", "message": message} if {
	tool_id
	not entry
	message := sprintf("tool %q is not in the tool catalog", [tool_id])
}

_admission_denials contains {"code": "unknown_tool", "message": message} if {
	entry
	not _valid_effect
	message := sprintf("catalog entry for tool %q has no valid effect (read, write or destructive)", [tool_id])
}

_admission_denials contains {"code": "unknown_tool", "message": message} if {
	_invalid_argument_kind
	message := sprintf("catalog entry for tool %q has no valid argument kind (%s)", [
		tool_id, concat(", ", sort(_argument_kinds)),
	])
}

_admission_denials contains {"code": "tool_not_in_manifest", "message": message} if {
	tool_id
	agent.manifest
	not _in_manifest
	message := sprintf("agent %q may not use tool %q (not in its manifest)", [input.principal.agent_id, tool_id])
}

# METADATA
# title: mcp_tool
# description: >-
#   What the MCP gateway saw of the tool upstream (input.context.mcp_tool): its pin (the sha256 of
#   its name, description and input schema) and its annotations. The annotations are claims of the
#   upstream server, never trusted here for an allow: a server may call any tool read-only. Undefined
#   when the call did not come through the gateway.
mcp_tool := input.context.mcp_tool if is_object(input.context.mcp_tool)

# A pinned tool whose definition upstream is not the one reviewed: denied until the catalog's pin
# is updated (`tollgate mcp-gateway --print-pins` prints the pins). An unpinned tool is not checked.
# Only a pinned tool is checked: one rule, past which an unpinned tool's call goes at `entry.pin`.
deny contains reason if {
	input.kind == "tool"
	entry.pin
	some reason in _pin_denials
}

_pin_denials contains {"code": "tool_definition_changed", "message": message} if {
	pin := entry.pin
	object.get(mcp_tool, "pin", pin) != pin
	message := sprintf("tool %q: its definition upstream (%v) is not the one pinned in the catalog (%v)", [
		tool_id, _seen_pin, pin,
	])
}

# A gateway's context that is not an object cannot be checked against the pin: denied.
_pin_denials contains {"code": "tool_definition_changed", "message": message} if {
	entry.pin
	input.context.mcp_tool
	not mcp_tool
	message := sprintf("tool %q is pinned and context.mcp_tool is not an object", [tool_id])
}

_seen_pin := "not listed upstream" if object.get(mcp_tool, "pin", "") == ""

_seen_pin := mcp_tool.pin if object.get(mcp_tool, "pin", "") != ""

# Only the rules for this tool's argument kind are evaluated (a tool without one is through at its kind).
deny contains reason if {
	input.kind == "tool"
	kind := entry.arguments.kind
	permitted
	some reason in data.tollgate.arguments[kind].deny
}

deny contains reason if {
	input.kind == "tool"
	input.tool.resources
	permitted
	some reason in filesystem.resource_deny
}

# METADATA
# title: require_approval
# description: Reasons the tool call needs a human approval before it may run.
require_approval contains {"code": "destructive_action", "message": message} if {
	input.kind == "tool"
	permitted
	entry.effect == "destructive"
	message := sprintf("tool %q is destructive: %s", [tool_id, object.get(entry, "description", "")])
}

require_approval contains reason if {
	input.kind == "tool"
	kind := entry.arguments.kind
	permitted
	some reason in data.tollgate.arguments[kind].require_approval
}
