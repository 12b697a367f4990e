"""The `tollgate` command: its modules say which commands they add, and one command loads only its own module."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from tests.conftest import ROOT, TOLLGATE
from tollgate_cli.main import command_modules


@pytest.mark.parametrize("module", command_modules(), ids=lambda m: m.__name__.rsplit(".", 1)[-1])
def test_each_module_declares_exactly_the_commands_it_registers(module: object) -> None:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    module.register(sub)  # type: ignore[attr-defined]
    assert tuple(sub.choices) == module.COMMANDS  # type: ignore[attr-defined]


def test_no_two_modules_claim_one_command() -> None:
    names = [name for m in command_modules() for name in m.COMMANDS]
    assert len(names) == len(set(names))


def test_a_hook_does_not_load_the_sidecar_configuration() -> None:
    # The hook runs before every tool call: registering `serve` would import the sidecar's whole configuration.
    script = ("import sys; from tollgate_cli.main import main; code = main(sys.argv[1:]); "
              "print('config loaded' if 'tollgate.sidecar.config' in sys.modules else 'config not loaded', "
              "file=sys.stderr)")
    hook_input = '{"session_id": "s", "hook_event_name": "PreToolUse", "tool_name": "Read", "tool_input": {}}'
    ran = subprocess.run([sys.executable, "-c", script, "hook", "claude-code", "--server", "127.0.0.1:9",
                          "--timeout", "0.2"], input=hook_input, capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert '"permissionDecision": "deny"' in ran.stdout
    assert "config not loaded" in ran.stderr


def test_help_and_an_unknown_command_still_list_every_command() -> None:
    shown = subprocess.run([*TOLLGATE, "--help"], capture_output=True, text=True, timeout=60).stdout
    unknown = subprocess.run([*TOLLGATE, "servee"], capture_output=True, text=True, timeout=60)
    for module in command_modules():
        for name in module.COMMANDS:
            assert name in shown and name in unknown.stderr
    assert unknown.returncode == 2


def test_since_and_until_spans_count_back_from_the_clock_given() -> None:
    from datetime import UTC, datetime, timedelta

    from tollgate.clock import ManualClock
    from tollgate_cli._common import time_argument

    new_year = datetime(2027, 1, 1, tzinfo=UTC)
    assert time_argument("2h", clock=ManualClock(new_year)) == new_year - timedelta(hours=2)
    assert time_argument("2026-12-31T23:00:00Z") == datetime(2026, 12, 31, 23, tzinfo=UTC)
    assert abs((datetime.now(UTC) - time_argument("1d")).total_seconds() - 86400) < 60  # the system clock
    with pytest.raises(argparse.ArgumentTypeError):
        time_argument("yesterday")


def test_every_serve_flag_says_what_it_does() -> None:
    from dataclasses import fields

    from tollgate.sidecar.config import ServeConfig
    from tollgate_cli._serve import _field_help

    bare = [f.name for f in fields(ServeConfig) if _field_help(f.name).startswith(" (default")]
    assert not bare, f"serve flags with no help text (add them to tollgate_cli._serve._field_help): {bare}"
