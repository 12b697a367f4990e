"""Proving a decision log's hash chain, whole or a range, and naming the first record that breaks it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from tollgate.decisionlog._query import Query
from tollgate.decisionlog._sqlite import GENESIS, record_hash
from tollgate.decisionlog._store import Anchor, DecisionStore, StoredRecord, matching

# What went wrong at the first broken record.
EDITED = "edited"  # the record (or a column beside it) is not what was hashed
DELETED = "deleted"  # seq numbers are missing
RELINKED = "relinked"  # prev_hash does not follow from the record before: deleted, inserted or reordered
TRUNCATED = "truncated"  # the head the caller expects, or an exporter delivered, is no longer in the log


@dataclass(frozen=True)
class ChainBreak:
    """The first record at which the chain does not hold."""

    seq: int
    decision_id: str
    problem: str  # EDITED, DELETED, RELINKED or TRUNCATED
    detail: str

    def describe(self) -> str:
        return f"seq {self.seq} ({self.decision_id}): {self.problem}: {self.detail}"


@dataclass(frozen=True)
class Verification:
    """What verify() proved: `records` records, seq first_seq..last_seq, chained from `start` to head_hash."""

    records: int
    first_seq: int | None
    last_seq: int | None
    head_hash: str
    start: str  # where the chain was taken from: "genesis", "pruning anchor at seq N", "seq N"
    broken: ChainBreak | None

    @property
    def intact(self) -> bool:
        return self.broken is None

    def summary(self) -> str:
        if self.broken is not None:
            return f"chain broken at {self.broken.describe()}"
        if self.records == 0:
            return f"verified 0 records (from {self.start}), head hash {self.head_hash}"
        return (f"verified {self.records} records, seq {self.first_seq}..{self.last_seq}, head hash {self.head_hash}"
                f" (from {self.start})")


def verify(store: DecisionStore, *, first: int | None = None, last: int | None = None,
           expect_head: str | None = None) -> Verification:
    """Check every record with seq in [first, last] (default: all) against its hash and its predecessor.

    The chain starts at genesis, or at the newest retention anchor below the first remaining record, or
    (for a range) at the record just before `first`. expect_head, a head hash seen earlier (a previous
    verify, an export), must still be in the log: deleting the newest records leaves a chain that is
    intact but shorter, which only an outside copy of the head can show.
    """
    with store.snapshot():
        marks = store.anchors()
        by_upto = {a.upto_seq: a for a in marks}
        bounds = store.bounds()
        if bounds is None:
            head = marks[-1].last_hash if marks else GENESIS
            return _with_head(Verification(0, None, None, head, _start_name(marks[-1] if marks else None), None),
                              expect_head, found=expect_head in (head, *(a.last_hash for a in marks)))
        low = bounds[0]
        before = store.link_before(first) if first is not None and first > low else None
        if before is not None:
            expected_seq, expected_prev, start = before[0] + 1, before[1], f"seq {before[0]}"
            after = before[0]
        else:
            anchor = next((a for a in reversed(marks) if a.upto_seq < low), None)
            expected_seq = anchor.upto_seq + 1 if anchor else 1
            expected_prev = anchor.last_hash if anchor else GENESIS
            start, after = _start_name(anchor), low - 1
        found = expect_head is not None and expect_head in (a.last_hash for a in marks if a.upto_seq < low)
        count, first_seq, row, previous = 0, None, None, start
        for row in matching(store, Query(), after=after, upto=last):
            problem = _check(row, expected_seq, expected_prev, previous, by_upto.get(row.seq))
            if problem is not None:
                return Verification(count, first_seq, row.seq - 1 if count else None, expected_prev, start,
                                    ChainBreak(row.seq, row.decision_id, *problem))
            count += 1
            first_seq = row.seq if first_seq is None else first_seq
            found = found or row.hash == expect_head
            expected_seq, expected_prev, previous = row.seq + 1, row.hash, f"seq {row.seq}"
        result = Verification(count, first_seq, row.seq if row else None, expected_prev, start, None)
        if last is None and row is not None:
            result = _with_exporters(store, result, row)
        return _with_head(result, expect_head, found=found, last_row=row)


def _with_exporters(store: DecisionStore, result: Verification, last_row: StoredRecord) -> Verification:
    """The server's exporters keep, beside the log, the last seq a receiver acknowledged: a log that ends before
    it lost its newest records (the one case of truncation the log itself can show)."""
    if result.broken is not None:
        return result
    ahead = sorted((seq, name) for name, seq in store.cursors().items() if seq > last_row.seq)
    if not ahead:
        return result
    seq, name = ahead[-1]
    detail = (f"the {name} exporter delivered up to seq {seq}, but the log ends here: records after "
              "this one were deleted")
    return Verification(result.records, result.first_seq, result.last_seq, result.head_hash, result.start,
                        ChainBreak(last_row.seq, last_row.decision_id, TRUNCATED, detail))


def _start_name(anchor: Anchor | None) -> str:
    return f"pruning anchor at seq {anchor.upto_seq}" if anchor else "genesis"


def _with_head(result: Verification, expect_head: str | None, *, found: bool,
               last_row: StoredRecord | None = None) -> Verification:
    if expect_head is None or found:
        return result
    seq, decision_id = (last_row.seq, last_row.decision_id) if last_row else (0, "")
    detail = (f"no record hashes the expected head {expect_head}: records after this one were deleted "
              "(or that head comes from another log)")
    return Verification(result.records, result.first_seq, result.last_seq, result.head_hash, result.start,
                        ChainBreak(seq, decision_id, TRUNCATED, detail))


def _check(row: StoredRecord, expected_seq: int, expected_prev: str, previous: str,
           anchor: Anchor | None) -> tuple[str, str] | None:
    """(problem, detail) for the first thing wrong with this record, or None; `previous` names what
    expected_prev came from (genesis, a pruning anchor, the record before)."""
    if row.seq != expected_seq:
        missing = f"seq {expected_seq}" if row.seq == expected_seq + 1 else f"seq {expected_seq}..{row.seq - 1}"
        return DELETED, f"{missing} missing after {previous}: records were deleted"
    if record_hash(row.prev_hash, row.record_json) != row.hash:
        return EDITED, "the record does not hash to its stored hash: the record or its hash was changed"
    try:
        record = json.loads(row.record_json)
    except ValueError:
        return EDITED, "the record is not JSON"
    input_doc = _object(record, "input")
    hashed = {"prev_hash": _object(record, "prev_hash"), "decision_id": _object(record, "decision_id"),
              "timestamp": _object(record, "timestamp"), "decision": _object(record, "decision"),
              "kind": _object(input_doc, "kind"), "agent_id": _object(_object(input_doc, "principal"), "agent_id"),
              "session_id": _object(_object(input_doc, "principal"), "session_id"),
              # Idempotent retries are answered by the record this column finds: an edit would answer another.
              "request_id": _object(record, "request_id") or "",
              "bundle_revision": _object(record, "bundle_revision") or ""}
    for column, value in hashed.items():
        if getattr(row, column) != value:
            return EDITED, f"column {column} is {getattr(row, column)!r} but the hashed record says {value!r}"
    if row.prev_hash != expected_prev:
        return RELINKED, (f"prev_hash {row.prev_hash[:16]}… is not the hash of {previous} ({expected_prev[:16]}…): "
                          "a record before it was deleted, inserted or reordered (or edited and re-hashed)")
    if anchor is not None and anchor.last_hash != row.hash:
        return EDITED, (f"the pruning anchor at seq {anchor.upto_seq} recorded hash {anchor.last_hash[:16]}… but "
                        f"the record hashes {row.hash[:16]}…")
    return None


def _object(value: object, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None
