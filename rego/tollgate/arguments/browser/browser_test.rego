package tollgate.arguments.browser_test

import data.tollgate.fixtures_test as fx
import data.tollgate.rules.tools

_act(arguments) := fx.tool("browser-agent", "browser", "interact", arguments)

test_navigate_allowed if {
	r := fx.tool("browser-agent", "playwright", "browser_navigate", {"url": "https://status.example.com"})
	count(tools.deny) == 0 with input as r
	count(tools.require_approval) == 0 with input as r
}

test_navigate_to_non_web_url_denied if {
	request := fx.tool("browser-agent", "playwright", "browser_navigate", {"url": "file:///etc/passwd"})
	fx.codes(tools.deny) == {"browser_url_not_allowed"} with input as request
	request_2 := _act({"action": "navigate", "url": "JavaScript:alert(1)"})
	fx.codes(tools.deny) == {"browser_url_not_allowed"} with input as request_2
}

test_generic_read_actions_allowed if {
	every action in ["navigate", "snapshot", "scroll", "click", "type"] {
		request := _act({"action": action, "url": "https://example.com", "element": "Next page"})
		count(tools.require_approval) == 0 with input as request
	}
}

test_submit_action_requires_approval if {
	reasons := tools.require_approval with input as _act({"action": "submit"})
	reasons == {{"code": "browser_sensitive_action", "message": "browser action \"submit\" needs approval"}}
}

test_delete_action_requires_approval_any_case if {
	fx.codes(tools.require_approval) == {"browser_sensitive_action"} with input as _act({"action": "DELETE"})
}

test_click_on_delete_button_requires_approval if {
	r := fx.tool("browser-agent", "playwright", "browser_click", {"element": "Delete user button", "ref": "e42"})
	fx.codes(tools.require_approval) == {"browser_sensitive_action"} with input as r
}

test_click_on_submit_button_requires_approval if {
	request := _act({"action": "click", "element": "Submit refund"})
	fx.codes(tools.require_approval) == {"browser_sensitive_action"} with input as request
}

test_click_on_ordinary_link_allowed if {
	r := fx.tool("browser-agent", "playwright", "browser_click", {"element": "Deleted items folder", "ref": "e7"})
	count(tools.require_approval) == 0 with input as r
}

test_type_with_submit_requires_approval if {
	r := fx.tool("browser-agent", "playwright", "browser_type", {"element": "Search", "text": "refund", "submit": true})
	fx.codes(tools.require_approval) == {"browser_sensitive_action"} with input as r
	request := json.patch(r, [{"op": "replace", "path": "/tool/arguments/submit", "value": false}])
	count(tools.require_approval) == 0 with input as request
}

test_enter_key_requires_approval if {
	request := _act({"action": "press_key", "key": "Enter"})
	fx.codes(tools.require_approval) == {"browser_sensitive_action"} with input as request
	count(tools.require_approval) == 0 with input as _act({"action": "press_key", "key": "ArrowDown"})
}

test_unknown_or_missing_browser_action_invalid if {
	request := _act({"action": "evaluate", "script": "fetch('/admin')"})
	fx.codes(tools.deny) == {"invalid_tool_arguments"} with input as request
	fx.codes(tools.deny) == {"invalid_tool_arguments"} with input as _act({})
}
