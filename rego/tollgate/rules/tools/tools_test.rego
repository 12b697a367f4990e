package tollgate.rules.tools_test

import data.tollgate.fixtures_test as fx
import data.tollgate.rules.tools

test_tool_id_joins_server_and_name if {
	request := fx.tool("code-reviewer", "github", "create_pull_request", {})
	tools.tool_id == "github/create_pull_request" with input as request
}

test_tool_id_of_builtin_is_its_name if {
	tools.tool_id == "Bash" with input as fx.tool("code-reviewer", "", "Bash", {"command": "git status"})
}

test_catalogued_tool_in_manifest_passes if {
	r := fx.tool("code-reviewer", "github", "create_pull_request", {"title": "Fix"})
	count(tools.deny) == 0 with input as r
	count(tools.require_approval) == 0 with input as r
}

test_unknown_tool_denied if {
	request := fx.tool("code-reviewer", "github", "delete_repository", {})
	fx.codes(tools.deny) == {"unknown_tool", "tool_not_in_manifest"} with input as request
}

test_unknown_builtin_denied if {
	"unknown_tool" in fx.codes(tools.deny) with input as fx.tool("code-reviewer", "", "Telnet", {})
}

test_server_folded_into_name_is_the_same_tool if {
	r := fx.tool("code-reviewer", "", "github/create_pull_request", {})
	count(tools.deny) == 0 with input as r
}

test_tool_not_in_manifest_denied if {
	deny := tools.deny with input as fx.tool("code-reviewer", "github", "merge_pull_request", {"pullNumber": 7})
	fx.codes(deny) == {"tool_not_in_manifest"}
	some reason in deny
	reason.message == "agent \"code-reviewer\" may not use tool \"github/merge_pull_request\" (not in its manifest)"
}

test_tool_not_in_manifest_not_needing_approval if {
	count(tools.require_approval) == 0 with input as fx.tool("code-reviewer", "github", "merge_pull_request", {})
}

test_unknown_agent_gets_no_manifest_reason if {
	deny := tools.deny with input as fx.tool("intruder", "github", "create_pull_request", {})
	count(deny) == 0
}

test_invalid_catalog_effect_denied if {
	"unknown_tool" in fx.codes(tools.deny) with input as fx.tool("code-reviewer", "github", "create_pull_request", {})
		with data.catalog.tools["github/create_pull_request"] as {"effect": "maybe"}
}

test_catalog_entry_without_effect_denied if {
	request := fx.tool("code-reviewer", "github", "create_pull_request", {})
	deny := tools.deny with input as request with data.catalog.tools["github/create_pull_request"] as {"description": "x"}
	fx.codes(deny) == {"unknown_tool"}
	count(tools.require_approval) == 0 with input as request
		with data.catalog.tools["github/create_pull_request"] as {"description": "x"}
}

test_catalog_entry_with_unknown_argument_kind_denied if {
	request := fx.tool("code-reviewer", "github", "create_pull_request", {})
	fx.codes(tools.deny) == {"unknown_tool"} with input as request
		with data.catalog.tools["github/create_pull_request"].arguments as {"kind": "graphql"}
	fx.codes(tools.deny) == {"unknown_tool"} with input as request
		with data.catalog.tools["github/create_pull_request"].arguments as {"statement_argument": "q"}
}

test_call_not_permitted_is_denied_even_without_a_specific_reason if {
	request := fx.tool("code-reviewer", "github", "merge_pull_request", {})
	fx.codes(tools.deny) == {"policy_incomplete"} with input as request with tools._admission_denials as set()
}

test_non_object_arguments_denied if {
	request := json.patch(fx.tool("code-reviewer", "github", "create_pull_request", {}), [
		{"op": "replace", "path": "/tool/arguments", "value": ["title"]},
	])
	fx.codes(tools.deny) == {"invalid_tool_arguments"} with input as request
}

test_destructive_tool_requires_approval if {
	request := fx.tool("release-bot", "github", "merge_pull_request", {"pullNumber": 7})
	reasons := tools.require_approval with input as request
	fx.codes(reasons) == {"destructive_action"}
}

test_write_tool_needs_no_approval if {
	request := fx.tool("release-bot", "github", "create_release", {"tag": "v1.2.0"})
	count(tools.require_approval) == 0 with input as request
}

test_non_tool_requests_are_not_judged_here if {
	count(tools.deny) == 0 with input as fx.model("code-reviewer", "anthropic", "claude-sonnet-4-5", 100, [])
	count(tools.deny) == 0 with input as fx.budget("nobody", 1, "usd")
}

# --- MCP tool pins (input.context.mcp_tool, from the MCP gateway) ---------------------------------

_pin := "sha256:a50878f91ab470ce75e8dba8f98987b9696d2035f3bbd0bbbea7055d18973afb"

_via_gateway(pin, annotations) := object.union(fx.tool("code-reviewer", "github", "search_code", {"query": "x"}), {
	"context": {"mcp": "tools/call", "mcp_tool": {"listed": true, "pin": pin, "annotations": annotations}},
})

test_pinned_tool_with_its_pin_passes if {
	count(tools.deny) == 0 with input as _via_gateway(_pin, {})
		with data.catalog.tools["github/search_code"].pin as _pin
}

test_pinned_tool_whose_definition_changed_is_denied if {
	deny := tools.deny with input as _via_gateway("sha256:0000", {"readOnlyHint": true})
		with data.catalog.tools["github/search_code"].pin as _pin
	fx.codes(deny) == {"tool_definition_changed"}
	some reason in deny
	contains(reason.message, "sha256:0000")
}

test_pinned_tool_the_upstream_does_not_list_is_denied if {
	deny := tools.deny with input as _via_gateway("", {})
		with data.catalog.tools["github/search_code"].pin as _pin
	some reason in deny
	reason.code == "tool_definition_changed"
	contains(reason.message, "not listed upstream")
}

test_pinned_tool_with_a_malformed_gateway_context_is_denied if {
	request := object.union(fx.tool("code-reviewer", "github", "search_code", {}), {"context": {"mcp_tool": "x"}})
	"tool_definition_changed" in fx.codes(tools.deny) with input as request
		with data.catalog.tools["github/search_code"].pin as _pin
}

test_pinned_tool_called_without_the_gateway_is_not_checked if {
	count(tools.deny) == 0 with input as fx.tool("code-reviewer", "github", "search_code", {"query": "x"})
		with data.catalog.tools["github/search_code"].pin as _pin
}

test_unpinned_tool_is_not_checked if {
	count(tools.deny) == 0 with input as _via_gateway("sha256:anything", {})
}

# Annotations are the upstream's claims: a destructive tool that calls itself read-only still needs approval.
test_annotations_never_loosen_the_policy if {
	request := object.union(fx.tool("release-bot", "github", "merge_pull_request", {"pullNumber": 7}), {
		"context": {"mcp_tool": {"listed": true, "pin": "sha256:1", "annotations": {
			"readOnlyHint": true, "destructiveHint": false, "idempotentHint": true,
		}}},
	})
	fx.codes(tools.require_approval) == {"destructive_action"} with input as request
}
