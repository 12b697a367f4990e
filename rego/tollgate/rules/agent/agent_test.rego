package tollgate.rules.agent_test

import data.tollgate.rules.agent

test_known_agent_has_manifest if {
	agent.manifest.owner_team == "platform" with input as {"principal": {"agent_id": "code-reviewer"}}
	count(agent.deny) == 0 with input as {"principal": {"agent_id": "code-reviewer"}}
}

test_unknown_agent_denied if {
	request := {"principal": {"agent_id": "intruder"}}
	agent.deny == {{"code": "unknown_agent", "message": "agent \"intruder\" has no capability manifest"}} with input as request
}

test_empty_agent_id_denied if {
	some reason in agent.deny with input as {"principal": {"agent_id": ""}}
	reason.code == "unknown_agent"
	contains(reason.message, "names no agent")
}

test_missing_principal_denied if {
	some reason in agent.deny with input as {"kind": "tool"}
	reason.code == "unknown_agent"
}

test_manifest_comes_from_data if {
	agent.manifest == {"tools": []} with input as {"principal": {"agent_id": "x"}}
		with data.agents as {"x": {"tools": []}}
}

# The shipped manifests stay consistent with the catalogs: what `tollgate check` enforces
# on the schema, these enforce on the references.
test_every_manifest_tool_is_catalogued if {
	every _, m in data.agents {
		every tool in m.tools {
			data.catalog.tools[tool]
		}
	}
}

test_every_manifest_model_is_catalogued if {
	every _, m in data.agents {
		every model, _ in m.models {
			data.catalog.models[model]
		}
	}
}

test_every_manifest_names_approvers if {
	every _, m in data.agents {
		count(m.approval.approvers) > 0
	}
}

test_every_workspace_is_absolute if {
	every _, m in data.agents {
		every workspace in object.filter(m, {"workspace"}) {
			startswith(workspace, "/")
		}
	}
}
