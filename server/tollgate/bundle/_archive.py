"""Bundle archives: strict reading within a size limit, and reproducible writing (same files → same bytes)."""

from __future__ import annotations

import gzip
import io
import os
import posixpath
import tarfile
import tempfile
import zlib
from collections.abc import Mapping
from pathlib import Path

from tollgate.bundle._loader import DEFAULT_SIZE_LIMIT, BundleError

#: What a bundle archive can be read from: its path, or its bytes (e.g. as downloaded).
ArchiveSource = str | Path | bytes

SIGNATURES_FILE = ".signatures.json"
MANIFEST_FILE = ".manifest"


def describe(source: ArchiveSource) -> str:
    """How errors name an archive: its path, or `<N bytes>` when it was given as bytes."""
    return f"<{len(source)} bytes>" if isinstance(source, bytes) else str(source)


def archive_bytes(source: ArchiveSource, *, size_limit: int = DEFAULT_SIZE_LIMIT) -> bytes:
    """The compressed bytes of an archive given by path (refusing files past size_limit) or as bytes."""
    if isinstance(source, bytes):
        return source
    try:
        if os.stat(source).st_size > size_limit:
            raise BundleError(f"bundle {source}: larger than the {size_limit}-byte limit")
        return Path(source).read_bytes()
    except OSError as exc:
        raise BundleError(f"bundle {source}: cannot be read ({exc.strerror or exc})") from exc


def read_archive(
    source: ArchiveSource, *, size_limit: int = DEFAULT_SIZE_LIMIT, where: str | None = None
) -> dict[str, bytes]:
    """Every regular file of a bundle .tar.gz, by name (a leading "/" dropped, as OPA does for signatures).

    Stricter than a loader needs to be, because what is verified must be exactly what is loaded: links,
    devices, sparse and continuation entries, names that are not canonical (`a/./b`, `../x`) and names that
    appear twice are refused. size_limit bounds the uncompressed archive (a guard against gzip bombs). where
    names the archive in errors (default: its path, or `<N bytes>`).
    """
    where = where or describe(source)
    tar_bytes = _gunzip(where, archive_bytes(source, size_limit=size_limit), size_limit)
    files: dict[str, bytes] = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tar:
            for member in tar:
                if member.isdir():
                    continue
                name = _canonical_name(where, member.name)
                if member.type not in (tarfile.REGTYPE, tarfile.AREGTYPE) or member.issparse():
                    raise BundleError(f"bundle {where}: {member.name} is not a regular file")
                if name in files:
                    raise BundleError(f"bundle {where}: {name} appears twice in the archive")
                fh = tar.extractfile(member)
                files[name] = fh.read() if fh is not None else b""
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"bundle {where}: not a readable .tar.gz ({exc})") from exc
    return files


def _gunzip(where: str, data: bytes, size_limit: int) -> bytes:
    out = bytearray()
    rest = data
    while True:
        d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip framing
        try:
            out += d.decompress(rest, size_limit + 1 - len(out))
        except zlib.error as exc:
            raise BundleError(f"bundle {where}: not a readable .tar.gz ({exc})") from exc
        if len(out) > size_limit or d.unconsumed_tail:
            raise BundleError(
                f"bundle {where}: uncompressed size exceeds the {size_limit}-byte limit "
                "(hint: raise the size limit if the bundle is genuinely this large)"
            )
        if not d.eof:
            raise BundleError(f"bundle {where}: not a readable .tar.gz (truncated gzip stream)")
        rest = d.unused_data
        if not rest.strip(b"\0"):  # gzip members may be concatenated; zero padding may follow
            return bytes(out)


def _canonical_name(where: str, raw: str) -> str:
    name = raw[1:] if raw.startswith("/") else raw
    if not name or name.startswith("/") or posixpath.normpath(name) != name:
        raise BundleError(f"bundle {where}: entry name {raw!r} is not a plain relative path "
                          "(hint: build the bundle with `tollgate build`)")
    if name == ".." or name.startswith("../"):
        raise BundleError(f"bundle {where}: {raw} escapes the bundle root")
    return name


def write_archive(files: Mapping[str, bytes]) -> bytes:
    """A .tar.gz of files whose bytes depend on nothing but the files: entries sorted by name, no
    directory entries, mtime 0, uid/gid 0, empty owner names, mode 0644, POSIX.1-2001 (PAX) format, and
    a gzip header with mtime 0 and no file name."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(files):
            content = files[name]
            info = tarfile.TarInfo(name)
            info.size = len(content)
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.type = tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(content))
    return gzip.compress(buf.getvalue(), compresslevel=9, mtime=0)


def fsync_directory(path: Path) -> None:
    """Make the renames and creations in directory path durable (after os.replace, before relying on them)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_file_atomically(path: Path, content: bytes) -> None:
    """Replace path with content so that readers see the old file or the new one, never a partial one."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise BundleError(f"bundle {path}: cannot be written ({exc.strerror or exc})") from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise BundleError(f"bundle {path}: cannot be written ({exc.strerror or exc})") from exc
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
