# METADATA
# title: Credentials in arguments
# description: >-
#   What a credential looks like inside a string (a Bearer or Basic credential, a PEM private key, an
#   AWS access key id, a GitHub, Slack, OpenAI or Anthropic token, a JWT, a URL with a password), shared
#   by the decision-log mask (which replaces only the credential inside a value) and by the finding
#   credential_in_arguments: a credential inside a shell command, a SQL statement or a URL is rarely
#   what a person meant an agent to run, so a person sees the request first.
package tollgate.rules.secrets

import data.tollgate.rules.tools

# Each alternative keeps what says which kind of credential it was in the group named keep (and a URL
# its "@" in tail), so "Bearer abc..." reads "Bearer ***" and "https://u:pw@host" reads "https://***@host".
credential := concat("|", [
	`(?i:\b(?P<keep>(?:bearer|basic)\s+)[a-z0-9._~+/=-]{8,})`,
	`(?P<keep>-----BEGIN[A-Z0-9 ]* PRIVATE KEY-----)[^-]*(?:-----END[A-Z0-9 ]* PRIVATE KEY-----)?`,
	`\b(?:AKIA|ASIA)[0-9A-Z]{16}\b`,
	`\b(?P<keep>gh[pousr]_)[A-Za-z0-9]{36,}`,
	`\b(?P<keep>github_pat_)[A-Za-z0-9_]{22,}`,
	`\b(?P<keep>xox[abprs]-)[A-Za-z0-9-]{10,}`,
	`\b(?P<keep>sk-)[A-Za-z0-9_-]{20,}`,
	`\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]+`,
	`(?i:\b(?P<keep>[a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+(?P<tail>@))`,
])

# The words every pattern above needs, lower-cased. Most texts hold no credential: a few substring searches
# over a document's JSON say so far faster than a regular expression per value (secrets_test holds every
# example to them).
needles := [
	"bearer", "basic", "private key", "akia", "asia", "ghp_", "gho_", "ghu_", "ghs_", "ghr_", "github_pat_",
	"xox", "sk-", "eyj", "://",
]

# METADATA
# title: may_hold_credential
# description: Whether document's JSON holds a word some credential pattern needs (when not, none is there).
may_hold_credential(document) if {
	text := lower(json.marshal(document))
	some needle in needles
	contains(text, needle)
}

# METADATA
# title: holds_credential
# description: Whether text holds something shaped like a credential.
holds_credential(text) if regex.match(credential, text)

# METADATA
# title: redacted
# description: text with each credential inside it replaced by "***"; the rest stays readable.
redacted(text) := regex.replace(text, credential, "${keep}***${tail}")

_url := `(?i)^[a-z][a-z0-9+.-]*://`

# The texts an agent runs or fetches, by where they sit: the shell command, the SQL statement, and any
# argument or resource that is a URL.
_texts[where] := text if {
	tools.entry.arguments.kind == "shell"
	name := tools.entry.arguments.command_argument
	text := tools.call_arguments[name]
	is_string(text)
	where := sprintf("the shell command (argument %q)", [name])
}

_texts[where] := text if {
	tools.entry.arguments.kind == "sql"
	name := tools.entry.arguments.statement_argument
	text := tools.call_arguments[name]
	is_string(text)
	where := sprintf("the SQL statement (argument %q)", [name])
}

_texts[where] := text if {
	walk(tools.call_arguments, [path, text])
	is_string(text)
	regex.match(_url, text)
	where := sprintf("the URL in argument %q", [concat(".", [sprintf("%v", [p]) | some p in path])])
}

_texts[where] := text if {
	some i, text in object.get(input, ["tool", "resources"], [])
	is_string(text)
	regex.match(_url, text)
	where := sprintf("the URL in resource %d", [i])
}

# METADATA
# title: require_approval
# description: >-
#   A permitted tool call that carries a credential inside the command it runs, the SQL it sends or a
#   URL it fetches. The message names where, never the credential.
require_approval contains {"code": "credential_in_arguments", "message": message} if {
	input.kind == "tool"
	_may_carry_texts
	tools.permitted
	may_hold_credential(_judged)
	found := {where | some where, text in _texts; holds_credential(text)}
	count(found) > 0
	message := sprintf("tool %q: %s holds a credential (a token, key or password): a person must see it first", [
		tools.tool_id, concat(", ", sort(found)),
	])
}

_judged := [tools.call_arguments, object.get(input, ["tool", "resources"], [])]

# Whether the call can carry a text _texts judges, cheaply, before anything else: a tool whose argument kind
# names a command or a statement, or a call whose arguments or resources hold "://" (every URL text does).
# Most calls are neither, and are through here with one substring search instead of one per needle.
_may_carry_texts if _command_kinds[tools.entry.arguments.kind]

_may_carry_texts if contains(json.marshal(_judged), "://")

_command_kinds := {"shell", "sql"}
