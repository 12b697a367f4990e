"""The promotion `tests` gate runs the tests of the sources a bundle was built from: a prod bundle holds no tests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REGO, TOLLGATE

ENVIRONMENTS = """\
channel_root: channels
environments:
  dev:
    require_signatures: false
    gates:
      tests: true
  prod:
    require_signatures: false
    gates:
      tests: true
      from: dev
"""
REGO_TESTS = sum(len(re.findall(r"^test_", f.read_text(), re.M)) for f in REGO.rglob("*_test.rego"))


def _tollgate(cwd: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOLLGATE, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


def _world(root: Path, source: Path = REGO) -> Path:
    """An environments file, and a copy of the sources (rego/) beside it."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "environments.yaml").write_text(ENVIRONMENTS)
    shutil.copytree(source, root / "rego")
    return root


def _promote(world: Path, bundle: str | Path, env: str, *extra: str | Path) -> subprocess.CompletedProcess[str]:
    return _tollgate(world, "promote", bundle, "--to", env, "--as", "t", "--environments", world / "environments.yaml",
                     *extra)


def _gate(result: subprocess.CompletedProcess[str]) -> str:
    line = re.search(r"^  tests +(passed|FAILED)  (.*)$", result.stdout, re.M)
    assert line, result.stdout + result.stderr
    return f"{line.group(1)}: {line.group(2)}"


def _test_files(path: Path) -> list[str]:
    with tarfile.open(path) as archive:
        return [name for name in archive.getnames() if name.endswith("_test.rego")]


def test_a_prod_bundle_holds_no_test_code_and_the_tests_of_its_sources_ran(tmp_path: Path) -> None:
    world = _world(tmp_path / "w")
    built = _tollgate(world, "build", "rego", "--revision", "v1", "-o", "bundle.tar.gz",
                      "--tests-output", "bundle.tests.tar.gz")
    assert built.returncode == 0, built.stderr
    assert [line.split()[1] for line in built.stdout.splitlines()] == ["bundle.tar.gz", "bundle.tests.tar.gz"]
    assert _test_files(world / "bundle.tar.gz") == []
    assert len(_test_files(world / "bundle.tests.tar.gz")) == len(list(REGO.rglob("*_test.rego")))

    to_dev = _promote(world, "bundle.tar.gz", "dev", "--tests", "bundle.tests.tar.gz")
    assert to_dev.returncode == 0, to_dev.stdout + to_dev.stderr
    assert _gate(to_dev) == f"passed: {REGO_TESTS} tests passed (from bundle.tests.tar.gz)"
    shutil.rmtree(world / "rego")  # the checkout is gone; the test bundle built beside the bundle still vouches
    to_prod = _promote(world, "v1", "prod", "--tests", "bundle.tests.tar.gz")
    assert to_prod.returncode == 0, to_prod.stdout + to_prod.stderr
    prod = world / "channels" / "prod"
    for shipped in (prod / "bundle.tar.gz", prod / "revisions" / "v1.tar.gz"):
        assert shipped.read_bytes() == (world / "bundle.tar.gz").read_bytes()
        assert _test_files(shipped) == []
    history = json.loads((prod / "channel.json").read_text())["history"]
    assert history[-1]["gates"]["tests"] == f"{REGO_TESTS} tests passed (from bundle.tests.tar.gz)"


def test_a_bundle_that_holds_test_code_is_refused(tmp_path: Path) -> None:
    world = _world(tmp_path / "w")
    assert _tollgate(world, "build", "rego", "--revision", "v1", "--include-tests", "-o", "b.tar.gz").returncode == 0
    refused = _promote(world, "b.tar.gz", "dev", "--tests", "rego")
    assert refused.returncode == 1
    assert _gate(refused).startswith("FAILED: the bundle holds test code (")
    assert "build it without --include-tests" in _gate(refused)
    assert not (world / "channels" / "dev").exists()


@pytest.mark.parametrize("tests_from", ["sources", "test-bundle"])
def test_the_gate_still_fails_on_a_failing_test(tmp_path: Path, tests_from: str) -> None:
    world = _world(tmp_path / "w")
    (world / "rego" / "tollgate" / "gate_test.rego").write_text(
        "package tollgate.gate_test\n\ntest_a_broken_expectation if {\n\t1 == 2\n}\n")
    built = _tollgate(world, "build", "rego", "--revision", "v1", "-o", "b.tar.gz", "--tests-output", "t.tar.gz")
    assert built.returncode == 0, built.stderr
    refused = _promote(world, "b.tar.gz", "dev", "--tests", "rego" if tests_from == "sources" else "t.tar.gz")
    assert refused.returncode == 1
    assert _gate(refused) == (f"FAILED: 1 of {REGO_TESTS + 1} tests failed: "
                              "tollgate.gate_test.test_a_broken_expectation FAIL (undefined)")
    assert not (world / "channels" / "dev").exists()


@pytest.mark.parametrize(("edit", "said"), [
    (lambda rego: (rego / "tollgate" / "decision.rego").write_text(
        (rego / "tollgate" / "decision.rego").read_text() + "\n_extra := 1\n"), "tollgate/decision.rego differs"),
    (lambda rego: (rego / "tollgate" / "rules" / "extra").mkdir() or (
        rego / "tollgate" / "rules" / "extra" / "extra.rego").write_text("package tollgate.rules.extra\n"),
     "tollgate/rules/extra/extra.rego is in the sources, not in the bundle"),
    (lambda rego: (rego / "agents" / "code-reviewer" / "data.yaml").write_text(
        (rego / "agents" / "code-reviewer" / "data.yaml").read_text().replace("  - github/get_pull_request\n", "")),
     "the data differs"),
], ids=["a-module-changed", "a-module-added", "data-changed"])
def test_tests_written_for_other_sources_are_refused(tmp_path: Path, edit: object, said: str) -> None:
    world = _world(tmp_path / "w")
    assert _tollgate(world, "build", "rego", "--revision", "v1", "-o", "b.tar.gz").returncode == 0
    edit(world / "rego")  # type: ignore[operator]
    refused = _promote(world, "b.tar.gz", "dev", "--tests", "rego")
    assert refused.returncode == 1
    assert _gate(refused).startswith(f"FAILED: the tests at rego were not written for this bundle: {said} "
                                     "(hint: check out the commit it was built from, revision v1")


def test_by_default_the_tests_come_from_the_sources_the_manifest_names(tmp_path: Path) -> None:
    """In a git work tree, promote without --tests finds the sources by the manifest's metadata.source; a bundle
    whose sources moved on since is refused rather than vouched for by newer tests."""
    world = _world(tmp_path / "repo")
    git = ["git", "-C", str(world), "-c", "user.email=t@example.com", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "policy"], check=True)
    assert _tollgate(world, "build", "rego", "-o", "b.tar.gz").returncode == 0
    done = _promote(world, "b.tar.gz", "dev")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _gate(done) == f"passed: {REGO_TESTS} tests passed (from {world.resolve() / 'rego'})"

    manifest = world / "rego" / "agents" / "code-reviewer" / "data.yaml"
    manifest.write_text(manifest.read_text().replace("  - github/get_pull_request\n", ""))
    again = _promote(world, "b.tar.gz", "prod")
    assert again.returncode == 1 and "were not written for this bundle: the data differs" in _gate(again)


def test_without_sources_the_gate_says_where_tests_can_come_from(tmp_path: Path) -> None:
    world = _world(tmp_path / "w")
    assert _tollgate(world, "build", "rego", "--revision", "v1", "-o", "b.tar.gz").returncode == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.move(world / "b.tar.gz", elsewhere / "b.tar.gz")
    (elsewhere / "environments.yaml").write_text(ENVIRONMENTS)
    refused = _promote(elsewhere, "b.tar.gz", "dev")
    assert refused.returncode == 1
    assert _gate(refused).startswith("FAILED: the bundle holds no tests and its sources cannot be found (hint: pass "
                                     "--tests with the policy directory it was built from")
