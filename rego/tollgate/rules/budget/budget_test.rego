package tollgate.rules.budget_test

import data.tollgate.rules.budget
import data.tollgate.fixtures_test as fx

test_request_under_ceiling_allowed if {
	count(budget.deny) == 0 with input as fx.budget("code-reviewer", 0.25, "usd")
	count(budget.deny) == 0 with input as fx.budget("code-reviewer", 2, "usd")
	count(budget.deny) == 0 with input as fx.budget("code-reviewer", 150000, "tokens")
}

test_request_over_usd_ceiling_denied if {
	deny := budget.deny with input as fx.budget("code-reviewer", 2.5, "usd")
	deny == {{"code": "budget_request_over_limit", "message": "request for 2.5 usd is over the per-request ceiling of 2 usd (max_request_usd)"}}
}

test_request_over_token_ceiling_denied if {
	fx.codes(budget.deny) == {"budget_request_over_limit"} with input as fx.budget("code-reviewer", 200001, "tokens")
}

test_missing_ceiling_allows_nothing if {
	fx.codes(budget.deny) == {"budget_request_over_limit"} with input as fx.budget("tokens-only", 1, "usd")
		with data.agents["tokens-only"] as {"budget": {"max_request_tokens": 1000}}
	count(budget.deny) == 0 with input as fx.budget("tokens-only", 0, "usd")
		with data.agents["tokens-only"] as {"budget": {"max_request_tokens": 1000}}
}

test_unknown_unit_denied if {
	deny := budget.deny with input as fx.budget("code-reviewer", 1, "eur")
	deny == {{"code": "invalid_budget_unit", "message": "budget unit eur is not one of [\"tokens\", \"usd\"]"}}
}

test_empty_unit_denied if {
	fx.codes(budget.deny) == {"invalid_budget_unit"} with input as fx.budget("code-reviewer", 1, "")
}

test_negative_or_non_numeric_amount_denied if {
	fx.codes(budget.deny) == {"invalid_budget_amount"} with input as fx.budget("code-reviewer", -5, "usd")
	fx.codes(budget.deny) == {"invalid_budget_amount"} with input as fx.budget("code-reviewer", "1", "usd")
}

test_missing_budget_object_denied if {
	r := json.patch(fx.budget("code-reviewer", 1, "usd"), [{"op": "replace", "path": "/budget", "value": null}])
	fx.codes(budget.deny) == {"invalid_budget_unit", "invalid_budget_amount"} with input as r
}

test_spend_within_session_limit_allowed if {
	r := fx.with_state(fx.budget("code-reviewer", 1, "usd"), "spend", {"session": {"usd": 18.5}, "agent": {"usd": 100}})
	count(budget.deny) == 0 with input as r
}

test_spend_reaching_limit_exactly_allowed if {
	r := fx.with_state(fx.budget("code-reviewer", 1.5, "usd"), "spend", {"session": {"usd": 18.5}})
	count(budget.deny) == 0 with input as r
}

test_spend_over_session_limit_denied if {
	r := fx.with_state(fx.budget("code-reviewer", 1.5, "usd"), "spend", {"session": {"usd": 19}})
	deny := budget.deny with input as r
	deny == {{"code": "budget_exceeded", "message": "session spend 19 usd plus this request's 1.5 would pass the session limit of 20 usd"}}
}

test_each_limited_scope_checked if {
	r := fx.with_state(_in_team_and_workflow(fx.budget("release-bot", 0.5, "usd")), "spend", {
		"session": {"usd": 9.9}, "workflow": {"usd": 24.9}, "team": {"usd": 199.9},
	})
	deny := budget.deny with input as r
	count(deny) == 3
	fx.codes(deny) == {"budget_exceeded"}
}

# A request that names no team or workflow is in no team or workflow: the server counts nothing under "",
# so the manifest's team and workflow limits do not apply to it (the session's still does).
test_a_scope_the_request_does_not_name_is_not_limited if {
	r := fx.with_state(_in_no_team(fx.budget("release-bot", 0.5, "usd")), "spend", {"session": {"usd": 9.9}})
	deny := budget.deny with input as r
	[d.message | some d in deny] == ["session spend 9.9 usd plus this request's 0.5 would pass the session limit of 10 usd"]
	over := fx.with_state(_in_no_team(fx.budget("release-bot", 0.5, "usd")), "spend", {
		"team": {"usd": 199.9}, "workflow": {"usd": 24.9},
	})
	count(budget.deny) == 0 with input as over
	named := fx.with_state(_in_team_and_workflow(fx.budget("release-bot", 0.5, "usd")), "spend", {"team": {"usd": 199.9}})
	fx.codes(budget.deny) == {"budget_exceeded"} with input as named
}

_in_team_and_workflow(request) := object.union(request, {"principal": {"team": "release", "workflow": "ship"}})

_in_no_team(request) := object.union(request, {"principal": {"team": "", "workflow": ""}})

test_limits_are_per_unit if {
	r := fx.with_state(fx.budget("code-reviewer", 1000, "tokens"), "spend", {"session": {"usd": 20, "tokens": 10}})
	count(budget.deny) == 0 with input as r
	r2 := fx.with_state(fx.budget("code-reviewer", 1000, "tokens"), "spend", {"session": {"tokens": 1999500}})
	fx.codes(budget.deny) == {"budget_exceeded"} with input as r2
}

test_unlimited_scope_is_not_checked if {
	r := fx.with_state(fx.budget("code-reviewer", 1, "usd"), "spend", {"team": {"usd": 1000000}})
	count(budget.deny) == 0 with input as r
}

test_unreadable_spend_denied if {
	r := fx.with_state(fx.budget("code-reviewer", 1, "usd"), "spend", {"session": {"usd": "lots"}})
	fx.codes(budget.deny) == {"budget_exceeded"} with input as r
}

test_unknown_agent_gets_only_request_checks if {
	count(budget.deny) == 0 with input as fx.budget("intruder", 1000, "usd")
	fx.codes(budget.deny) == {"invalid_budget_unit"} with input as fx.budget("intruder", 1, "gold")
}

test_other_kinds_are_not_judged_here if {
	count(budget.deny) == 0 with input as fx.tool("code-reviewer", "github", "get_pull_request", {})
}

test_non_numeric_ceiling_allows_nothing if {
	request := fx.budget("odd-agent", 0.01, "usd")
	fx.codes(budget.deny) == {"budget_request_over_limit"} with input as request
		with data.agents["odd-agent"] as {"budget": {"max_request_usd": "unlimited"}}
}

test_model_call_reserves_its_estimated_cost_and_tokens if {
	reserve := budget.reserve with input as fx.model("code-reviewer", "anthropic", "claude-haiku-4-5", 1000, [])
	reserve.amounts == {"usd": 0.0062, "tokens": 2200}
}

test_model_without_a_price_reserves_only_tokens if {
	reserve := budget.reserve with input as fx.model("code-reviewer", "anthropic", "claude-haiku-4-5", 1000, [])
		with data.catalog.models["anthropic/claude-haiku-4-5"].price as null
	reserve.amounts == {"tokens": 2200}
}

test_budget_request_reserves_its_amount_under_the_manifest_limits if {
	reserve := budget.reserve with input as fx.budget("code-reviewer", 0.25, "usd")
	reserve == {
		"amounts": {"usd": 0.25},
		"limits": {"session": {"usd": 20, "tokens": 2000000}, "agent": {"usd": 400}},
		"monthly_limits": {"agent": {"usd": 3000}},
	}
}

test_monthly_limit_reads_the_months_spend if {
	r := fx.with_state(fx.budget("code-reviewer", 1.5, "usd"), "spend_month", {"agent": {"usd": 2999}})
	deny := budget.deny with input as r
	deny == {{"code": "budget_exceeded", "message": "agent monthly spend 2999 usd plus this request's 1.5 would pass the agent monthly limit of 3000 usd"}}
	count(budget.deny) == 0 with input as fx.with_state(fx.budget("code-reviewer", 1, "usd"), "spend_month", {"agent": {"usd": 2999}})
}

test_the_days_spend_does_not_count_against_a_monthly_limit_or_the_reverse if {
	# 390 spent today and 2000 this month: 1.5 more fits both the daily 400 and the monthly 3000.
	r := object.union(fx.budget("code-reviewer", 1.5, "usd"), {"state": {
		"spend": {"agent": {"usd": 390}}, "spend_month": {"agent": {"usd": 2000}},
		"killed": [], "approval": null,
	}})
	count(budget.deny) == 0 with input as r
}

test_a_manifest_without_monthly_limits_reserves_none if {
	reserve := budget.reserve with input as fx.budget("browser-agent", 0.25, "usd")
	not "monthly_limits" in object.keys(reserve)
}

test_invalid_budget_request_reserves_nothing if {
	not budget.reserve with input as fx.budget("code-reviewer", -1, "usd")
}
