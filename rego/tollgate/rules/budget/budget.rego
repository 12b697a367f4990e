# METADATA
# title: Budget requests
# description: >-
#   A step's spend request must fit under the manifest's per-request ceiling for its unit and,
#   with what has already been spent (input.state.spend), under every limit the manifest sets
#   per scope (session, agent, team, workflow), and with the month's spend (input.state.spend_month)
#   under every monthly limit (agent, team, workflow). A model call's estimated cost (the catalog's
#   price table, input tokens plus the max_output_tokens obligation) must fit the same limits.
#   What an allowed request spends is `reserve`, which the server reserves in the same step.
package tollgate.rules.budget

import data.tollgate.rules.agent
import data.tollgate.rules.models

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

# Only budget requests and model calls spend: for a tool call the rule index skips both (input.kind).
deny contains reason if {
	input.kind == "budget"
	some reason in _limit_denials
}

deny contains reason if {
	input.kind == "model"
	some reason in _limit_denials
}

_limit_denials contains {"code": "budget_exceeded", "message": message} if {
	some unit, amount in _requested
	some scope, limits in object.get(agent.manifest, ["budget", "limits"], {})
	_names_scope(scope)
	limit := limits[unit]
	spent := object.get(input, ["state", "spend", scope, unit], 0)
	not _fits(spent, amount, limit)
	message := sprintf("%s spend %v %s plus this request's %v would pass the %s limit of %v %s", [
		scope, spent, unit, amount, scope, limit, unit,
	])
}

_limit_denials contains {"code": "budget_exceeded", "message": message} if {
	some unit, amount in _requested
	some scope, limits in _monthly_limits
	_names_scope(scope)
	limit := limits[unit]
	spent := object.get(input, ["state", "spend_month", scope, unit], 0)
	not _fits(spent, amount, limit)
	message := sprintf("%s monthly spend %v %s plus this request's %v would pass the %s monthly limit of %v %s", [
		scope, spent, unit, amount, scope, limit, unit,
	])
}

_monthly_limits := object.get(agent.manifest, ["budget", "monthly_limits"], {})

# The principal field each scope is counted under. A request that leaves one empty is not in that scope: the
# server counts nothing under "" (no pool every team-less agent shares), so a limit on it does not apply.
_scope_fields := {"session": "session_id", "agent": "agent_id", "team": "team", "workflow": "workflow"}

_names_scope(scope) if {
	value := object.get(input, ["principal", _scope_fields[scope]], "")
	is_string(value)
	value != ""
}

# What the request would spend, by unit: a budget request its amount; a model call its
# estimated cost in usd (when the catalog prices the model) and its tokens.
default _requested := {}

_requested := {_unit: _amount} if {
	input.kind == "budget"
	_comparable
}

_requested := object.union({"tokens": _model_tokens}, _model_cost) if {
	input.kind == "model"
	models.entry
}

_model_input_tokens := n if {
	n := input.model.input_tokens
	is_number(n)
	n > 0
} else := 0

_model_output_tokens := n if {
	n := models.obligations.max_output_tokens
} else := 0

_model_tokens := _model_input_tokens + _model_output_tokens

default _model_cost := {}

_model_cost := {"usd": cost} if {
	price := models.entry.price
	cost := ((_model_input_tokens * price.input_usd_per_1k) + (_model_output_tokens * price.output_usd_per_1k)) / 1000
}

# METADATA
# title: reserve
# description: >-
#   {"amounts": {unit: amount}, "limits": {scope: {unit: limit}}} for a request that spends, plus
#   "monthly_limits" (same shape) when the manifest sets any; undefined otherwise. The decision carries it as result.reserve when it allows: the server
#   reserves the amounts against the principal's scopes, re-checking the limits in the same
#   transaction, and answers the reservation's id.
reserve := object.union(
	{"amounts": _requested, "limits": object.get(agent.manifest, ["budget", "limits"], {})},
	_monthly_reserve,
) if {
	count(_requested) > 0
}

default _monthly_reserve := {}

_monthly_reserve := {"monthly_limits": _monthly_limits} if count(_monthly_limits) > 0

# Non-numeric spend or limits cannot be shown to fit, so they do not.
_fits(spent, amount, limit) if {
	is_number(spent)
	is_number(limit)
	spent + amount <= limit
}

_number_or_zero(n) := n if is_number(n)

_number_or_zero(n) := 0 if not is_number(n)
