"""Approval notifications: signed webhooks and Slack messages from the outbox, against real sidecars and a real HTTP
receiver on loopback: what is sent and how it is signed, retries while the receiver is down (across a restart of
the sidecar, from the persisted outbox), and one delivery per event from two sidecars sharing PostgreSQL."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from tests.conftest import TOLLGATE, Server, start_server, tool_request, wait_for
from tests.pg import free_port
from tollgate.clock import ManualClock
from tollgate.sidecar.config import ServeConfig, load_config
from tollgate.sidecar.notify import (
    SIGNATURE_HEADER,
    Notifier,
    NotifyMetrics,
    Receiver,
    hears,
    parse_receivers,
    receivers_from,
    sign,
    slack_body,
    verify_signature,
)
from tollgate.state import LocalApprovals, StateStore
from tollgate.state._outbox import DEAD, DELIVERED, OPENED, LocalOutbox, Outbox, OutboxEvent
from tollgate.state.approvals import Approvals
from tollgate.v1 import authorization_pb2 as pb

GROUPS = {"release-managers": ["rita"], "sre-oncall": ["sam"]}
CONSOLE = "http://console.example:8181"
SECRET = b"a-webhook-secret-of-32-bytes-0123"


class Received:
    """One POST the receiver got."""

    def __init__(self, path: str, headers: dict[str, str], body: bytes) -> None:
        self.path, self.headers, self.body = path, headers, body

    @property
    def json(self) -> dict[str, Any]:
        found: dict[str, Any] = json.loads(self.body)
        return found


class WebhookReceiver:
    """A real HTTP server on loopback that records every POST; stop() and start() keep its port. While `hold` is
    clear, it reads each request and then keeps the sender waiting (a receiver that hangs)."""

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.port = 0
        self.hold = threading.Event()
        self.hold.set()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        received, hold = self.received, self.hold

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                received.append(Received(self.path, dict(self.headers.items()), body))
                hold.wait(30)
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self._server.server_address[1]
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self._server is not None
        self.hold.set()
        self._server.shutdown()
        self._server.server_close()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def at(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver()
    hook.start()
    yield hook
    hook.stop()


def notify_config(hook: WebhookReceiver, secret_file: Path) -> dict[str, Any]:
    return {"approver_groups": GROUPS, "console_url": CONSOLE, "notifications": [
        {"name": "hook", "url": hook.url("/hook"), "kind": "generic", "groups": ["release-managers"],
         "secret_file": str(secret_file)},
        {"name": "slack", "url": hook.url("/slack/T0/B0/secret"), "kind": "slack", "groups": ["sre-oncall"]},
        {"name": "other-team", "url": hook.url("/other"), "kind": "slack", "groups": ["support-leads"]}]}


def merge(pr: int, session: str = "s-1") -> pb.AuthorizeRequest:
    return tool_request("release-bot", "github", "merge_pull_request",
                        {"owner": "acme", "repo": "app", "pullNumber": pr}, session_id=session, user="bob")


def open_approval(server: Server, pr: int, session: str = "s-1") -> str:
    answer = server.authorize(merge(pr, session))
    assert answer.decision == pb.DECISION_REQUIRE_APPROVAL, answer
    return answer.approval_id


def outbox_rows(data_dir: Path) -> list[tuple[Any, ...]]:
    with sqlite3.connect(data_dir / "state.db") as db:
        return db.execute("SELECT type, approval_id, status, attempts, last_error FROM outbox ORDER BY id").fetchall()


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "webhook.secret"
    path.write_bytes(SECRET + b"\n")
    return path


# -- what is sent ----------------------------------------------------------------------------------------


def test_a_signature_verifies_and_a_changed_body_or_a_replay_past_five_minutes_does_not() -> None:
    body = b'{"id":"evt_1"}'
    header = sign(SECRET, body, timestamp=1_800_000_000)
    assert header.startswith("t=1800000000, v1=")
    assert verify_signature(SECRET, header, body, now=1_800_000_299) == ""
    assert "does not match" in verify_signature(SECRET, header, body + b" ", now=1_800_000_000)
    assert "does not match" in verify_signature(b"another secret of some length", header, body, now=1_800_000_000)
    assert "replay" in verify_signature(SECRET, header, body, now=1_800_000_301)
    assert "no t=" in verify_signature(SECRET, "v1=abc", body, now=1_800_000_000)


def test_a_slack_message_links_the_approval_and_escapes_what_the_agent_wrote() -> None:
    event = OutboxEvent(id="evt_1", type=OPENED, approval_id="apr_1", created_at="2026-01-01T00:00:00.000000Z",
                        payload={"id": "apr_1", "kind": "tool", "principal": {"agent_id": "release-bot",
                                                                              "session_id": "s-1"},
                                 "action": {"server": "github", "name": "merge_pull_request",
                                            "arguments": {"title": "<!channel> <http://evil|click> & co",
                                                          "pullNumber": 7}},
                                 "expires_at": "2026-01-01T00:30:00.000000Z"})
    text = json.loads(slack_body(event, link=f"{CONSOLE}/approvals/apr_1"))["text"]
    assert text.startswith("Approval needed: github/merge_pull_request pullNumber=7, title=")
    assert "<!channel>" not in text and "&lt;!channel&gt;" in text and "&amp; co" not in text  # cut at 24
    assert "<http://evil" not in text
    assert text.endswith(f"<{CONSOLE}/approvals/apr_1|apr_1>")


@pytest.mark.parametrize(("entry", "message"), [
    ({"kind": "generic", "groups": ["sre"]}, r"notifications\[0\].url: must be an http"),
    ({"url": "ftp://x", "groups": ["sre"]}, "must be an http"),
    ({"url": "http://x", "kind": "email", "groups": ["sre"]}, "kind: must be one of generic, slack"),
    ({"url": "http://x", "kind": "slack", "groups": []}, "groups: must be a non-empty list"),
    ({"url": "http://x", "kind": "generic", "groups": ["sre"]}, "secret_file: required for a generic receiver"),
    ({"url": "http://x", "kind": "slack", "groups": ["sre"], "secret_file": "/nonexistent"}, "not a readable file"),
    ({"url": "http://x", "kind": "slack", "groups": ["sre"], "token": "t"}, "unknown keys token"),
], ids=["no-url", "not-http", "kind", "no-groups", "generic-needs-secret", "secret-missing", "unknown-key"])
def test_a_receiver_entry_that_cannot_be_used_is_refused_naming_its_key(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_receivers([entry])


def test_a_short_secret_or_a_bad_console_url_is_a_configuration_error(tmp_path: Path) -> None:
    short = tmp_path / "short"
    short.write_text("tiny")
    entry = {"url": "http://x", "kind": "generic", "groups": ["sre"], "secret_file": str(short)}
    with pytest.raises(ValueError, match="under 16 bytes"):
        receivers_from(ServeConfig(notifications=[entry]))
    with pytest.raises(ValueError, match="console_url: must be an http"):
        receivers_from(ServeConfig(console_url="console.example"))
    assert receivers_from(ServeConfig(notifications='[{"url": "http://x", "kind": "slack", "groups": ["*"]}]'  # type: ignore[arg-type]
                                      ))[0].name.startswith("receiver-")


@pytest.mark.parametrize(("groups", "approvers", "heard"), [
    (("sre",), ["group:sre"], True),
    (("sre",), ["group:dev"], False),
    (("sre",), ["carol"], True),  # a member of sre named on their own
    (("*",), ["group:dev"], True),
], ids=["group", "other-group", "member", "every"])
def test_a_receiver_hears_of_the_approvals_its_groups_may_decide(groups: tuple[str, ...], approvers: list[str],
                                                                 heard: bool) -> None:
    receiver = Receiver(name="r", url="http://x", kind="slack", groups=groups)
    assert hears(receiver, {"approvers": approvers}, {"sre": ["carol"]}) is heard


# -- on real sidecars ------------------------------------------------------------------------------------


def test_an_approval_opened_at_a_sidecar_reaches_its_groups_receivers_signed_with_a_link_to_its_page(
        tmp_path: Path, receiver: WebhookReceiver, secret_file: Path) -> None:
    server = start_server(tmp_path / "data", config=notify_config(receiver, secret_file))
    try:
        approval_id = open_approval(server, 4711)
        wait_for(lambda: len(receiver.at("/hook")) == 1 and len(receiver.at("/slack/T0/B0/secret")) == 1,
                 timeout=30, what="the opened approval's notifications")
        (hook,) = receiver.at("/hook")
        _, latest = server.clock_range()  # the signature's timestamp is the sidecar's clock
        assert verify_signature(SECRET, hook.headers[SIGNATURE_HEADER], hook.body, now=latest.timestamp()) == ""
        event = hook.json
        assert (event["type"], event["url"]) == (OPENED, f"{CONSOLE}/approvals/{approval_id}")
        assert hook.headers["X-Tollgate-Event-Id"] == event["id"] and hook.headers["X-Tollgate-Event"] == OPENED
        approval = event["approval"]
        assert (approval["id"], approval["status"], approval["principal"]["session_id"]) == (approval_id, "pending",
                                                                                          "s-1")
        assert approval["action"]["arguments"]["pullNumber"] == 4711  # an integer stays one
        slack = receiver.at("/slack/T0/B0/secret")[0].json["text"]
        assert "pullNumber=4711" in slack and f"<{CONSOLE}/approvals/{approval_id}|{approval_id}>" in slack
        assert SIGNATURE_HEADER not in receiver.at("/slack/T0/B0/secret")[0].headers
        assert receiver.at("/other") == []  # support-leads decide none of release-bot's requests
        # Expiry, found by the sweep: the clock moves past the TTL (30 minutes in the library's manifest).
        server.advance_clock(1801)
        wait_for(lambda: len(receiver.at("/hook")) == len(receiver.at("/slack/T0/B0/secret")) == 2, timeout=30,
                 what="the expiry notifications")
        assert receiver.at("/hook")[1].json["type"] == "approval.expired"
        assert "expired undecided" in receiver.at("/slack/T0/B0/secret")[1].json["text"]
        wait_for(lambda: all(row[2] == DELIVERED for row in outbox_rows(server.data_dir)), timeout=30,
                 what="the outbox settled")
        assert "/slack/T0/B0/secret" not in server.stderr  # a Slack webhook URL is a secret: never logged
    finally:
        server.terminate()


def test_a_hanging_receiver_slows_no_decision_and_the_metrics_show_the_lag(tmp_path: Path, receiver: WebhookReceiver,
                                                                          secret_file: Path) -> None:
    receiver.hold.clear()  # every delivery now waits (up to the sender's 10 s timeout)
    server = start_server(tmp_path / "data", config={**notify_config(receiver, secret_file),
                                                      "metrics_listen": "127.0.0.1:0"})
    try:
        started = time.monotonic()
        for pr in range(5):
            open_approval(server, 300 + pr, session=f"s-hang-{pr}")
        assert time.monotonic() - started < 5, "a decision waited for a notification"
        wait_for(lambda: len(receiver.received) >= 1, timeout=30, what="the first delivery to hang")
        found = re.search(r"metrics on http://(\S+)/metrics", server.stderr)
        assert found is not None, server.stderr

        def scrape() -> str:
            with urllib.request.urlopen(f"http://{found.group(1)}/metrics", timeout=10) as answer:
                text: str = answer.read().decode()
            return text

        wait_for(lambda: "tollgate_notifications_pending 5.0" in scrape(), timeout=30, what="the backlog")
        assert re.search(r"tollgate_notifications_lag_seconds \d", scrape())
        receiver.hold.set()
        wait_for(lambda: "tollgate_notifications_pending 0.0" in scrape(), timeout=60, what="the backlog sent")
        assert 'tollgate_notifications_sent_total{kind="generic",result="delivered"} 5.0' in scrape()
    finally:
        receiver.hold.set()
        server.terminate()


def test_a_receiver_down_is_retried_and_gets_the_event_once_back_up_after_the_sidecar_restarted(
        tmp_path: Path, receiver: WebhookReceiver, secret_file: Path) -> None:
    config = notify_config(receiver, secret_file)
    receiver.stop()  # down: connections refused
    data = tmp_path / "data"
    server = start_server(data, config=config)
    try:
        approval_id = open_approval(server, 12)
        wait_for(lambda: any(row[3] >= 2 for row in outbox_rows(data)), timeout=30, what="two failed attempts")
        (row,) = outbox_rows(data)
        assert row[:3] == (OPENED, approval_id, "pending") and "Connection refused" in row[4]
        assert "notifications: approval.opened" in server.stderr and "retry in" in server.stderr
    finally:
        assert server.terminate() == 0
    receiver.start()  # back, on the same port
    server = start_server(data, config=config)  # the event was on disk, not in the old process
    try:
        wait_for(lambda: outbox_rows(data)[0][2] == DELIVERED, timeout=30, what="delivery after the restart")
        assert [r.json["approval"]["id"] for r in receiver.at("/hook")] == [approval_id]
        assert len(receiver.at("/slack/T0/B0/secret")) == 1
    finally:
        server.terminate()


def test_two_sidecars_on_one_postgresql_send_each_event_once(tmp_path: Path, pg_url: str,
                                                             receiver: WebhookReceiver, secret_file: Path) -> None:
    migrated = subprocess.run([*TOLLGATE, "state", "migrate", "--state-store", pg_url], capture_output=True,
                              text=True, timeout=60)
    assert migrated.returncode == 0, migrated.stderr
    config = {**notify_config(receiver, secret_file), "state_store": pg_url}
    servers = [start_server(tmp_path / name, config=config, extra=["--workers", "1", "--sidecar-id", name])
               for name in ("a", "b")]
    try:
        opened = [open_approval(servers[n % 2], 100 + n, session=f"s-{n}") for n in range(12)]
        wait_for(lambda: {r.json["approval"]["id"] for r in receiver.at("/hook")} == set(opened), timeout=60,
                 what="every approval's notification")
    finally:
        for server in servers:
            server.terminate()  # a send in flight finishes (or is released) before the process ends
    ids = [r.json["id"] for r in receiver.at("/hook")]
    assert len(ids) == len(set(ids)) == 12, "an event was sent twice"
    assert len(receiver.at("/slack/T0/B0/secret")) == 12


def test_links_name_the_console_sections_base_url_unless_console_url_says_otherwise(tmp_path: Path) -> None:
    config = tmp_path / "tollgate.yaml"
    config.write_text("console:\n  base_url: https://tollgate.example.com\n")
    assert load_config(str(config), {}).console_url == "https://tollgate.example.com"
    config.write_text("console_url: https://elsewhere.example\nconsole:\n  base_url: https://tollgate.example.com\n")
    assert load_config(str(config), {}).console_url == "https://elsewhere.example"
    assert load_config(str(config), {"console_url": "https://flag.example"}).console_url == "https://flag.example"


def test_a_receiver_that_never_answers_is_retried_then_the_event_is_dead_and_counted(tmp_path: Path) -> None:
    clock = ManualClock(datetime(2026, 12, 31, 12, tzinfo=UTC))
    store = StateStore(tmp_path / "state.db")
    registry = CollectorRegistry()
    closed = Receiver(name="closed", url=f"http://127.0.0.1:{free_port()}/hook", kind="slack", groups=("*",))
    outbox = LocalOutbox(Outbox(store, clock=clock))
    notifier = Notifier(outbox, [closed], owner="me", console_url="", approver_groups={}, max_attempts=2,
                        clock=clock, metrics=NotifyMetrics(registry, clock))

    async def main() -> None:
        await LocalApprovals(Approvals(store, clock=clock)).open(
            request_digest="d", kind="tool", principal={"agent_id": "a", "session_id": "s"},
            action={"server": "x", "name": "y"}, approvers=["group:sre"], ttl_seconds=60, opened_by="dec")
        assert await notifier.pass_once() == 1  # refused: due again after the backoff
        assert await notifier.pass_once() == 0
        clock.advance(2)  # the first retry's step is at most a second
        assert await notifier.pass_once() == 1
        (event,) = await outbox.events()
        assert (event.status, event.attempts) == (DEAD, 2) and "closed: " in event.last_error

    try:
        asyncio.run(main())
    finally:
        notifier.close()
        store.close()
    assert registry.get_sample_value("tollgate_notifications_sent_total", {"kind": "slack", "result": "failed"}) == 1
    assert registry.get_sample_value("tollgate_notifications_sent_total", {"kind": "slack", "result": "dead"}) == 1
