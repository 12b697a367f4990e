"""The console of a fleet in a real browser: two real sidecars and a real console on one real PostgreSQL (the
shared state store), Debian's headless Chromium through Playwright. An approval opened at one sidecar is decided
by a person in the console, and a harness waiting at the other sidecar hears it and is allowed there; the Fleet
page shows both sidecars. (test_browser.py has the scenarios on the embedded default, SQLite in a data dir.)
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import TOLLGATE, Server, start_server, tool_request
from tests.console.conftest import Console, add_users, screenshot, start_console, write_config
from tests.pg import PostgresServer
from tollgate.client import ApprovalState, Client
from tollgate.v1 import authorization_pb2 as pb

PASSWORD = "correct horse battery staple"  # every test account's password


@dataclass
class Fleet:
    sidecars: tuple[Server, Server]
    console: Console


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, postgres: PostgresServer) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("browser-fleet")
    url = postgres.database()
    migrated = subprocess.run([*TOLLGATE, "state", "migrate", "--state-store", url], capture_output=True, text=True,
                              timeout=120)
    assert migrated.returncode == 0, migrated.stderr
    config = {"approver_groups": {"release-managers": ["rita"]}, "state_store": url,
              "console": {"roles": {"release-managers": "approver"}}}
    sidecars = tuple(start_server(root / name, config=config, extra=["--sidecar-id", name, "--fleet-heartbeat", "1"])
                     for name in ("fleet-a", "fleet-b"))
    console = start_console(config_file=write_config(root / "console.yaml", config))
    add_users({"rita": ["release-managers"]}, PASSWORD, state_store=url)
    yield Fleet((sidecars[0], sidecars[1]), console)
    console.terminate()
    for sidecar in sidecars:
        sidecar.terminate()


def merge(pr: int, approval_id: str = "") -> pb.AuthorizeRequest:
    request = tool_request("release-bot", "github", "merge_pull_request", {"owner": "acme", "repo": "app",
                                                                           "pullNumber": pr},
                           session_id="s-fleet-release", user="ursula", team="release-eng", workflow="release")
    request.approval_id = approval_id
    return request


def test_an_approval_opened_at_one_sidecar_and_approved_in_the_console_allows_the_harness_waiting_at_another(
        fleet: Fleet, browser_page: Page) -> None:
    a, b = fleet.sidecars
    asked = a.authorize(merge(5101))
    assert asked.decision == pb.DECISION_REQUIRE_APPROVAL and asked.approval_id, asked
    heard: list[tuple[ApprovalState, float]] = []

    def wait_at_b() -> None:
        with Client(b.address, timeout=10) as client:
            heard.append((client.wait_for_approval(asked.approval_id, 60), time.monotonic()))

    waiting = threading.Thread(target=wait_at_b, daemon=True)
    waiting.start()

    page = browser_page
    page.goto(fleet.console.url + "/approvals")
    page.get_by_label("Name").fill("rita")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.get_by_label("Find by a value of the request").fill("5101")
    page.get_by_role("button", name="Find").click()
    found = page.locator(f'section.approval[data-approval="{asked.approval_id}"]')
    expect(found.locator("pre.request")).to_contain_text('"pullNumber": 5101')
    found.get_by_label("Reason").fill("fleet release, CI green")
    clicked = time.monotonic()
    found.get_by_role("button", name="Approve").click()
    expect(page.locator(".notice")).to_contain_text(f"Approved {asked.approval_id}")

    waiting.join(30)
    assert heard, "the harness at the other sidecar is still waiting"
    state, at = heard[0]
    assert state.status == "approved", state
    print(f"the harness waiting at the other sidecar heard the approval {at - clicked:.2f} s after the click")
    allowed = b.authorize(merge(5101, asked.approval_id))
    assert allowed.decision == pb.DECISION_ALLOW and [r.code for r in allowed.reasons] == ["approved"], allowed
    used = a.authorize(merge(5101, asked.approval_id))  # used once, fleet-wide
    assert used.decision == pb.DECISION_DENY and [r.code for r in used.reasons] == ["approval_used"], used

    page.locator("header nav").get_by_role("link", name="Fleet").click()
    for name, sidecar in (("fleet-a", a), ("fleet-b", b)):
        row = page.locator("table.fleet tbody tr").filter(
            has=page.locator("td.ident", has_text=re.compile(f"^{name}$")))
        expect(row).to_contain_text(sidecar.address)
        expect(row).to_contain_text("serving")
    screenshot(page, "fleet")

