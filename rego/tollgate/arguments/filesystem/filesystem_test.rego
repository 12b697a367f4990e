package tollgate.arguments.filesystem_test

import data.tollgate.fixtures_test as fx
import data.tollgate.rules.tools

_read(agent_id, path) := fx.tool(agent_id, "filesystem", "read_file", {"path": path})

test_path_inside_workspace_allowed if {
	count(tools.deny) == 0 with input as _read("data-analyst", "/workspace/data-analyst/reports/q3.csv")
}

test_relative_path_inside_workspace_allowed if {
	count(tools.deny) == 0 with input as _read("data-analyst", "reports/../notes.md")
}

test_dotdot_that_stays_inside_allowed if {
	count(tools.deny) == 0 with input as _read("data-analyst", "/workspace/data-analyst/a/./b/../c.txt")
}

test_dotdot_traversal_denied if {
	deny := tools.deny with input as _read("data-analyst", "/workspace/data-analyst/../../etc/passwd")
	deny == {{
		"code": "path_outside_workspace",
		"message": "argument \"path\" \"/workspace/data-analyst/../../etc/passwd\" is outside the workspace \"/workspace/data-analyst\"",
	}}
}

test_workspace_name_prefix_is_not_inside if {
	request := _read("data-analyst", "/workspace/data-analystfoo/x")
	fx.codes(tools.deny) == {"path_outside_workspace"} with input as request
}

test_relative_escape_denied if {
	request := _read("data-analyst", "../code-reviewer/secrets.env")
	fx.codes(tools.deny) == {"path_outside_workspace"} with input as request
}

test_home_directory_path_denied if {
	fx.codes(tools.deny) == {"path_outside_workspace"} with input as _read("data-analyst", "~/.aws/credentials")
}

test_every_path_of_a_multi_path_tool_checked if {
	r := fx.tool("data-analyst", "filesystem", "read_multiple_files", {"paths": [
		"/workspace/data-analyst/a.csv",
		"/etc/shadow",
	]})
	deny := tools.deny with input as r
	count(deny) == 1
	some reason in deny
	contains(reason.message, "/etc/shadow")
}

test_every_path_argument_checked if {
	r := fx.tool("release-bot", "filesystem", "move_file", {"source": "/workspace/release-bot/a", "destination": "/tmp/a"})
	fx.codes(tools.deny) == {"tool_not_in_manifest"} with input as r
	fx.codes(tools.deny) == {"path_outside_workspace"} with input as r
		with data.agents["release-bot"].tools as ["filesystem/move_file"]
}

test_claude_code_builtin_paths_checked if {
	request := fx.tool("code-reviewer", "", "Read", {"file_path": "/etc/passwd"})
	fx.codes(tools.deny) == {"path_outside_workspace"} with input as request
	request_2 := fx.tool("code-reviewer", "", "Read", {"file_path": "/workspace/code-reviewer/src/app.py"})
	count(tools.deny) == 0 with input as request_2
}

test_glob_pattern_confined if {
	request := fx.tool("code-reviewer", "", "Glob", {"pattern": "../../**/*.pem"})
	fx.codes(tools.deny) == {"path_outside_workspace"} with input as request
	count(tools.deny) == 0 with input as fx.tool("code-reviewer", "", "Glob", {"pattern": "**/*.py"})
}

test_absent_optional_path_argument_is_fine if {
	count(tools.deny) == 0 with input as fx.tool("code-reviewer", "", "Grep", {"pattern": "TODO"})
}

test_path_resource_outside_workspace_denied if {
	r := fx.resources_tool("code-reviewer", "github", "get_file_contents", {}, ["repo:payments-api", "path:/etc/passwd"])
	deny := tools.deny with input as r
	deny == {{"code": "path_outside_workspace", "message": "resource \"/etc/passwd\" is outside the workspace \"/workspace/code-reviewer\""}}
}

test_path_resource_inside_workspace_allowed if {
	r := fx.resources_tool("code-reviewer", "github", "get_file_contents", {}, ["path:/workspace/code-reviewer/src/app.py"])
	count(tools.deny) == 0 with input as r
}

test_agent_without_workspace_may_name_no_paths if {
	r := fx.resources_tool("browser-agent", "playwright", "browser_snapshot", {}, ["path:/tmp/page.html"])
	deny := tools.deny with input as r
	some reason in deny
	reason.code == "path_outside_workspace"
	contains(reason.message, "has no workspace")
}

test_non_string_path_is_invalid if {
	fx.codes(tools.deny) == {"invalid_tool_arguments"} with input as _read("data-analyst", {"path": "/etc"})
	request := fx.tool("data-analyst", "filesystem", "read_multiple_files", {"paths": ["/workspace/data-analyst/a", 7]})
	fx.codes(tools.deny) == {"invalid_tool_arguments"} with input as request
}

test_delete_inside_workspace_requires_approval_only if {
	r := fx.tool("data-analyst", "filesystem", "delete_file", {"path": "/workspace/data-analyst/old.csv"})
	count(tools.deny) == 0 with input as r
	fx.codes(tools.require_approval) == {"destructive_action"} with input as r
}
