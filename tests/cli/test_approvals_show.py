"""`tollgate approvals show ID` prints the whole request a person decides on, and `approvals list` names each
approval's session and arguments: against a real sidecar, with integers kept integers and an agent's HTML or a
huge argument printed as text."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ADMIN_TOKEN, TOLLGATE, Server, start_server, tool_request
from tollgate.v1 import authorization_pb2 as pb

#: Each test reads time on a server (`clock`), but those marked so below: their token or time left is
#: worked out by a second process on the real clock (the CLI, the stand-in identity provider) while the year-end
#: pass starts the server's clock weeks ahead, which no deployment does.

GROUPS = {"release-managers": ["rita"], "sre-oncall": ["sam"]}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = start_server(tmp_path_factory.mktemp("show") / "data", config={"approver_groups": GROUPS})
    yield started
    started.terminate()


def tollgate(server: Server, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOLLGATE, "approvals", *argv, "--server", server.address], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN})


def ask(server: Server, arguments: dict[str, object], session: str) -> pb.AuthorizeResponse:
    answer = server.authorize(tool_request("release-bot", "github", "merge_pull_request", arguments,
                                           session_id=session, user="bob", team="payments"))
    assert answer.decision == pb.DECISION_REQUIRE_APPROVAL, answer
    return answer


# Not `clock`: see the note at the top of the module.
def test_show_prints_the_principal_the_arguments_as_json_the_reasons_the_approvers_and_the_time_left(
        server: Server) -> None:
    asked = ask(server, {"owner": "acme", "repo": "app", "pullNumber": 4711, "options": {"squash": True,
                                                                                          "labels": ["a", "b"]}},
                session="s-show")
    shown = tollgate(server, "show", asked.approval_id)
    assert shown.returncode == 0, shown.stderr
    out = shown.stdout
    assert re.match(rf"approval {asked.approval_id}  pending  expires \S+Z \(\d+m \d\ds left\)\n", out), out
    for line in ("  agent_id     release-bot", "  user         bob", "  team         payments",
                 "  session_id   s-show", '  request      tool github/merge_pull_request',
                 "  approvers    group:release-managers, group:sre-oncall",
                 f"  opened by    decision {asked.decision_id}"):
        assert line + "\n" in out, out
    assert '"pullNumber": 4711,' in out and "4711.0" not in out  # an integer stays one
    assert '               "squash": true' in out  # nested JSON, indented under its label
    for reason in asked.reasons:
        assert f"  reason       {reason.code}: {reason.message}\n" in out

    as_json = json.loads(tollgate(server, "show", asked.approval_id, "--json").stdout)
    assert as_json["action"]["arguments"]["pullNumber"] == 4711
    assert [r["code"] for r in as_json["reasons"]] == [r.code for r in asked.reasons]


@pytest.mark.clock
def test_list_names_each_approvals_session_and_a_short_summary_of_its_arguments(server: Server) -> None:
    first = ask(server, {"owner": "acme", "repo": "app", "pullNumber": 101}, session="s-list-1")
    second = ask(server, {"owner": "acme", "repo": "app", "pullNumber": 102}, session="s-list-2")
    listed = tollgate(server, "list", "--status", "pending", "--agent", "release-bot")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    for answer, session, pr in ((first, "s-list-1", 101), (second, "s-list-2", 102)):
        at = next(i for i, line in enumerate(lines) if line.startswith(answer.approval_id))
        assert lines[at + 1] == f"  session {session}  github/merge_pull_request owner=acme, pullNumber={pr}, repo=app"


@pytest.mark.clock
def test_an_agents_markup_and_a_huge_argument_are_printed_as_text_and_the_list_stays_short(server: Server) -> None:
    huge = "x" * 200_000
    asked = ask(server, {"title": "<script>alert(1)</script>", "body": huge, "pullNumber": 5}, session="s-odd")
    shown = tollgate(server, "show", asked.approval_id)
    assert shown.returncode == 0, shown.stderr
    assert '"title": "<script>alert(1)</script>"' in shown.stdout and huge in shown.stdout  # the whole request
    listed = tollgate(server, "list", "--session", "s-odd")
    summary = listed.stdout.splitlines()[1]
    assert summary.startswith("  session s-odd  github/merge_pull_request body=xxxxxxxxxxxxxxxxxxxxxxx…")
    assert len(summary) < 200


@pytest.mark.clock
def test_show_of_an_unknown_approval_says_so(server: Server, tmp_path: Path) -> None:
    shown = tollgate(server, "show", "apr_nope")
    assert shown.returncode == 1 and "NOT_FOUND" in shown.stderr
