"""The console in a real browser (the issue's Tests): headless Chromium from Debian's package, driven by
Playwright, against a real `tollgate console` and a real `tollgate serve` sharing one data dir, with people made
by `tollgate users add`. Each scenario does what a person does: sign in, find, click, type; the sidecar's own
answers say whether it worked.

One sidecar and one console serve the whole module (each scenario works on its own session, agent or kill
switch, so scenarios do not see each other's effects). With TOLLGATE_SCREENSHOTS=1 (`make screenshots`) the
pages are also written to docs/console/*.png. Not marked `clock`: these are a person's steps on the system clock;
the time-sensitive parts (TTLs, days and months) have their own tests beside each page.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from playwright.sync_api import Locator, Page, expect

from tests.conftest import REGO, Server, start_server, tool_request, wait_for
from tests.console.conftest import Console, Person, add_users, screenshot, start_console
from tests.pg import free_port
from tollgate.client import Client, Decision
from tollgate.v1 import authorization_pb2 as pb

#: Who may approve what (the sidecar's approver_groups, read by the console too) and which group grants which
#: console role. dana is an approver, and also the user the release bot acts for in the separation-of-duties
#: scenario: she may never approve her own agent's request.
APPROVER_GROUPS = {"release-managers": ["rita", "raj", "dana"], "sre-oncall": ["sam"]}
ROLES = {"release-managers": "approver", "sre-oncall": "approver", "viewers": "viewer", "operators": "operator"}
PASSWORD = "correct horse battery staple"  # every test account's password
#: The agent whose requests need two people (a copy of release-bot's manifest asking for a quorum of two).
QUORUM_AGENT = "deploy-bot"


@dataclass(frozen=True)
class Delivery:
    """One POST the webhook receiver got: its headers and the body's exact bytes (what the signature covers)."""

    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.body)
        return found


class WebhookReceiver:
    """A generic webhook receiver on loopback: http.server in a thread, answering 200 to every POST."""

    def __init__(self) -> None:
        self.deliveries: list[Delivery] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver._lock:
                    receiver.deliveries.append(Delivery({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/hooks/tollgate"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def about(self, approval_id: str, event: str) -> list[Delivery]:
        with self._lock:
            return [d for d in self.deliveries
                    if d.json().get("type") == event and d.json().get("approval", {}).get("id") == approval_id]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Stack:
    """The module's sidecar and console, the people signed up on them, and the approvers' webhook receiver."""

    server: Server
    console: Console
    people: dict[str, Person]
    webhook: WebhookReceiver
    webhook_secret: bytes

    def url(self, path: str = "/") -> str:
        return self.console.url + path


def quorum_bundle(root: Path) -> Path:
    """The default library with one agent more: deploy-bot, release-bot's manifest asking for two approvers."""
    bundle = root / "rego"
    shutil.copytree(REGO, bundle)
    manifest = yaml.safe_load((bundle / "agents" / "release-bot" / "data.yaml").read_text())
    manifest["description"] = "Promotes builds to production; each promotion needs two people."
    manifest["approval"] = {**manifest["approval"], "required": 2}
    (bundle / "agents" / QUORUM_AGENT).mkdir()
    (bundle / "agents" / QUORUM_AGENT / "data.yaml").write_text(yaml.safe_dump(manifest))
    return bundle


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("browser")
    data = root / "data"
    webhook = WebhookReceiver()
    secret = secrets.token_hex(32).encode()
    secret_file = root / "webhook-secret"
    secret_file.write_bytes(secret)
    # The console's port is chosen first: the sidecar's notifications link to the console's pages.
    console_url = f"http://127.0.0.1:{free_port()}"
    config = {"approver_groups": APPROVER_GROUPS, "console": {"roles": ROLES}, "console_url": console_url,
              "notifications": [{"name": "approvers-hook", "url": webhook.url, "kind": "generic",
                                 "groups": ["release-managers"], "secret_file": str(secret_file)}]}
    server = start_server(data, bundle=quorum_bundle(root), config=config)
    console = start_console(data_dir=data, config_file=data.with_name(f"{data.name}.yaml"),
                            listen=console_url.removeprefix("http://"))
    people = add_users({"rita": ["release-managers"], "raj": ["release-managers"], "dana": ["release-managers"],
                        "vic": ["viewers"], "olga": ["operators"]}, PASSWORD, data_dir=data)
    yield Stack(server, console, {p.name: p for p in people}, webhook, secret)
    console.terminate()
    server.terminate()
    webhook.stop()


def sign_in(page: Page, stack: Stack, name: str, *, path: str = "/") -> None:
    """Open path as name: the console sends a person who is not signed in to the sign-in form first."""
    page.goto(stack.url(path))
    expect(page).to_have_url(re.compile(r"/signin"))
    page.get_by_label("Name").fill(name)
    page.get_by_label("Password").fill(stack.people[name].password)
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("header .who .name")).to_have_text(name)


def decided(response: pb.AuthorizeResponse) -> tuple[str, list[str]]:
    return pb.Decision.Name(response.decision), [r.code for r in response.reasons]


def test_an_operator_engages_a_kill_switch_with_a_confirmation_and_the_next_decision_is_denied(
        stack: Stack, browser_page: Page) -> None:
    page = browser_page
    session = "s-kill-browser"
    request = tool_request("code-reviewer", "github", "get_pull_request", {"owner": "acme", "repo": "app",
                                                                          "pullNumber": 3}, session_id=session)
    # Polled: the module's first decisions come from a freshly started engine on 2 shared cores.
    wait_for(lambda: decided(stack.server.authorize(request)) == ("DECISION_ALLOW", []), timeout=30,
             what="the sidecar to allow the session before anything is stopped")

    sign_in(page, stack, "olga", path="/kill-switches")
    form = page.locator("form.engage")
    form.get_by_label("Scope").select_option("session")
    form.get_by_label("Value").fill(session)
    form.get_by_label("Reason").fill("INC-42: runaway review loop")
    form.get_by_role("button", name="Engage").click()
    # The confirmation says what will stop; nothing has yet.
    expect(page.get_by_role("heading", name="Engage this kill switch?")).to_be_visible()
    expect(page.locator("main")).to_contain_text(session)
    assert "killed" not in decided(stack.server.authorize(request))[1]  # nothing is stopped yet
    screenshot(page, "kill-switch-confirm")
    page.get_by_role("button", name=f"Engage session={session}").click()

    expect(page.locator(".notice")).to_contain_text("Kill switch engaged")
    engaged = page.locator("table.list").first.locator("tr", has_text=session)
    expect(engaged).to_contain_text("INC-42: runaway review loop")
    expect(engaged).to_contain_text("olga")
    wait_for(lambda: decided(stack.server.authorize(request)) == ("DECISION_DENY", ["killed"]), timeout=10,
             what="the sidecar to deny the killed session")
    screenshot(page, "kill-switches")

    engaged.get_by_role("button", name="Lift").click()
    expect(page.get_by_role("heading", name="Lift this kill switch?")).to_be_visible()
    page.get_by_role("button", name=f"Lift session={session}").click()
    expect(page.locator(".notice")).to_contain_text("Kill switch lifted")
    wait_for(lambda: decided(stack.server.authorize(request))[0] == "DECISION_ALLOW", timeout=10,
             what="the sidecar to allow the session again")


def spend(stack: Stack, principal: pb.Principal, reserve: float, spent: float) -> str:
    """A budget step as a harness takes it: reserve, then report what it cost. The reserving decision's id."""
    asked = stack.server.authorize(pb.AuthorizeRequest(principal=principal, budget=pb.BudgetRequest(
        amount=reserve, unit="usd", category="model")))
    assert asked.decision == pb.DECISION_ALLOW and asked.reservation_id, asked
    stack.server.stub.ReportUsage(pb.ReportUsageRequest(reservation_id=asked.reservation_id, amount=spent),
                                  timeout=10)
    return asked.decision_id


def test_a_viewer_follows_a_session_from_sessions_now_to_its_timeline_and_a_denied_decisions_record(
        stack: Stack, browser_page: Page) -> None:
    page = browser_page
    who = {"user": "carol", "team": "platform", "workflow": "review"}
    session = "s-review-17"
    principal = pb.Principal(agent_id="code-reviewer", session_id=session, **who)  # type: ignore[arg-type]
    spend(stack, principal, 0.40, 0.32)
    read = stack.server.authorize(tool_request(arguments={"owner": "acme", "repo": "app", "pullNumber": 17},
                                               session_id=session, **who))
    assert decided(read) == ("DECISION_ALLOW", [])
    denied = stack.server.authorize(tool_request(name="merge_pull_request", arguments={"pullNumber": 17},
                                                 session_id=session, **who))
    assert decided(denied) == ("DECISION_DENY", ["tool_not_in_manifest"])
    other = pb.Principal(agent_id="code-reviewer", session_id="s-triage-4", user="una", team="data",
                         workflow="triage")
    spend(stack, other, 1.25, 0.90)

    sign_in(page, stack, "vic", path="/sessions")
    row = page.locator("table.sessions tbody tr", has_text=session)
    expect(row).to_contain_text("code-reviewer")
    expect(row).to_contain_text("carol")
    expect(row.locator("td.number").nth(0)).to_have_text("3")  # decisions
    expect(row.locator("td.number").nth(1)).to_have_text("1")  # denials
    expect(row.locator("td.spend")).to_contain_text("0.32 usd")
    screenshot(page, "sessions")

    row.get_by_role("link", name=session).click()
    expect(page.get_by_role("heading", name=f"Session {session}")).to_be_visible()
    steps = page.locator("table.timeline tbody tr")
    expect(steps).to_have_count(3)
    expect(page.locator("table.timeline")).to_contain_text("tool_not_in_manifest")
    screenshot(page, "timeline")

    page.get_by_role("link", name=denied.decision_id).click()
    expect(page).to_have_url(re.compile(re.escape(f"/decisions/{denied.decision_id}") + "$"))
    main = page.locator("main")
    expect(main).to_contain_text("tool_not_in_manifest")
    expect(main).to_contain_text("merge_pull_request")
    screenshot(page, "decision")

    page.locator("header nav").get_by_role("link", name="Decisions").click()
    page.get_by_label("Reason code").fill("tool_not_in_manifest")
    page.get_by_role("button", name="Search").click()
    expect(page.locator("table.decisions tbody")).to_contain_text(denied.decision_id)
    screenshot(page, "decisions")

    page.locator("header nav").get_by_role("link", name="Spend").click()
    page.get_by_label("By").select_option("team")
    page.get_by_role("button", name="Show").click()
    expect(page.locator("table.spend tbody tr", has_text="platform")).to_contain_text("0.32")
    expect(page.locator("table.spend tbody tr", has_text="data")).to_contain_text("0.9")
    screenshot(page, "spend")

    page.locator("header nav").get_by_role("link", name="Fleet").click()
    expect(page.locator("table.fleet tbody tr")).to_contain_text(stack.server.address.rsplit(":", 1)[-1])
    # docs/console/fleet.png is test_browser_fleet's: two sidecars on one PostgreSQL.

    # A viewer reads the kill switches but is offered no way to engage one.
    page.locator("header nav").get_by_role("link", name="Kill switches").click()
    expect(page.get_by_role("heading", name="Kill switches", exact=True)).to_be_visible()
    expect(page.get_by_role("heading", name="Engage a kill switch")).to_have_count(0)
    expect(page.get_by_role("button", name="Engage")).to_have_count(0)


def csrf_of(page: Page) -> str:
    """The CSRF token the signed-in person's page carries (every page has one: the sign-out form's)."""
    token = page.locator("input[name=csrf_token]").first.get_attribute("value")
    assert token
    return token


def forged_post(page: Page, stack: Stack, path: str, form: dict[str, str], *, csrf: str | None,
                origin: str | None = None) -> int:
    """A POST built by hand with the person's own session cookie (the page's context sends it), as a script
    or a curious person would: the status the console answered."""
    answer = page.request.post(stack.url(path), form={**form, **({"csrf_token": csrf} if csrf else {})},
                               headers={"origin": origin or stack.console.url}, max_redirects=0)
    return answer.status


def test_a_forged_kill_switch_post_is_refused_from_a_viewer_without_a_token_or_from_another_origin(
        stack: Stack, open_page: Callable[[], Page]) -> None:
    session = "s-forged-kill"
    request = tool_request(session_id=session)
    engage = {"scope": "session", "value": session, "reason": "forged", "confirm": "yes"}
    viewer, operator = open_page(), open_page()
    sign_in(viewer, stack, "vic", path="/kill-switches")
    sign_in(operator, stack, "olga", path="/kill-switches")
    assert forged_post(viewer, stack, "/kill-switches/engage", engage, csrf=csrf_of(viewer)) == 403  # no role
    assert forged_post(viewer, stack, "/kill-switches/engage", engage, csrf=None) == 403
    assert forged_post(operator, stack, "/kill-switches/engage", engage, csrf=None) == 403  # no token
    assert forged_post(operator, stack, "/kill-switches/engage", engage, csrf=csrf_of(viewer)) == 403  # not hers
    assert forged_post(operator, stack, "/kill-switches/engage", engage, csrf=csrf_of(operator),
                       origin="http://attacker.example") == 403
    assert decided(stack.server.authorize(request))[0] == "DECISION_ALLOW"
    viewer.reload()
    expect(viewer.locator("table.list").first).not_to_contain_text(session)


# Approvals.


def merge(pr: int, session: str, *, agent: str = "release-bot", user: str = "ursula",
          approval_id: str = "") -> pb.AuthorizeRequest:
    """The release bot's merge of pull request pr: a destructive tool call, so the policy asks a person."""
    request = tool_request(agent, "github", "merge_pull_request", {"owner": "acme", "repo": "payments-api",
                                                                    "pullNumber": pr, "merge_method": "squash"},
                           session_id=session, user=user, team="release-eng", workflow="release")
    request.approval_id = approval_id
    return request


def open_approval(stack: Stack, request: pb.AuthorizeRequest) -> str:
    asked = stack.server.authorize(request)
    assert asked.decision == pb.DECISION_REQUIRE_APPROVAL and asked.approval_id, asked
    return asked.approval_id


def reask(stack: Stack, request: pb.AuthorizeRequest, approval_id: str) -> tuple[str, list[str]]:
    again = pb.AuthorizeRequest()
    again.CopyFrom(request)
    again.approval_id = approval_id
    return decided(stack.server.authorize(again))


class Harness:
    """An agent's harness blocked in WaitForApproval (the Python client's authorize_with_approval) in a thread."""

    def __init__(self, stack: Stack, request: pb.AuthorizeRequest) -> None:
        self.client = Client(stack.server.address, timeout=10)
        self.opened = threading.Event()
        self.approval_id = ""
        self.answer: Decision | None = None
        self.answered_at = 0.0

        def pending(decision: Decision) -> None:
            self.approval_id = decision.approval_id
            self.opened.set()

        def run() -> None:
            self.answer = self.client.authorize_with_approval(request, wait=90, on_pending=pending)
            self.answered_at = time.monotonic()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert self.opened.wait(30), "the harness's first ask did not open an approval"

    def join(self) -> Decision:
        self.thread.join(30)
        assert self.answer is not None, "the harness is still waiting"
        self.client.close()
        return self.answer


def card(page: Page, approval_id: str) -> Locator:
    return page.locator(f'section.approval[data-approval="{approval_id}"]')


def test_an_approver_finds_the_request_by_its_pull_request_number_approves_it_and_the_waiting_harness_is_allowed(
        stack: Stack, browser_page: Page) -> None:
    page = browser_page
    session = "s-release-24"
    others = [open_approval(stack, merge(pr, session)) for pr in (4117, 4119)]
    harness = Harness(stack, merge(4118, session))
    approval_id = harness.approval_id

    sign_in(page, stack, "rita", path="/approvals")
    for shown in (*others, approval_id):
        expect(card(page, shown)).to_be_visible()
    screenshot(page, "inbox")
    page.get_by_label("Find by a value of the request").fill("4118")
    page.get_by_role("button", name="Find").click()
    expect(page.locator("section.approval")).to_have_count(1)
    found = card(page, approval_id)
    request = found.locator("pre.request")
    expect(request).to_contain_text('"pullNumber": 4118')  # an integer, as the harness sent it
    expect(request).not_to_contain_text("4118.0")
    expect(found).to_contain_text("ursula")
    expect(found).to_contain_text(session)
    expect(found.locator("ul.reasons")).to_contain_text("destructive_action")

    found.locator("a", has_text="merge_pull_request").click()
    expect(page).to_have_url(re.compile(re.escape(f"/approvals/{approval_id}") + "$"))
    screenshot(page, "approval")
    page.get_by_label("Reason").fill("release 2.4: CI green, change window open")
    clicked = time.monotonic()
    page.get_by_role("button", name="Approve").click()
    expect(page.locator(".notice")).to_contain_text(f"Approved {approval_id}")

    answer = harness.join()
    assert (answer.decision, [r.code for r in answer.reasons]) == ("allow", ["approved"]), answer
    heard = harness.answered_at - clicked
    print(f"the harness in WaitForApproval was allowed {heard:.2f} s after the click")
    assert heard < 5, heard  # "within a second" on an idle machine; 2 cores shared by the whole suite here
    still = reask(stack, merge(4117, session), others[0])  # the other pull requests wait on
    assert still[0] == "DECISION_REQUIRE_APPROVAL" and "approval_pending" in still[1], still
    page.goto(stack.url("/approvals/history"))
    row = page.locator("table.history tbody tr", has_text=approval_id)
    expect(row).to_contain_text("rita")
    expect(row).to_contain_text("release 2.4: CI green")


def decide_form(approval_id: str, choice: str = "approve") -> tuple[str, dict[str, str]]:
    return f"/approvals/{approval_id}/decide", {"decision": choice, "reason": "forged", "back": "approval"}


def test_a_viewer_sees_no_approve_button_and_her_forged_posts_are_refused(stack: Stack, browser_page: Page) -> None:
    page = browser_page
    request = merge(4201, "s-viewer-1")
    approval_id = open_approval(stack, request)

    sign_in(page, stack, "vic", path=f"/approvals/{approval_id}")
    shown = card(page, approval_id)
    expect(shown.locator("pre.request")).to_contain_text('"pullNumber": 4201')
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    expect(page.get_by_role("button", name="Deny")).to_have_count(0)
    expect(page.get_by_label("Reason")).to_have_count(0)
    page.goto(stack.url("/approvals"))
    expect(page.locator("main")).to_contain_text("You have no approver role")

    path, form = decide_form(approval_id)
    assert forged_post(page, stack, path, form, csrf=csrf_of(page)) == 403
    assert forged_post(page, stack, path, form, csrf=None) == 403
    assert reask(stack, request, approval_id)[1][0] == "approval_pending"


def test_the_user_an_agent_acts_for_cannot_approve_its_request_even_as_an_approver(
        stack: Stack, open_page: Callable[[], Page]) -> None:
    page = open_page()
    request = merge(4301, "s-dana-1", user="dana")  # dana is a release manager, and the bot acts for her
    approval_id = open_approval(stack, request)

    sign_in(page, stack, "dana", path="/approvals")
    expect(card(page, approval_id)).to_have_count(0)  # not in her inbox
    page.goto(stack.url(f"/approvals/{approval_id}"))
    expect(card(page, approval_id)).to_contain_text("You cannot decide it")
    expect(page.get_by_role("button", name="Approve")).to_have_count(0)
    path, form = decide_form(approval_id)
    assert forged_post(page, stack, path, form, csrf=csrf_of(page)) == 403
    assert reask(stack, request, approval_id)[1][0] == "approval_pending"

    rita = open_page()
    sign_in(rita, stack, "rita", path=f"/approvals/{approval_id}")
    rita.get_by_label("Reason").fill("dana's release, checked by rita")
    rita.get_by_role("button", name="Approve").click()
    expect(rita.locator(".notice")).to_contain_text(f"Approved {approval_id}")
    assert reask(stack, request, approval_id) == ("DECISION_ALLOW", ["approved"])



def test_a_quorum_of_two_needs_two_people_and_one_person_twice_counts_once(
        stack: Stack, open_page: Callable[[], Page]) -> None:
    request = merge(4401, "s-deploy-1", agent=QUORUM_AGENT)
    approval_id = open_approval(stack, request)
    rita, raj = open_page(), open_page()

    sign_in(rita, stack, "rita", path="/approvals")
    shown = card(rita, approval_id)
    expect(shown.locator(".tally")).to_have_text("0 of 2 approvals")
    expect(shown).to_contain_text("2 distinct people must approve")
    shown.get_by_label("Reason").fill("rollout plan reviewed")
    shown.get_by_role("button", name="Approve").click()
    expect(rita.locator(".notice")).to_contain_text("waits for more approvers")
    expect(card(rita, approval_id).locator(".tally")).to_have_text("1 of 2 approvals")
    assert reask(stack, request, approval_id)[1][0] == "approval_pending"
    # Her second say is no second approval: the page offers her no Approve, and a hand-built one counts once.
    rita.goto(stack.url(f"/approvals/{approval_id}"))
    expect(card(rita, approval_id)).to_contain_text("You approved it; it waits for 1 more")
    expect(rita.get_by_role("button", name="Approve")).to_have_count(0)
    path, form = decide_form(approval_id)
    again = forged_post(rita, stack, path, form, csrf=csrf_of(rita))
    assert again < 500, again
    rita.reload()
    expect(card(rita, approval_id).locator(".tally")).to_have_text("1 of 2 approvals")
    assert reask(stack, request, approval_id)[1][0] == "approval_pending"
    screenshot(rita, "approval-quorum")

    sign_in(raj, stack, "raj", path=f"/approvals/{approval_id}")
    raj.get_by_label("Reason").fill("second pair of eyes: ok")
    raj.get_by_role("button", name="Approve").click()
    expect(raj.locator(".notice")).to_contain_text(f"Approved {approval_id}")
    assert reask(stack, request, approval_id) == ("DECISION_ALLOW", ["approved"])
    raj.goto(stack.url("/approvals/history"))
    row = raj.locator("table.history tbody tr", has_text=approval_id)
    expect(row).to_contain_text("rita approved")
    expect(row).to_contain_text("raj approved")
    screenshot(raj, "approvals-history")


def signature_holds(secret: bytes, header: str, body: bytes) -> bool:
    """The receiver's check as docs/CONSOLE.md tells one to write it: HMAC-SHA256 over TIMESTAMP.BODY, fresh."""
    fields = dict(part.strip().partition("=")[::2] for part in header.split(","))
    expected = hmac.new(secret, fields.get("t", "").encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", "")) and abs(time.time() - int(fields["t"])) <= 300


def test_a_webhook_receiver_gets_a_signed_notification_whose_link_opens_the_approval(
        stack: Stack, browser_page: Page) -> None:
    page = browser_page
    request = merge(4501, "s-hook-1")
    approval_id = open_approval(stack, request)
    wait_for(lambda: bool(stack.webhook.about(approval_id, "approval.opened")), timeout=30,
             what="the approval.opened notification")
    (opened,) = stack.webhook.about(approval_id, "approval.opened")
    assert signature_holds(stack.webhook_secret, opened.headers["x-tollgate-signature"], opened.body)
    assert not signature_holds(b"another secret of 32 bytes......", opened.headers["x-tollgate-signature"],
                               opened.body)
    assert not signature_holds(stack.webhook_secret, opened.headers["x-tollgate-signature"],
                               opened.body.replace(b"4501", b"4502"))
    event = opened.json()
    assert event["url"] == stack.url(f"/approvals/{approval_id}")
    assert event["approval"]["id"] == approval_id

    page.goto(event["url"])  # the link, as the approver clicks it in the message: sign in, then the approval
    page.get_by_label("Name").fill("raj")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(event["url"])
    expect(card(page, approval_id).locator("pre.request")).to_contain_text('"pullNumber": 4501')
    page.get_by_label("Reason").fill("not in this release")
    page.get_by_role("button", name="Deny").click()
    expect(page.locator(".notice")).to_contain_text(f"Denied {approval_id}")
    assert reask(stack, request, approval_id)[0] == "DECISION_DENY"
    wait_for(lambda: bool(stack.webhook.about(approval_id, "approval.decided")), timeout=30,
             what="the approval.decided notification")
    (closed,) = stack.webhook.about(approval_id, "approval.decided")
    assert signature_holds(stack.webhook_secret, closed.headers["x-tollgate-signature"], closed.body)
    assert closed.json()["approval"]["status"] == "denied"


#: Markup an agent might put into an argument: it must reach the approver as text, and nothing of it may run.
MARKUP = ('<script>window.pwned = "script"</script><img src=x onerror="window.pwned = \'img\'">'
          '<a href="javascript:window.pwned = \'link\'">click</a>')


def test_markup_and_a_huge_value_in_an_argument_reach_the_approver_as_text_and_run_nothing(
        stack: Stack, browser_page: Page) -> None:
    page = browser_page
    violations: list[str] = []
    page.on("console", lambda message: violations.append(message.text) if "Content Security Policy" in
            message.text else None)
    request = merge(4601, "s-markup-1")
    request.tool.arguments.update({"commit_title": MARKUP, "commit_message": "y" * 60_000})
    approval_id = open_approval(stack, request)

    sign_in(page, stack, "rita", path=f"/approvals/{approval_id}")
    shown = card(page, approval_id).locator("pre.request")
    expect(shown).to_contain_text(json.dumps(MARKUP)[1:-1][:40])
    expect(shown).to_contain_text("y" * 1000)
    assert page.evaluate("() => window.pwned") is None
    assert page.locator("main img, main script, main a[href^='javascript']").count() == 0
    page.goto(stack.url("/approvals"))
    expect(card(page, approval_id)).to_be_visible()
    assert page.evaluate("() => window.pwned") is None
    assert violations == []  # nothing even tried to run (the CSP would have blocked and reported it)


def test_a_session_cookie_replayed_after_sign_out_opens_nothing(stack: Stack,
                                                                open_page: Callable[[], Page]) -> None:
    page = open_page()
    sign_in(page, stack, "rita", path="/approvals")
    cookies = page.context.cookies()
    assert cookies and all(c["httpOnly"] for c in cookies)
    page.get_by_role("button", name="Sign out").click()
    expect(page).to_have_url(re.compile(r"/signin"))

    replay = open_page()
    replay.context.add_cookies(cookies)  # type: ignore[arg-type]  # a Cookie has every field SetCookieParam needs
    replay.goto(stack.url("/approvals"))
    expect(replay).to_have_url(re.compile(r"/signin"))
    expect(replay.get_by_role("button", name="Sign in")).to_be_visible()
    assert forged_post(replay, stack, "/kill-switches/engage", {"scope": "all", "value": "", "reason": "replay",
                                                                 "confirm": "yes"}, csrf=None) == 403
