# METADATA
# title: Filesystem arguments
# description: >-
#   Every path a tool call names, in a catalogued path argument or as a "path:" resource,
#   must resolve inside the agent's workspace. Evaluated by tollgate.tools for permitted calls.
package tollgate.arguments.filesystem

import data.tollgate.rules.agent
import data.tollgate.lib.paths
import data.tollgate.rules.tools

# The workspace: the manifest's `workspace`, or with `workspace_from: cwd` the directory the harness says it
# works in (input.context.cwd, as `tollgate hook claude-code` sends Claude Code's cwd). A harness that names no
# cwd gets the manifest's `workspace` (none when it has none); one that names an unusable cwd (relative, not
# normalised, "/" itself, or outside `workspace_root` when the manifest sets one) gets no workspace at all.
_from_cwd if object.get(agent.manifest, "workspace_from", "") == "cwd"

_workspace := object.get(agent.manifest, "workspace", "") if not _from_cwd

_workspace := _harness_workspace if _from_cwd

_harness_workspace := object.get(agent.manifest, "workspace", "") if {
	not is_string(object.get(object.get(input, "context", {}), "cwd", null))
} else := cwd if {
	cwd := input.context.cwd
	cwd != "/"
	paths.within(cwd, "/")
	paths.resolve(cwd, "/") == cwd
	paths.within(cwd, object.get(agent.manifest, "workspace_root", "/"))
} else := ""

# METADATA
# title: deny
# description: Path arguments of a filesystem tool that leave the workspace or are not paths.
deny contains {"code": "path_outside_workspace", "message": _outside_message(source, path, _workspace)} if {
	some name in tools.entry.arguments.path_arguments
	source := sprintf("argument %q", [name])
	some path in _strings(tools.call_arguments[name])
	not paths.within(path, _workspace)
}

deny contains {"code": "invalid_tool_arguments", "message": message} if {
	some name in tools.entry.arguments.path_arguments
	value := tools.call_arguments[name]
	not _path_value(value)
	message := sprintf("tool %q: argument %q must be a path or a list of paths", [tools.tool_id, name])
}

# METADATA
# title: resource_deny
# description: '"path:" resources of any tool call that leave the workspace.'
resource_deny contains {"code": "path_outside_workspace", "message": message} if {
	some resource in input.tool.resources
	is_string(resource)
	startswith(resource, "path:")
	path := substring(resource, 5, -1)
	not paths.within(path, _workspace)
	message := _outside_message("resource", path, _workspace)
}

_strings(value) := [value] if is_string(value)

_strings(value) := [item | some item in value; is_string(item)] if is_array(value)

_path_value(value) if is_string(value)

_path_value(value) if {
	is_array(value)
	every item in value {
		is_string(item)
	}
}

_outside_message(source, path, "") := sprintf("%s %q: agent %q has no workspace, so it may not name paths", [
	source, path, input.principal.agent_id,
])

_outside_message(source, path, workspace) := sprintf("%s %q is outside the workspace %q", [
	source, path, workspace,
]) if workspace != ""
