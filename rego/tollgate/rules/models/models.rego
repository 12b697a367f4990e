# METADATA
# title: Model calls
# description: >-
#   The model must be in the catalog and on the agent's allow-list; every data class in the
#   request's context must be cleared both for the model (catalog) and for the agent
#   (manifest). Allowed calls carry a max_output_tokens cap as an obligation.
package tollgate.rules.models

import data.tollgate.rules.agent

# METADATA
# title: model_id
# description: >-
#   "<provider>/<model>", or "<model>" when the provider is "" (model then carries it).
#   Undefined unless provider and model are strings; such calls are denied as invalid_request.
model_id := name if {
	input.kind == "model"
	input.model.provider == ""
	name := input.model.model
	is_string(name)
}

model_id := concat("/", [provider, name]) if {
	input.kind == "model"
	provider := input.model.provider
	is_string(provider)
	provider != ""
	name := input.model.model
	is_string(name)
}

# METADATA
# title: entry
# description: The model's catalog entry; undefined for an unknown model.
entry := data.catalog.models[model_id]

_agent_models := object.get(agent.manifest, "models", {})

_on_allow_list if model_id in object.keys(_agent_models)

_data_classes := {class | some class in object.get(input, ["model", "data_classes"], [])}

_data_classes_listed if is_array(object.get(input, ["model", "data_classes"], []))

# METADATA
# title: deny
# description: Reasons to deny the model call.
deny contains {"code": "invalid_request", "message": message} if {
	input.kind == "model"
	not model_id
	message := "a model call needs model.provider and model.model as strings"
}

deny contains {"code": "unknown_model", "message": sprintf("model %q is not in the model catalog", [model_id])} if {
	input.kind == "model"
	model_id
	not entry
}

deny contains {"code": "model_not_allowed", "message": message} if {
	input.kind == "model"
	model_id
	agent.manifest
	not _on_allow_list
	message := sprintf("agent %q may not use model %q (not in its manifest)", [input.principal.agent_id, model_id])
}

deny contains {"code": "data_class_not_allowed", "message": message} if {
	input.kind == "model"
	entry
	some class in _data_classes
	not class in object.get(entry, "data_classes", [])
	message := sprintf("model %q is not cleared for %v data", [model_id, class])
}

# A context whose classes cannot be read cannot be shown to be allowed.
deny contains {"code": "data_class_not_allowed", "message": "model.data_classes must be a list of data classes"} if {
	input.kind == "model"
	model_id
	not _data_classes_listed
}

# A floor under the catalog: whatever a model's list says, secrets stay inside the company.
deny contains {"code": "data_class_not_allowed", "message": message} if {
	input.kind == "model"
	entry
	"secrets" in _data_classes
	object.get(entry, "hosting", "external") != "internal"
	message := sprintf("model %q is hosted outside the company and never receives secrets", [model_id])
}

deny contains {"code": "data_class_not_allowed", "message": message} if {
	input.kind == "model"
	allowed := _agent_models[model_id]
	some class in _data_classes
	not class in object.get(agent.manifest, "data_classes", [])
	not class in object.get(allowed, "data_classes", [])
	message := sprintf("agent %q may not send data classed %v to model %q", [input.principal.agent_id, class, model_id])
}

# METADATA
# title: obligations
# description: >-
#   What the caller must enforce on an allowed model call: max_output_tokens, the smallest of
#   the requested value (when set), the manifest's cap and the model's own limit.
default obligations := {}

obligations := {"max_output_tokens": min(_output_token_caps)} if count(_output_token_caps) > 0

_output_token_caps contains n if {
	input.kind == "model"
	n := input.model.max_output_tokens
	_positive(n)
}

_output_token_caps contains n if {
	input.kind == "model"
	n := agent.manifest.max_output_tokens
	_positive(n)
}

_output_token_caps contains n if {
	input.kind == "model"
	n := entry.max_output_tokens
	_positive(n)
}

_positive(n) if {
	is_number(n)
	n > 0
}
