"""The promotion `tests` gate: the bundle's Rego tests pass, run from the sources it was built from, so that the
artifact promoted holds no test code.

A bundle is built without its `*_test.rego` files (`tollgate build`), and the gate refuses one that holds any: test
code has no business in what sidecars load. The tests come from a policy directory (the sources; by default where
the manifest's `metadata.source` says, inside the git work tree holding the environments file, else under the
working directory) or from the test bundle built beside the bundle (`tollgate build --tests-output`). Either must
hold exactly the bundle's policy and data, file for file: then the tests that pass on them pass on the bundle, and
tests written for other sources (an older checkout, a branch) are refused instead of vouching for code they never
ran against.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tollgate.bundle import BundleError, load_bundle

_TEST_SUFFIX = "_test.rego"
_HINT = ("pass --tests with the policy directory it was built from, or the test bundle built beside it "
         "(`tollgate build --tests-output FILE`)")


def check_tests(candidate: Path, *, label: str, tests: Path | None, environments: Path) -> tuple[bool, str]:
    """(passed, detail) of the tests gate for the staged bundle `candidate` (named `label` in messages). tests:
    the sources or test bundle given (--tests), else found from the manifest; environments: the environments file."""
    from tollgate.authoring.policytest import PolicyTestError, run_tests

    try:
        whole = load_bundle(candidate, include_tests=True)
    except BundleError as exc:
        return False, f"the bundle cannot be read: {str(exc).replace(str(candidate), label)}"
    held = sorted(name for name in whole.modules if name.endswith(_TEST_SUFFIX))
    if held:
        return False, (f"the bundle holds test code ({len(held)} {_TEST_SUFFIX} file(s), first {held[0]}); what is "
                       f"promoted holds none (hint: build it without --include-tests; this gate runs the tests from "
                       f"its sources)")
    source = tests if tests is not None else _sources(whole.manifest.metadata, environments)
    if source is None:
        return False, f"the bundle holds no tests and its sources cannot be found (hint: {_HINT})"
    try:
        given = load_bundle(source, include_tests=True)
    except BundleError as exc:
        return False, f"the tests cannot be read: {exc} (hint: {_HINT})"
    different = _difference(whole.modules, whole.data, given.modules, given.data)
    if different:
        return False, (f"the tests at {source} were not written for this bundle: {different} (hint: check out the "
                       f"commit it was built from, revision {whole.revision}, or {_HINT.removeprefix('pass ')})")
    try:
        report = run_tests([source])
    except PolicyTestError as exc:
        return False, f"the tests cannot run: {exc}"
    ran = len(report.results) - report.count("SKIP")
    if ran == 0:
        return False, f"the bundle holds no tests, and neither does {source} (hint: add *_test.rego beside the policy)"
    if not report.ok:
        failed = [r for r in report.results if r.outcome in ("FAIL", "ERROR")]
        named = "; ".join(f"{r.package}.{r.name} {r.outcome}" + (f" ({r.detail})" if r.detail else "")
                          for r in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        return False, f"{len(failed)} of {ran} tests failed: {named}{more}"
    return True, f"{ran} tests passed (from {source})"


def _sources(metadata: Mapping[str, Any], environments: Path) -> Path | None:
    """Where the bundle's sources are: its manifest's `metadata.source` (the directory's path inside the git work
    tree it was built in) inside the git work tree holding the environments file, else under the working
    directory; None when that is not a directory."""
    label = metadata.get("source")
    if not isinstance(label, str) or not label or Path(label).is_absolute() or ".." in Path(label).parts:
        return None
    try:
        top = Path(subprocess.run(["git", "-C", str(environments.resolve().parent), "rev-parse", "--show-toplevel"],
                                  capture_output=True, text=True, check=True, timeout=60).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        top = Path.cwd()
    found = top / label
    return found if found.is_dir() else None


def _difference(modules: Mapping[str, str], data: Any, theirs: Mapping[str, str], their_data: Any) -> str:
    """What differs between the bundle's policy and data and those of the tests' sources ("" when nothing)."""
    policy = {name: text for name, text in theirs.items() if not name.endswith(_TEST_SUFFIX)}
    for name in sorted(set(modules) | set(policy)):
        if name not in policy:
            return f"{name} is in the bundle, not in the sources"
        if name not in modules:
            return f"{name} is in the sources, not in the bundle"
        if modules[name] != policy[name]:
            return f"{name} differs"
    if data != their_data:
        return "the data differs"
    return ""
