# METADATA
# title: Kill switches
# description: >-
#   Stops requests named by an active kill switch (input.state.killed), by agent, instance,
#   session, workflow, team, user, tool, MCP server, model, or all. A kill is a deny, so it
#   beats every approval.
package tollgate.rules.killswitch

import data.tollgate.rules.agent
import data.tollgate.rules.models
import data.tollgate.rules.tools

# What this request is, as (scope, value) pairs a kill switch entry can name.
_targets contains {"scope": scope, "value": object.get(input, ["principal", field], "")} if {
	some scope, field in {
		"agent": "agent_id", "instance": "instance_id", "session": "session_id",
		"workflow": "workflow", "team": "team", "user": "user",
	}
}

# The team that owns the agent, whatever team the caller claims.
_targets contains {"scope": "team", "value": agent.manifest.owner_team}

_targets contains {"scope": "tool", "value": tools.tool_id}

# The server is the id's first segment, so a server folded into the name is still caught.
_targets contains {"scope": "mcp_server", "value": split(tools.tool_id, "/")[0]} if {
	contains(tools.tool_id, "/")
}

_targets contains {"scope": "model", "value": models.model_id}

_targets contains {"scope": "model", "value": input.model.model} if input.kind == "model"

# METADATA
# title: deny
# description: One reason per kill switch entry that matches the request.
deny contains {"code": "killed", "message": message} if {
	some entry in input.state.killed
	entry.scope == "all"
	message := sprintf("all requests are stopped by a kill switch: %s", [_reason(entry)])
}

deny contains {"code": "killed", "message": message} if {
	killed := input.state.killed
	is_array(killed)
	count(killed) > 0

	# Materialised once, so each entry is a set lookup rather than a rule evaluation.
	targets := _targets
	some entry in killed
	{"scope": entry.scope, "value": entry.value} in targets
	entry.value != ""
	message := sprintf("%s %q is stopped by a kill switch: %s", [entry.scope, entry.value, _reason(entry)])
}

_reason(entry) := entry.reason if _has_reason(entry)

_reason(entry) := "no reason given" if not _has_reason(entry)

_has_reason(entry) if {
	is_string(entry.reason)
	entry.reason != ""
}
