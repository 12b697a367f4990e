"""The README walkthrough, run command by command against a real server on the default library."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ADMIN_TOKEN, ROOT, TOLLGATE, Server, start_server
from tests.readme import mask_dates, readme_section

pytestmark = pytest.mark.clock  # times shown and windows read on a server's clock


def _commands(text: str) -> list[tuple[list[str], str]]:
    """Each `$ .venv/bin/tollgate ...` command in text (continuations joined) with the output shown."""
    found = []
    for block in re.findall(r"```console\n(.*?)```", text, re.S):
        lines = block.splitlines()
        i = 0
        while i < len(lines):
            if lines[i].startswith("$ .venv/bin/tollgate "):
                command = lines[i][2:]
                while command.endswith("\\"):
                    i += 1
                    command = command[:-1] + lines[i].strip()
                output = []
                i += 1
                while i < len(lines) and not lines[i].startswith("$ "):
                    output.append(lines[i])
                    i += 1
                found.append((_split(command), "\n".join(output)))
            else:
                i += 1
    return found


def _split(command: str) -> list[str]:
    import shlex

    return shlex.split(command)


def _sections() -> tuple[str, str]:
    """README.md without its "Kill switches" and "Approvals" sections, and the kill switch section (its commands
    run in order, on their own; test_approvals runs the approvals walkthrough)."""
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Kill switches\n")
    end = text.index("\n## ", start + 1)
    rest = text[:start] + text[end:]
    approvals = rest.index("\n## Approvals\n")
    return rest[:approvals] + rest[rest.index("\n## ", approvals + 1):], text[start:end]


_REST, _KILL_SECTION = _sections()
COMMANDS = _commands(_REST)
KILL_COMMANDS = _commands(_KILL_SECTION)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    s = start_server(tmp_path_factory.mktemp("data"))
    yield s
    s.kill()


def _run(server: Server, argv: list[str]) -> subprocess.CompletedProcess[str]:
    args = [*TOLLGATE, *argv[1:]]
    if argv[1] in ("authorize", "decision", "kill", "revive", "kills"):
        args += ["--server", server.address]
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT,
                          env={**os.environ, "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN})


def test_the_walkthrough_has_the_commands_it_promises() -> None:
    subcommands = [argv[1] for argv, _ in COMMANDS]
    assert subcommands.count("authorize") >= 6
    assert "decision" in subcommands
    assert "test" in subcommands


AUTHORIZE = [(argv, shown) for argv, shown in COMMANDS if argv[1] == "authorize"]


@pytest.mark.parametrize(("argv", "shown"), AUTHORIZE, ids=[f"{i}-{a[3]}" for i, (a, _) in enumerate(AUTHORIZE)])
def test_authorize_examples_answer_as_shown(server: Server, argv: list[str], shown: str) -> None:
    result = _run(server, argv)
    verdict = shown.split()[0]
    assert result.stdout.split()[0] == verdict, result.stdout + result.stderr
    assert result.returncode == {"ALLOW": 0, "DENY": 2, "REQUIRE_APPROVAL": 3}[verdict]
    shown_codes = re.findall(r"reason (\w+):", shown)
    assert re.findall(r"reason (\w+):", result.stdout) == shown_codes
    for line in shown.splitlines():
        if line.strip().startswith("obligations"):
            assert line.strip() in result.stdout


def test_decision_example_reads_back_the_logged_record(server: Server) -> None:
    first = AUTHORIZE[0][0]
    answered = _run(server, first)
    decision_id = re.search(r"decision_id=(\S+)", answered.stdout)
    assert decision_id
    shown = _run(server, [".venv/bin/tollgate", "decision", decision_id.group(1)])
    assert shown.returncode == 0, shown.stderr
    record = json.loads(shown.stdout)
    assert record["decision_id"] == decision_id.group(1)
    assert record["decision"] == "allow"  # the record as the log keeps it (tests/cli/test_record_shape.py)
    principal = record["input"]["principal"]
    assert {k: v for k, v in principal.items() if v} == {"agent_id": "code-reviewer", "session_id": "s-1"}
    assert record["input"]["tool"]["arguments"] == {"owner": "acme", "repo": "payments-api", "pullNumber": 42}
    assert record["result"] == {"decision": "allow", "reasons": [], "obligations": {}}
    assert len(record["hash"]) == 64


def test_policy_test_example_passes(tmp_path: Path) -> None:
    argv = next(a for a, _ in COMMANDS if a[1] == "test")
    result = subprocess.run([*TOLLGATE, *argv[1:]], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.match(r"PASS: (\d+)/\1$", result.stdout.strip().splitlines()[-1])


def test_kill_switch_walkthrough_runs_as_shown(server: Server) -> None:
    """The "Kill switches" section, command by command: kill, the denial, another agent spared, list, revive."""
    assert [argv[1] for argv, _ in KILL_COMMANDS] == ["kill", "authorize", "authorize", "kills", "revive", "kills"]
    for argv, shown in KILL_COMMANDS:
        result = _run(server, argv)
        assert result.returncode == (2 if shown.startswith("DENY") else 0), result.stdout + result.stderr
        assert _varying(result.stdout) == _varying(shown), result.stdout


def _varying(text: str) -> str:
    """Output with what differs from run to run (times, decision IDs, the bundle digest) replaced."""
    text = mask_dates(text)
    return re.sub(r"(decision_id|bundle)=\S+", r"\1=...", text).strip()


def _make_serve_args() -> list[str]:
    """The `tollgate serve` arguments of the Makefile's serve target, without its admin token file (start_server
    gives the test's token)."""
    import shlex

    recipe = (ROOT / "Makefile").read_text().split("\nserve:", 1)[1].split("\n\n", 1)[0]
    line = next(line for line in recipe.splitlines() if ".venv/bin/tollgate serve" in line)
    args = shlex.split(line)[2:]
    i = args.index("--admin-token-file")
    return args[:i] + args[i + 2:]


def test_make_serve_runs_with_the_approver_groups_readme_shows() -> None:
    import yaml

    args = _make_serve_args()
    config = ROOT / args[args.index("--config") + 1]
    section = readme_section("Approvals")
    shown = re.search(r"```yaml\n(.*?)```", section, re.S)
    assert shown, "the Approvals section shows no config"
    assert yaml.safe_load(config.read_text()) == yaml.safe_load(shown.group(1))
    assert "rita@example.com" in yaml.safe_load(config.read_text())["approver_groups"]["release-managers"]


def test_the_approvals_walkthrough_works_under_make_serve(tmp_path: Path) -> None:
    """README's "Approvals" walkthrough, command by command, on a sidecar started as `make serve` starts it: rita
    approves (she is an approver there), the re-ask is allowed once."""
    section = readme_section("Approvals")
    commands = _commands(section)
    assert [argv[1] for argv, _ in commands] == ["authorize", "approvals", "users", "approvals", "authorize",
                                                  "authorize"]
    shown_id = re.search(r"approval_id (apr_\S+)", section).group(1)  # type: ignore[union-attr]
    server = start_server(tmp_path / "data", extra=_make_serve_args())
    try:
        real_id = ""
        for argv, shown in commands:
            argv = [real_id if a == shown_id and real_id else a for a in argv]
            if argv[1] == "users":  # rita's token, issued into the sidecar's store
                argv = [str(server.data_dir) if a == ".tollgate" else a for a in argv]
            else:
                argv = [*argv, "--server", server.address]
            # In the test's own directory: the token file the README names is written there.
            result = subprocess.run([*TOLLGATE, *argv[1:]], capture_output=True, text=True, timeout=60,
                                    cwd=tmp_path, env={**os.environ, "TOLLGATE_ADMIN_TOKEN": ADMIN_TOKEN})
            verdict = shown.split()[0]
            assert result.returncode == {"ALLOW": 0, "DENY": 2, "REQUIRE_APPROVAL": 3}.get(verdict, 0), \
                result.stdout + result.stderr
            if argv[1:3] == ["users", "token"]:
                (tmp_path / "rita.token").write_text(result.stdout)
            found = re.search(r"approval_id (apr_\S+)", result.stdout)
            real_id = found.group(1) if found and not real_id else real_id
            assert _approval_varying(result.stdout) == _approval_varying(shown), result.stdout
    finally:
        server.terminate()


def _approval_varying(text: str) -> str:
    return re.sub(r"tgp_[A-Za-z0-9_-]+", "tgp_TOKEN", re.sub(r"apr_[0-9a-f-]+", "apr_ID", _varying(text)))


def test_the_eval_example_prints_what_the_readme_shows() -> None:
    """README's `tollgate eval --explain` example (offline: no server), the bundle digest and line numbers masked."""
    examples = [(argv, shown) for argv, shown in COMMANDS if argv[1] == "eval"]
    assert examples, "README shows no tollgate eval"
    for argv, shown in examples:
        result = subprocess.run([*TOLLGATE, *argv[1:]], capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 2, result.stdout + result.stderr

        def masked(text: str) -> str:
            return re.sub(r"\.rego:\d+", ".rego:N", _varying(text))

        assert masked(result.stdout) == masked(shown)
