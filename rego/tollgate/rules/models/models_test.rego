package tollgate.rules.models_test

import data.tollgate.fixtures_test as fx
import data.tollgate.rules.models

test_model_id_joins_provider_and_model if {
	request := fx.model("code-reviewer", "anthropic", "claude-sonnet-4-5", 100, [])
	models.model_id == "anthropic/claude-sonnet-4-5" with input as request
}

test_model_id_without_provider_is_the_model if {
	request := fx.model("code-reviewer", "", "anthropic/claude-sonnet-4-5", 100, [])
	models.model_id == "anthropic/claude-sonnet-4-5" with input as request
}

test_allowed_model_passes if {
	request := fx.model("code-reviewer", "anthropic", "claude-sonnet-4-5", 2000, ["source-code"])
	count(models.deny) == 0 with input as request
}

test_unknown_model_denied if {
	deny := models.deny with input as fx.model("code-reviewer", "anthropic", "claude-ultra-9", 100, [])
	fx.codes(deny) == {"unknown_model", "model_not_allowed"}
	{"code": "unknown_model", "message": "model \"anthropic/claude-ultra-9\" is not in the model catalog"} in deny
}

test_model_not_on_allow_list_denied if {
	deny := models.deny with input as fx.model("code-reviewer", "openai", "gpt-4.1-mini", 100, [])
	deny == {{"code": "model_not_allowed", "message": "agent \"code-reviewer\" may not use model \"openai/gpt-4.1-mini\" (not in its manifest)"}}
}

test_unknown_agent_gets_no_allow_list_reason if {
	count(models.deny) == 0 with input as fx.model("intruder", "anthropic", "claude-sonnet-4-5", 100, [])
}

test_data_class_the_model_may_not_receive_denied if {
	deny := models.deny with input as fx.model("data-analyst", "anthropic", "claude-sonnet-4-5", 100, ["pii"])
	{"code": "data_class_not_allowed", "message": "model \"anthropic/claude-sonnet-4-5\" is not cleared for pii data"} in deny
}

test_data_class_the_agent_may_not_send_denied if {
	request := fx.model("code-reviewer", "anthropic", "claude-sonnet-4-5", 100, ["customer-data"])
	deny := models.deny with input as request
	deny == {{"code": "data_class_not_allowed", "message": "agent \"code-reviewer\" may not send data classed customer-data to model \"anthropic/claude-sonnet-4-5\""}}
}

test_per_model_data_class_grant if {
	request := fx.model("data-analyst", "bedrock", "anthropic.claude-sonnet-4-5", 100, ["pii", "customer-data", "internal"])
	count(models.deny) == 0 with input as request
	request_2 := fx.model("data-analyst", "anthropic", "claude-sonnet-4-5", 100, ["customer-data"])
	count(models.deny) == 0 with input as request_2
}

test_unlisted_data_class_denied if {
	request := fx.model("data-analyst", "internal", "llama-3.3-70b", 100, ["health-records"])
	fx.codes(models.deny) == {"data_class_not_allowed"} with input as request
}

test_secrets_never_sent_to_external_model if {
	r := fx.model("data-analyst", "bedrock", "anthropic.claude-sonnet-4-5", 100, ["secrets"])
	deny := models.deny with input as r
		with data.catalog.models["bedrock/anthropic.claude-sonnet-4-5"].data_classes as ["secrets"]
		with data.agents["data-analyst"].data_classes as ["secrets"]
	deny == {{"code": "data_class_not_allowed", "message": "model \"bedrock/anthropic.claude-sonnet-4-5\" is hosted outside the company and never receives secrets"}}
}

test_secrets_allowed_to_internal_model_when_granted if {
	count(models.deny) == 0 with input as fx.model("data-analyst", "internal", "llama-3.3-70b", 100, ["secrets"])
		with data.agents["data-analyst"].data_classes as ["secrets"]
}

test_non_list_data_classes_denied if {
	request := fx.model("code-reviewer", "anthropic", "claude-sonnet-4-5", 100, "pii")
	fx.codes(models.deny) == {"data_class_not_allowed"} with input as request
}

test_obligation_caps_request_at_manifest_limit if {
	request := fx.model("code-reviewer", "anthropic", "claude-sonnet-4-5", 20000, [])
	models.obligations == {"max_output_tokens": 8000} with input as request
}

test_obligation_keeps_smaller_request if {
	request := fx.model("code-reviewer", "anthropic", "claude-sonnet-4-5", 1500, [])
	models.obligations == {"max_output_tokens": 1500} with input as request
}

test_obligation_for_unset_request_is_manifest_cap if {
	request := fx.model("data-analyst", "anthropic", "claude-sonnet-4-5", 0, [])
	models.obligations == {"max_output_tokens": 4000} with input as request
}

test_obligation_respects_model_limit if {
	request := fx.model("data-analyst", "internal", "llama-3.3-70b", 100000, [])
	models.obligations == {"max_output_tokens": 8192} with input as request
		with data.agents["data-analyst"].max_output_tokens as 50000
}

test_no_obligations_for_other_kinds if {
	models.obligations == {} with input as fx.budget("code-reviewer", 1, "usd")
	models.obligations == {} with input as fx.tool("code-reviewer", "github", "get_pull_request", {})
}
