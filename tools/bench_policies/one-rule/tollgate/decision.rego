# METADATA
# title: The benchmark's one-rule policy
# description: >-
#   The smallest honest policy for tools/bench.py: one package, one rule. It allows the one tool call the
#   benchmark sends (github/get_pull_request) and denies everything else, so the figures measure the server
#   around a policy that still reads its input and answers the whole contract, not the default library.
package tollgate

# METADATA
# title: decision
# description: >-
#   {"decision", "reasons", "obligations"}: allow github/get_pull_request, deny every other request.
# entrypoint: true
default decision := {
	"decision": "deny",
	"reasons": [{"code": "tool_not_allowed", "message": "only github/get_pull_request is allowed by the bench policy"}],
	"obligations": {},
}

decision := {"decision": "allow", "reasons": [], "obligations": {}} if {
	input.kind == "tool"
	input.tool.server == "github"
	input.tool.name == "get_pull_request"
}
