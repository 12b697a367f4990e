# METADATA
# title: Browser arguments
# description: >-
#   Browsing and reading are allowed when the tool is in the manifest; anything that submits
#   a form or deletes something needs a human approval, and only web URLs may be opened.
#   Evaluated by tollgate.tools for permitted calls.
package tollgate.arguments.browser

import data.tollgate.rules.tools

_actions := {
	"navigate", "back", "forward", "reload", "snapshot", "screenshot", "read", "scroll",
	"hover", "wait", "click", "type", "select", "press_key", "submit", "delete",
}

_sensitive_actions := {"submit", "delete"}

# Words on a clicked element that mean the click submits or deletes something.
_sensitive_click_words := {
	"submit", "send", "confirm", "delete", "remove", "destroy", "purchase", "pay", "buy",
}

_arguments := tools.call_arguments

# Playwright-style tools fix the action in the catalog; generic tools take an "action" argument.
_action := lower(tools.entry.arguments.action) if is_string(tools.entry.arguments.action)

_action := lower(_arguments.action) if {
	not tools.entry.arguments.action
	is_string(_arguments.action)
}

_known_action if _action in _actions

# METADATA
# title: deny
# description: Unknown actions and navigation to anything but http(s) URLs.
deny contains {"code": "invalid_tool_arguments", "message": message} if {
	not _known_action
	message := sprintf("tool %q: browser action %v is not one of %v", [
		tools.tool_id, object.get(_arguments, "action", null), sort(_actions),
	])
}

deny contains {"code": "browser_url_not_allowed", "message": message} if {
	_action == "navigate"
	url := object.get(_arguments, "url", "")
	not _web_url(url)
	message := sprintf("tool %q: only http and https URLs may be opened, not %v", [tools.tool_id, url])
}

# METADATA
# title: require_approval
# description: Form submissions and deletions.
require_approval contains {"code": "browser_sensitive_action", "message": message} if {
	_action in _sensitive_actions
	message := sprintf("browser action %q needs approval", [_action])
}

require_approval contains {"code": "browser_sensitive_action", "message": message} if {
	_action == "click"
	element := _arguments.element
	is_string(element)
	some word in regex.find_n(`[a-z]+`, lower(element), -1)
	word in _sensitive_click_words
	message := sprintf("clicking %q looks like a form submission or deletion and needs approval", [element])
}

require_approval contains {"code": "browser_sensitive_action", "message": message} if {
	_submits
	message := sprintf("browser action %q submits a form and needs approval", [_action])
}

_submits if _arguments.submit == true

_submits if {
	_action == "press_key"
	is_string(_arguments.key)
	lower(_arguments.key) == "enter"
}

_web_url(url) if {
	is_string(url)
	some scheme in {"http://", "https://"}
	startswith(lower(url), scheme)
}
