# METADATA
# title: Shell arguments
# description: >-
#   A shell command runs without asking only when it is one simple command whose leading
#   words match an entry of the manifest's shell_commands; anything else needs approval.
#   Evaluated by tollgate.tools for permitted calls.
package tollgate.arguments.shell

import data.tollgate.rules.agent
import data.tollgate.rules.secrets
import data.tollgate.rules.tools

# Characters that chain, substitute, redirect or background commands.
_metacharacters := {";", "&", "|", "`", "$", ">", "<", "(", ")", "\n", "\r"}

_max_command_chars := 8192

_command := tools.call_arguments[tools.entry.arguments.command_argument]

_command_is_text if is_string(_command)

# METADATA
# title: deny
# description: Commands that are not strings.
deny contains {"code": "invalid_tool_arguments", "message": message} if {
	not _command_is_text
	message := sprintf("tool %q: argument %q must hold the command as a string", [
		tools.tool_id, object.get(tools.entry.arguments, "command_argument", ""),
	])
}

# METADATA
# title: require_approval
# description: Commands the manifest does not allow outright.
require_approval contains {"code": "shell_command_not_allowlisted", "message": message} if {
	_command_is_text
	not _allowlisted(_command, object.get(agent.manifest, "shell_commands", []))
	# Quoted with its credentials replaced: cut at 200 characters, a token's first part would otherwise stay in
	# the answer and in the record's reason, where the mask finds the whole token no more.
	message := sprintf("command %q is not a simple command allowed by the manifest's shell_commands", [
		_truncate(secrets.redacted(_command), 200),
	])
}

_allowlisted(command, prefixes) if {
	count(command) <= _max_command_chars
	every char in _metacharacters {
		not contains(command, char)
	}
	words := _words(command)
	some prefix in prefixes
	is_string(prefix)
	trim_space(prefix) != ""
	allowed := _words(prefix)
	array.slice(words, 0, count(allowed)) == allowed
}

_words(text) := regex.split(`\s+`, trim_space(text))

_truncate(text, n) := text if count(text) <= n

_truncate(text, n) := concat("", [substring(text, 0, n), "..."]) if count(text) > n
