"""Read a policy bundle from a directory or an OPA-format .tar.gz into memory, placing data by directory."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import posixpath
import tarfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

#: Largest total uncompressed size a bundle may have (a guard against gzip bombs), in bytes.
DEFAULT_SIZE_LIMIT = 256 * 1024 * 1024
#: Largest total size of a bundle's data documents (every data.json / data.yaml), in bytes.
DEFAULT_DATA_LIMIT = 32 * 1024 * 1024
#: Most values (objects, arrays, keys, scalars) a bundle's data documents may hold together. Parsed and
#: hashed, one value costs Python up to ~250 bytes, so this bounds what reading the data can take (~250 MB),
#: where the bytes alone do not: 16 MiB of `{},{},...` is 5.6 million objects.
DEFAULT_DATA_VALUES = 1_000_000

_DATA_FILES = ("data.json", "data.yaml", "data.yml")
#: PyYAML's LibYAML (C) loader when it was built with it: a 10,000-manifest bundle in YAML took the pure-Python
#: SafeLoader over 80 s to read; the C one reads the same documents, with the same safe constructors, ~10x faster.
YAML_LOADER: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_SKIP_DIRS = {".git", ".github", "__pycache__", ".tollgate"}


class BundleError(Exception):
    """A bundle that cannot be loaded; the message says what and where, with a hint."""


class TooLarge(BundleError):
    """A bundle whose data documents are past their limits (bytes, values), refused before they are parsed,
    so that refusing it costs no more memory than its bytes. (The archive's own size limit is checked as it
    is read, and reported as an unreadable bundle, as before.)"""


@dataclass(frozen=True)
class DataLimits:
    """What a bundle's data documents may hold, checked on their bytes before any of them is parsed."""

    #: Total bytes of every data.json / data.yaml / data.yml.
    bytes: int = DEFAULT_DATA_LIMIT
    #: Total values in them, counted from above (see _value_bound), and for YAML again with aliases expanded.
    values: int = DEFAULT_DATA_VALUES


#: The default limits, as one value (argument defaults share it).
DEFAULT_DATA_LIMITS = DataLimits()


@dataclass(frozen=True)
class BundleManifest:
    """The `.manifest` of an OPA bundle (or what a directory bundle implies)."""

    revision: str
    roots: tuple[str, ...] = ("",)
    rego_version: int = 1
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Bundle:
    """Everything an engine needs: Rego modules by path, the merged data document, and the manifest.

    The data document is kept as compact JSON (`data_json`), the one form the engine workers are sent: parsed,
    10,000 agent manifests (~1.3 million values) take ~80 MiB of Python objects, their JSON ~11 MiB. `data`
    parses it on first use (the authoring tools read it; the server never does) and keeps the result.
    """

    source: str
    manifest: BundleManifest
    modules: Mapping[str, str]
    data_json: bytes = field(repr=False)  # the merged data document, as JSON (ASCII)
    digest: str  # sha256 over every file's path and content, in path order

    @cached_property
    def data(self) -> Mapping[str, Any]:
        """The merged data document (parsed from data_json on first use)."""
        value: dict[str, Any] = json.loads(self.data_json)
        return value

    @property
    def revision(self) -> str:
        return self.manifest.revision

    @property
    def sequence(self) -> int | None:
        """The manifest's metadata.sequence (see build_bundle), None when it has none."""
        return manifest_sequence(self.manifest.metadata)

    @property
    def rollback_of(self) -> str | None:
        """The revision a signed rollback replaced (metadata.rollback.from, see authoring.promotion), or None."""
        marker = self.manifest.metadata.get("rollback")
        return str(marker.get("from", "")) if isinstance(marker, dict) else None


def manifest_sequence(metadata: Mapping[str, Any]) -> int | None:
    """metadata.sequence when it is a whole number of 0 or more (anything else counts as none)."""
    value = metadata.get("sequence")
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def load_bundle(
    path: str | Path, *, size_limit: int = DEFAULT_SIZE_LIMIT, include_tests: bool = False,
    data_limits: DataLimits = DEFAULT_DATA_LIMITS,
) -> Bundle:
    """Load a bundle directory or .tar.gz. Test modules (`*_test.rego`) are left out unless include_tests.
    Raises TooLarge past size_limit or data_limits, before parsing any data."""
    p = Path(path)
    if p.is_dir():
        files = dict(read_directory(p, size_limit))
        manifest_raw = files.pop(".manifest", None)
    elif p.is_file():
        files = dict(_read_tarball(p, size_limit))
        manifest_raw = files.pop(".manifest", None)
        if manifest_raw is None:
            raise BundleError(f"bundle {p}: no .manifest (hint: build it with `tollgate build`)")
    else:
        raise BundleError(f"bundle {p}: no such file or directory (hint: check --bundle)")
    files.pop(".signatures.json", None)
    check_data_limits(str(p), files, data_limits)
    digest = _digest(files)
    manifest = _parse_manifest(p, manifest_raw, default_revision=f"sha256:{digest[:16]}")
    modules: dict[str, str] = {}
    data: dict[str, Any] = {}
    for name, content in sorted(files.items()):
        base = posixpath.basename(name)
        if name.endswith(".rego"):
            if name.endswith("_test.rego") and not include_tests:
                continue
            modules[name] = _text(p, name, content)
        elif base in _DATA_FILES:
            value = _parse_data(p, name, content, values_limit=data_limits.values)
            segments = [s for s in posixpath.dirname(name).split("/") if s]
            _place(data, segments, value, where=f"{p}:{name}")
    _check_roots(p, manifest.roots, data)
    del files  # the raw bytes: only the modules and the data JSON are kept
    try:
        data_json = compact_json(data)
    except TypeError as exc:  # a YAML date or time: no JSON value (tollgate build names the file and the path)
        raise BundleError(f"bundle {p}: its data holds a value that is not JSON ({exc}) (hint: quote YAML dates "
                          "and times)") from exc
    del data  # only the JSON is kept (see Bundle)
    if len(data_json) >= _TRIM_AFTER:
        _release_freed_memory()
    return Bundle(source=str(p), manifest=manifest, modules=modules, data_json=data_json, digest=digest)


#: Data this large (as JSON) leaves enough freed memory behind its load to hand back to the system.
_TRIM_AFTER = 1 << 20


def _release_freed_memory() -> None:
    """Return the heap's free pages to the system (glibc's malloc_trim): the parsed data's many small blocks,
    freed, sit between live ones that keep the heap from shrinking; 10,000 manifests left ~37 MiB of RSS so."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the memory is reused by the process instead
        pass


def compact_json(value: Any, depth: int = 2) -> bytes:
    """json.dumps(value, separators=(",", ":")).encode(), encoded a member at a time down to `depth` levels of
    objects with string keys: one C call over 10,000 manifests holds the GIL for ~150 ms (more on a busy machine),
    and the server loads a new revision in a thread while its event loop answers requests; between members, the
    loop gets its turn. (The parts are joined once, into bytes: no whole-document str or intermediate copy beside
    them.)"""
    parts: list[bytes] = []
    _encode(value, depth, parts)
    return b"".join(parts)


def _encode(value: Any, depth: int, parts: list[bytes]) -> None:
    if depth <= 0 or not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        parts.append(json.dumps(value, separators=(",", ":")).encode())
        return
    parts.append(b"{")
    for n, (key, member) in enumerate(value.items()):
        parts.append(b"," + json.dumps(key).encode() + b":" if n else json.dumps(key).encode() + b":")
        _encode(member, depth - 1, parts)
    parts.append(b"}")


def read_directory(root: Path, size_limit: int = DEFAULT_SIZE_LIMIT) -> Iterable[tuple[str, bytes]]:
    """The files of a bundle directory, as (path inside the bundle, content), in path order: every .rego,
    every data.json/data.yaml and the .manifest; hidden tool directories (.git, .tollgate) are skipped.
    A symbolic link among them, or to a directory, is refused by name: it could pull any file on the disk
    into the bundle (the root itself may be a link)."""
    total = 0
    for f in sorted(root.rglob("*")):
        rel = f.relative_to(root)
        if any(part in _SKIP_DIRS for part in rel.parts):
            continue
        name = rel.as_posix()
        wanted = name.endswith(".rego") or rel.name in _DATA_FILES or name == ".manifest"
        if f.is_symlink() and (wanted or f.is_dir()):
            raise BundleError(f"bundle {root}: {name} is a symbolic link to {os.readlink(f)}; a bundle holds "
                              "only the policy directory's own files (hint: copy the file or directory in)")
        if not wanted or not f.is_file():
            continue
        content = f.read_bytes()
        total += len(content)
        if total > size_limit:
            raise BundleError(f"bundle {root}: larger than the {size_limit}-byte limit")
        yield name, content


def _read_tarball(path: Path, size_limit: int) -> Iterable[tuple[str, bytes]]:
    total = 0
    try:
        with tarfile.open(path, mode="r:gz") as tar:
            for member in tar:
                if member.isdir():
                    continue
                name = posixpath.normpath(member.name.lstrip("/"))
                if not member.isreg():
                    raise BundleError(f"bundle {path}: {member.name} is not a regular file")
                if name.startswith("../") or name == "..":
                    raise BundleError(f"bundle {path}: {member.name} escapes the bundle root")
                total += member.size
                if total > size_limit:
                    raise BundleError(
                        f"bundle {path}: uncompressed size exceeds the {size_limit}-byte limit "
                        "(hint: raise the size limit if the bundle is genuinely this large)"
                    )
                fh = tar.extractfile(member)
                if fh is None:
                    continue
                content = fh.read(size_limit + 1)
                yield name, content
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"bundle {path}: not a readable .tar.gz ({exc})") from exc


def is_data_file(name: str) -> bool:
    """Whether the loader reads this bundle file as a data document."""
    return posixpath.basename(name) in _DATA_FILES


def check_data_limits(where: str, files: Mapping[str, bytes], limits: DataLimits) -> None:
    """Refuse (TooLarge) data documents past limits, judged on their bytes: call it before parsing any."""
    total_bytes = total_values = 0
    for name in sorted(files):
        if not is_data_file(name):
            continue
        content = files[name]
        total_bytes += len(content)
        total_values += _value_bound(name, content)
        if total_bytes > limits.bytes:
            raise TooLarge(f"bundle {where}: data documents up to {name} take {total_bytes} bytes, over the "
                           f"{limits.bytes}-byte data limit (hint: raise --bundle-data-limit if the data is "
                           "genuinely this large)")
        if total_values > limits.values:
            raise TooLarge(f"bundle {where}: data documents up to {name} may hold {total_values} values, over the "
                           f"{limits.values}-value data limit (hint: raise --bundle-data-values if the data is "
                           "genuinely this large)")


def _value_bound(name: str, content: bytes) -> int:
    """At least the number of values the file parses into, from counting bytes (C speed, no parsing): in
    JSON every value but the first follows a `,`, `:`, `[` or `{`; in YAML also a line break or a `-`. Such
    bytes inside strings count too, so long texts are over-counted, never a document under-counted (YAML's
    aliases aside: those are counted again once parsed)."""
    bound = 1 + sum(content.count(ch) for ch in (b",", b":", b"[", b"{"))
    if not name.endswith(".json"):
        bound += content.count(b"\n") + content.count(b"-")
    return bound


def count_values(where: str, name: str, value: Any, limit: int) -> None:
    """Refuse (TooLarge) a parsed document with more than limit values, aliases expanded (a YAML alias
    costs nothing parsed but is copied by every JSON encoding of the document)."""
    seen = 0
    stack = [value]
    while stack:
        item = stack.pop()
        seen += 1
        if seen > limit:
            raise TooLarge(f"bundle {where}: {name} holds more than {limit} values once its YAML aliases are "
                           "expanded (hint: write the data out, or raise --bundle-data-values)")
        if isinstance(item, dict):
            stack.extend(item.values())
            seen += len(item)  # the keys
        elif isinstance(item, list):
            stack.extend(item)


def _digest(files: Mapping[str, bytes]) -> str:
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode())
        h.update(b"\0")
        h.update(hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def _parse_manifest(source: Path, raw: bytes | None, *, default_revision: str) -> BundleManifest:
    if raw is None:
        return BundleManifest(revision=default_revision)
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise BundleError(f"bundle {source}: .manifest is not JSON ({exc}) (hint: check .manifest)") from exc
    if not isinstance(doc, dict):
        raise BundleError(f"bundle {source}: .manifest must be a JSON object (hint: check .manifest)")
    revision = doc.get("revision", "")
    roots = doc.get("roots", [""])
    rego_version = doc.get("rego_version", 1)
    metadata = doc.get("metadata", {})
    if not isinstance(revision, str):
        raise BundleError(f"bundle {source}: .manifest revision must be a string")
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise BundleError(f"bundle {source}: .manifest roots must be a list of strings")
    if rego_version != 1:
        raise BundleError(
            f"bundle {source}: rego_version {rego_version!r} is not supported (hint: Tollgate loads Rego v1)"
        )
    if not isinstance(metadata, dict):
        raise BundleError(f"bundle {source}: .manifest metadata must be an object")
    _check_roots_disjoint(source, roots)
    return BundleManifest(
        revision=revision or default_revision, roots=tuple(roots), rego_version=1, metadata=metadata
    )


def _check_roots_disjoint(source: Path, roots: list[str]) -> None:
    norm = [r.strip("/") for r in roots]
    for i, a in enumerate(norm):
        for b in norm[i + 1 :]:
            if a == b or a.startswith(b + "/") or b.startswith(a + "/") or a == "" or b == "":
                raise BundleError(f"bundle {source}: manifest roots overlap: {a!r} and {b!r} (hint: check .manifest)")


def _check_roots(source: Path, roots: tuple[str, ...], data: Mapping[str, Any]) -> None:
    norm = [r.strip("/") for r in roots]
    if "" in norm:
        return

    def covered(path: str) -> bool:
        return any(path == r or path.startswith(r + "/") or r.startswith(path + "/") for r in norm)

    for key in data:
        if not covered(key):
            raise BundleError(
                f"bundle {source}: data path {key!r} is outside the manifest roots {list(roots)} "
                "(hint: check .manifest)"
            )


def _text(source: Path, name: str, content: bytes) -> str:
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"bundle {source}: {name} is not UTF-8 ({exc})") from exc


def _parse_data(source: Path, name: str, content: bytes, *, values_limit: int = DEFAULT_DATA_VALUES) -> Any:
    text = _text(source, name, content)
    try:
        value = json.loads(text) if name.endswith(".json") else yaml.load(text, Loader=YAML_LOADER)
    except (ValueError, yaml.YAMLError) as exc:
        raise BundleError(f"bundle {source}: {name} does not parse ({exc})") from exc
    if not name.endswith(".json"):
        count_values(str(source), name, value, values_limit)
    if value is None:
        return {}
    if not isinstance(value, dict) and posixpath.dirname(name) == "":
        raise BundleError(f"bundle {source}: {name} at the bundle root must hold an object")
    return value


def _place(data: dict[str, Any], segments: list[str], value: Any, *, where: str) -> None:
    """Merge value into data at segments, refusing to overwrite a different value (as OPA does)."""
    node = data
    for i, seg in enumerate(segments):
        if i == len(segments) - 1:
            break
        child = node.setdefault(seg, {})
        if not isinstance(child, dict):
            raise BundleError(f"{where}: data at {'/'.join(segments[: i + 1])} is not an object")
        node = child
    if not segments:
        _merge(data, value, path="", where=where)
        return
    last = segments[-1]
    if last in node:
        if isinstance(node[last], dict) and isinstance(value, dict):
            _merge(node[last], value, path="/".join(segments), where=where)
            return
        raise BundleError(f"{where}: data at {'/'.join(segments)} is defined twice")
    node[last] = value


def _merge(dst: dict[str, Any], src: Mapping[str, Any], *, path: str, where: str) -> None:
    for key, value in src.items():
        sub = f"{path}/{key}" if path else key
        if key in dst:
            if isinstance(dst[key], dict) and isinstance(value, dict):
                _merge(dst[key], value, path=sub, where=where)
                continue
            if dst[key] != value:
                raise BundleError(f"{where}: data at {sub} is defined twice with different values")
        else:
            dst[key] = value

