"""DecisionStore: the one way anything reads the decision log (query, timeline, replay, verify, export, retention).

The protocol is the seam between the log's users and where it is kept: `SqliteDecisionStore` reads a
server's decisions.db (the default, and every sidecar's first durable copy); a PostgreSQL store for a fleet
implements the same methods. Nothing outside the store speaks SQL to the `decisions` table.

Records come back two ways. `StoredRecord` is a row as stored, with the exact text that was hashed: verify
checks it and exports write from it, so what leaves the log is byte for byte what went in. `DecisionRecord`
(`StoredRecord.decision_record()`, `get`, `latest_for_request`) is the typed record for everything else.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from tollgate.decisionlog._query import Query
from tollgate.decisionlog._record import DecisionRecord

if TYPE_CHECKING:
    from collections.abc import Callable

    from tollgate.decisionlog._checkpoint import Checkpoint

#: Records read per page by `matching`: one short read at a time on a live log.
PAGE = 1000


class LogReadError(Exception):
    """The decision log cannot be opened or read (the message names the file and what to check)."""


@dataclass(frozen=True)
class StoredRecord:
    """One row of the log: the record as stored (canonical JSON, as hashed) with its place in the chain.

    decision_id, timestamp, agent_id, session_id, kind, decision, request_id and bundle_revision are the
    store's own copies (what queries and idempotent retries look up); verify holds every one of them to the
    hashed record.
    """

    seq: int
    decision_id: str
    timestamp: str
    agent_id: str
    session_id: str
    kind: str
    decision: str
    record_json: str
    prev_hash: str
    hash: str
    request_id: str = ""
    bundle_revision: str = ""

    def record(self) -> dict[str, Any]:
        """The record as data (prev_hash included, as it was hashed); ValueError when the JSON is broken."""
        value = json.loads(self.record_json)
        if not isinstance(value, dict):
            raise ValueError(f"seq {self.seq}: the record is not a JSON object")
        return value

    def decision_record(self) -> DecisionRecord:
        """The typed record, with seq and hash; ValueError (naming the seq) when it is not a decision record."""
        try:
            found = DecisionRecord.from_json(self.record_json)
        except ValueError as exc:
            raise ValueError(f"seq {self.seq}: {exc}") from None
        return replace(found, seq=self.seq, hash=self.hash)


@dataclass(frozen=True)
class Anchor:
    """A retention mark: records up to upto_seq were pruned, and the last of them hashed last_hash; signed with
    the checkpoint key when one is configured ("" otherwise), so that a forged anchor shows."""

    upto_seq: int
    last_hash: str
    pruned_at: str
    signature: str = ""


class DecisionStore(Protocol):
    """A decision log to read (and, for the server's own exporters and retention, to keep)."""

    # -- records ---------------------------------------------------------------------------------

    def get(self, decision_id: str) -> DecisionRecord | None:
        """The committed record with this ID, with its seq and hash, or None."""
        ...

    def latest_for_request(self, request_id: str) -> DecisionRecord | None:
        """The most recent committed record answering this caller request_id, or None."""
        ...

    def page(self, query: Query, *, after: int = 0, upto: int | None = None,
             limit: int = PAGE) -> list[StoredRecord]:
        """The first `limit` records matching query with seq in (after, upto], in append order (query.limit
        is not applied: see `find` and `span`)."""
        ...

    def find(self, query: Query) -> list[StoredRecord]:
        """Every matching record in append order; with query.limit, the most recent that many."""
        ...

    def span(self, query: Query) -> tuple[int, int]:
        """(after, upto): the seq range that holds the records matching query now, committed by this call;
        with query.limit, only the most recent that many. A replay reads it page by page."""
        ...

    def position(self, text: str) -> int:
        """A seq number as written, or the seq of the record with this decision ID (LogReadError if none)."""
        ...

    def snapshot(self) -> AbstractContextManager[None]:
        """Every read inside sees one committed log, whatever a writer or retention does meanwhile."""
        ...

    # -- the chain -------------------------------------------------------------------------------

    def bounds(self) -> tuple[int, int] | None:
        """(lowest seq, highest seq) of the records kept, or None when there are none."""
        ...

    def link_before(self, seq: int) -> tuple[int, str] | None:
        """(seq, hash) of the newest record below seq, or None."""
        ...

    def hash_at(self, seq: int) -> str | None:
        """The hash of record seq, or None when it is not (or no longer) in the log."""
        ...

    def anchors(self) -> list[Anchor]:
        """Retention's anchors, oldest first (none when nothing was ever pruned)."""
        ...

    def pruned_upto(self) -> int:
        """The highest seq retention has deleted up to (0: none)."""
        ...

    def checkpoints(self, *, skip: int = 0) -> list[Checkpoint]:
        """The signed checkpoints of the chain head the sidecar published, oldest first (past the first `skip`)."""
        ...

    def save_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Keep a published checkpoint beside the log."""
        ...

    # -- exporters and retention -----------------------------------------------------------------

    def cursors(self) -> Mapping[str, int]:
        """Each exporter's cursor: the last seq its receiver acknowledged."""
        ...

    def cursor(self, name: str) -> int:
        """One exporter's cursor (0 when it has none yet)."""
        ...

    def cursor_checkpoints(self, name: str) -> int:
        """How many of the log's checkpoints (oldest first) one exporter's receiver acknowledged (0: none)."""
        ...

    def save_cursor(self, name: str, seq: int, *, checkpoints: int | None = None) -> None:
        """Persist an exporter's cursor (moving it is what acknowledges records), with how many checkpoints were
        acknowledged when given (else that count is left as it was)."""
        ...

    def prune(self, *, upto: int, before: str, swept_at: str, batch: int,
              sign: Callable[[Anchor], str] | None = None) -> tuple[int, bool]:
        """Delete up to `batch` of the oldest records with seq <= upto and timestamp < before, as one
        contiguous prefix, leaving an anchor (one per sweep, named by swept_at; signed by `sign` when given);
        returns (deleted, whether more may follow)."""
        ...

    def close(self) -> None:
        ...


def matching(store: DecisionStore, query: Query, *, after: int = 0, upto: int | None = None,
             batch: int = PAGE) -> Iterator[StoredRecord]:
    """Every matching record with seq in (after, upto], in append order, read a page at a time (each page its
    own read, unless the caller holds a snapshot); query.limit is not applied."""
    while True:
        found = store.page(query, after=after, upto=upto, limit=batch)
        yield from found
        if len(found) < batch:
            return
        after = found[-1].seq
