# METADATA
# title: Tollgate decision
# description: >-
#   The entrypoint Tollgate evaluates for every tool call, model call and budget request.
#   It gathers the deny and require_approval reasons of every rule package (each package
#   data.tollgate.rules.<name>, found by walking the prefix: none is listed by hand) and folds
#   them into one result: deny beats require_approval beats allow, a kill switch beats any
#   approval, and an approval granted for this request turns require_approval into allow.
package tollgate

import data.tollgate.rules.agent
import data.tollgate.rules.budget
import data.tollgate.rules.models

_kinds := {"tool", "model", "budget"}

# Approval states that end in a deny, each with its own code: approval_<status>.
_closed_approval_messages := {
	"denied": "a person denied this request",
	"expired": "the approval for this request expired before it was used",
	"used": "the approval for this request has already been used",
	"mismatch": "the approval presented was granted for a different request",
}

# METADATA
# title: decision
# description: >-
#   {"decision": "allow"|"deny"|"require_approval", "reasons": [{"code", "message"}],
#   "obligations": {...}} plus "approval": {"approvers", "ttl_seconds", "required"?, "allow_requester"?} when approval is
#   required, and "reserve": {"amounts", "limits"} when an allowed request spends. Defined for
#   every input.
# entrypoint: true
default decision := {
	"decision": "deny",
	"reasons": [{"code": "policy_incomplete", "message": "the policy reached no decision for this request"}],
	"obligations": {},
}

# One rule per verdict, so a request builds only its own result (the common allow evaluates no approval block).
decision := {"decision": "deny", "reasons": [reason | some reason in _denials], "obligations": {}} if {
	_verdict == "deny"
}

decision := {
	"decision": "require_approval",
	"reasons": [reason | some reason in _approval_reasons | _pending],
	"obligations": models.obligations,
	"approval": _approval,
} if {
	_verdict == "require_approval"
}

decision := object.union(
	{"decision": "allow", "reasons": [reason | some reason in _granted], "obligations": models.obligations},
	_reserve_block,
) if {
	_verdict == "allow"
}

# Equality on input.kind, which OPA's rule index resolves without evaluating the other two rules.
_known_kind if input.kind == "tool"

_known_kind if input.kind == "model"

_known_kind if input.kind == "budget"

_invalid_request contains {"code": "invalid_request", "message": message} if {
	not _known_kind
	message := sprintf("request kind %v is not one of %v", [object.get(input, "kind", null), sort(_kinds)])
}

# Rules by convention: every package directly under data.tollgate.rules contributes its `deny` and
# `require_approval` sets, so a new rule package takes effect by being placed there (docs/POLICY.md, "Adding a
# rule"); `tollgate check` refuses decision-shaped rules that nothing reaches.
_rule_denials contains reason if {
	reasons := data.tollgate.rules[_].deny
	is_set(reasons)
	some reason in reasons
}

_rule_denials contains reason if some reason in _invalid_request

# A rule package's deny or require_approval that is not a set (`deny if ...`, OPA's boolean style) would read as no
# reasons at all, so the request is denied instead, naming the package (`tollgate check` refuses it too). Each ref
# names the rule, so no other rule of a package is evaluated; an undefined one is no finding.
# (type_name rather than `not is_set`: a negation is a query of its own, evaluated once per package.)
_rule_denials contains _invalid_rule(name, "deny", value) if {
	some name
	value := data.tollgate.rules[name].deny
	type_name(value) != "set"
}

_rule_denials contains _invalid_rule(name, "require_approval", value) if {
	some name
	value := data.tollgate.rules[name].require_approval
	type_name(value) != "set"
}

_invalid_rule(name, rule, value) := {"code": "invalid_rule", "message": sprintf(
	"rule package tollgate.rules.%s defines %s as %s, not a set of reasons (write %s contains {\"code\": ..., \"message\": ...} if ...)",
	[name, rule, type_name(value), rule],
)}

# A credential inside a command, SQL text or URL is a finding of its own (rules.secrets.require_approval).
_approval_reasons contains reason if {
	reasons := data.tollgate.rules[_].require_approval
	is_set(reasons)
	some reason in reasons
}

_approval_status := input.state.approval.status

_approval_denials contains {"code": concat("_", ["approval", status]), "message": message} if {
	count(_approval_reasons) > 0
	status := _approval_status
	message := _closed_approval_messages[status]
}

_approval_denials contains {"code": "no_approvers", "message": message} if {
	count(_approval_reasons) > 0
	count(_approvers) == 0
	message := sprintf("this request needs approval but agent %q names no approvers", [input.principal.agent_id])
}

_denials := _rule_denials | _approval_denials

_approved if {
	count(_approval_reasons) > 0
	_approval_status == "approved"
}

_needs_approval if {
	count(_approval_reasons) > 0
	not _approved
}

_verdict := "deny" if count(_denials) > 0

_verdict := "require_approval" if {
	count(_denials) == 0
	_needs_approval
}

_verdict := "allow" if {
	count(_denials) == 0
	not _needs_approval
}

_pending contains {"code": "approval_pending", "message": message} if {
	_approval_status == "pending"
	message := sprintf("approval %v is waiting for a decision", [object.get(input.state.approval, "id", "")])
}

_granted contains {"code": "approved", "message": message} if {
	_approved
	message := sprintf("approved by %v (approval %v) for: %s", [
		object.get(input.state.approval, "approver", ""),
		object.get(input.state.approval, "id", ""),
		concat(", ", sort({reason.code | some reason in _approval_reasons})),
	])
}

# What an allowed request spends, for the server to reserve against the limits (budget.reserve).
default _reserve_block := {}

_reserve_block := {"reserve": budget.reserve} if budget.reserve

_approval := object.union({"approvers": _approvers, "ttl_seconds": _approval_ttl_seconds}, _approval_options)

# A quorum (how many distinct approvers) and the requester's say, only where the manifest asks for them: the
# server's defaults are one approver, and never the user the agent acts for.
_approval_options["required"] := round(required) if {
	required := agent.manifest.approval.required
	is_number(required)
	required >= 1
}

_approval_options["allow_requester"] := true if {
	agent.manifest.approval.allow_requester == true
}

default _approvers := []

_approvers := approvers if {
	approvers := agent.manifest.approval.approvers
	is_array(approvers)
}

default _approval_ttl_seconds := 3600

_approval_ttl_seconds := round(ttl) if {
	ttl := agent.manifest.approval.ttl_seconds
	is_number(ttl)
	ttl >= 1
}
