"""Exporting the decision log to files: one event per line (OPA events or Tollgate records), once or continuously.

A `jsonl` export also carries the sidecar's signed checkpoints (lines of type tollgate.checkpoint), each once it
has written the record the checkpoint names, so that a copy shipped off the machine can prove the log later
(`tollgate logs verify --checkpoints FILE`).

A continuous export appends each batch, fsyncs it, then writes a cursor (the last seq exported and the
file's size after it). A restarted exporter cuts the file back to the cursor's size, dropping a batch
that was written but not acknowledged, and resumes after the cursor's seq: nothing is lost and nothing
is written twice. Files rotate at a batch boundary once they pass a size, as FILE.1 .. FILE.K.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Any, cast

from tollgate.bundle import fsync_directory
from tollgate.decisionlog._checkpoint import Checkpoint
from tollgate.decisionlog._events import jsonl_record, opa_event
from tollgate.decisionlog._query import Query
from tollgate.decisionlog._store import DecisionStore, StoredRecord, matching
from tollgate.encoding import canonical_json

FORMATS = ("opa", "jsonl")


class FileExportError(Exception):
    """The export cannot continue (the message names the file and what to do)."""


def export_line(row: StoredRecord, fmt: str, *, instance_id: str | None = None) -> str:
    """One record as one line of an export: an OPA event (`opa`) or the record with seq and hash (`jsonl`)."""
    try:
        record = row.record()
    except ValueError as exc:
        raise FileExportError(f"seq {row.seq} ({row.decision_id}) is not a readable record ({exc}); "
                          "run `tollgate logs verify` on the log") from exc
    if fmt == "jsonl":
        return canonical_json(jsonl_record(record, seq=row.seq, hash=row.hash)) + "\n"
    if fmt == "opa":
        return canonical_json(opa_event({**record, "seq": row.seq, "hash": row.hash}, instance_id=instance_id)) + "\n"
    raise ValueError(f"export format must be one of {', '.join(FORMATS)}, not {fmt!r}")


def checkpoint_lines(store: DecisionStore, fmt: str, *, skip: int, upto: int) -> tuple[bytes, int]:
    """The checkpoints past the first `skip` that name a seq up to `upto` (what is written), as `jsonl` lines,
    and how many; nothing for other formats (an OPA event stream has no place for them)."""
    if fmt != "jsonl":
        return b"", 0
    ready: list[Checkpoint] = []
    for checkpoint in store.checkpoints(skip=skip):
        if checkpoint.seq > upto:  # checkpoints come in seq order: the rest wait for their records too
            break
        ready.append(checkpoint)
    return b"".join((canonical_json(c.as_dict()) + "\n").encode() for c in ready), len(ready)


def export_once(store: DecisionStore, out: IO[bytes], *, fmt: str, query: Query | None = None,
                instance_id: str | None = None) -> int:
    """Write every matching record to `out`, in append order, from one snapshot (then, for `jsonl`, the
    checkpoints of what was written); returns how many records."""
    count, last = 0, 0
    with store.snapshot():
        for row in matching(store, query or Query()):
            out.write(export_line(row, fmt, instance_id=instance_id).encode())
            count, last = count + 1, row.seq
        out.write(checkpoint_lines(store, fmt, skip=0, upto=last)[0])
    return count


# -- continuous export -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FileCursor:
    """Where a continuous export stands: the last seq written, its hash, the current file's size after it, and
    how many of the log's checkpoints were written (jsonl)."""

    seq: int = 0
    hash: str = ""
    size: int = 0
    checkpoints: int = 0

    @staticmethod
    def load(path: Path) -> FileCursor:
        """The cursor saved at path; a fresh one when there is no file yet."""
        try:
            doc = json.loads(path.read_text())
            return FileCursor(int(doc["seq"]), str(doc["hash"]), int(doc["size"]), int(doc.get("checkpoints", 0)))
        except FileNotFoundError:
            return FileCursor()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise FileExportError(f"cursor {path} cannot be read ({exc}); fix or remove it (removing it exports "
                              "everything again)") from exc

    def save(self, path: Path) -> None:
        """Replace the cursor file atomically and durably (write, fsync, rename, fsync the directory)."""
        tmp = path.with_name(path.name + ".tmp")
        with tmp.open("w") as fh:
            fh.write(json.dumps({"seq": self.seq, "hash": self.hash, "size": self.size,
                                 "checkpoints": self.checkpoints}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        tmp.replace(path)
        fsync_directory(path.parent)


@dataclass(frozen=True)
class Rotation:
    """When the export file moves aside: past max_bytes, keeping the `keep` newest old files."""

    max_bytes: int
    keep: int

    def __post_init__(self) -> None:
        if self.max_bytes < 1:
            raise ValueError(f"rotate bytes must be at least 1, not {self.max_bytes}")
        if self.keep < 1:
            raise ValueError(f"keep must be at least 1, not {self.keep}")


class FileExport:
    """A resumable export of one log to one file (gzip when it ends in .gz), with a cursor and rotation."""

    def __init__(self, store: DecisionStore, path: Path, *, fmt: str, cursor_path: Path,
                 rotation: Rotation | None = None, query: Query | None = None, instance_id: str | None = None,
                 batch: int = 1000, on_loss: Callable[[str], None] | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"export format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self._store, self.path, self._fmt, self._cursor_path = store, path, fmt, cursor_path
        #: Told (once per range) when retention deleted records this export had not written yet.
        self._on_loss = on_loss
        self._lost_upto = 0
        self._rotation, self._query, self._instance_id, self._batch = rotation, query or Query(), instance_id, batch
        self._gzip = path.name.endswith(".gz")
        self.cursor = FileCursor.load(cursor_path)
        self._resume()

    def _resume(self) -> None:
        """Bring the file back to what the cursor acknowledges, and check the log still holds the cursor's record."""
        size = self.path.stat().st_size if self.path.exists() else 0
        if size > self.cursor.size:  # a batch written but not acknowledged: it is written again below
            with self.path.open("r+b") as fh:
                fh.truncate(self.cursor.size)
                os.fsync(fh.fileno())
        elif size < self.cursor.size:
            if size != 0:
                raise FileExportError(f"{self.path} is {size} bytes but cursor {self._cursor_path} says "
                                      f"{self.cursor.size}: the file was changed by something else; move it aside "
                                      "and remove the cursor")
            # Rotated just before the cursor could say so: the new file holds nothing yet.
            self.cursor = replace(self.cursor, size=0)
        if self.cursor.seq:
            found = self._store.hash_at(self.cursor.seq)
            if found is not None and found != self.cursor.hash:
                raise FileExportError(
                    f"cursor {self._cursor_path} is at seq {self.cursor.seq} with hash {self.cursor.hash[:16]}… but "
                    f"the log's record there hashes {found[:16]}…: this cursor belongs to another log, or the log "
                    "was changed (run `tollgate logs verify`)")

    def step(self) -> int:
        """Export what was committed since the cursor, one batch at a time; returns how many records."""
        total = 0
        while True:
            found = self._store.page(self._query, after=self.cursor.seq, limit=self._batch)
            self._check_loss()
            last = (found[-1].seq, found[-1].hash) if found else (self.cursor.seq, self.cursor.hash)
            marks, marked = checkpoint_lines(self._store, self._fmt, skip=self.cursor.checkpoints, upto=last[0])
            if not found and not marked:
                return total
            self._rotate_if_due()
            data = b"".join(export_line(r, self._fmt, instance_id=self._instance_id).encode() for r in found) + marks
            if self._gzip:
                data = gzip.compress(data, mtime=0)  # one gzip member per batch; readers join members
            with self.path.open("ab") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                size = fh.tell()
            self.cursor = FileCursor(last[0], last[1], size, self.cursor.checkpoints + marked)
            self.cursor.save(self._cursor_path)
            total += len(found)
            if not found:
                return total

    def _check_loss(self) -> None:
        """Retention does not wait for a file export (it is not one of the server's exporters): say so when it
        deleted records after the cursor, since they can no longer be written."""
        if not self.cursor.seq or self._on_loss is None:
            return
        upto = self._store.pruned_upto()
        start = max(self.cursor.seq, self._lost_upto) + 1
        if upto >= start:
            self._on_loss(f"seq {start}..{upto} were deleted by retention before this export wrote them "
                          "(export more often than decision_log_retention, or keep records longer)")
            self._lost_upto = upto

    def _rotate_if_due(self) -> None:
        if self._rotation is None or self.cursor.size < self._rotation.max_bytes:
            return
        keep = self._rotation.keep
        oldest = self._numbered(keep)
        if oldest.exists():
            oldest.unlink()
        for n in range(keep - 1, 0, -1):
            if self._numbered(n).exists():
                self._numbered(n).replace(self._numbered(n + 1))
        if self.path.exists():
            self.path.replace(self._numbered(1))
        fsync_directory(self.path.parent)
        self.cursor = replace(self.cursor, size=0)
        self.cursor.save(self._cursor_path)

    def _numbered(self, n: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{n}")


@contextlib.contextmanager
def open_output(target: str, stdout: IO[bytes]) -> Iterator[IO[bytes]]:
    """The file an export writes: `-` for stdout, gzip for a name ending in .gz, else plain (replaced)."""
    if target == "-":
        yield stdout
        stdout.flush()
        return
    path = Path(target)
    try:
        raw = path.open("wb")
    except OSError as exc:
        raise FileExportError(f"cannot write {path}: {exc.strerror or exc}") from exc
    with raw:
        if path.name.endswith(".gz"):
            with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as zipped:
                yield cast(IO[bytes], zipped)  # a binary file; typeshed does not type GzipFile as IO[bytes]
        else:
            yield raw


def follow(step: Callable[[], int], *, interval: float, stop: Callable[[float], bool]) -> int:
    """Run step() (an export's step), then wait up to `interval` seconds, until stop(interval) returns True;
    one last step then picks up what was committed meanwhile. Returns the number of records exported."""
    total = 0
    while True:
        total += step()
        if stop(interval):
            return total + step()


class StreamExport:
    """A continuous export to a stream (stdout for a pipe), from the start or --since, without a cursor."""

    def __init__(self, store: DecisionStore, out: IO[bytes], *, fmt: str, query: Query | None = None,
                 instance_id: str | None = None, batch: int = 1000) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"export format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        self._store, self._out, self._fmt, self._query = store, out, fmt, query or Query()
        self._instance_id, self._batch, self._after, self._checkpoints = instance_id, batch, 0, 0

    def step(self) -> int:
        total = 0
        while True:
            found = self._store.page(self._query, after=self._after, limit=self._batch)
            self._after = found[-1].seq if found else self._after
            marks, marked = checkpoint_lines(self._store, self._fmt, skip=self._checkpoints, upto=self._after)
            if not found and not marked:
                return total
            self._out.write(b"".join(export_line(r, self._fmt, instance_id=self._instance_id).encode()
                                     for r in found) + marks)
            self._out.flush()
            self._checkpoints += marked
            total += len(found)
            if not found:
                return total


def read_export(path: Path) -> list[dict[str, Any]]:
    """The events of an export file (gzip or plain), for checks and tests."""
    data = path.read_bytes()
    if path.name.endswith(".gz") or ".gz." in path.name:
        data = gzip.decompress(data)
    return [json.loads(line) for line in io.BytesIO(data).read().decode().splitlines() if line]

