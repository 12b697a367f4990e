"""`tollgate build`: reproducible OPA bundles from a policy directory, with roots, revisions and data checks."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.conftest import REGO, ROOT, TOLLGATE, start_server, tool_request
from tollgate.bundle import BuildError, BundleError, build_bundle, load_bundle

SMALL = {
    "tollgate/decision.rego": """package tollgate

import data.agents

default decision := {"decision": "deny", "reasons": [{"code": "no", "message": "no"}], "obligations": {}}

decision := {"decision": "allow", "reasons": [], "obligations": {}} if {
\tinput.tool.name in agents[input.principal.agent_id].tools
}
""",
    "tollgate/decision_test.rego": """package tollgate_test

import data.tollgate

test_allows if tollgate.decision.decision == "allow" with input as {"principal": {"agent_id": "a"},
\t"tool": {"name": "read"}}
""",
    "agents/a/data.yaml": "# the agent's manifest\ntools: [read]\nmax_usd: 2.5\nenabled: true\n",
    "catalog/data.json": '{"tools": {"read": {"effect": "read", "weight": 1.0}}}\n',
    "README.md": "not part of the bundle\n",
}


def write_tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive, "r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def manifest(archive: Path) -> dict[str, object]:
    loaded: dict[str, object] = json.loads(members(archive)[".manifest"])
    return loaded


def test_same_sources_and_revision_build_identical_bytes_and_another_revision_differs(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "policy", SMALL)
    first = build_bundle(src, tmp_path / "1.tar.gz", revision="r1")
    second = build_bundle(src, tmp_path / "2.tar.gz", revision="r1")
    moved = build_bundle(shutil.copytree(src, tmp_path / "elsewhere" / "policy"), tmp_path / "3.tar.gz",
                         revision="r1")
    other = build_bundle(src, tmp_path / "4.tar.gz", revision="r2")
    assert (tmp_path / "1.tar.gz").read_bytes() == (tmp_path / "2.tar.gz").read_bytes()
    assert (tmp_path / "1.tar.gz").read_bytes() == (tmp_path / "3.tar.gz").read_bytes()  # another machine/path
    assert first.sha256 == second.sha256 == moved.sha256
    assert first.sha256 == hashlib.sha256((tmp_path / "1.tar.gz").read_bytes()).hexdigest()
    assert other.sha256 != first.sha256


def test_cli_builds_the_same_bytes_twice_and_prints_path_revision_and_sha256(tmp_path: Path) -> None:
    outputs = []
    for name in ("a.tar.gz", "b.tar.gz"):
        result = subprocess.run([*TOLLGATE, "build", "rego", "--revision", "v1.4.0", "-o", str(tmp_path / name)],
                                capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    data = (tmp_path / "a.tar.gz").read_bytes()
    assert data == (tmp_path / "b.tar.gz").read_bytes()
    fields = dict(f.split("=", 1) for f in outputs[0].split()[2:])
    assert outputs[0].split()[:2] == ["built", str(tmp_path / "a.tar.gz")]
    assert fields["revision"] == "v1.4.0"
    assert fields["sha256"] == hashlib.sha256(data).hexdigest()
    assert fields["roots"] == "agents,catalog,tollgate"


def test_archive_entries_are_sorted_regular_files_with_fixed_owner_mode_and_times(tmp_path: Path) -> None:
    out = tmp_path / "b.tar.gz"
    build_bundle(write_tree(tmp_path / "policy", SMALL), out, revision="r1")
    raw = out.read_bytes()
    assert raw[:3] == b"\x1f\x8b\x08" and raw[3] == 0  # gzip, no FNAME/FCOMMENT/FEXTRA flags
    assert raw[4:8] == b"\0\0\0\0"  # gzip mtime 0
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(raw))) as tar:
        entries = tar.getmembers()
    assert [m.name for m in entries] == sorted(m.name for m in entries)
    assert [m.name for m in entries] == [".manifest", "agents/a/data.yaml", "catalog/data.json",
                                         "tollgate/decision.rego"]
    for m in entries:
        assert (m.type, m.mode, m.mtime, m.uid, m.gid, m.uname, m.gname) == (tarfile.REGTYPE, 0o644, 0, 0, 0, "", "")


def test_manifest_holds_revision_roots_rego_version_and_nothing_machine_dependent(tmp_path: Path) -> None:
    out = tmp_path / "rego.tar.gz"
    build_bundle(REGO, out, revision="v7", sequence=7)
    assert manifest(out) == {"revision": "v7", "roots": ["agents", "catalog", "tollgate"], "rego_version": 1,
                             "metadata": {"built_by": "tollgate", "source": "rego", "sequence": 7}}
    assert str(ROOT) not in members(out)[".manifest"].decode()


def test_built_bundle_loads_with_the_same_modules_and_data_as_the_directory(tmp_path: Path) -> None:
    out = tmp_path / "rego.tar.gz"
    build_bundle(REGO, out, revision="v7")
    from_dir, from_tar = load_bundle(REGO), load_bundle(out)
    assert from_tar.modules == from_dir.modules
    assert from_tar.data == from_dir.data
    assert from_tar.revision == "v7"
    assert from_tar.manifest.roots == ("agents", "catalog", "tollgate")
    assert not any(name.endswith("_test.rego") for name in members(out))


def test_tests_are_left_out_unless_include_tests(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "policy", SMALL)
    without = build_bundle(src, tmp_path / "a.tar.gz", revision="r")
    with_tests = build_bundle(src, tmp_path / "b.tar.gz", revision="r", include_tests=True)
    assert "tollgate/decision_test.rego" not in without.files
    assert "tollgate/decision_test.rego" in with_tests.files
    assert load_bundle(tmp_path / "b.tar.gz", include_tests=True).modules.keys() == {
        "tollgate/decision.rego", "tollgate/decision_test.rego"}
    assert with_tests.roots == ("agents", "catalog", "tollgate", "tollgate_test")  # the test package's root
    assert manifest(tmp_path / "b.tar.gz")["metadata"] == {"built_by": "tollgate", "source": "policy",
                                                          "include_tests": True}


def test_roots_and_metadata_come_from_a_manifest_in_the_sources(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "policy", {
        **SMALL, ".manifest": json.dumps({"revision": "ignored", "roots": ["tollgate", "agents", "catalog/tools"],
                                          "metadata": {"owner": "security"}})})
    out = build_bundle(src, tmp_path / "b.tar.gz", revision="r9")
    assert out.roots == ("agents", "catalog/tools", "tollgate")
    assert manifest(out.path) == {"revision": "r9", "roots": ["agents", "catalog/tools", "tollgate"],
                                  "rego_version": 1,
                                  "metadata": {"owner": "security", "built_by": "tollgate", "source": "policy"}}


def test_roots_of_files_at_the_top_come_from_their_package_and_keys(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "policy", {"main.rego": "package tollgate.main\n\nx := 1\n",
                                           "data.json": '{"limits": {"usd": 3}, "teams": ["a"]}'})
    assert build_bundle(src, tmp_path / "b.tar.gz", revision="r").roots == ("limits", "teams", "tollgate")


@pytest.mark.parametrize(("files", "message"), [
    ({"tollgate/x.rego": "# METADATA\n# title: x\npackage other.x\n\ny := 1\n"},
     "tollgate/x.rego: package other.x is outside the bundle roots"),
    ({".manifest": '{"roots": ["tollgate", "catalog/tools"]}', "tollgate/x.rego": "package tollgate\n",
      "catalog/data.json": '{"tools": {}, "models": {"m": 1}}'},
     "catalog/data.json: data at /catalog/models is outside the bundle roots ['catalog/tools', 'tollgate']"),
    ({".manifest": '{"roots": ["tollgate"]}', "tollgate/x.rego": 'package tollgate["lib"].sql\n',
      "data.json": '{"tollgate": {"k": 1}, "extra": 2}'},
     "data path 'extra' is outside the manifest roots ['tollgate']"),
    ({"tollgate/x.rego": "x := 1\n"}, "tollgate/x.rego has no package clause"),
], ids=["package-outside-derived-roots", "data-outside-manifest-roots", "top-data-outside-roots", "no-package"])
def test_a_package_or_data_path_outside_the_roots_fails(tmp_path: Path, files: dict[str, str], message: str) -> None:
    src = write_tree(tmp_path / "policy", files)
    with pytest.raises(BundleError, match="hint") as caught:
        build_bundle(src, tmp_path / "b.tar.gz", revision="r")
    assert message in str(caught.value)
    assert not (tmp_path / "b.tar.gz").exists()


def test_an_output_that_cannot_be_written_is_an_error_not_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "out").mkdir()
    result = subprocess.run([*TOLLGATE, "build", "rego", "--revision", "r", "-o", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 1
    assert result.stderr == f"tollgate build: bundle {tmp_path / 'out'}: cannot be written (Is a directory)\n"
    assert list((tmp_path / "out").iterdir()) == []


def test_data_that_does_not_parse_fails_the_build_and_writes_nothing(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "policy", {**SMALL, "agents/a/data.yaml": "tools: [read\n"})
    result = subprocess.run([*TOLLGATE, "build", str(src), "--revision", "r", "-o", str(tmp_path / "b.tar.gz")],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "agents/a/data.yaml does not parse" in result.stderr
    assert not (tmp_path / "b.tar.gz").exists()


@pytest.mark.parametrize(("yaml_text", "where", "opa", "tollgate"), [
    ("enabled: y\n", "/enabled", "true", 'the string "y"'),
    ("mode: 0o17\n", "/mode", "the number 15", 'the string "0o17"'),
    ("limit: 1e3\n", "/limit", "the number 1000", 'the string "1e3"'),
    ("since: 2026-01-01\n", "/since", 'the string "2026-01-01"', "(a date)"),
], ids=["bare-y", "0o-octal", "exponent-without-dot", "date"])
def test_yaml_that_opa_reads_differently_fails_the_build(
    tmp_path: Path, yaml_text: str, where: str, opa: str, tollgate: str
) -> None:
    src = write_tree(tmp_path / "policy", {**SMALL, "agents/a/data.yaml": yaml_text})
    with pytest.raises(BundleError) as caught:
        build_bundle(src, tmp_path / "b.tar.gz", revision="r")
    message = str(caught.value)
    assert f"agents/a/data.yaml: {where} is {opa} to OPA but" in message
    assert tollgate in message and "hint: quote the value" in message


def test_without_a_git_commit_or_a_sequence_the_manifest_has_no_sequence(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "policies", SMALL)
    build_bundle(src, tmp_path / "a.tar.gz", revision="v1")
    assert "sequence" not in manifest(tmp_path / "a.tar.gz")["metadata"]
    with pytest.raises(BuildError, match="sequence -1 must be 0 or more"):
        build_bundle(src, tmp_path / "b.tar.gz", revision="v1", sequence=-1)


def _git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args], cwd=cwd,
                          capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


def test_default_revision_is_the_git_commit_of_the_sources_with_dirty_for_changes(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    src = write_tree(repo / "policies", SMALL)
    write_tree(repo, {"other.txt": "outside the sources\n"})
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-q", "-m", "policy")
    head = _git(repo, "rev-parse", "HEAD")
    assert build_bundle(src, tmp_path / "a.tar.gz").revision == head
    # The sequence that orders signed revisions is the commit's time: reproducible, rising along a branch.
    committed = int(_git(repo, "log", "-1", "--format=%ct"))
    assert manifest(tmp_path / "a.tar.gz")["metadata"] == {"built_by": "tollgate", "source": "policies",
                                                           "sequence": committed}
    (repo / "other.txt").write_text("changed, but not under the sources\n")
    assert build_bundle(src, tmp_path / "b.tar.gz").revision == head
    (src / "agents" / "a" / "data.yaml").write_text("tools: [read, write]\n")
    assert build_bundle(src, tmp_path / "c.tar.gz").revision == f"{head}-dirty"
    _git(repo, "checkout", "-q", "--", ".")
    (src / "agents" / "b").mkdir()
    (src / "agents" / "b" / "data.yaml").write_text("tools: []\n")  # untracked counts too
    assert build_bundle(src, tmp_path / "d.tar.gz").revision == f"{head}-dirty"


def test_without_git_a_revision_must_be_given(tmp_path: Path) -> None:
    src = write_tree(tmp_path / "policy", SMALL)
    result = subprocess.run([*TOLLGATE, "build", str(src), "-o", str(tmp_path / "b.tar.gz")],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert result.returncode == 1
    assert f"build {src}: no revision given and the git commit cannot be read" in result.stderr
    assert "hint: pass --revision" in result.stderr
    assert not (tmp_path / "b.tar.gz").exists()


def test_the_built_default_library_serves_with_its_manifest_revision(tmp_path: Path) -> None:
    out = tmp_path / "rego.tar.gz"
    built = build_bundle(REGO, out, revision="v-e2e-1")
    server = start_server(tmp_path / "data", bundle=out)
    try:
        response = server.authorize(tool_request("code-reviewer", "github", "get_pull_request",
                                                 {"owner": "acme", "repo": "payments-api", "pullNumber": 42}))
        assert response.bundle_revision == manifest(out)["revision"] == built.revision == "v-e2e-1"
        assert response.decision == 1  # DECISION_ALLOW
    finally:
        server.terminate()


@pytest.mark.parametrize("link", ["file", "directory"])
def test_a_symbolic_link_in_the_policy_directory_is_refused_by_name(tmp_path: Path, link: str) -> None:
    # A link could pull a file from anywhere on the builder's disk (a key, another team's policy) into the bundle.
    outside = tmp_path / "outside"
    (outside / "lib").mkdir(parents=True)
    (outside / "lib" / "secret.rego").write_text('package tollgate.lib\n\nsecret := "from outside"\n')
    src = write_tree(tmp_path / "policies", {
        "tollgate/decision.rego": 'package tollgate\n\ndecision := {"decision": "deny", "reasons": []}\n'})
    if link == "file":
        name = "tollgate/secret.rego"
        (src / name).symlink_to(outside / "lib" / "secret.rego")
    else:
        name = "tollgate/lib"
        (src / name).symlink_to(outside / "lib", target_is_directory=True)
    with pytest.raises(BundleError, match=f"{name} is a symbolic link to {outside / 'lib'}"):
        build_bundle(src, tmp_path / "b.tar.gz", revision="v1")
    assert not (tmp_path / "b.tar.gz").exists()
    done = subprocess.run([*TOLLGATE, "build", str(src), "--revision", "v1", "-o", str(tmp_path / "c.tar.gz")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"{name} is a symbolic link" in done.stderr, done.stderr
