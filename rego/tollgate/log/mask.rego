# METADATA
# title: Decision-log mask
# description: >-
#   What the decision log must not keep. Tollgate evaluates data.tollgate.log.mask with the decision,
#   on the same input, and applies it to the record before it is written (like OPA's system.log.mask).
#   Secrets in tool arguments and resources, the request context and the principal's labels are
#   replaced by "***": the whole value of every key named like a credential (api_key, token, secret,
#   password, authorization, cookie, private_key, ..., in any case), and inside any other string only
#   the credential it holds (data.tollgate.secrets.credential: a Bearer or Basic credential, a PEM
#   private key, an AWS access key id, a GitHub, Slack, OpenAI or Anthropic token, a JWT, a URL's
#   user and password), so that a command stays readable to its approver and in the log
#   (`curl ... | sh  # Bearer ***`). The keys stay, so a record still shows which arguments a
#   request carried.
package tollgate.log

import data.tollgate.rules.secrets

# The parts of the input a caller fills freely, by the JSON pointer of each.
_free_form := {
	"/input/tool/arguments": object.get(input, ["tool", "arguments"], {}),
	"/input/tool/resources": object.get(input, ["tool", "resources"], []),
	"/input/context": object.get(input, "context", {}),
	"/input/principal/labels": object.get(input, ["principal", "labels"], {}),
}

# Key names (lower-cased) whose values are credentials. Plural "tokens" stays out: max_tokens is a count.
_secret_key := `(api[-_]?key|access[-_]?key|private[-_]?key|secret[-_]?key|session[-_]?key|token|secret|password|passwd|passphrase|credentials?|authorization|cookie)$`

# METADATA
# title: mask
# description: >-
#   Upserts at the JSON pointer of each secret in the tool arguments and resources, the context and
#   the principal's labels: "***" for a credential key's value, the string with its credentials
#   replaced for any other; the record lists them under `masked`.
mask contains {"op": "upsert", "path": pointer, "value": _shown(path, value)} if {
	_may_hold_secrets
	some prefix, document in _free_form
	walk(document, [path, value])
	_secret(path, value)
	pointer := concat("/", array.concat([prefix], [_escape(p) | some p in path]))
}

# Most requests carry no secret. Looking for the words every key name above and every pattern of
# secrets.credential needs in the documents' JSON
# says so with a few substring searches, far faster than a regular expression per value; on a hit, the
# walk decides. Each pattern must keep a needle here (the tests hold every example to it).
_may_hold_secrets if {
	text := lower(json.marshal(_free_form))
	some needle in _needles
	contains(text, needle)
}

_needles := array.concat(
	["key", "token", "secret", "passw", "passphrase", "credential", "authorization", "cookie"],
	secrets.needles,
)

_secret(path, value) if _credential_key(path, value)

_secret(_, value) if {
	is_string(value)
	secrets.holds_credential(value)
}

# A credential key's value is the credential; any other string keeps what is not one.
_shown(path, value) := "***" if {
	_credential_key(path, value)
} else := secrets.redacted(value)

_credential_key(path, value) if {
	count(path) > 0
	key := path[count(path) - 1]
	is_string(key)
	regex.match(_secret_key, lower(key))
	not _flag(value)
}

# true, false and null under a secret-sounding key (has_token: true) say nothing secret.
_flag(value) if is_boolean(value)

_flag(value) if is_null(value)

# RFC 6901: "~" is "~0" and "/" is "~1" inside a pointer segment.
_escape(segment) := replace(replace(segment, "~", "~0"), "/", "~1") if is_string(segment)

_escape(segment) := format_int(segment, 10) if is_number(segment)
