"""The API's request conversion: names a store keys state by are bounded, and the error names the field."""

from __future__ import annotations

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
