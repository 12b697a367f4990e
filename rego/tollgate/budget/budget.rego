# METADATA
# title: Budget requests
# description: >-
#   A step's spend request must fit under the manifest's per-request ceiling for its unit and,
#   with what has already been spent (input.state.spend), under every limit the manifest sets
#   per scope (session, agent, team, workflow).
package tollgate.budget

import data.tollgate.agent

_ceiling_fields := {"usd": "max_request_usd", "tokens": "max_request_tokens"}

_amount := object.get(input, ["budget", "amount"], null)

_unit := object.get(input, ["budget", "unit"], null)

_budget_request if input.kind == "budget"

_valid_unit if _unit in object.keys(_ceiling_fields)

_valid_amount if {
	is_number(_amount)
	_amount >= 0
}

# Both are needed before any limit can be compared.
_comparable if {
	_budget_request
	_valid_unit
	_valid_amount
}

# METADATA
# title: deny
# description: Reasons to deny the budget request.
deny contains {"code": "invalid_budget_unit", "message": message} if {
	input.kind == "budget"
	not _valid_unit
	message := sprintf("budget unit %v is not one of %v", [
		_unit, sort(object.keys(_ceiling_fields)),
	])
}

deny contains {"code": "invalid_budget_amount", "message": message} if {
	input.kind == "budget"
	not _valid_amount
	message := sprintf("budget amount %v is not a number >= 0", [_amount])
}

# A manifest without a ceiling for the unit allows nothing above zero in it.
deny contains {"code": "budget_request_over_limit", "message": message} if {
	input.kind == "budget"
	_comparable
	field := _ceiling_fields[_unit]
	ceiling := _number_or_zero(object.get(agent.manifest, ["budget", field], 0))
	_amount > ceiling
	message := sprintf("request for %v %s is over the per-request ceiling of %v %s (%s)", [
		_amount, _unit, ceiling, _unit, field,
	])
}

deny contains {"code": "budget_exceeded", "message": message} if {
	input.kind == "budget"
	_comparable
	some scope, limits in object.get(agent.manifest, ["budget", "limits"], {})
	limit := limits[_unit]
	spent := object.get(input, ["state", "spend", scope, _unit], 0)
	not _fits(spent, _amount, limit)
	message := sprintf("%s spend %v %s plus this request's %v would pass the %s limit of %v %s", [
		scope, spent, _unit, _amount, scope, limit, _unit,
	])
}

# Non-numeric spend or limits cannot be shown to fit, so they do not.
_fits(spent, amount, limit) if {
	is_number(spent)
	is_number(limit)
	spent + amount <= limit
}

_number_or_zero(n) := n if is_number(n)

_number_or_zero(n) := 0 if not is_number(n)
