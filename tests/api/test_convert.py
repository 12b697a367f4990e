"""The API's request conversion: names a store keys state by are bounded, arguments and context become JSON values
(integral numbers as integers, nesting bounded), and the error names the field."""

from __future__ import annotations

import math
from typing import Any

import pytest

from tollgate.api._convert import InvalidRequest, to_decision_request
from tollgate.contract import MAX_IDENTIFIER
from tollgate.v1 import authorization_pb2 as pb

LONG = "x" * (MAX_IDENTIFIER + 1)


def _tool(**fields: str) -> pb.AuthorizeRequest:
    request = pb.AuthorizeRequest(principal=pb.Principal(agent_id="code-reviewer"),
                                  tool=pb.ToolCall(server="github", name="get_pull_request"))
    for path, value in fields.items():
        owner, name = path.split("__")
        setattr(request if owner == "request" else getattr(request, owner), name, value)
    return request


@pytest.mark.parametrize(("field", "where"), [
    ("principal__agent_id", "principal.agent_id"),
    ("principal__session_id", "principal.session_id"),
    ("principal__team", "principal.team"),
    ("principal__user", "principal.user"),
    ("tool__server", "tool.server"),
    ("tool__name", "tool.name"),
    ("request__request_id", "request_id"),
    ("request__approval_id", "approval_id"),
])
def test_a_name_past_the_bound_is_refused_naming_the_field(field: str, where: str) -> None:
    with pytest.raises(InvalidRequest, match=rf"^{where}: at most {MAX_IDENTIFIER} characters, got "
                                             rf"{MAX_IDENTIFIER + 1}$"):
        to_decision_request(_tool(**{field: LONG}), max_depth=31)


def test_a_name_at_the_bound_is_accepted() -> None:
    request = to_decision_request(_tool(principal__session_id="s" * MAX_IDENTIFIER), max_depth=31)
    assert len(request.principal["session_id"]) == MAX_IDENTIFIER


def test_model_and_budget_names_are_bounded_too() -> None:
    model = pb.AuthorizeRequest(principal=pb.Principal(agent_id="a"), model=pb.ModelCall(provider=LONG, model="m"))
    with pytest.raises(InvalidRequest, match=r"^model.provider: at most"):
        to_decision_request(model, max_depth=31)
    budget = pb.AuthorizeRequest(principal=pb.Principal(agent_id="a"),
                                 budget=pb.BudgetRequest(amount=1, unit="usd", category=LONG))
    with pytest.raises(InvalidRequest, match=r"^budget.category: at most"):
        to_decision_request(budget, max_depth=31)


def _arguments(value: dict[str, Any]) -> pb.AuthorizeRequest:
    request = _tool()
    request.tool.arguments.update(value)
    return request


def test_arguments_and_context_become_json_values() -> None:
    request = _tool()
    request.tool.arguments.update({"n": 42, "x": 2.5, "big": 2.0**53, "neg": -7, "ok": True, "none": None,
                                   "list": [1, "a", {"b": [False]}], "empty": {}})
    request.context.update({"environment": "prod"})
    converted = to_decision_request(request, max_depth=31)
    arguments = converted.action["arguments"]
    assert arguments == {"n": 42, "x": 2.5, "big": 2.0**53, "neg": -7, "ok": True, "none": None,
                         "list": [1, "a", {"b": [False]}], "empty": {}}
    # Integral numbers print as integers where a person reads them; past 2**53 a float no longer holds them all.
    assert [type(arguments[k]) for k in ("n", "x", "big", "neg")] == [int, float, float, int]
    assert type(arguments["list"][0]) is int
    assert converted.context == {"environment": "prod"}


@pytest.mark.parametrize(("arguments", "max_depth", "message"), [
    ({"n": math.nan}, 31, "tool.arguments.n: NaN and infinite numbers are not allowed"),
    ({"a": [1, {"b": [0, math.inf]}]}, 31, "tool.arguments.a[1].b[1]: NaN and infinite numbers are not allowed"),
    ({"a": {"b": {"c": 1}}}, 2, "tool.arguments.a.b: nested deeper than the limit of 2 levels"),
    ({"a": [[1]]}, 2, "tool.arguments.a[0]: nested deeper than the limit of 2 levels"),
], ids=["nan", "infinite-in-a-list", "too-deep-object", "too-deep-list"])
def test_a_refused_value_is_named_by_its_path(arguments: dict[str, Any], max_depth: int, message: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        to_decision_request(_arguments(arguments), max_depth=max_depth)
    assert str(refused.value) == message


def test_nesting_up_to_the_limit_is_accepted() -> None:
    converted = to_decision_request(_arguments({"a": {"b": 1}, "l": [2]}), max_depth=2)
    assert converted.action["arguments"] == {"a": {"b": 1}, "l": [2]}
