"""Outcomes and cost per successful outcome.

The figures (tollgate.console._outcomes) on fixed data, each checked against a value worked out by hand; then the
issue's test end to end: sessions run against a real sidecar (spends reserved and reported, a denial, an approval
asked), their harnesses report outcomes with ReportOutcome, and a viewer in a real browser (Debian's Chromium
through Playwright) reads the right cost per successful outcome, per agent and per workflow, on a real console.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import REGO, TOLLGATE, Server, start_server, tool_request, wait_for
from tests.console.conftest import Console, Person, add_user, screenshot, start_console
from tests.pg import PostgresServer
from tollgate.console._outcomes import Figures, SessionFacts, counted_outcomes, figures, percent, ratio, total
from tollgate.state._outcomes import Outcome, SessionCost
from tollgate.v1 import authorization_pb2 as pb

# -- the figures, on fixed data ---------------------------------------------------------------------------------


def _outcome(session: str, outcome: str, task: str = "", labels: tuple[str, ...] = ()) -> Outcome:
    return Outcome(session_id=session, task_id=task, outcome=outcome, labels=labels, summary="", agent_id="",
                   team="", workflow="", user="", reported_by="", reported_from="", reported_at="",
                   first_reported_at="", revision=1)


SESSIONS = [
    SessionFacts("s1", "code-reviewer", "review", decisions=4, denials=1, approvals_asked=0),
    SessionFacts("s2", "code-reviewer", "review", decisions=2, denials=0, approvals_asked=0),
    SessionFacts("s3", "code-reviewer", "triage", decisions=2, denials=0, approvals_asked=0),
    SessionFacts("s4", "release-bot", "release", decisions=3, denials=0, approvals_asked=2),
    SessionFacts("s5", "release-bot", "release", decisions=1, denials=1, approvals_asked=1),
]
OUTCOMES = [
    _outcome("s1", "succeeded", labels=("ci_passed", "pr_merged")),
    _outcome("s2", "failed", labels=("ci_passed",)),
    _outcome("s3", "succeeded", "t1"), _outcome("s3", "succeeded", "t2"), _outcome("s3", "abandoned", "t3"),
    # s4: unreported. s5: its own outcome counts, not its task's.
    _outcome("s5", "succeeded"), _outcome("s5", "failed", "deploy"),
    _outcome("s9", "succeeded"),  # a session outside the range: not counted
]
COSTS = {"s1": SessionCost("s1", 0.80), "s2": SessionCost("s2", 0.40, reserved=0.10),
         "s3": SessionCost("s3", 0.30), "s4": SessionCost("s4", 1.50), "s9": SessionCost("s9", 100.0)}


def _by_name(found: list[Figures]) -> dict[str, Figures]:
    return {f.name: f for f in found}


def test_a_sessions_own_outcome_counts_else_each_of_its_tasks() -> None:
    counted = counted_outcomes(OUTCOMES)
    assert [o.task_id for o in counted["s3"]] == ["t1", "t2", "t3"]
    assert [(o.task_id, o.outcome) for o in counted["s5"]] == [("", "succeeded")]


def test_the_figures_per_agent_match_the_hand_computed_ones() -> None:
    agents = _by_name(figures(SESSIONS, OUTCOMES, COSTS, by="agent"))
    reviewer, bot = agents["code-reviewer"], agents["release-bot"]
    # code-reviewer: s1 succeeded, s2 failed, s3's tasks 2 succeeded + 1 abandoned → 5 outcomes, 3 successes.
    assert (reviewer.sessions, reviewer.reported, reviewer.counted, dict(reviewer.outcomes)) == (
        3, 3, 5, {"succeeded": 3, "failed": 1, "abandoned": 1})
    assert reviewer.success_rate == pytest.approx(3 / 5)
    assert reviewer.cost == pytest.approx(0.80 + 0.40 + 0.30) and reviewer.reserved == pytest.approx(0.10)
    assert reviewer.cost_per_success == pytest.approx(1.50 / 3)  # the failed s2 costs too
    assert reviewer.approvals_per_session == 0 and reviewer.denial_rate == pytest.approx(1 / 8)
    assert reviewer.labels == (("ci_passed", 2), ("pr_merged", 1))
    # release-bot: s4 unreported (1.50 spent), s5 succeeded (nothing spent) → 1.50 for one success.
    assert (bot.sessions, bot.reported, bot.unreported, bot.succeeded) == (2, 1, 1, 1)
    assert bot.cost_per_success == pytest.approx(1.50)
    assert bot.approvals_per_session == pytest.approx(3 / 2) and bot.denial_rate == pytest.approx(1 / 4)


def test_the_figures_per_workflow_and_in_total_match_the_hand_computed_ones() -> None:
    workflows = figures(SESSIONS, OUTCOMES, COSTS, by="workflow")
    assert [w.name for w in workflows] == ["release", "review", "triage"]  # the most expensive first
    by_name = _by_name(workflows)
    assert by_name["review"].cost_per_success == pytest.approx(1.20 / 1)
    assert by_name["triage"].cost_per_success == pytest.approx(0.30 / 2)
    everything = total(SESSIONS, OUTCOMES, COSTS)
    assert (everything.sessions, everything.counted, everything.succeeded, everything.unreported) == (5, 6, 4, 1)
    assert everything.cost == pytest.approx(3.00) and everything.cost_per_success == pytest.approx(0.75)
    assert everything.approvals_per_session == pytest.approx(3 / 5)
    assert everything.denial_rate == pytest.approx(2 / 12)


def test_nothing_to_divide_is_shown_as_such_never_as_zero() -> None:
    idle = total([SessionFacts("s", "a", "", 0, 0, 0)], [_outcome("s", "failed")], {"s": SessionCost("s", 2.0)})
    assert idle.cost_per_success is None and idle.success_rate == 0 and idle.denial_rate is None
    assert total([], [], {}).approvals_per_session is None
    assert (percent(None), percent(0.125), percent(0.05), percent(2 / 3), ratio(None), ratio(1.5)) == (
        "—", "12 %", "5.0 %", "67 %", "—", "1.50")
    assert figures([SessionFacts("s", "a", "", 1, 0, 0)], [], {}, by="workflow")[0].name == "(none)"
    invalid = total(SESSIONS[:1], [], {"s1": SessionCost("s1", 0.5, invalid=True)})
    assert invalid.cost_invalid


# -- end to end: a real sidecar, real reports, a real console in a real browser -------------------------------

ROLES = {"viewers": "viewer"}
PASSWORD = "correct horse battery staple"


@dataclass
class Stack:
    server: Server
    console: Console
    viewer: Person


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("outcomes")
    bundle = root / "rego"
    shutil.copytree(REGO, bundle)
    data = root / "data"
    config = {"approver_groups": {"release-managers": ["rita"]}, "console": {"roles": ROLES}}
    server = start_server(data, bundle=bundle, config=config)
    console = start_console(data_dir=data, config_file=data.with_name(f"{data.name}.yaml"))
    viewer = add_user("vic", PASSWORD, groups=["viewers"], data_dir=data)
    yield Stack(server, console, viewer)
    console.terminate()
    server.terminate()


def _spend(server: Server, session: str, reserve: float, spent: float, workflow: str = "review") -> None:
    asked = server.authorize(pb.AuthorizeRequest(
        principal=pb.Principal(agent_id="code-reviewer", session_id=session, workflow=workflow, team="platform"),
        budget=pb.BudgetRequest(amount=reserve, unit="usd", category="model")))
    assert asked.decision == pb.DECISION_ALLOW and asked.reservation_id, asked
    server.stub.ReportUsage(pb.ReportUsageRequest(reservation_id=asked.reservation_id, amount=spent), timeout=10)


def _report(server: Server, session: str, outcome: pb.Outcome, *labels: str) -> None:
    server.stub.ReportOutcome(pb.ReportOutcomeRequest(session_id=session, outcome=outcome, labels=list(labels)),
                              timeout=10)


def _cells(page: Page, by: str, name: str) -> dict[str, str]:
    table = page.locator(f'table.outcomes[data-by="{by}"]')
    headers = [h.strip() for h in table.locator("thead th").all_inner_texts()]
    row = table.locator("tbody tr").filter(has=page.locator("td.name", has_text=re.compile(f"^{re.escape(name)}$")))
    return dict(zip(headers, (c.strip() for c in row.locator("td").all_inner_texts()), strict=True))


def test_report_outcome_for_a_few_sessions_shows_the_right_cost_per_successful_outcome(
        stack: Stack, browser_page: Page) -> None:
    server = stack.server
    # Three code-reviewer sessions: reserved more than they spent (the ledger commits what was reported).
    _spend(server, "o-1", 1.00, 0.80)
    _spend(server, "o-2", 0.50, 0.40)
    denied = server.authorize(tool_request(name="merge_pull_request", session_id="o-2", workflow="review"))
    assert denied.decision == pb.DECISION_DENY
    _spend(server, "o-3", 0.30, 0.30, workflow="triage")
    # A release-bot session that waits for a person: one approval asked, nothing spent, no outcome reported.
    merge = tool_request("release-bot", "github", "merge_pull_request", {"owner": "acme", "repo": "app",
                                                                         "pullNumber": 9}, session_id="o-4",
                         workflow="release")
    assert server.authorize(merge).decision == pb.DECISION_REQUIRE_APPROVAL
    _report(server, "o-1", pb.OUTCOME_SUCCEEDED, "pr_merged", "ci_passed")
    _report(server, "o-2", pb.OUTCOME_FAILED, "ci_failed")
    _report(server, "o-3", pb.OUTCOME_SUCCEEDED)

    page = browser_page
    page.goto(stack.console.url + "/outcomes")
    expect(page).to_have_url(re.compile(r"/signin"))
    page.get_by_label("Name").fill("vic")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name=re.compile("^Outcomes since "))).to_be_visible()

    # (0.80 + 0.40 + 0.30) committed ÷ 2 successes; the failed session's cost is in it; o-4 spent nothing.
    expect(page.locator("#cost-per-success")).to_have_text("0.75")
    expect(page.locator("#total-cost")).to_have_text("1.5")
    expect(page.locator("#success-rate")).to_have_text("67 %")
    expect(page.locator("#approvals-per-session")).to_have_text("0.25")  # 1 approval asked over 4 sessions
    expect(page.locator("#denial-rate")).to_have_text("20 %")  # 1 of 5 decisions
    reviewer = _cells(page, "agent", "code-reviewer")
    assert (reviewer["Sessions"], reviewer["Succeeded"], reviewer["Failed"], reviewer["Unreported"]) == (
        "3", "2", "1", "0")
    assert (reviewer["Cost (usd)"], reviewer["Cost per success"], reviewer["Success rate"]) == ("1.5", "0.75", "67 %")
    assert reviewer["Denial rate"] == "25 %" and "ci_failed 1" in reviewer["Labels"]
    bot = _cells(page, "agent", "release-bot")
    assert (bot["Sessions"], bot["Unreported"], bot["Cost per success"], bot["Approvals per session"]) == (
        "1", "1", "no success", "1.00")
    review, triage = _cells(page, "workflow", "review"), _cells(page, "workflow", "triage")
    assert (review["Cost (usd)"], review["Cost per success"]) == ("1.2", "1.2")
    assert (triage["Cost (usd)"], triage["Cost per success"]) == ("0.3", "0.3")
    sessions = page.locator("table.sessions")
    expect(sessions.locator("tr", has_text="o-2")).to_contain_text("failed [ci_failed]")
    expect(sessions.locator("tr", has_text="o-4")).to_contain_text("unreported")
    screenshot(page, "outcomes")

    # The range is chosen on the page: one that holds the sessions' decisions shows them, one after them none.
    page.get_by_label("or since").fill("2000-01-01T00:00:00Z")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("#cost-per-success")).to_have_text("0.75")
    page.goto(stack.console.url + "/outcomes?since=2999-01-01T00:00:00Z")
    expect(page.locator("#cost-per-success")).to_have_text("no success")
    expect(page.locator('table.outcomes[data-by="agent"] tbody')).to_contain_text("No session had a decision")


def test_markup_in_a_reported_session_id_reaches_the_page_as_text(stack: Stack) -> None:
    """Labels have a grammar (no markup fits it); a session id is any printable text and is escaped."""
    import httpx2

    server = stack.server
    session = '<img src=x onerror=alert(1)>'
    server.authorize(tool_request(session_id=session))
    _report(server, session, pb.OUTCOME_ABANDONED, "x:y")
    http = httpx2.Client(base_url=stack.console.url, follow_redirects=False, timeout=30)
    form = http.get("/signin").text
    token = re.search(r'name="signin_token" value="([^"]+)"', form)
    assert token
    done = http.post("/signin", data={"signin_token": token.group(1), "next": "/", "name": "vic",
                                      "password": PASSWORD})
    assert done.status_code == 303
    page = http.get("/outcomes", params={"range": "1h"})
    assert page.status_code == 200
    assert session not in page.text and "&lt;img src=x onerror=alert(1)&gt;" in page.text
    assert http.get("/outcomes", params={"range": "9y" * 1000, "since": "x" * 5000}).status_code == 200


def test_on_postgresql_an_outcome_reported_at_another_sidecar_counts_on_the_fleets_console(
        tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> None:
    """A fleet: the session is decided at sidecar a, its outcome reported at sidecar b (which finds the session in
    the records a shipped), and the console on the shared store shows the cost per successful outcome."""
    import subprocess

    import grpc

    from tests.console.test_operations import Client, text_of

    root = tmp_path_factory.mktemp("fleet-outcomes")
    url = postgres.database()
    migrated = subprocess.run([*TOLLGATE, "state", "migrate", "--state-store", url], capture_output=True, text=True,
                              timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    a, b = (start_server(root / name, extra=["--state-store", url, "--workers", "1", "--sidecar-id", f"fleet-{name}"])
            for name in ("a", "b"))
    viewer = add_user("vic", PASSWORD, groups=["viewer"], state_store=url)
    console = start_console(state_store=url)
    try:
        _spend(a, "f-1", 1.0, 0.6)
        _spend(a, "f-2", 1.0, 0.9)

        def reported() -> bool:
            try:
                _report(b, "f-1", pb.OUTCOME_SUCCEEDED, "pr_merged")
            except grpc.RpcError as exc:
                assert isinstance(exc, grpc.Call) and exc.code() == grpc.StatusCode.NOT_FOUND, exc
                return False
            return True

        wait_for(reported, timeout=30, what="sidecar a's records shipped to the store")
        _report(a, "f-2", pb.OUTCOME_FAILED)
        client = Client(console).signin(viewer)
        shown = text_of(client.get("/outcomes", range="1h"))
        # (0.6 + 0.9) / 1 success: the failed session's spend is in it.
        assert re.search(r"1\.5 usd per successful outcome", shown), shown
        assert re.search(r"code-reviewer 2 1 1 0 0 50 % 1\.5 1\.5 ", shown), shown
    finally:
        console.terminate()
        a.terminate()
        b.terminate()
