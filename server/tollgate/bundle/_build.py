"""Build a policy directory into an OPA bundle .tar.gz, reproducibly: the same sources give the same bytes."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tollgate.bundle._archive import MANIFEST_FILE, write_archive, write_file_atomically
from tollgate.bundle._canonical import check_data_file
from tollgate.bundle._loader import (
    DEFAULT_DATA_LIMITS,
    DEFAULT_SIZE_LIMIT,
    BundleError,
    check_data_limits,
    load_bundle,
    read_directory,
)


class BuildError(BundleError):
    """The sources cannot be built into a bundle; the message says what, where, and what to do."""


@dataclass(frozen=True)
class BuiltBundle:
    """What `build_bundle` wrote."""

    path: Path
    revision: str
    sha256: str  # of the archive
    roots: tuple[str, ...]
    files: tuple[str, ...]  # every entry of the archive, sorted


def build_bundle(
    source: str | Path,
    output: str | Path,
    *,
    revision: str | None = None,
    include_tests: bool = False,
    size_limit: int = DEFAULT_SIZE_LIMIT,
    sequence: int | None = None,
) -> BuiltBundle:
    """Build the policy directory source into the OPA bundle output.

    The archive holds a `.manifest` (`revision`, `roots`, `rego_version: 1`, `metadata`), the `.rego` files
    (`*_test.rego` only with include_tests) and the data files at their paths. Roots come from a `.manifest`
    in source, else one per top-level directory holding policy or data (plus the package roots of test
    modules and of modules at the top, and the keys of data files at the top); a package or data path
    outside the roots is an error. The sources are loaded first, so data that does not parse, or that OPA
    and Tollgate would read differently, fails the build.
    revision defaults to git_revision(source); a revision in the source `.manifest` is replaced.
    sequence (metadata.sequence, signed with the manifest) orders revisions, so that a sidecar can refuse an
    older signed bundle replayed over a newer one: it defaults to the commit time of the sources' git commit
    (seconds since the epoch: reproducible, and rising along a branch); none when there is no git commit.
    """
    root = Path(source)
    if not root.is_dir():
        raise BuildError(f"build {root}: not a directory (hint: build a policy directory such as rego/)")
    revision = git_revision(root) if revision is None else revision
    if not revision.strip():
        raise BuildError(f"build {root}: the revision is empty (hint: pass --revision)")
    files = {name: content for name, content in read_directory(root, size_limit)
             if include_tests or not name.endswith("_test.rego")}
    has_manifest = files.pop(MANIFEST_FILE, None) is not None
    where = str(root)
    check_data_limits(where, files, DEFAULT_DATA_LIMITS)  # before any data is parsed, as load_bundle does
    for name, content in sorted(files.items()):
        check_data_file(where, name, content)  # before the load: it names what OPA would read differently, where
    loaded = load_bundle(root, size_limit=size_limit, include_tests=include_tests)
    packages = {name: _package_path(where, name, content) for name, content in files.items()
                if name.endswith(".rego")}
    if has_manifest:
        roots = sorted(r.strip("/") for r in loaded.manifest.roots)
    else:
        roots = _derive_roots(files, packages, loaded.data)
    _check_roots(where, roots, packages, loaded.data, files, from_manifest=has_manifest)
    metadata: dict[str, Any] = {**loaded.manifest.metadata} if has_manifest else {}
    metadata.update({"built_by": "tollgate", "source": _source_label(root)})
    sequence = git_sequence(root) if sequence is None else sequence
    if sequence is not None:
        if sequence < 0:
            raise BuildError(f"build {root}: sequence {sequence} must be 0 or more")
        metadata["sequence"] = sequence
    if include_tests:
        metadata["include_tests"] = True
    manifest = {"revision": revision, "roots": roots, "rego_version": 1, "metadata": metadata}
    files[MANIFEST_FILE] = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"
    archive = write_archive(files)
    _check_loads(where, archive, size_limit, include_tests)
    target = Path(output)
    write_file_atomically(target, archive)
    return BuiltBundle(path=target, revision=revision, sha256=hashlib.sha256(archive).hexdigest(),
                       roots=tuple(roots), files=tuple(sorted(files)))


def git_revision(path: str | Path) -> str:
    """The git commit of the sources at path, with `-dirty` when `git status` shows changes under path."""
    try:
        head = _git(path, "rev-parse", "HEAD")
        status = _git(path, "status", "--porcelain", "--", ".")
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else str(exc)
        raise BuildError(f"build {path}: no revision given and the git commit cannot be read ({detail}) "
                         "(hint: pass --revision)") from exc
    return f"{head}-dirty" if status else head


def git_sequence(path: str | Path) -> int | None:
    """The commit time (seconds since the epoch) of the git commit of the sources at path; None without one."""
    try:
        return int(_git(path, "log", "-1", "--format=%ct"))
    except (OSError, ValueError, subprocess.CalledProcessError):
        return None


def _git(path: str | Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(path), *args], capture_output=True, text=True, check=True, timeout=60)
    return done.stdout.strip()


def _source_label(root: Path) -> str:
    """How the manifest names the sources: their path inside the git work tree, else the directory name.
    Never an absolute path, so that the same sources build the same bytes on any machine."""
    try:
        prefix = _git(root, "rev-parse", "--show-prefix").rstrip("/")
    except (OSError, subprocess.CalledProcessError):
        prefix = ""
    return prefix or root.resolve().name


# A package clause: `package a.b`, `package a["b-c"].d` (comments and blank lines may come first).
_PACKAGE = re.compile(r"^[ \t]*package[ \t]+([^#\n]*?)[ \t]*(?:#.*)?$", re.M)
_REF_PART = re.compile(r'\.?([A-Za-z_][A-Za-z0-9_]*)|\[\s*"((?:[^"\\]|\\.)*)"\s*\]')


def _package_path(where: str, name: str, content: bytes) -> str:
    """The package of a Rego module as a slash path (`package tollgate.lib.sql` → tollgate/lib/sql)."""
    text = content.decode("utf-8", errors="replace")
    match = _PACKAGE.search(text)
    if match is None:
        raise BuildError(f"build {where}: {name} has no package clause (hint: start it with `package ...`)")
    ref, segments, pos = match.group(1), [], 0
    while pos < len(ref):
        part = _REF_PART.match(ref, pos)
        if part is None or (pos == 0 and ref.startswith(".")):
            raise BuildError(f"build {where}: {name}: cannot read the package {ref!r}")
        segments.append(part.group(1) if part.group(1) is not None else json.loads(f'"{part.group(2)}"'))
        pos = part.end()
    if not segments:
        raise BuildError(f"build {where}: {name}: cannot read the package {ref!r}")
    return "/".join(segments)


def _derive_roots(files: Mapping[str, bytes], packages: Mapping[str, str], data: Mapping[str, Any]) -> list[str]:
    roots: set[str] = set()
    for name in files:
        top, sep, _ = name.partition("/")
        if sep:
            roots.add(top)
        # A module at the top, or a test module (`package tollgate_test` beside tollgate/): its package's root.
        if name in packages and (not sep or name.endswith("_test.rego")):
            roots.add(packages[name].split("/")[0])
    if any("/" not in name and name not in packages for name in files):
        roots.update(data)  # a data file at the top: each top-level key is a root
    return sorted(roots)


def _contains(root: str, path: str) -> bool:
    """OPA's RootPathsContain for one root: the root is "" or a segment-wise prefix of path."""
    return root == "" or path == root or path.startswith(root + "/")


def _check_roots(
    where: str,
    roots: list[str],
    packages: Mapping[str, str],
    data: Mapping[str, Any],
    files: Mapping[str, bytes],
    *,
    from_manifest: bool,
) -> None:
    hint = "list it in the roots of .manifest" if from_manifest else "move the file under the directory of its package"
    for name, package in sorted(packages.items()):
        if not any(_contains(r, package) for r in roots):
            raise BuildError(f"build {where}: {name}: package {package.replace('/', '.')} is outside the bundle "
                             f"roots {roots} (hint: {hint})")
    outside = _data_outside(data, "", roots)
    if outside is not None:
        origin = next((n for n in sorted(files) if _is_data(n) and _overlaps(posixpath.dirname(n), outside)), "data")
        raise BuildError(f"build {where}: {origin}: data at /{outside} is outside the bundle roots {roots} "
                         f"(hint: {'list it in the roots of .manifest' if from_manifest else 'move the file'})")


def _data_outside(node: Any, path: str, roots: Iterable[str]) -> str | None:
    """The first data path the roots do not permit, walking as OPA's manifest validation does."""
    if path and any(_contains(r, path) for r in roots):
        return None
    if not path and any(r == "" for r in roots):
        return None
    if isinstance(node, dict) and (not path or any(r.startswith(path + "/") for r in roots)):
        for key in sorted(node):
            found = _data_outside(node[key], f"{path}/{key}" if path else key, roots)
            if found is not None:
                return found
        return None
    return path


def _is_data(name: str) -> bool:
    return posixpath.basename(name) in ("data.json", "data.yaml", "data.yml")


def _overlaps(directory: str, path: str) -> bool:
    return directory == "" or _contains(directory, path) or _contains(path, directory)


def _check_loads(where: str, archive: bytes, size_limit: int, include_tests: bool) -> None:
    """The archive itself must load as a bundle; a build never writes one that does not."""
    with tempfile.TemporaryDirectory(prefix="tollgate-build-") as tmp:
        candidate = Path(tmp) / "bundle.tar.gz"
        candidate.write_bytes(archive)
        try:
            load_bundle(candidate, size_limit=size_limit, include_tests=include_tests)
        except BundleError as exc:
            raise BuildError(f"build {where}: the built bundle does not load: {exc}") from exc
