package tollgate.rules.killswitch_test

import data.tollgate.fixtures_test as fx
import data.tollgate.rules.killswitch

_pr := fx.tool("code-reviewer", "github", "create_pull_request", {})

_chat := fx.model("code-reviewer", "anthropic", "claude-sonnet-4-5", 100, [])

_killed(request, scope, value) := fx.with_state(request, "killed", [{"scope": scope, "value": value, "reason": "incident INC-7"}])

test_no_kill_switches_no_denial if {
	count(killswitch.deny) == 0 with input as _pr
}

test_each_principal_scope_matches if {
	every scope, value in {
		"agent": "code-reviewer", "instance": "i-1", "session": "s-1",
		"team": "platform", "user": "alice",
	} {
		fx.codes(killswitch.deny) == {"killed"} with input as _killed(_pr, scope, value)
	}
}

test_workflow_scope_matches if {
	r := _killed(json.patch(_pr, [{"op": "replace", "path": "/principal/workflow", "value": "nightly-review"}]), "workflow", "nightly-review")
	killswitch.deny == {{"code": "killed", "message": "workflow \"nightly-review\" is stopped by a kill switch: incident INC-7"}} with input as r
}

test_kill_message_names_scope_and_value if {
	request := _killed(_pr, "agent", "code-reviewer")
	killswitch.deny == {{"code": "killed", "message": "agent \"code-reviewer\" is stopped by a kill switch: incident INC-7"}} with input as request
}

test_other_values_do_not_match if {
	every scope, value in {
		"agent": "release-bot", "instance": "i-2", "session": "s-2", "workflow": "nightly",
		"team": "analytics", "user": "bob", "tool": "github/merge_pull_request",
		"mcp_server": "slack", "model": "claude-sonnet-4-5",
	} {
		count(killswitch.deny) == 0 with input as _killed(_pr, scope, value)
	}
}

test_empty_value_matches_nothing if {
	count(killswitch.deny) == 0 with input as _killed(_pr, "workflow", "")
}

test_manifest_owner_team_matches_whatever_team_is_claimed if {
	r := json.patch(_pr, [{"op": "replace", "path": "/principal/team", "value": "someone-else"}])
	fx.codes(killswitch.deny) == {"killed"} with input as _killed(r, "team", "platform")
}

test_tool_scope_matches_tool_id if {
	fx.codes(killswitch.deny) == {"killed"} with input as _killed(_pr, "tool", "github/create_pull_request")
	request := _killed(fx.tool("code-reviewer", "", "Bash", {"command": "ls"}), "tool", "Bash")
	fx.codes(killswitch.deny) == {"killed"} with input as request
}

test_mcp_server_scope_matches_server if {
	fx.codes(killswitch.deny) == {"killed"} with input as _killed(_pr, "mcp_server", "github")
}

test_mcp_server_scope_sees_server_folded_into_name if {
	r := fx.tool("code-reviewer", "", "github/create_pull_request", {})
	fx.codes(killswitch.deny) == {"killed"} with input as _killed(r, "mcp_server", "github")
}

test_model_scope_matches_model_and_full_id if {
	fx.codes(killswitch.deny) == {"killed"} with input as _killed(_chat, "model", "claude-sonnet-4-5")
	fx.codes(killswitch.deny) == {"killed"} with input as _killed(_chat, "model", "anthropic/claude-sonnet-4-5")
	count(killswitch.deny) == 0 with input as _killed(_chat, "model", "claude-haiku-4-5")
}

test_tool_scopes_do_not_match_model_calls if {
	count(killswitch.deny) == 0 with input as _killed(_chat, "mcp_server", "anthropic")
}

test_all_scope_matches_everything if {
	request := _killed(_pr, "all", "")
	killswitch.deny == {{"code": "killed", "message": "all requests are stopped by a kill switch: incident INC-7"}} with input as request
	fx.codes(killswitch.deny) == {"killed"} with input as _killed(fx.budget("nobody", 1, "usd"), "all", "*")
}

test_each_matching_entry_gives_a_reason if {
	r := fx.with_state(_pr, "killed", [
		{"scope": "agent", "value": "code-reviewer", "reason": "loop"},
		{"scope": "mcp_server", "value": "github", "reason": ""},
		{"scope": "user", "value": "mallory", "reason": "offboarded"},
	])
	deny := killswitch.deny with input as r
	count(deny) == 2
	{"code": "killed", "message": "mcp_server \"github\" is stopped by a kill switch: no reason given"} in deny
}
