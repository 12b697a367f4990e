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


FROZEN = """# METADATA
# title: Frozen repositories
# description: No agent touches a repository under a change freeze.
package {package}

deny contains {{"code": "repo_frozen", "message": "payments-api is frozen for the release"}} if {{
\tinput.kind == "tool"
\tinput.tool.arguments.repo == "payments-api"
}}
"""


def test_a_new_rule_package_is_refused_by_check_until_placed_by_convention_then_denies_live(tmp_path: Path) -> None:
    """Issue 16: a new package outside data.tollgate.rules would be a silent no-op (the sidecar allows what it was
    written to deny); `tollgate check` refuses it, naming the fix, and moved under the prefix a real sidecar denies."""
    from tests.conftest import TOLLGATE, start_server, tool_request
    from tollgate.v1 import authorization_pb2 as pb
    from tollgate.v1 import authorization_pb2_grpc as pb_grpc

    work = _checkout(tmp_path)
    stray = work / "rego" / "tollgate" / "freeze" / "freeze.rego"
    stray.parent.mkdir(parents=True)
    stray.write_text(FROZEN.format(package="tollgate.freeze"))
    checked = subprocess.run([*TOLLGATE, "check", "rego"], cwd=work, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 1
    assert ("rego/tollgate/freeze/freeze.rego:6: package tollgate.freeze defines deny, but no entrypoint reaches it"
            in checked.stdout), checked.stdout
    assert "make it `package tollgate.rules.freeze`" in checked.stdout

    request = tool_request(arguments={"owner": "acme", "repo": "payments-api", "pullNumber": 42})
    served = start_server(tmp_path / "stray", bundle=work / "rego")
    try:  # what check prevents: the stray package changes no answer
        answer = pb_grpc.AuthorizationServiceStub(served.channel).Authorize(request, timeout=10)
        assert answer.decision == pb.DECISION_ALLOW
    finally:
        served.terminate()

    stray.unlink()
    placed = work / "rego" / "tollgate" / "rules" / "freeze" / "freeze.rego"
    placed.parent.mkdir(parents=True)
    placed.write_text(FROZEN.format(package="tollgate.rules.freeze"))
    checked = subprocess.run([*TOLLGATE, "check", "rego"], cwd=work, capture_output=True, text=True, timeout=120)
    assert checked.returncode == 0, checked.stdout
    served = start_server(tmp_path / "placed", bundle=work / "rego")
    try:
        stub = pb_grpc.AuthorizationServiceStub(served.channel)
        answer = stub.Authorize(request, timeout=10)
        assert answer.decision == pb.DECISION_DENY
        assert [(r.code, r.message) for r in answer.reasons] == [
            ("repo_frozen", "payments-api is frozen for the release")]
        other = tool_request(arguments={"owner": "acme", "repo": "web", "pullNumber": 1})
        assert stub.Authorize(other, timeout=10).decision == pb.DECISION_ALLOW
    finally:
        served.terminate()
