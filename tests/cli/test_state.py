"""`tollgate state migrate` and `tollgate state status` against a real PostgreSQL server."""

from __future__ import annotations

import subprocess
from pathlib import Path

import psycopg

from tests.conftest import TOLLGATE
from tests.pg import free_port

COMPONENTS = ("budgets", "approvals", "outbox", "kill_switches", "fleet", "decisions", "outcomes", "users", "audit",
              "person_tokens", "tool_results")


def tollgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOLLGATE, *args], capture_output=True, text=True, timeout=60)


def component_lines(stdout: str) -> dict[str, str]:
    lines = [line.split(None, 1) for line in stdout.splitlines() if line.startswith("  ")]
    return {name: rest for name, rest in lines}


def test_migrate_creates_every_component_then_has_nothing_to_do(pg_url: str) -> None:
    before = tollgate("state", "status", "--state-store", pg_url)
    assert before.returncode == 2, before.stderr
    assert all(line.endswith("missing (run `tollgate state migrate`)")
               for line in component_lines(before.stdout).values()), before.stdout

    with psycopg.connect(pg_url) as conn:  # status only read: not even the version table was made
        assert conn.execute("SELECT to_regclass('tollgate_schema')").fetchone() == (None,)

    first = tollgate("state", "migrate", "--state-store", pg_url)
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines()[0] == f"state store {pg_url}"
    created = component_lines(first.stdout)
    assert tuple(created) == COMPONENTS
    assert all(line.endswith("created") for line in created.values()), first.stdout

    again = tollgate("state", "migrate", "--state-store", pg_url)
    assert again.returncode == 0, again.stderr
    assert all(line.endswith("up to date") for line in component_lines(again.stdout).values()), again.stdout

    after = tollgate("state", "status", "--state-store", pg_url)
    assert after.returncode == 0, after.stderr
    for name, line in component_lines(after.stdout).items():
        assert line.endswith("up to date"), (name, line)
    with psycopg.connect(pg_url) as conn:  # the tables are really there
        tables = {row[0] for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert {"kill_switches", "fleet_sidecars", "budget_reservations", "approvals"} <= tables, tables
    assert any("decisions" in table for table in tables), tables


def test_a_newer_schema_is_refused_with_the_hint_and_left_alone(pg_url: str) -> None:
    assert tollgate("state", "migrate", "--state-store", pg_url).returncode == 0
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("UPDATE tollgate_schema SET version = 99 WHERE component = 'approvals'")
    status = tollgate("state", "status", "--state-store", pg_url)
    assert status.returncode == 2
    assert component_lines(status.stdout)["approvals"].startswith("store 99, this tollgate ")
    assert "newer than this tollgate knows (run the newer tollgate)" in status.stdout
    refused = tollgate("state", "migrate", "--state-store", pg_url)
    assert refused.returncode == 1
    assert "approvals schema is version 99, newer than this tollgate knows" in refused.stderr
    assert "hint: run the newer tollgate" in refused.stderr
    assert "Traceback" not in refused.stderr
    with psycopg.connect(pg_url) as conn:
        row = conn.execute("SELECT version FROM tollgate_schema WHERE component = 'approvals'").fetchone()
    assert row == (99,)


def test_an_unreachable_store_is_an_error_that_never_shows_the_password(tmp_path: Path) -> None:
    url = f"postgresql://tollgate:s3cret-pw@127.0.0.1:{free_port()}/tollgate"
    for command in ("migrate", "status"):
        done = tollgate("state", command, "--state-store", url, "--timeout", "1")
        assert done.returncode == 1
        assert f"tollgate state {command}: state store postgresql://tollgate:***@127.0.0.1:" in done.stderr
        assert "s3cret-pw" not in done.stderr + done.stdout
        assert "Traceback" not in done.stderr


def test_a_url_that_is_not_postgresql_and_a_missing_password_file_are_refused(pg_url: str, tmp_path: Path) -> None:
    done = tollgate("state", "migrate", "--state-store", "sqlite:///tmp/state.db")
    assert done.returncode == 1
    assert "--state-store: must be a postgresql:// URL, not 'sqlite:///tmp/state.db'" in done.stderr
    missing = tollgate("state", "migrate", "--state-store", pg_url, "--password-file", str(tmp_path / "none"))
    assert missing.returncode == 1
    assert "state_store_password_file: cannot read" in missing.stderr
