"""Requests that break the schema are refused before the policy, with a status naming the field."""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest

from tests.conftest import tool_request
from tollgate.contract import MAX_DEPTH
from tollgate.v1 import authorization_pb2 as pb


def _nested(depth: int) -> dict[str, object]:
    value: dict[str, object] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"x": value}
    return value


def _no_action() -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(principal=pb.Principal(agent_id="code-reviewer"))


def _empty_agent() -> pb.AuthorizeRequest:
    return tool_request(agent="")


def _no_tool_name() -> pb.AuthorizeRequest:
    return tool_request(name="")


def _too_deep() -> pb.AuthorizeRequest:
    return tool_request(arguments=_nested(33))


def _too_deep_context() -> pb.AuthorizeRequest:
    request = tool_request()
    request.context.update(_nested(33))
    return request


def _beyond_the_decoder() -> pb.AuthorizeRequest:
    return tool_request(arguments=_nested(80))


def _nan_argument() -> pb.AuthorizeRequest:
    request = tool_request()
    request.tool.arguments["n"] = float("nan")
    return request


def _negative_budget() -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(principal=pb.Principal(agent_id="a"), budget=pb.BudgetRequest(amount=-1, unit="usd"))


def _unknown_unit() -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(principal=pb.Principal(agent_id="a"), budget=pb.BudgetRequest(amount=1, unit="eur"))


def _no_model() -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(principal=pb.Principal(agent_id="a"), model=pb.ModelCall(provider="openai"))


def _negative_tokens() -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(principal=pb.Principal(agent_id="a"),
                               model=pb.ModelCall(model="m", input_tokens=-5))


CASES: list[tuple[str, Callable[[], pb.AuthorizeRequest], str]] = [
    ("no-action", _no_action, "action"),
    ("empty-agent-id", _empty_agent, "principal.agent_id"),
    ("no-tool-name", _no_tool_name, "tool.name"),
    ("arguments-too-deep", _too_deep, "tool.arguments"),
    ("context-too-deep", _too_deep_context, "context"),
    ("nested-beyond-the-protobuf-decoder", _beyond_the_decoder, "request"),
    ("nan-argument", _nan_argument, "tool.arguments.n"),
    ("negative-budget", _negative_budget, "budget.amount"),
    ("unknown-budget-unit", _unknown_unit, "budget.unit"),
    ("no-model", _no_model, "model.model"),
    ("negative-tokens", _negative_tokens, "model.input_tokens"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from tests.conftest import start_server

    s = start_server(tmp_path_factory.mktemp("data"))
    yield s
    s.kill()


@pytest.mark.parametrize(("make", "field"), [(m, f) for _, m, f in CASES], ids=[c[0] for c in CASES])
def test_invalid_request_is_invalid_argument_naming_the_field(server, make, field: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.RpcError) as err:
        server.authorize(make())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details().startswith(field + ":") or err.value.details().startswith(field)


def test_exactly_the_depth_limit_is_accepted(server) -> None:  # type: ignore[no-untyped-def]
    response = server.authorize(tool_request(arguments=_nested(MAX_DEPTH)))
    assert response.decision_id
    assert server.get_decision(response.decision_id).decision_id == response.decision_id


@pytest.mark.parametrize("where", ["tool.arguments", "context"])
def test_every_request_accepted_can_be_read_back(server, where: str) -> None:  # type: ignore[no-untyped-def]
    # A DecisionRecord holds the request twice (tool.arguments and input.tool.arguments), and protobuf decoders
    # stop at 100 nested messages: what Authorize accepts, GetDecision must be able to answer.
    for depth in range(28, 36):
        request = tool_request(arguments=_nested(depth)) if where == "tool.arguments" else tool_request()
        if where == "context":
            request.context.update(_nested(depth))
        try:
            response = server.authorize(request)
        except grpc.RpcError as err:
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert err.details().startswith(where), err.details()
            break
        record = server.get_decision(response.decision_id)
        assert record.decision_id == response.decision_id
    else:
        raise AssertionError(f"{where}: nesting of 35 levels was accepted")


def test_request_over_the_size_limit_is_resource_exhausted_naming_the_field(server) -> None:  # type: ignore[no-untyped-def]
    request = tool_request(arguments={"blob": "x" * (1024 * 1024 + 10)})
    with pytest.raises(grpc.RpcError) as err:
        server.authorize(request)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "tool.arguments" in err.value.details()
    assert "1048576" in err.value.details()


def test_far_oversized_request_is_refused_by_the_transport(server) -> None:  # type: ignore[no-untyped-def]
    request = tool_request(arguments={"blob": "x" * (3 * 1024 * 1024)})
    with pytest.raises(grpc.RpcError) as err:
        server.authorize(request)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_garbage_bytes_do_not_crash_the_server(server) -> None:  # type: ignore[no-untyped-def]
    import grpc as g

    raw = server.channel.unary_unary("/tollgate.v1.AuthorizationService/Authorize")
    for payload in (b"\xff\xff\xff", b"\x0a\x05" + b"\x80" * 5, bytes(range(256))):
        with pytest.raises(g.RpcError):
            raw(payload, timeout=5)
    assert server.proc.poll() is None
    assert server.authorize(tool_request()).decision_id


def test_invalid_requests_are_not_logged(server) -> None:  # type: ignore[no-untyped-def]
    import sqlite3

    db = server.data_dir / "decisions.db"
    before = sqlite3.connect(db).execute("SELECT count(*) FROM decisions").fetchone()[0]
    with pytest.raises(grpc.RpcError):
        server.authorize(_empty_agent())
    after = sqlite3.connect(db).execute("SELECT count(*) FROM decisions").fetchone()[0]
    assert after == before
