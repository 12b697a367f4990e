"""Running README sections as written: their `$ ` console lines, in a scratch checkout, checked against the output."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

from tests.conftest import ROOT, TOLLGATE


def readme_section(title: str) -> str:
    """The text of the README's `## title` section."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)^## ", (ROOT / "README.md").read_text(), re.S | re.M)
    assert match, f"README.md has no {title!r} section"
    return match.group(1)


# Longest first: a timestamp, then a day, then a month ("month 2026-11" in `tollgate spend`).
_DATES = [(re.compile(r"\b\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:\d\d)"), "TIME"),
          (re.compile(r"\b\d{4}-\d\d-\d\d\b"), "DATE"),
          (re.compile(r"\b\d{4}-\d\d\b"), "MONTH")]


def mask_dates(text: str) -> str:
    """Text with its RFC 3339 times, days and months masked: README examples show the day they were written,
    a run shows its own (and a run may cross midnight, a month end or a year end)."""
    for pattern, mask in _DATES:
        text = pattern.sub(mask, text)
    return text


def scratch_venv(workdir: Path) -> None:
    """A `.venv/bin/tollgate` in workdir that runs the project's, so README lines run unchanged there."""
    venv_bin = workdir / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "tollgate").write_text(f"#!/bin/sh\nexec {shlex.join(TOLLGATE)} \"$@\"\n")
    (venv_bin / "tollgate").chmod(0o755)


def run_console_lines(section: str, workdir: Path, *, timeout: float = 180) -> list[str]:
    """Run each `$ ` line of the section's console blocks in order in workdir; each must exit 0 and, where the
    README shows output, print the same first two words (dates masked). Returns the lines run (without `$ `)."""
    ran = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        lines = block.splitlines()
        for i, line in enumerate(lines):
            if not line.startswith("$ "):
                continue
            shown = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("$ ") else ""
            result = subprocess.run(["bash", "-c", line[2:]], cwd=workdir, capture_output=True, text=True,
                                    timeout=timeout)
            assert result.returncode == 0, f"{line}\n{result.stdout}{result.stderr}"
            if shown:
                assert mask_dates(result.stdout).split()[:2] == mask_dates(shown).split()[:2], \
                    f"{line}\n{result.stdout}"
            ran.append(line[2:])
    return ran
