# METADATA
# title: Acting agent
# description: >-
#   Looks up the capability manifest of the agent named by the principal
#   (data.agents[agent_id]) and denies agents that have none.
package tollgate.rules.agent

# METADATA
# title: manifest
# description: The acting agent's capability manifest; undefined for an unknown agent.
manifest := data.agents[input.principal.agent_id]

# METADATA
# title: deny
# description: Reasons to deny because the agent is unknown.
deny contains {"code": "unknown_agent", "message": message} if {
	not manifest
	message := _unknown_message(object.get(input, ["principal", "agent_id"], ""))
}

_unknown_message(agent_id) := "the request names no agent (principal.agent_id is empty)" if agent_id == ""

_unknown_message(agent_id) := sprintf("agent %q has no capability manifest", [agent_id]) if agent_id != ""
