"""The policy pull-request workflow, run step by step here: what CI would do to a policy change."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

WORKFLOW = ROOT / ".github" / "workflows" / "policy.yml"
GITHUB = {"${{ github.event.number }}": "7", "${{ github.sha }}": "0123abc"}


def _steps() -> list[dict[str, str]]:
    doc = yaml.safe_load(WORKFLOW.read_text())
    return list(doc["jobs"]["policy"]["steps"])


def _run_tollgate_steps(workdir: Path) -> dict[str, str]:
    """Run every step that calls tollgate, in order, as the runner would; return the replay step's outputs."""
    outputs = workdir / "github_output"
    env = {**os.environ, "GITHUB_OUTPUT": str(outputs), "GITHUB_STEP_SUMMARY": str(workdir / "summary.md")}
    for step in _steps():
        script = step.get("run", "")
        if ".venv/bin/tollgate" not in script:
            continue  # checkout, set-up, posting the comment and the gate need GitHub itself
        for placeholder, value in GITHUB.items():
            script = script.replace(placeholder, value)
        result = subprocess.run(["bash", "-e", "-c", script], cwd=workdir, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, f"step {step['name']!r} failed:\n{result.stdout}\n{result.stderr}"
    return dict(line.split("=", 1) for line in outputs.read_text().splitlines())


def _checkout(tmp_path: Path) -> Path:
    """A working directory laid out like the repository: the project's venv and sample, a copy of rego/."""
    work = tmp_path / "work"
    work.mkdir()
    (work / ".venv").symlink_to(ROOT / ".venv")
    (work / "samples").symlink_to(ROOT / "samples")
    shutil.copytree(ROOT / "rego", work / "rego")
    return work


def test_workflow_calls_check_test_build_and_replay() -> None:
    scripts = " ".join(step.get("run", "") for step in _steps())
    for command in ("tollgate check", "tollgate test", "--threshold", "tollgate build", "tollgate replay",
                    "--format markdown", "--fail-on", "gh pr comment"):
        assert command in scripts


def test_an_unchanged_library_passes_every_step_with_no_decision_changes(tmp_path: Path) -> None:
    work = _checkout(tmp_path)
    outputs = _run_tollgate_steps(work)
    assert outputs["status"] == "0"
    assert (work / "candidate.tar.gz").stat().st_size > 0
    assert "no decision changes" in (work / "impact.md").read_text()


@pytest.mark.parametrize("threshold_breaker", [False, True], ids=["deny-to-allow-flip", "failing-rego-test"])
def test_a_change_that_opens_access_is_caught(tmp_path: Path, threshold_breaker: bool) -> None:
    work = _checkout(tmp_path)
    manifest = work / "rego" / "agents" / "data-analyst" / "data.yaml"
    text = manifest.read_text()
    assert "tools:\n" in text
    manifest.write_text(text.replace("tools:\n", "tools:\n  - github/get_file_contents\n", 1))
    if threshold_breaker:
        (work / "rego" / "tollgate" / "extra_test.rego").write_text(
            "package tollgate.extra_test\n\ntest_fails if false\n")
        with pytest.raises(AssertionError, match="Test"):
            _run_tollgate_steps(work)
        return
    outputs = _run_tollgate_steps(work)
    assert outputs["status"] == "1"  # the gate step fails the job
    report = (work / "impact.md").read_text()
    assert "deny → allow" in report
    assert "github/get_file_contents" in report
