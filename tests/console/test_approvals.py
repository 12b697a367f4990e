"""The approvals pages against a real `tollgate console` beside a real `tollgate serve` on one data dir: the inbox
of what a person may decide (the whole masked request readable, the policy's reasons, the opening decision, the
session's decisions, time left), the search by an argument value, approve and deny with a reason in one POST that
the harness waiting in WaitForApproval hears within a second, the history, a quorum counted by distinct people.
An HTTP client signs in as a person would (the browser scenarios are tests/console/test_browser.py).

Attacks: a viewer's forged POST (with the viewer's own valid CSRF token), a CSRF-less POST from an approver, a
cookie replayed after sign-out, the user the agent acts for approving its request, markup and a huge argument.
"""

from __future__ import annotations

import asyncio
import html
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from tests.conftest import Server, start_server, tool_request, wait_for
from tests.console.conftest import Console, Person, add_users, start_console
from tests.console.test_operations import MARKUP, Client, text_of
from tollgate.state import open_local_state
from tollgate.v1 import authorization_pb2 as pb

pytestmark = pytest.mark.clock

#: rita decides as a configured member (approver_groups); sam by the group his sign-in gives; bob is the user the
#: agents act for, in the approvers' group too.
GROUPS = {"release-managers": ["rita", "bob"], "sre-oncall": []}
PEOPLE = {"rita": ["approver"], "sam": ["approver", "sre-oncall"], "bob": ["approver", "release-managers"],
          "vera": ["viewer"], "ada": ["admin"]}
SECRET = "sk-live-do-not-show-4242"

Site = tuple[Server, Console, dict[str, Person]]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("approvals-console")
    data_dir = root / "data"
    server = start_server(data_dir, config={"approver_groups": GROUPS}, extra=["--workers", "1"])
    people = {p.name: p for p in add_users(PEOPLE, "a-long-enough-password", data_dir=data_dir)}
    console = start_console(data_dir=data_dir, config_file=data_dir.with_name(f"{data_dir.name}.yaml"))
    try:
        yield server, console, people
    finally:
        console.terminate()
        server.terminate()


def merge(pr: int, *, approval_id: str = "", arguments: dict[str, object] | None = None) -> pb.AuthorizeRequest:
    request = tool_request("release-bot", "github", "merge_pull_request",
                           {"owner": "acme", "repo": "app", "pullNumber": pr, **(arguments or {})}, session_id="s-rel",
                           user="bob", team="release", workflow="ship")
    request.approval_id = approval_id
    return request


def ask(server: Server, pr: int, **arguments: object) -> pb.AuthorizeResponse:
    asked = server.authorize(merge(pr, arguments=arguments))
    assert asked.decision == pb.DECISION_REQUIRE_APPROVAL, asked
    return asked


def decide(client: Client, approval_id: str, decision: str, reason: str, *, csrf: bool = True) -> httpx2.Response:
    return client.post(f"/approvals/{approval_id}/decide", {"decision": decision, "reason": reason}, csrf=csrf)


def card(page: httpx2.Response, approval_id: str) -> str:
    """The text of one approval's card on a page."""
    found = re.search(rf'<section class="approval" id="{approval_id}".*?</section>', page.text, re.S)
    assert found, page.text
    return " ".join(re.sub(r"<[^>]+>", " ", found.group(0)).split())


def test_the_inbox_shows_the_whole_masked_request_the_reasons_the_opening_decision_and_the_session(
        site: Site) -> None:
    server, console, people = site
    server.authorize(tool_request("release-bot", "github", "get_pull_request", {"pullNumber": 800},
                                  session_id="s-rel", user="bob"))
    asked = ask(server, 812, api_key=SECRET, note=MARKUP, body="y" * 5000, labels={"risk": 3, "ok": True})
    rita = Client(console).signin(people["rita"])
    page = rita.get("/approvals")
    assert page.status_code == 200
    text = card(page, asked.approval_id)
    for shown in ("Agent release-bot", "User bob", "Team release", "Workflow ship", "Session s-rel",
                  "tool github/merge_pull_request", "pending", "left"):
        assert shown in text, (shown, text)
    shown = html.unescape(page.text)
    assert '"pullNumber": 812,' in shown and "812.0" not in shown  # integers as integers
    assert '"risk": 3' in shown and '"labels": {' in shown  # nested JSON as JSON
    assert "y" * 5000 in shown  # the whole argument, however long
    assert SECRET not in shown and '"api_key": "***"' in shown
    assert "/input/tool/arguments/api_key" in text and "mask's placeholder" in text  # said, not guessed
    assert MARKUP not in page.text and "&lt;script&gt;" in page.text
    assert "destructive_action" in text  # the policy's reasons, from the record that opened it
    assert f'href="/decisions/{asked.decision_id}"' in page.text
    assert "github/get_pull_request" in text  # the session's decisions
    assert 'value="approve"' in page.text and 'name="reason"' in page.text


def test_the_search_finds_an_approval_by_an_argument_value(site: Site) -> None:
    server, console, people = site
    wanted, other = ask(server, 4711), ask(server, 4712)
    rita = Client(console).signin(people["rita"])
    found = rita.get("/approvals", q="4711")
    assert f'id="{wanted.approval_id}"' in found.text and f'id="{other.approval_id}"' not in found.text
    assert f'id="{other.approval_id}"' in rita.get("/approvals", q="4712").text
    assert "No pending approval shows" in text_of(rita.get("/approvals", q="no-such-value-99"))


def waiting(server: Server, approval_id: str) -> tuple[list[tuple[str, float]], threading.Thread]:
    """The harness blocked in WaitForApproval (a thread): each state with the time.time() it arrived."""
    heard: list[tuple[str, float]] = []

    def run() -> None:
        for state in server.stub.WaitForApproval(pb.WaitForApprovalRequest(approval_id=approval_id), timeout=60):
            heard.append((state.status, time.time()))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: bool(heard), timeout=30, what="WaitForApproval's first state")
    return heard, thread


def test_approve_with_a_reason_reaches_the_waiting_harness_within_a_second_and_is_audited(site: Site) -> None:
    server, console, people = site
    asked = ask(server, 900)
    heard, thread = waiting(server, asked.approval_id)
    rita = Client(console).signin(people["rita"])
    rita.get("/approvals")
    sent = time.time()
    done = decide(rita, asked.approval_id, "approve", "release 1.4, diff reviewed")
    assert done.status_code == 303 and done.headers["location"].startswith("/approvals?done=approved")
    thread.join(timeout=30)
    assert [status for status, _ in heard] == ["pending", "approved"]
    assert heard[-1][1] - sent < 1.0, heard
    allowed = server.authorize(merge(900, approval_id=asked.approval_id))
    assert allowed.decision == pb.DECISION_ALLOW and "approved by rita" in allowed.reasons[0].message
    notice = text_of(rita.http.get(done.headers["location"]))
    assert f"Approved {asked.approval_id}" in notice, notice
    assert f'id="{asked.approval_id}"' not in rita.get("/approvals").text
    history = text_of(rita.get("/approvals/history"))
    assert re.search(rf"{asked.approval_id} tool github/merge_pull_request .* used rita approved .* "
                     r"release 1.4, diff reviewed", history), history
    audit = text_of(Client(console).signin(people["ada"]).get("/audit", actor="rita"))
    assert f"approval.approve {asked.approval_id} release 1.4, diff reviewed; now approved" in audit, audit


def test_deny_with_a_reason_denies_the_next_ask(site: Site) -> None:
    server, console, people = site
    asked = ask(server, 901)
    sam = Client(console).signin(people["sam"])  # a member of sre-oncall by his sign-in's groups
    sam.get(f"/approvals/{asked.approval_id}")
    done = sam.post(f"/approvals/{asked.approval_id}/decide", {"decision": "deny", "reason": "freeze",
                                                               "back": "approval"})
    assert done.status_code == 303 and done.headers["location"].startswith(f"/approvals/{asked.approval_id}?")
    page = text_of(sam.http.get(done.headers["location"]))
    assert "Denied: decided by sam" in page and "freeze" in page
    denied = server.authorize(merge(901, approval_id=asked.approval_id))
    assert [r.code for r in denied.reasons] == ["approval_denied"]


def test_a_viewer_sees_no_buttons_and_a_forged_or_csrf_less_post_is_refused(site: Site) -> None:
    server, console, people = site
    asked = ask(server, 902)
    vera = Client(console).signin(people["vera"])
    page = vera.get(f"/approvals/{asked.approval_id}")
    assert page.status_code == 200 and "tool github/merge_pull_request" in text_of(page)
    assert 'value="approve"' not in page.text and "/decide" not in page.text
    assert f'id="{asked.approval_id}"' in vera.get("/approvals").text  # reads every pending one
    forged = decide(vera, asked.approval_id, "approve", "I may not")  # with the viewer's own valid token
    assert forged.status_code == 403 and "needs the approver role" in forged.text
    rita = Client(console).signin(people["rita"])
    rita.get("/approvals")
    assert decide(rita, asked.approval_id, "approve", "no token", csrf=False).status_code == 403
    cookies, csrf = dict(rita.http.cookies), rita.csrf
    assert rita.post("/signout", {}).status_code in (302, 303)
    replay = httpx2.Client(base_url=console.url, cookies=cookies, follow_redirects=False)
    replayed = replay.post(f"/approvals/{asked.approval_id}/decide", headers={"origin": console.url},
                           data={"decision": "approve", "reason": "replayed", "csrf_token": csrf})
    assert replayed.status_code == 403
    assert server.authorize(merge(902, approval_id=asked.approval_id)).decision == pb.DECISION_REQUIRE_APPROVAL


def test_the_user_the_agent_acts_for_cannot_approve_its_request(site: Site) -> None:
    server, console, people = site
    asked = ask(server, 903)
    bob = Client(console).signin(people["bob"])
    assert f'id="{asked.approval_id}"' not in bob.get("/approvals").text  # not in his inbox
    page = bob.get(f"/approvals/{asked.approval_id}")
    assert 'value="approve"' not in page.text and "principal user" in text_of(page)
    refused = decide(bob, asked.approval_id, "approve", "my own agent")
    assert refused.status_code == 403 and "principal user" in text_of(refused)
    assert server.authorize(merge(903, approval_id=asked.approval_id)).decision == pb.DECISION_REQUIRE_APPROVAL
    audit = text_of(Client(console).signin(people["ada"]).get("/audit", actor="bob"))
    assert f"approval.refused {asked.approval_id}" in audit


def open_quorum(data_dir: Path, *, session: str) -> str:
    """An approval asking for two approvers, opened in the store as a decision would (another connection)."""
    state = open_local_state(data_dir)
    try:
        opened = asyncio.run(state.approvals.open(
            request_digest="digest-q", kind="tool", principal={"agent_id": "release-bot", "session_id": session,
                                                              "user": "bob"},
            action={"server": "github", "name": "merge_pull_request", "arguments": {"pullNumber": 77}},
            approvers=["group:release-managers", "group:sre-oncall"], ttl_seconds=600, opened_by="dec-q",
            required=2))
        assert opened is not None
        return opened.id
    finally:
        state.close()


def test_a_quorum_of_two_needs_two_distinct_people(site: Site) -> None:
    server, console, people = site
    approval_id = open_quorum(server.data_dir, session="s-quorum")
    rita, sam = Client(console).signin(people["rita"]), Client(console).signin(people["sam"])
    rita.get("/approvals")
    assert "0 of 2 approvals" in card(rita.get("/approvals"), approval_id)
    assert decide(rita, approval_id, "approve", "looks right").status_code == 303
    again = decide(rita, approval_id, "approve", "really")  # the same person twice counts once
    assert again.status_code == 303 and "done=pending" in again.headers["location"]
    mine = card(rita.get("/approvals"), approval_id)
    assert "1 of 2 approvals" in mine and "You approved it; it waits for 1 more" in mine
    sam.get("/approvals")
    assert "1 of 2 approvals" in card(sam.get("/approvals"), approval_id)
    assert decide(sam, approval_id, "approve", "on call agrees").status_code == 303
    page = text_of(sam.get(f"/approvals/{approval_id}"))
    assert "Approved: decided by rita, sam" in page
    assert re.search(r"rita approved .*: looks right sam approved .*: on call agrees", page), page
