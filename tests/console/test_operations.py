"""The operations pages against a real `tollgate console` beside a real `tollgate serve` on one data dir (and, for
the kill switch and the fleet's log, on a real PostgreSQL): sessions now, a session's timeline, spend against the
limits the decisions carried, kill switches engaged and lifted with a confirmation, decision search and the record
view, the fleet. An HTTP client signs in as a person would (the browser scenarios are tests/console/test_browser.py).

Attacks on these pages: a viewer's forged POST (with the viewer's own valid CSRF token), a CSRF-less POST from an
operator, a session cookie replayed after sign-out, HTML in an argument value, a huge argument, limits past the
bounds in a query string.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest

from tests.conftest import TOLLGATE, Server, start_server, tool_request, wait_for
from tests.console.conftest import Console, Person, add_user, start_console
from tests.pg import PostgresServer
from tollgate.v1 import authorization_pb2 as pb

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_SIGNIN = re.compile(r'name="signin_token" value="([^"]+)"')
#: An argument value that must arrive in the page as text, never as markup.
MARKUP = '<script>alert("x")</script><img src=x onerror=alert(1)>'


class Client:
    """One person's HTTP client on the console (its own cookie jar), with the last page's CSRF token."""

    def __init__(self, console: Console) -> None:
        self.http = httpx2.Client(base_url=console.url, follow_redirects=False, timeout=30)
        self.csrf = ""

    def signin(self, person: Person) -> Client:
        page = self.http.get("/signin")
        token = _SIGNIN.search(page.text)
        assert token, page.text
        done = self.http.post("/signin", data={"signin_token": token.group(1), "next": "/", "name": person.name,
                                               "password": person.password})
        assert done.status_code == 303, done.text
        self.get("/")
        return self

    def get(self, path: str, **params: Any) -> httpx2.Response:
        answer = self.http.get(path, params=params)
        found = _CSRF.search(answer.text)
        if found:
            self.csrf = found.group(1)
        return answer

    def post(self, path: str, data: dict[str, str], *, csrf: bool = True) -> httpx2.Response:
        return self.http.post(path, data={**data, **({"csrf_token": self.csrf} if csrf else {})},
                              headers={"origin": str(self.http.base_url).rstrip("/")})


def budget(session: str, amount: float = 0.5, **principal: str) -> pb.AuthorizeRequest:
    return pb.AuthorizeRequest(principal=pb.Principal(agent_id="code-reviewer", session_id=session,
                                                      **principal),  # type: ignore[arg-type]
                               budget=pb.BudgetRequest(amount=amount, unit="usd", category="model"))


def text_of(answer: httpx2.Response) -> str:
    """The page's text without tags, entities decoded, whitespace collapsed: what a person reads."""
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", answer.text)).split())


#: The module's sidecar, console, people by name and the decision IDs of its session.
Site = tuple[Server, Console, dict[str, Person], dict[str, str]]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """One sidecar and one console on one data dir; a viewer, an operator and an admin; a session with an
    allowed tool call (an integer, markup and a long text among its arguments), a denial and two spends."""
    root = tmp_path_factory.mktemp("ops")
    data_dir = root / "data"
    server = start_server(data_dir, extra=["--workers", "1"])
    people = {name: add_user(name, f"pw-{name}-long-enough", groups=[role], data_dir=data_dir)
              for name, role in (("vera", "viewer"), ("otto", "operator"), ("ada", "admin"))}
    console = start_console(data_dir=data_dir)
    ids = {}
    try:
        allowed = server.authorize(tool_request(
            arguments={"owner": "acme", "repo": "app", "pullNumber": 42, "note": MARKUP, "body": "x" * 5000},
            session_id="s-ops", user="ursula", team="platform", workflow="review"))
        assert allowed.decision == pb.DECISION_ALLOW, allowed
        ids["allowed"] = allowed.decision_id
        denied = server.authorize(tool_request(name="merge_pull_request", session_id="s-ops", user="ursula",
                                               team="platform", workflow="review"))
        assert [r.code for r in denied.reasons] == ["tool_not_in_manifest"], denied
        ids["denied"] = denied.decision_id
        for _ in range(2):
            spent = server.authorize(budget("s-ops", user="ursula", team="platform", workflow="review"))
            assert spent.decision == pb.DECISION_ALLOW and spent.reservation_id, spent
        ids["spent"] = spent.decision_id
        other = server.authorize(budget("s-other", 1.25, user="una", team="data", workflow="triage"))
        assert other.decision == pb.DECISION_ALLOW
        waiting = server.authorize(tool_request("release-bot", "github", "merge_pull_request",
                                                {"owner": "acme", "repo": "app", "pullNumber": 7}, session_id="s-wait"))
        assert waiting.decision == pb.DECISION_REQUIRE_APPROVAL and waiting.approval_id, waiting
        ids["waiting"] = waiting.decision_id
        yield server, console, people, ids
    finally:
        console.terminate()
        server.terminate()


def test_sessions_now_show_each_runs_cost_against_its_limit_and_link_the_timeline(site: Site) -> None:
    _, console, people, _ = site
    vera = Client(console).signin(people["vera"])
    page = vera.get("/sessions")
    assert page.status_code == 200
    text = text_of(page)
    assert re.search(r"s-ops code-reviewer ursula platform / review 1 usd of 20 \(5 %\) 4 1 0 ", text), text
    assert re.search(r"s-other code-reviewer una data / triage 1.25 usd of 20 \(6 %\) 1 0 0 ", text), text
    assert re.search(r"s-wait release-bot none 1 0 1 ", text), text  # nothing spent, one pending approval
    assert text.index("s-wait") < text.index("s-other") < text.index("s-ops")  # most recently active first
    assert 'href="/sessions/s-ops"' in page.text and 'href="/approvals"' in page.text
    assert "active in the last 1440 minutes" in text_of(vera.get("/sessions", minutes="999999", limit="99999"))
    assert re.findall(r'href="/sessions/([^"]+)"', vera.get("/sessions", limit="1").text) == ["s-wait"]


def test_the_timeline_lists_the_sessions_decisions_with_spend_and_links_to_each_record(site: Site) -> None:
    _, console, people, ids = site
    page = Client(console).signin(people["vera"]).get("/sessions/s-ops")
    assert page.status_code == 200
    text = text_of(page)
    for name in ("allowed", "denied", "spent"):
        assert f'href="/decisions/{ids[name]}"' in page.text
    assert "tool_not_in_manifest" in text and "github/merge_pull_request" in text
    assert re.search(r"usd 0 1 20 5 %", text), text  # committed, reserved (live), the limit, the share
    assert "usd reserved 0.5, committed 0 (reserved)" in text
    assert MARKUP not in page.text and html.escape(MARKUP, quote=False)[:20] in page.text
    waiting = Client(console).signin(people["vera"]).get("/sessions/s-wait")
    approval = re.search(r'href="/approvals/([^"]+)"', waiting.text)
    assert approval, waiting.text
    assert re.search(rf"approval {approval.group(1)} opened for group:[^;]+; now pending", text_of(waiting))


def test_the_record_view_shows_the_whole_record_readable_and_escaped(site: Site) -> None:
    _, console, people, ids = site
    vera = Client(console).signin(people["vera"])
    page = vera.get(f"/decisions/{ids['allowed']}")
    assert page.status_code == 200
    assert '"pullNumber": 42,' in html.unescape(page.text)  # an integer, not 42.0
    assert MARKUP not in page.text  # escaped: the page holds no markup of the caller's
    assert "&lt;script&gt;" in page.text
    assert "x" * 5000 in page.text  # the whole (masked) record
    assert 'href="/sessions/s-ops"' in page.text
    csp = page.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "<script" not in page.text.replace("&lt;script", "")
    assert vera.get("/decisions/no-such-id").status_code == 404
    for path in ("/decisions/", "/sessions/"):  # markup in the path comes back as text
        answer = vera.get(path + MARKUP)
        assert answer.status_code in (200, 404) and MARKUP not in answer.text and "&lt;script&gt;" in answer.text


def test_decision_search_by_reason_tool_agent_and_session_is_bounded(site: Site) -> None:
    _, console, people, ids = site
    vera = Client(console).signin(people["vera"])

    def found(**params: str) -> list[str]:
        page = vera.get("/decisions", **params)
        assert page.status_code == 200, page.text
        return re.findall(r'<td><a href="/decisions/([^"]+)">', page.text)

    assert found(reason="tool_not_in_manifest") == [ids["denied"]]
    assert found(tool="github/get_pull_request") == [ids["allowed"]]
    assert found(tool="merge_pull_request", session="s-ops") == [ids["denied"]]
    assert found(decision_id=ids["spent"]) == [ids["spent"]]
    assert len(found(agent="code-reviewer")) == 5
    assert found(session="s-ops", kind="budget", limit="1") == [ids["spent"]]  # newest first, one a page
    older = vera.get("/decisions", session="s-ops", limit="1")
    assert "before=" in older.text  # a full page links the older ones
    assert len(found(agent="code-reviewer", limit="100000")) == 5  # clamped, not refused
    assert found(reason="killed") == []
    assert "is neither an RFC 3339 time" in text_of(vera.get("/decisions", since="yesterday-ish"))
    assert found(agent="x" * 10_000) == []  # cut to a principal field's bound, not an error


def test_spend_by_team_agent_and_session_against_the_limits_decisions_carried(site: Site) -> None:
    _, console, people, _ = site
    vera = Client(console).signin(people["vera"])
    teams = text_of(vera.get("/spend", scope="team"))
    assert re.search(r"platform usd 0 1 — ", teams) and re.search(r"data usd 0 1.25 — ", teams), teams
    agents = vera.get("/spend", scope="agent", period="day")
    assert re.search(r"code-reviewer usd 0 2.25 400 1 %", text_of(agents)), text_of(agents)
    assert 'href="/decisions/' in agents.text  # the limit links the decision it was read from
    month = text_of(vera.get("/spend", scope="agent", period="month"))
    assert re.search(r"code-reviewer usd 0 2.25 3000 0 %", month), month
    sessions = text_of(vera.get("/spend", scope="session"))
    assert re.search(r"s-other usd 0 1.25 20 6 % s-ops usd 0 1 20 5 %", sessions), sessions
    assert "No spend recorded" in text_of(vera.get("/spend", scope="team", period="day", at="2001-01-01"))
    assert "is not a YYYY-MM-DD date" in text_of(vera.get("/spend", scope="team", at="<b>"))


def test_the_fleet_page_shows_the_sidecar_its_revision_and_health(site: Site) -> None:
    server, console, people, _ = site
    vera = Client(console).signin(people["vera"])
    wait_for(lambda: "serving" in text_of(vera.get("/fleet")), timeout=30, what="the sidecar's heartbeat")
    text = text_of(vera.get("/fleet"))
    assert server.address in text and "stale" not in text


def test_a_kill_switch_needs_an_operator_a_csrf_token_and_a_confirmation_and_the_next_decision_is_denied(
        site: Site) -> None:
    server, console, people, _ = site
    vera, otto = Client(console).signin(people["vera"]), Client(console).signin(people["otto"])
    engage = {"scope": "session", "value": "s-kill", "reason": "INC-7 runaway"}
    assert "Engage…" not in vera.get("/kill-switches").text  # a viewer sees no form
    forged = vera.post("/kill-switches/engage", {**engage, "confirm": "yes"})  # the viewer's own valid token
    assert forged.status_code == 403 and "needs the operator role" in forged.text
    otto.get("/kill-switches")
    assert otto.post("/kill-switches/engage", {**engage, "confirm": "yes"}, csrf=False).status_code == 403
    confirm = otto.post("/kill-switches/engage", engage)
    assert confirm.status_code == 200 and "Engage this kill switch?" in confirm.text
    assert "INC-7 runaway" in text_of(confirm) and 'name="confirm" value="yes"' in confirm.text
    assert server.authorize(tool_request(session_id="s-kill")).decision == pb.DECISION_ALLOW  # not yet
    done = otto.post("/kill-switches/engage", {**engage, "confirm": "yes"})
    assert done.status_code == 303 and done.headers["location"] == "/kill-switches?done=engaged"
    wait_for(lambda: server.authorize(tool_request(session_id="s-kill")).decision == pb.DECISION_DENY,
             timeout=5, what="the sidecar to hear the kill switch")
    denied = server.authorize(tool_request(session_id="s-kill"))
    assert [r.code for r in denied.reasons] == ["killed"]
    listed = text_of(vera.get("/kill-switches"))
    assert "session s-kill INC-7 runaway otto" in listed
    otto.get("/kill-switches")
    assert "Lift this kill switch?" in otto.post("/kill-switches/lift", {"scope": "session", "value": "s-kill"}).text
    lifted = otto.post("/kill-switches/lift", {"scope": "session", "value": "s-kill", "reason": "fixed",
                                               "confirm": "yes"})
    assert lifted.status_code == 303
    wait_for(lambda: server.authorize(tool_request(session_id="s-kill")).decision == pb.DECISION_ALLOW,
             timeout=5, what="the sidecar to hear the lift")
    history = text_of(vera.get("/kill-switches"))
    assert re.search(r"lifted session s-kill fixed otto .* engaged session s-kill INC-7 runaway otto", history)
    audit = text_of(Client(console).signin(people["ada"]).get("/audit", actor="otto"))
    assert "kill_switch.lift session=s-kill fixed" in audit and "kill_switch.engage session=s-kill INC-7" in audit


def test_kill_switch_input_is_checked_as_the_store_checks_it(site: Site) -> None:
    _, console, people, _ = site
    otto = Client(console).signin(people["otto"])
    otto.get("/kill-switches")
    for form, message in (({"scope": "planet", "value": "x", "reason": "r"}, "not a kill switch scope"),
                          ({"scope": "agent", "value": "", "reason": "r"}, "value: required"),
                          ({"scope": "agent", "value": "a" * 600, "reason": "r"}, "at most 512 characters"),
                          ({"scope": "agent", "value": "bot", "reason": ""}, "reason: required")):
        answer = otto.post("/kill-switches/engage", {**form, "confirm": "yes"})
        assert answer.status_code == 400 and message in text_of(answer), (form, text_of(answer))
    missing = otto.post("/kill-switches/lift", {"scope": "agent", "value": "nobody", "confirm": "yes"})
    assert missing.status_code == 404 and "is not stopped" in text_of(missing)
    shown = otto.post("/kill-switches/engage", {"scope": "agent", "value": MARKUP, "reason": MARKUP})
    assert shown.status_code == 200 and MARKUP not in shown.text


def test_a_session_cookie_replayed_after_sign_out_opens_nothing(site: Site) -> None:
    _, console, people, _ = site
    otto = Client(console).signin(people["otto"])
    cookies = dict(otto.http.cookies)
    csrf = otto.csrf
    assert otto.post("/signout", {}).status_code in (302, 303)
    replay = httpx2.Client(base_url=console.url, cookies=cookies, follow_redirects=False)
    assert replay.get("/sessions").status_code == 303  # to the sign-in page
    refused = replay.post("/kill-switches/engage", data={"scope": "all", "reason": "r", "confirm": "yes",
                                                         "csrf_token": csrf}, headers={"origin": console.url})
    assert refused.status_code == 403


# -- the fleet: a console on PostgreSQL ------------------------------------------------------------------------


def test_on_postgresql_the_console_reads_the_fleets_log_and_its_kill_switch_reaches_the_sidecar(
        tmp_path: Path, postgres: PostgresServer) -> None:
    import subprocess

    url = postgres.database()
    migrated = subprocess.run([*TOLLGATE, "state", "migrate", "--state-store", url], capture_output=True, text=True,
                              timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    server = start_server(tmp_path / "a", extra=["--state-store", url, "--workers", "1", "--sidecar-id", "fleet-a",
                                                  "--fleet-heartbeat", "1"])
    otto = add_user("otto", "pw-otto-long-enough", groups=["operator"], state_store=url)
    console = start_console(state_store=url)
    try:
        answered = server.authorize(budget("s-fleet", user="ursula", team="platform", workflow="review"))
        client = Client(console).signin(otto)
        wait_for(lambda: "s-fleet" in client.get("/sessions").text, timeout=30, what="the record shipped")
        assert re.search(r"s-fleet code-reviewer ursula platform / review 0.5 usd of 20",
                         text_of(client.get("/sessions")))
        assert f'"decision_id": "{answered.decision_id}"' in html.unescape(
            client.get(f"/decisions/{answered.decision_id}").text)
        assert "fleet-a" in text_of(client.get("/fleet"))
        client.get("/kill-switches")
        engage = {"scope": "team", "value": "platform", "reason": "INC-9", "confirm": "yes"}
        assert client.post("/kill-switches/engage", engage).status_code == 303
        request = tool_request(session_id="s-fleet", user="ursula", team="platform", workflow="review")
        wait_for(lambda: server.authorize(request).decision == pb.DECISION_DENY, timeout=5,
                 what="NOTIFY to reach the sidecar")
    finally:
        console.terminate()
        server.terminate()


def test_the_timeline_shows_what_a_reported_tool_call_did(site: Site) -> None:
    server, console, people, ids = site
    server.stub.ReportToolResult(pb.ReportToolResultRequest(decision_id=ids["allowed"], result=pb.TOOL_RESULT_OK,
                                                            duration_ms=2500), timeout=10)
    text = text_of(Client(console).signin(people["vera"]).get("/sessions/s-ops"))
    assert "ran: ok in 2.5 s" in text, text
