"""Decision-log export: ship committed records, in seq order, to an OPA decision-log service, an OTLP collector or
the fleet's PostgreSQL store.

The database is the buffer. Each exporter keeps a named cursor (the last seq a receiver acknowledged with a
2xx) in decisions.db and reads forward from it on its own connection and thread, so the writer thread and the
event loop never wait for a receiver. A failed upload is retried from the same cursor with jittered exponential
backoff; nothing is ever dropped, and a crash between an upload and the cursor update re-sends that batch
(at least once). Lag (records and seconds behind the newest committed record) is the backpressure signal:
past `max_lag` the exporter reports WARN.

The OTLP exporter also sends the sidecar's signed checkpoints, each in the first upload that holds (or follows)
the record it names, after the records; the cursor counts the checkpoints acknowledged beside the seq, so each
goes out once (again only when its whole upload is re-sent). The OPA exporter does not: see OpaEncoder.

`LogExporter` is the machinery (cursor, batches, backoff, lag, status); a `Transport` is where a batch goes:
`HttpTransport` (an encoder's body POSTed over HTTP) or the PostgreSQL transport (decisionlog/_pgexport.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from tollgate.clock import Clock, SystemClock
from tollgate.decisionlog._events import opa_event
from tollgate.decisionlog._query import Query
from tollgate.decisionlog._sqlite_store import SqliteDecisionStore
from tollgate.decisionlog._store import DecisionStore, LogReadError
from tollgate.encoding import parse_time
from tollgate.net import Backoff, HttpOptions, Jitter, RequestFailed

if TYPE_CHECKING:
    from tollgate.decisionlog._checkpoint import Checkpoint
    from tollgate.net import HttpClient

log = logging.getLogger(__name__)

#: Longest a single upload (connect, send, answer) may take.
UPLOAD_TIMEOUT = 10.0
#: Sent with every upload; a headers file may not replace them (the body is what these say it is).
_UPLOAD_HEADERS = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
#: How often a waiting exporter re-reads its lag, so metrics stay current through long backoffs.
_LAG_REFRESH = 1.0


class ExportState(Enum):
    """As OPA's plugin status reports it."""

    NOT_READY = "not_ready"  # not started
    OK = "ok"                # the last upload (if any) went well and the lag is within its limit
    WARN = "warn"            # uploads work but the lag is past max_lag
    ERROR = "error"          # the last upload failed; the records wait in the database


@dataclass(frozen=True)
class ExporterConfig:
    """One destination for the decision log."""

    #: The cursor's name in export_cursors ("opa", "otlp", "postgresql"); a new name starts from the oldest record
    #: kept.
    name: str
    #: The URL each batch is POSTed to (http or https), or for another transport where it goes, as status shows it
    #: (never with a password).
    url: str
    #: Sent as `Authorization: Bearer TOKEN` when not empty.
    token: str = ""
    #: More headers sent with every upload (a collector's API key, say), as (name, value) pairs.
    headers: tuple[tuple[str, str], ...] = ()
    #: Most records in one upload.
    batch_records: int = 500
    #: Most record bytes (uncompressed canonical JSON) in one upload; one larger record still goes alone.
    batch_bytes: int = 1024 * 1024
    #: Seconds between looks for new records once caught up, and the first retry delay after a failure.
    min_delay: float = 1.0
    #: Longest retry delay: failures double the delay (with jitter) up to this.
    max_delay: float = 60.0
    #: Seconds behind past which the exporter reports WARN; 0 means no limit.
    max_lag: float = 300.0


@dataclass(frozen=True)
class ExportStatus:
    """A snapshot of one exporter, for metrics and GetStatus."""

    name: str
    url: str
    state: ExportState = ExportState.NOT_READY
    #: The last seq the receiver acknowledged.
    cursor: int = 0
    #: Committed records not yet acknowledged, and the age in seconds of the oldest of them.
    lag_records: int = 0
    lag_seconds: float = 0.0
    uploads_ok: int = 0
    uploads_failed: int = 0
    records_exported: int = 0
    last_error: str = ""
    last_upload: datetime | None = None
    #: The configured lag limit in seconds (0: none).
    max_lag: float = 0.0

    @property
    def lagging(self) -> bool:
        """Further behind than max_lag allows (whether or not uploads are failing right now)."""
        return bool(self.max_lag) and self.lag_seconds > self.max_lag


class Encoder(Protocol):
    """Turns a batch of decision records (and, when it carries them, checkpoints) into one request body."""

    #: Whether the destination's protocol has a place for the log's signed checkpoints.
    carries_checkpoints: bool

    def encode(self, records: Sequence[dict[str, Any]], checkpoints: Sequence[Checkpoint] = ()) -> bytes: ...


class OpaEncoder:
    """OPA's decision-log upload: a JSON array of decision events."""

    #: No checkpoints: OPA's decision-log protocol carries decision events only, and a receiver would count a
    #: checkpoint as one more decision. Ship checkpoints with the OTLP exporter or a jsonl file export.
    carries_checkpoints = False

    def encode(self, records: Sequence[dict[str, Any]], checkpoints: Sequence[Checkpoint] = ()) -> bytes:
        if checkpoints:
            raise ValueError("an OPA decision-log upload carries decision events only, not checkpoints")
        return json.dumps([opa_event(r) for r in records], separators=(",", ":"), ensure_ascii=False).encode()


@dataclass(frozen=True)
class ExportRow:
    """One record of a batch, as the log stores it: `body` is the canonical JSON that was hashed."""

    seq: int
    body: str
    timestamp: str
    hash: str


class UploadError(Exception):
    """A batch the destination did not take; the exporter retries it from the same cursor."""

    def __init__(self, message: str, *, status: int = 0, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: The HTTP status when there was one (413 splits the batch); 0 otherwise.
        self.status = status
        #: Seconds the destination asked us to wait, when it said.
        self.retry_after = retry_after


class Transport(Protocol):
    """Where batches go. Used from the exporter's thread only: open at start, send each batch, close at the end."""

    #: Whether the destination has a place for the log's signed checkpoints.
    carries_checkpoints: bool

    def open(self) -> None: ...

    def send(self, batch: Sequence[ExportRow], checkpoints: Sequence[Checkpoint], *, timeout: float) -> None:
        """Deliver the batch whole, or raise UploadError (anything else is retried too, and logged as a bug)."""
        ...

    def close(self) -> None: ...


class HttpTransport:
    """A batch as one gzipped body from `encoder`, POSTed to config.url with its token and headers."""

    def __init__(self, config: ExporterConfig, encoder: Encoder) -> None:
        parts = urlsplit(config.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{config.name}: url must be http(s)://HOST[:PORT]/PATH, not {config.url!r}")
        self._config = config
        self._encoder = encoder
        self.carries_checkpoints = encoder.carries_checkpoints
        self._http: HttpClient | None = None  # one client, its connection kept alive, from open to close

    def open(self) -> None:
        from tollgate.net import HttpClient  # loads httpx2: only a sidecar that exports pays for it

        self._http = HttpClient(HttpOptions(token=self._config.token, headers=self._config.headers))

    def close(self) -> None:
        if self._http is not None:
            self._http.close()

    def send(self, batch: Sequence[ExportRow], checkpoints: Sequence[Checkpoint], *, timeout: float) -> None:
        # seq and hash travel with each record: a receiver can drop the duplicates at-least-once delivery allows
        # (same seq) and re-check the chain.
        records = [{**json.loads(r.body), "seq": r.seq, "hash": r.hash} for r in batch]
        encoded = self._encoder.encode(records, checkpoints) if checkpoints else self._encoder.encode(records)
        body = gzip.compress(encoded, compresslevel=6)
        assert self._http is not None, "opened"
        try:
            response = self._http.request("POST", self._config.url, body=body, headers=_UPLOAD_HEADERS,
                                          timeout=timeout)
        except RequestFailed as exc:
            raise UploadError(f"{self._config.url}: {exc}") from exc
        if response.ok:
            return
        answer = response.body[:512].decode(errors="replace").strip()
        raise UploadError(f"{self._config.url} answered {response.status} {response.reason}"
                          + (f": {answer[:200]}" if answer else ""),
                          status=response.status, retry_after=_retry_after(response.headers.get("Retry-After")))


class LogExporter:
    """One destination: configure, start, stop (a final flush with a deadline), status."""

    def __init__(self, path: Path, config: ExporterConfig, transport: Transport, *,
                 clock: Clock = SystemClock()) -> None:
        self._path = path
        self._config = config
        self._transport = transport
        self._clock = clock  # the lag is measured against the clock that stamped the records
        self._stop = threading.Event()
        self._deadline = float("inf")  # monotonic time the final flush must end by
        self._thread: threading.Thread | None = None
        # Learned from 413 answers: the receiver refused a body of this many record bytes, so stay below it.
        self._byte_cap = config.batch_bytes
        # Jitter: sidecars that failed together retry apart; a receiver's Retry-After is honoured up to max_delay.
        self._backoff = Backoff(config.min_delay, config.max_delay, jitter=Jitter.EQUAL)
        self._status = ExportStatus(name=config.name, url=config.url, max_lag=config.max_lag)
        #: How many of the log's checkpoints (oldest first) the receiver acknowledged; read at start.
        self._checkpoints_acked = 0

    @property
    def name(self) -> str:
        return self._config.name

    @property
    def status(self) -> ExportStatus:
        """The latest snapshot; safe to read from any thread."""
        return self._status

    def start(self) -> None:
        # Fail at start, not in the thread, when the database cannot be opened.
        store = SqliteDecisionStore.open(self._path, clock=self._clock)
        self._transport.open()
        self._publish(cursor=store.cursor(self.name), state=ExportState.OK)
        if self._transport.carries_checkpoints:
            self._checkpoints_acked = store.cursor_checkpoints(self.name)
        self._thread = threading.Thread(target=self._run, args=(store,), name=f"decision-log-export-{self.name}",
                                        daemon=True)
        self._thread.start()

    def stop(self, deadline: float) -> None:
        """Upload what is committed until caught up or `deadline` seconds pass, then stop; the cursor is on disk."""
        self.begin_stop(deadline)
        self.join()

    def begin_stop(self, deadline: float) -> None:
        """Ask for the final flush and stop without waiting (so several exporters flush side by side)."""
        self._deadline = time.monotonic() + deadline
        self._stop.set()

    def join(self) -> None:
        if self._thread is None:
            return
        self._thread.join(max(0.0, self._deadline - time.monotonic()) + UPLOAD_TIMEOUT)
        if self._thread.is_alive():
            log.warning("decision log export %s: still uploading at shutdown; the rest goes out on the next start",
                        self.name)
        self._thread = None

    # -- the exporter thread ---------------------------------------------------------------------

    def _run(self, store: DecisionStore) -> None:
        try:
            self._loop(store)
        except Exception:  # a bug or a broken database must not end exports silently
            log.exception("decision log export %s: stopped", self.name)
            self._publish(state=ExportState.ERROR, last_error="exporter stopped on an internal error; see the log")
        finally:
            store.close()
            self._transport.close()

    def _loop(self, store: DecisionStore) -> None:
        cursor, acked = self._status.cursor, self._checkpoints_acked
        failures = 0
        while True:
            stopping = self._stop.is_set()
            if stopping and time.monotonic() >= self._deadline:
                return
            retry_after: float | None = None
            try:
                batch = self._read(store, cursor)
                upto = batch[-1].seq if batch else cursor
                marks = self._ready_checkpoints(store, acked, upto)
                self._refresh_lag(store, cursor, batch[0].timestamp if batch else None)
                if not batch and not marks:
                    if stopping:
                        return
                    self._wait(store, cursor, self._config.min_delay)
                    continue
                self._upload(batch, marks)
                # The seq and the checkpoint count in one update: the upload is acknowledged whole.
                store.save_cursor(self.name, upto, checkpoints=acked + len(marks) if marks else None)
            except UploadError as exc:
                if exc.status == 413 and len(batch) > 1:
                    self._byte_cap = max(1, sum(len(r.body) for r in batch) // 2)
                    log.info("decision log export %s: the receiver refused %d records as too large (413); "
                             "sending at most %d record bytes per upload from now on",
                             self.name, len(batch), self._byte_cap)
                    continue  # split at once: not the receiver failing, just our batch size
                message = str(exc)
                if exc.status == 413:
                    alone = f"decision {_decision_id(batch[0])}" if batch else f"{len(marks)} checkpoints"
                    message += (f" ({alone} alone is too large for the receiver; "
                                "it stays in the log and the export waits: raise the receiver's body limit)")
                self._publish(uploads_failed=self._status.uploads_failed + 1)
                retry_after = exc.retry_after
            except Exception as exc:  # the database busy or broken, a record that cannot be encoded: retry, never skip
                log.exception("decision log export %s: cannot read, encode or record progress", self.name)
                message = f"{exc.__class__.__name__}: {exc}"
            else:
                cursor, acked = upto, acked + len(marks)
                if failures:
                    log.info("decision log export %s: uploads work again", self.name)
                failures = 0
                status = self._status
                self._publish(cursor=cursor, state=ExportState.OK, last_error="", uploads_ok=status.uploads_ok + 1,
                              records_exported=status.records_exported + len(batch), last_upload=self._clock.now())
                continue
            failures += 1
            self._publish(state=ExportState.ERROR, last_error=message)
            if stopping:
                log.warning("decision log export %s: final upload failed: %s; %d records wait in the log "
                            "for the next start", self.name, message, self._status.lag_records)
                return  # the final flush gets one try
            delay = self._backoff.delay(failures - 1, retry_after=retry_after)
            log.warning("decision log export %s: %s; retrying in %.1fs", self.name, message, delay)
            self._wait(store, cursor, delay)

    def _read(self, store: DecisionStore, cursor: int) -> list[ExportRow]:
        batch: list[ExportRow] = []
        size = 0
        for row in store.page(Query(), after=cursor, limit=self._config.batch_records):
            size += len(row.record_json)
            if batch and size > self._byte_cap:
                break
            batch.append(ExportRow(row.seq, row.record_json, row.timestamp, row.hash))
        return batch

    def _ready_checkpoints(self, store: DecisionStore, acked: int, upto: int) -> list[Checkpoint]:
        """The checkpoints past the `acked` first whose record (seq <= upto) goes out in this upload or went
        before, up to batch_records of them; none when the encoder has no place for them."""
        if not self._transport.carries_checkpoints:
            return []
        ready: list[Checkpoint] = []
        for checkpoint in store.checkpoints(skip=acked):
            if checkpoint.seq > upto or len(ready) >= self._config.batch_records:
                break  # in seq order: the rest wait for their records too
            ready.append(checkpoint)
        return ready

    def _upload(self, batch: list[ExportRow], marks: Sequence[Checkpoint] = ()) -> None:
        timeout = min(UPLOAD_TIMEOUT, max(0.5, self._deadline - time.monotonic()))
        self._transport.send(batch, marks, timeout=timeout)

    def _wait(self, store: DecisionStore, cursor: int, seconds: float) -> None:
        """Sleep until `seconds` pass or stop is asked, keeping the lag current for the metrics."""
        end = time.monotonic() + seconds
        while not self._stop.is_set():
            left = end - time.monotonic()
            if left <= 0:
                return
            if self._stop.wait(min(left, _LAG_REFRESH)):
                return
            try:
                self._refresh_lag(store, cursor, None)
            except LogReadError:  # a busy database: the lag shown stays as it was until the next look
                pass

    def _refresh_lag(self, store: DecisionStore, cursor: int, oldest: str | None) -> None:
        bounds = store.bounds()
        if bounds is None or bounds[1] <= cursor:
            lag_records, lag_seconds = 0, 0.0
        else:
            first, newest = bounds
            lag_records = newest - max(cursor, first - 1)  # records pruned before export are not owed
            if oldest is None:
                found = store.page(Query(), after=cursor, limit=1)
                oldest = found[0].timestamp if found else None
            lag_seconds = self._status.lag_seconds  # kept when the oldest record's time cannot be read
            with contextlib.suppress(ValueError, TypeError):
                if oldest is not None:
                    lag_seconds = max(0.0, (self._clock.now() - parse_time(oldest)).total_seconds())
        state = self._status.state
        limit = self._config.max_lag
        if state is not ExportState.ERROR:  # failing uploads stay ERROR until one succeeds
            state = ExportState.WARN if limit and lag_seconds > limit else ExportState.OK
        self._publish(lag_records=lag_records, lag_seconds=lag_seconds, state=state)

    def _publish(self, **changes: Any) -> None:
        # Only the exporter thread (and start, before it) writes; readers see one whole snapshot or the next.
        self._status = dataclasses.replace(self._status, **changes)


def _decision_id(row: ExportRow) -> str:
    try:
        return str(json.loads(row.body).get("decision_id", f"seq {row.seq}"))
    except ValueError:
        return f"seq {row.seq}"


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare from log receivers and is ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
