"""One shape for a record: `tollgate decision`, `logs query --format json` and the JSON Lines export print the record
as the log keeps it (DecisionRecord.as_dict: `input.principal`, `"decision": "allow"`), with its hash.

What only some of them can know, and so is removed before they are compared: `seq`, the record's place in one
sidecar's log (the query and the export read it from the log's row; GetDecision's message has none) and
`sidecar_id` (the query's, from a fleet's store only). A person reads integral numbers as integers in `decision` and
`query --format json` ("pullNumber": 42, an amount of 2); the export and `--format jsonl` keep the numbers as the
chain hashed them, which compare equal as JSON.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from tests.conftest import TOLLGATE, Server, tool_request
from tollgate.v1 import authorization_pb2 as pb

PR = {"owner": "acme", "repo": "payments-api", "pullNumber": 42}
#: Known to some outputs only (see the module's docstring).
ONLY_SOME_KNOW = ("seq", "sidecar_id")


def tollgate(*argv: str) -> str:
    result = subprocess.run([*TOLLGATE, *argv], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def without(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ONLY_SOME_KNOW}


@pytest.fixture
def sidecar(serve: Callable[..., Server]) -> Server:
    return serve()


def budget_request(amount: float) -> pb.AuthorizeRequest:
    request = pb.AuthorizeRequest(principal=pb.Principal(agent_id="code-reviewer", session_id="s-shape"))
    request.budget.amount, request.budget.unit = amount, "usd"
    return request


@pytest.mark.parametrize("ask", [
    lambda: tool_request("code-reviewer", "github", "get_pull_request", PR, session_id="s-shape"),
    lambda: tool_request("code-reviewer", "github", "merge_pull_request", PR),
    lambda: budget_request(2.0),
], ids=["tool-allow", "tool-deny", "budget"])
def test_decision_query_and_export_print_the_same_record(sidecar: Server,
                                                         ask: Callable[[], pb.AuthorizeRequest]) -> None:
    decision_id = sidecar.authorize(ask()).decision_id
    shown = tollgate("decision", decision_id, "--server", sidecar.address)
    queried = tollgate("logs", "query", "--data-dir", str(sidecar.data_dir), "--decision-id", decision_id,
                       "--format", "json")
    exported = tollgate("logs", "export", "--data-dir", str(sidecar.data_dir), "--format", "jsonl", "-o", "-")
    lines = [json.loads(line) for line in exported.splitlines()]
    [from_export] = [r for r in lines if r.get("decision_id") == decision_id]
    [from_query] = json.loads(queried)
    from_decision = json.loads(shown)
    assert without(from_decision) == without(from_query) == without(from_export)
    assert set(from_decision) >= {"decision_id", "timestamp", "input", "result", "decision", "reasons", "hash"}
    assert from_decision["decision"] in ("allow", "deny", "require_approval")
    assert "principal" not in from_decision and from_decision["input"]["principal"]["agent_id"] == "code-reviewer"
    assert from_query["seq"] == from_export["seq"] >= 1


def test_integral_numbers_print_as_integers_where_a_person_reads_them(sidecar: Server) -> None:
    tool_id = sidecar.authorize(tool_request("code-reviewer", "github", "get_pull_request", PR)).decision_id
    spend_id = sidecar.authorize(budget_request(2.0)).decision_id
    for decision_id, text in ((tool_id, '"pullNumber": 42'), (spend_id, '"amount": 2')):
        shown = tollgate("decision", decision_id, "--server", sidecar.address)
        queried = tollgate("logs", "query", "--data-dir", str(sidecar.data_dir), "--decision-id", decision_id,
                           "--format", "json")
        for output in (shown, queried):
            assert f"{text}," in output or f"{text}\n" in output, output
            assert f"{text}.0" not in output
