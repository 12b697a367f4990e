"""Budgets on real servers: reservations made with the decision, never past a limit; usage reports; expiry.

Day and month windows are read on the server's clock (`make test` runs these again with it started seconds before
a year end): what a window should hold is worked out from the day each reservation was made on and the moment
each decision read its spend, both as the server recorded them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import sqlite3
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from tests.conftest import ADMIN_TOKEN, ROOT, TOLLGATE, Server, write_policy
from tests.readme import mask_dates, readme_section
from tollgate.v1 import admin_pb2, admin_pb2_grpc
from tollgate.v1 import authorization_pb2 as pb
from tollgate.v1 import authorization_pb2_grpc as pb_grpc

pytestmark = pytest.mark.clock

# code-reviewer (rego/agents/code-reviewer): max_request_usd 2; limits session usd 20, tokens 2,000,000; agent usd 400.
SESSION_LIMIT = 20.0


def budget_request(amount: float, unit: str = "usd", *, agent: str = "code-reviewer", session: str = "run-1",
                   team: str = "") -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(principal=pb.Principal(agent_id=agent, session_id=session, team=team),
                               budget=pb.BudgetRequest(amount=amount, unit=unit, category="model"))


def answer(response: pb.AuthorizeResponse) -> tuple[str, list[str]]:
    return pb.Decision.Name(response.decision), [r.code for r in response.reasons]


def ledger(server: Server, sql: str, *params: object) -> list[tuple[object, ...]]:
    db = sqlite3.connect(server.data_dir / "state.db")
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


def reserved_in_session(server: Server, session: str) -> float:
    rows = ledger(server, "SELECT COALESCE(SUM(amount), 0) FROM budget_reservations "
                          "WHERE session = ? AND unit = 'usd' AND status = 'reserved'", session)
    return float(rows[0][0])  # type: ignore[arg-type]


def spend_seen(server: Server, decision_id: str) -> dict[str, object]:
    record = json_format.MessageToDict(server.get_decision(decision_id).input)
    spend: dict[str, object] = record["state"]["spend"]
    return spend


def reserved_in(server: Server, response: pb.AuthorizeResponse, window: str) -> str:
    """The UTC day (window "day") or month ("month") the server made this decision's reservation in."""
    day, month = ledger(server, "SELECT day, month FROM budget_reservations WHERE id = ? LIMIT 1",
                        response.reservation_id)[0]
    return str(day if window == "day" else month)


def read_in(server: Server, response: pb.AuthorizeResponse, window: str) -> str:
    """The UTC day or month of the moment the server read spend for this decision (its input's `now`)."""
    now = str(json_format.MessageToDict(server.get_decision(response.decision_id).input)["now"])
    return now[:10] if window == "day" else now[:7]


def window_spend(server: Server, response: pb.AuthorizeResponse, window: str,
                 earlier: Sequence[tuple[pb.AuthorizeResponse, float]]) -> dict[str, float]:
    """The usd a day or month window held when the server decided `response`: the earlier reservations it made in
    that same day or month by its own clock (all of them on an ordinary day; fewer when a midnight fell between)."""
    amounts = [amount for r, amount in earlier if reserved_in(server, r, window) == read_in(server, response, window)]
    return {"usd": sum(amounts)} if amounts else {}


def report(server: Server, reservation_id: str, amount: float, unit: str = "") -> pb.ReportUsageResponse:
    response: pb.ReportUsageResponse = server.stub.ReportUsage(
        pb.ReportUsageRequest(reservation_id=reservation_id, amount=amount, unit=unit), timeout=10)
    return response


def test_200_concurrent_budget_requests_never_reserve_more_than_the_limit(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()

    async def ask_all() -> list[pb.AuthorizeResponse]:
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = pb_grpc.AuthorizationServiceStub(channel)
            calls = [stub.Authorize(budget_request(0.35), timeout=60) for _ in range(200)]
            return list(await asyncio.gather(*calls))

    responses = asyncio.run(ask_all())
    allowed = [r for r in responses if r.decision == pb.DECISION_ALLOW]
    denied = [r for r in responses if r.decision == pb.DECISION_DENY]
    assert len(allowed) == int(SESSION_LIMIT // 0.35) == 57
    assert {tuple(answer(r)[1]) for r in denied} == {("budget_exceeded",)}
    assert len({r.reservation_id for r in allowed}) == len(allowed) and all(r.reservation_id for r in allowed)
    assert not any(r.reservation_id for r in denied)
    # The ledger itself holds no more than the limit, and exactly the allowed answers.
    assert reserved_in_session(server, "run-1") == pytest.approx(57 * 0.35)
    assert reserved_in_session(server, "run-1") <= SESSION_LIMIT
    rows = ledger(server, "SELECT id, decision_id FROM budget_reservations WHERE session = 'run-1'")
    assert {r[0] for r in rows} == {r.reservation_id for r in allowed}
    assert {r[1] for r in rows} == {r.decision_id for r in allowed}


def test_each_decision_shows_the_policy_current_spend_and_logs_its_reservation(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    first = server.authorize(budget_request(1.5, team="platform"))
    second = server.authorize(budget_request(0.5, team="platform"))
    assert answer(first) == answer(second) == ("DECISION_ALLOW", [])
    assert spend_seen(server, first.decision_id)["session"] == {}
    # {"usd": 1.5} in each daily scope, unless the server's clock passed midnight between the two.
    daily = window_spend(server, second, "day", [(first, 1.5)])
    # No workflow named: no workflow scope (an empty value is no scope, not a pool every agent shares).
    assert spend_seen(server, second.decision_id) == {"session": {"usd": 1.5}, "agent": daily, "team": daily}
    # Another session of the same agent shares the agent's (daily) budget but not the session's.
    other = server.authorize(budget_request(0.25, session="run-2"))
    assert spend_seen(server, other.decision_id)["agent"] == window_spend(server, other, "day",
                                                                          [(first, 1.5), (second, 0.5)])
    assert spend_seen(server, other.decision_id)["session"] == {}
    for response in (first, second, other):
        assert server.get_decision(response.decision_id).reservation_id == response.reservation_id
    # The month's spend is beside it, for the scopes that have a month (a session is one run): {"usd": 2.0}
    # unless a month end fell between.
    month = json_format.MessageToDict(server.get_decision(other.decision_id).input)["state"]["spend_month"]
    monthly = window_spend(server, other, "month", [(first, 1.5), (second, 0.5)])
    assert month == {"agent": monthly}  # run-2 names no team and no workflow: neither is a scope of it


def test_past_midnight_on_the_server_clock_the_day_starts_again_and_the_run_does_not(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    first = server.authorize(budget_request(1.5, team="platform"))
    report(server, first.reservation_id, 1.5)  # spent: it counts however far the clock moves (a hold would expire)
    server.step_past_midnight(within=86400)  # there is always a midnight within a day: the clock moves past it
    second = server.authorize(budget_request(0.5, team="platform"))
    assert reserved_in(server, first, "day") < reserved_in(server, second, "day") == read_in(server, second, "day")
    assert spend_seen(server, second.decision_id) == {"session": {"usd": 1.5}, "agent": {}, "team": {}}
    # The month carries on, unless that midnight ended it (always, on a clock started before a year end).
    month = json_format.MessageToDict(server.get_decision(second.decision_id).input)["state"]["spend_month"]
    same_month = reserved_in(server, first, "month") == read_in(server, second, "month")
    assert month == ({"agent": {"usd": 1.5}, "team": {"usd": 1.5}} if same_month
                     else {"agent": {}, "team": {}})  # no workflow named: no workflow scope


def test_a_request_past_the_limit_is_denied_by_the_policy_with_the_spend_it_saw(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    for _ in range(10):
        assert answer(server.authorize(budget_request(2))) == ("DECISION_ALLOW", [])
    over = server.authorize(budget_request(0.01))
    assert answer(over) == ("DECISION_DENY", ["budget_exceeded"])
    assert over.reasons[0].message == ("session spend 20 usd plus this request's 0.01 would pass the session limit "
                                       "of 20 usd")
    assert over.reservation_id == ""
    assert server.get_decision(over.decision_id).reservation_id == ""


def test_report_usage_commits_part_and_releases_the_rest(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    granted = server.authorize(budget_request(2))
    reported = report(server, granted.reservation_id, 0.5)
    assert (reported.reserved, reported.committed, reported.released, reported.over_reserved) == (2, 0.5, 1.5, False)
    assert ledger(server, "SELECT status, amount, committed FROM budget_reservations WHERE id = ?",
                  granted.reservation_id) == [("committed", 2.0, 0.5)]
    after = server.authorize(budget_request(0.1))
    assert spend_seen(server, after.decision_id)["session"] == {"usd": 0.5}
    # Once only; an unknown reservation is not found.
    with pytest.raises(grpc.RpcError) as again:
        report(server, granted.reservation_id, 0.5)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already committed" in (again.value.details() or "")
    with pytest.raises(grpc.RpcError) as unknown:
        report(server, "rsv-does-not-exist", 1)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError) as negative:
        report(server, after.reservation_id, -1)
    assert negative.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_report_over_the_reservation_commits_what_was_spent_and_flags_it(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    granted = server.authorize(budget_request(1))
    reported = report(server, granted.reservation_id, 3, "usd")
    assert (reported.committed, reported.released, reported.over_reserved) == (3, 0, True)
    assert spend_seen(server, server.authorize(budget_request(0.1)).decision_id)["session"] == {"usd": 3.0}
    assert "over the 1 reserved" in server.stderr


def test_an_expired_reservation_releases_its_amount(serve) -> None:  # type: ignore[no-untyped-def]
    # The server sweeps expired reservations every TTL (2 s); its clock is moved past the TTL, not slept past.
    server = serve(extra=["--reservation-ttl", "2"])
    granted = [server.authorize(budget_request(2)) for _ in range(10)]
    assert all(answer(g) == ("DECISION_ALLOW", []) for g in granted)
    assert answer(server.authorize(budget_request(1))) == ("DECISION_DENY", ["budget_exceeded"])
    server.advance_clock(3)
    again = server.authorize(budget_request(1))
    assert answer(again) == ("DECISION_ALLOW", [])
    assert spend_seen(server, again.decision_id)["session"] == {"usd": 0.0}
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and len(
            ledger(server, "SELECT id FROM budget_reservations WHERE status = 'expired'")) < 10:
        time.sleep(0.05)  # polling for the sweep, not waiting out a TTL
    expired = ledger(server, "SELECT id FROM budget_reservations WHERE status = 'expired'")
    assert {g.reservation_id for g in granted} <= {r[0] for r in expired}
    with pytest.raises(grpc.RpcError) as late:
        report(server, granted[0].reservation_id, 1)
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION


def test_an_allowed_model_call_reserves_its_estimated_cost_and_tokens(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    response = server.authorize(pb.AuthorizeRequest(
        principal=pb.Principal(agent_id="code-reviewer", session_id="run-1"),
        model=pb.ModelCall(provider="anthropic", model="claude-sonnet-4-5", input_tokens=1200,
                           max_output_tokens=20000, data_classes=["source-code"])))
    assert answer(response) == ("DECISION_ALLOW", [])
    assert json_format.MessageToDict(response.obligations) == {"max_output_tokens": 8000}
    # 1,200 input tokens at 0.003 usd per 1k, plus the 8,000-token cap at 0.015 usd per 1k.
    rows = ledger(server, "SELECT unit, amount, status FROM budget_reservations WHERE id = ? ORDER BY unit",
                  response.reservation_id)
    assert rows == [("tokens", 9200.0, "reserved"), ("usd", pytest.approx(0.1236), "reserved")]
    assert server.get_decision(response.decision_id).reservation_id == response.reservation_id
    # Both units counted against the budgets the next request is decided on; each is reported on its own.
    after = server.authorize(budget_request(0.1))
    assert spend_seen(server, after.decision_id)["session"] == {"usd": pytest.approx(0.1236), "tokens": 9200}
    with pytest.raises(grpc.RpcError) as which:
        report(server, response.reservation_id, 0.05)
    assert which.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert report(server, response.reservation_id, 3100, "tokens").committed == 3100


ALWAYS_ALLOWS = """
package tollgate

decision := {"decision": "allow", "reasons": [], "obligations": {},
             "reserve": {"amounts": {"usd": 0.6}, "limits": {"session": {"usd": 1}}}}
"""


def test_a_policy_allow_the_ledger_cannot_fit_is_denied_by_the_server(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # This policy ignores input.state.spend, as a policy that raced another request would have seen too little.
    server = serve(bundle=write_policy(tmp_path / "policy", ALWAYS_ALLOWS))
    first = server.authorize(budget_request(0.6))
    second = server.authorize(budget_request(0.6))
    assert answer(first) == ("DECISION_ALLOW", [])
    assert answer(second) == ("DECISION_DENY", ["budget_exceeded"])
    assert second.reservation_id == ""
    record = server.get_decision(second.decision_id)
    assert json_format.MessageToDict(record.result)["decision"] == "allow"  # the policy's own answer stays logged
    assert reserved_in_session(server, "run-1") == pytest.approx(0.6)


MONTHLY_CAP = """
package tollgate

decision := {"decision": "allow", "reasons": [], "obligations": {},
             "reserve": {"amounts": {"usd": 0.6}, "limits": {}, "monthly_limits": {"agent": {"usd": 1}}}}
"""


def test_the_server_re_checks_monthly_limits_as_it_reserves(serve, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server = serve(bundle=write_policy(tmp_path / "policy", MONTHLY_CAP))
    first = server.authorize(budget_request(0.6, session="run-a"))
    second = server.authorize(budget_request(0.6, session="run-b"))  # another run, the same agent's month
    assert answer(first) == ("DECISION_ALLOW", [])
    if reserved_in(server, first, "month") != read_in(server, second, "month"):
        # The server's clock passed a month end between the two: the new month has room for it.
        assert answer(second) == ("DECISION_ALLOW", [])
        return
    assert answer(second) == ("DECISION_DENY", ["budget_exceeded"])
    assert second.reasons[0].message == ("agent monthly spend 0.6 usd plus this request's 0.6 would pass the agent "
                                         "monthly limit of 1 usd")


def test_spend_by_scope_over_the_admin_rpc_and_the_cli(serve) -> None:  # type: ignore[no-untyped-def]
    server = serve()
    granted = server.authorize(budget_request(1.5, team="platform"))
    report(server, granted.reservation_id, 1)
    held = server.authorize(budget_request(0.5, team="platform"))
    admin = admin_pb2_grpc.AdminServiceStub(server.channel)
    found = admin.GetSpend(admin_pb2.GetSpendRequest(session="run-1", team="platform"), timeout=10,
                           metadata=server.admin_metadata)
    shown_units = [(s.scope, s.value, [(u.unit, u.committed, u.reserved, u.total) for u in s.units])
                   for s in found.scopes]
    assert [s.window.split()[0] for s in found.scopes] == ["run", "day", "month"]

    def in_window(response: pb.AuthorizeResponse, window: str) -> bool:  # the window GetSpend read, e.g. "day D"
        kind, _, when = window.partition(" ")
        return kind == "run" or reserved_in(server, response, kind) == when

    def units(window: str) -> list[tuple[str, float, float, float]]:
        """("usd", 1.0, 0.5, 1.5) on an ordinary day; less of it when a midnight fell between on the server's clock."""
        committed, reserved = 1.0 * in_window(granted, window), 0.5 * in_window(held, window)
        return [("usd", committed, reserved, committed + reserved)] if committed or reserved else []

    windows = [s.window for s in found.scopes]
    assert shown_units == [("session", "run-1", [("usd", 1.0, 0.5, 1.5)]),
                           ("team", "platform", units(windows[1])),
                           ("team", "platform", units(windows[2]))]
    with pytest.raises(grpc.RpcError) as no_token:
        admin.GetSpend(admin_pb2.GetSpendRequest(session="run-1"), timeout=10)
    assert no_token.value.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(grpc.RpcError) as no_scope:
        admin.GetSpend(admin_pb2.GetSpendRequest(), timeout=10, metadata=server.admin_metadata)
    assert no_scope.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    env = {**os.environ, "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN}
    shown = subprocess.run([*TOLLGATE, "spend", "--server", server.address, "--session", "run-1", "--agent",
                            "code-reviewer"], capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[0] == "session=run-1  (run)"
    assert lines[1].split() == ["usd", "1.5", "(committed", "1,", "reserved", "0.5)"]
    assert lines[2].startswith("agent=code-reviewer  (day ")
    assert lines[4].startswith("agent=code-reviewer  (month ")
    as_json = subprocess.run([*TOLLGATE, "spend", "--server", server.address, "--workflow", "none", "--json"],
                             capture_output=True, text=True, env=env, timeout=60)
    day, month = json.loads(as_json.stdout)
    assert (day["scope"], day["value"], day["units"]) == (month["scope"], month["value"], month["units"]) == (
        "workflow", "none", [])
    refused = subprocess.run([*TOLLGATE, "spend", "--server", server.address, "--session", "run-1"],
                             capture_output=True, text=True, env={**os.environ, "TOLLGATE_ADMIN_TOKEN": ""}, timeout=60)
    assert refused.returncode == 1 and "UNAUTHENTICATED" in refused.stderr


def test_readme_budgets_walkthrough_runs_as_shown(serve) -> None:  # type: ignore[no-untyped-def]
    """The README's "Budgets" section, command by command, on a fresh sidecar (whose clock is moved off a
    midnight first: the example shows one day's spend)."""
    server = serve()
    server.step_past_midnight(within=120)
    block = re.findall(r"```console\n(.*?)```", readme_section("Budgets"), re.S)
    assert len(block) == 1
    steps = re.split(r"^\$ ", block[0].replace("\\\n", ""), flags=re.M)[1:]
    commands = [step.split("\n", 1) for step in steps]
    assert [shlex.split(c)[1] for c, _ in commands] == ["authorize", "authorize", "spend"]
    for command, shown in commands:
        argv = shlex.split(command)
        result = subprocess.run([*TOLLGATE, *argv[1:], "--server", server.address], capture_output=True, text=True,
                                timeout=60, cwd=ROOT, env={**os.environ, "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN})
        assert result.returncode == 0, result.stdout + result.stderr
        assert _varying(result.stdout) == _varying(shown), result.stdout


def _varying(text: str) -> str:
    """Output with what differs from run to run (IDs, the bundle digest, the day and month) replaced."""
    text = mask_dates(text)
    text = re.sub(r"rsv-[0-9a-f]+", "rsv-...", text)
    return re.sub(r"(decision_id|bundle)=\S+", r"\1=...", text).strip()
