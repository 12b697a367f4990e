"""Every failure on the decision path is a logged DENY with its own reason code."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from tests.conftest import tool_request, write_policy
from tollgate.v1 import authorization_pb2 as pb

# Each bad policy answers the activation's contract smoke test properly (a bundle that breaks the contract
# for every input is refused before it serves); it breaks for the agents the tests ask about.
SMOKE_OK = """
decision := {"decision": "deny", "reasons": [{"code": "smoke", "message": "smoke"}]} if _smoke
_smoke if input.principal.agent_id == "tollgate-smoke-test"
"""

CONFLICT = """
package tollgate

decision := {"decision": "allow", "reasons": []} if { input.principal.agent_id != ""; not _smoke }
decision := {"decision": "deny", "reasons": [{"code": "x", "message": "x"}]} if { input.tool.name != ""; not _smoke }
""" + SMOKE_OK

BREAKS_CONTRACT = """
package tollgate

decision := {"decision": "maybe", "reasons": []} if input.principal.agent_id == "a"
decision := "allow" if input.principal.agent_id == "b"
decision := {"decision": "require_approval", "reasons": []} if input.principal.agent_id == "c"
decision := {"decision": "allow", "reasons": [], "extra": 1} if input.principal.agent_id == "d"
""" + SMOKE_OK

# A runaway for agent "slow" (minutes of work); every other agent is allowed at once.
RUNAWAY = """
package tollgate

default decision := {"decision": "allow", "reasons": [{"code": "ok", "message": "fast path"}]}

decision := {"decision": "deny", "reasons": [{"code": "n", "message": sprintf("%d", [n])}]} if {
    input.principal.agent_id == "slow"
    n := count([x | some x in numbers.range(1, 1000000000)])
}
"""


def _only_reason(response: pb.AuthorizeResponse) -> str:
    assert response.decision == pb.DECISION_DENY
    assert len(response.reasons) == 1
    return str(response.reasons[0].code)


def test_engine_error_is_a_logged_deny_engine_error(serve, tmp_path: Path) -> None:
    server = serve(bundle=write_policy(tmp_path / "b", CONFLICT))
    response = server.authorize(tool_request(agent="a", name="t"))
    assert _only_reason(response) == "engine_error"
    record = server.get_decision(response.decision_id)
    assert record.decision == pb.DECISION_DENY
    assert record.reasons[0].code == "engine_error"
    assert response.bundle_revision.startswith("sha256:")


@pytest.mark.parametrize("agent", ["a", "b", "c", "d"], ids=["bad-decision", "not-an-object",
                                                             "approval-without-approvers", "unknown-key"])
def test_result_that_breaks_the_contract_is_a_logged_deny_policy_contract(serve, tmp_path: Path,
                                                                          agent: str) -> None:
    server = serve(bundle=write_policy(tmp_path / "b", BREAKS_CONTRACT))
    response = server.authorize(tool_request(agent=agent))
    assert _only_reason(response) == "policy_contract"
    assert server.get_decision(response.decision_id).reasons[0].code == "policy_contract"


def test_undefined_decision_is_a_deny_policy_contract(serve, tmp_path: Path) -> None:
    server = serve(bundle=write_policy(tmp_path / "b", BREAKS_CONTRACT))
    response = server.authorize(tool_request(agent="nobody"))
    assert _only_reason(response) == "policy_contract"
    assert "undefined" in response.reasons[0].message


def test_no_bundle_is_a_logged_deny_and_health_not_serving(serve, tmp_path: Path) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    broken = write_policy(tmp_path / "b", "package tollgate\n\ndecision := undefined_function(1)\n")
    server = serve(bundle=broken)
    response = server.authorize(tool_request())
    assert _only_reason(response) == "no_bundle"
    assert response.bundle_revision == ""
    assert server.get_decision(response.decision_id).reasons[0].code == "no_bundle"
    health = health_pb2_grpc.HealthStub(server.channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.NOT_SERVING
    assert "undefined function" in server.stderr


def test_runaway_evaluation_is_denied_on_its_deadline_while_others_are_served(serve, tmp_path: Path) -> None:
    # A deadline with slack for a loaded CI machine; the runaway needs minutes, so it is still cut off.
    server = serve(bundle=write_policy(tmp_path / "b", RUNAWAY), extra=["--workers", "2", "--eval-timeout-ms", "500"])
    slow: dict[str, object] = {}

    def ask_slow() -> None:
        started = time.monotonic()
        slow["response"] = server.authorize(tool_request(agent="slow"), timeout=30)
        slow["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=ask_slow)
    thread.start()
    time.sleep(0.01)
    # While the runaway burns in one worker, the other keeps answering.
    fast = [server.authorize(tool_request(agent="fast")) for _ in range(20)]
    thread.join(30)
    assert [r.decision for r in fast] == [pb.DECISION_ALLOW] * 20
    response = slow["response"]
    assert isinstance(response, pb.AuthorizeResponse)
    assert _only_reason(response) == "deadline_exceeded"
    # Its DENY came on time (a deadline of 500 ms), not after the minutes the evaluation would take.
    assert float(slow["seconds"]) < 5  # type: ignore[arg-type]
    assert server.get_decision(response.decision_id).reasons[0].code == "deadline_exceeded"
    # The stuck worker was replaced: a second runaway is cut off the same way and fast requests go on.
    again = server.authorize(tool_request(agent="slow"), timeout=30)
    assert _only_reason(again) == "deadline_exceeded"
    after = [server.authorize(tool_request(agent="fast")) for _ in range(20)]
    assert [r.decision for r in after] == [pb.DECISION_ALLOW] * 20


def test_deadline_is_configurable(serve, tmp_path: Path) -> None:
    # Slow for agents only: a revision that cannot answer its smoke test in time is not activated at all.
    policy = write_policy(tmp_path / "b", """
        package tollgate

        decision := {"decision": "allow", "reasons": [{"code": "n", "message": sprintf("%d", [n])}]} if {
            input.principal.agent_id != "tollgate-smoke-test"
            n := count([x | some x in numbers.range(1, 100000)])
        }

        decision := {"decision": "allow", "reasons": []} if input.principal.agent_id == "tollgate-smoke-test"
        """)
    tight = serve(bundle=policy, data_dir=tmp_path / "d1", extra=["--eval-timeout-ms", "1"])
    assert _only_reason(tight.authorize(tool_request())) == "deadline_exceeded"
    loose = serve(bundle=policy, data_dir=tmp_path / "d2", extra=["--eval-timeout-ms", "5000"])
    assert loose.authorize(tool_request()).decision == pb.DECISION_ALLOW
