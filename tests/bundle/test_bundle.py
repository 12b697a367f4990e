"""Bundle loading: data placed by directory, revisions, tarballs with manifests, and refusals."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from tollgate.bundle import BundleError, load_bundle


def _tar(path: Path, files: dict[str, bytes], *, symlink: str | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        if symlink:
            info = tarfile.TarInfo(symlink)
            info.type = tarfile.SYMTYPE
            info.linkname = "/etc/passwd"
            tar.addfile(info)
    return path


def test_directory_places_data_by_directory_like_opa(tmp_path: Path) -> None:
    (tmp_path / "agents" / "code-reviewer").mkdir(parents=True)
    (tmp_path / "agents" / "code-reviewer" / "data.yaml").write_text("team: platform\ntools: [a/b]\n")
    (tmp_path / "catalog").mkdir()
    (tmp_path / "catalog" / "data.json").write_text('{"tools": {"a/b": {"effect": "read"}}}')
    (tmp_path / "data.json").write_text('{"top": 1}')
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "x.rego").write_text("package p\n")
    (tmp_path / "p" / "x_test.rego").write_text("package p_test\n")
    (tmp_path / "p" / "notes.md").write_text("ignored")
    bundle = load_bundle(tmp_path)
    assert bundle.data == {
        "agents": {"code-reviewer": {"team": "platform", "tools": ["a/b"]}},
        "catalog": {"tools": {"a/b": {"effect": "read"}}},
        "top": 1,
    }
    assert list(bundle.modules) == ["p/x.rego"]
    assert list(load_bundle(tmp_path, include_tests=True).modules) == ["p/x.rego", "p/x_test.rego"]


def test_directory_revision_is_a_content_digest(tmp_path: Path) -> None:
    (tmp_path / "p.rego").write_text("package p\n")
    first = load_bundle(tmp_path).revision
    assert first.startswith("sha256:")
    assert load_bundle(tmp_path).revision == first
    (tmp_path / "p.rego").write_text("package p\n\nx := 1\n")
    assert load_bundle(tmp_path).revision != first


def test_conflicting_data_is_refused(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "data.json").write_text('{"a": {"x": 1}}')
    (tmp_path / "a" / "data.json").write_text('{"x": 2}')
    with pytest.raises(BundleError, match="a/x"):
        load_bundle(tmp_path)


def test_tarball_revision_comes_from_its_manifest(tmp_path: Path) -> None:
    manifest = {"revision": "v42", "roots": ["tollgate", "agents"], "rego_version": 1, "metadata": {"k": "v"}}
    path = _tar(tmp_path / "b.tar.gz", {
        "/.manifest": json.dumps(manifest).encode(),
        "/tollgate/decision.rego": b"package tollgate\n",
        "/agents/x/data.json": b'{"team": "t"}',
    })
    bundle = load_bundle(path)
    assert bundle.revision == "v42"
    assert bundle.manifest.roots == ("tollgate", "agents")
    assert bundle.manifest.metadata == {"k": "v"}
    assert bundle.data == {"agents": {"x": {"team": "t"}}}
    assert list(bundle.modules) == ["tollgate/decision.rego"]


@pytest.mark.parametrize(("files", "message"), [
    ({"p.rego": b"package p\n"}, "no .manifest"),
    ({".manifest": b"not json"}, "not JSON"),
    ({".manifest": b'{"rego_version": 0}'}, "rego_version"),
    ({".manifest": b'{"roots": ["a", "a/b"]}'}, "roots overlap"),
    ({".manifest": b'{"roots": ["a"]}', "b/data.json": b"{}"}, "outside the manifest roots"),
    ({".manifest": b"{}", "../evil.rego": b"package x\n"}, "escapes"),
], ids=["no-manifest", "manifest-not-json", "rego-v0", "overlapping-roots", "data-outside-roots", "path-escape"])
def test_bad_tarballs_are_refused_with_a_hint(tmp_path: Path, files: dict[str, bytes], message: str) -> None:
    with pytest.raises(BundleError, match=message):
        load_bundle(_tar(tmp_path / "b.tar.gz", files))


def test_symlinks_in_a_tarball_are_refused(tmp_path: Path) -> None:
    path = _tar(tmp_path / "b.tar.gz", {".manifest": b"{}"}, symlink="data.json")
    with pytest.raises(BundleError, match="not a regular file"):
        load_bundle(path)


def test_size_limit_stops_a_gzip_bomb(tmp_path: Path) -> None:
    path = _tar(tmp_path / "b.tar.gz", {".manifest": b"{}", "data.json": b"{\"x\": \"" + b"0" * 5_000_000 + b"\"}"})
    assert path.stat().st_size < 100_000
    with pytest.raises(BundleError, match="limit"):
        load_bundle(path, size_limit=1_000_000)


def test_missing_path_and_corrupt_tarball_are_refused(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="no such file"):
        load_bundle(tmp_path / "nope")
    corrupt = tmp_path / "c.tar.gz"
    corrupt.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(BundleError, match="not a readable"):
        load_bundle(corrupt)


def test_the_data_is_kept_once_as_compact_json_and_parsed_only_when_read(tmp_path: Path) -> None:
    (tmp_path / "agents" / "a").mkdir(parents=True)
    (tmp_path / "agents" / "a" / "data.yaml").write_text("team: platform\ntools: [x, y]\n")
    (tmp_path / "data.json").write_text('{"top": {"n": 1, "s": "é"}}')
    bundle = load_bundle(tmp_path)
    assert json.loads(bundle.data_json) == {"agents": {"a": {"team": "platform", "tools": ["x", "y"]}},
                                            "top": {"n": 1, "s": "é"}}
    assert b" " not in bundle.data_json and bundle.data_json.isascii()  # compact, and safe for any JSON reader
    assert "data" not in vars(bundle)  # no parsed copy beside the bytes until someone reads .data
    assert bundle.data is bundle.data and bundle.data["top"] == {"n": 1, "s": "é"}


def test_yaml_data_is_read_with_libyaml_when_pyyaml_has_it(tmp_path: Path) -> None:
    import yaml

    from tollgate.bundle._loader import YAML_LOADER

    assert YAML_LOADER is (yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader)
    # The safe constructors either way: a Python object tag is refused, not built.
    (tmp_path / "data.yaml").write_text("x: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(BundleError, match="does not parse"):
        load_bundle(tmp_path)


def test_a_yaml_date_in_the_data_is_refused_as_a_bundle_error(tmp_path: Path) -> None:
    (tmp_path / "data.yaml").write_text("since: 2026-01-01\n")
    with pytest.raises(BundleError, match=r"not JSON.*quote YAML dates"):
        load_bundle(tmp_path)


@pytest.mark.parametrize("value", [
    {}, {"a": {}}, {"a": {"b": {"c": [1, {"d": None}]}, "é\"q": "x\u2028"}, "n": 1.5, "t": True},
    {"agents": {f"a{i}": {"tools": ["x"], "n": i} for i in range(3)}, "k": {1: "int key", "s": 2}},
])
def test_compact_json_is_json_dumps_compact_whatever_the_value(value: object) -> None:
    from tollgate.bundle._loader import compact_json

    assert compact_json(value) == json.dumps(value, separators=(",", ":")).encode()
