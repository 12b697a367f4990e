"""DecisionRecord: as_dict() is the JSON the dict was, from_dict() reads any record back, the chain hash holds."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tollgate.contract import Decision, Reason
from tollgate.decisionlog import DecisionLog, DecisionRecord, LogConfig
from tollgate.decisionlog._sqlite import GENESIS, record_hash
from tollgate.encoding import canonical_json

SAMPLE = ROOT / "samples" / "decisions.jsonl"


def _legacy(**changes: Any) -> dict[str, Any]:
    """A record as the authorizer wrote it before DecisionRecord: the 20-key dict, by hand."""
    record: dict[str, Any] = {
        "decision_id": "01a1ffff-a4f0-71bb-8f2d-7597f49710e4", "timestamp": "2026-11-21T18:04:05.123456Z",
        "input": {"kind": "tool", "principal": {"agent_id": "code-reviewer", "instance_id": "cr-7", "session_id": "s1"},
                  "tool": {"server": "github", "name": "merge_pull_request", "arguments": {"pr": 7}}},
        "result": {"decision": "require_approval", "reasons": [{"code": "needs_review", "message": "m"}]},
        "decision": "require_approval", "reasons": [{"code": "needs_review", "message": "m"}],
        "obligations": {"redact": True}, "bundle_revision": "rev-42", "policy_path": "tollgate/decision",
        "request_id": "req-1", "request_digest": "d" * 64, "approval_id": "apr_1", "approval_status": "",
        "reservation_id": "", "previous_decision_id": "", "requested_by": "uds:uid=1000", "error": "",
        "erased": ["/input/tool/arguments/token"], "masked": [], "latency_us": 1234,
    }
    record.update(changes)
    return record


def _typed(**changes: Any) -> DecisionRecord:
    """The same record built as the authorizer builds it now."""
    values: dict[str, Any] = {
        "decision_id": "01a1ffff-a4f0-71bb-8f2d-7597f49710e4", "timestamp": "2026-11-21T18:04:05.123456Z",
        "input": _legacy()["input"], "result": _legacy()["result"], "decision": "require_approval",
        "reasons": (Reason("needs_review", "m"),), "obligations": {"redact": True}, "bundle_revision": "rev-42",
        "policy_path": "tollgate/decision", "request_id": "req-1", "request_digest": "d" * 64,
        "approval_id": "apr_1", "requested_by": "uds:uid=1000", "erased": ("/input/tool/arguments/token",),
        "latency_us": 1234,
    }
    values.update(changes)
    return DecisionRecord(**values)


def test_as_dict_is_the_dict_the_authorizer_wrote_before_byte_for_byte() -> None:
    assert canonical_json(_typed().as_dict()) == canonical_json(_legacy())


@pytest.mark.parametrize(("changes", "written"), [
    ({"dry_run": True}, {"dry_run": True}),
    ({"dry_run": False}, {}),
    ({"prev_hash": "a" * 64}, {"prev_hash": "a" * 64}),
    ({"seq": 7, "hash": "b" * 64}, {}),
], ids=["dry-run-written-when-true", "dry-run-absent-when-false", "prev-hash-when-linked", "seq-and-hash-never"])
def test_fields_written_only_when_they_say_something(changes: dict[str, Any], written: dict[str, Any]) -> None:
    assert _typed(**changes).as_dict() == _legacy(**written)


def test_every_sample_record_reads_and_writes_back_unchanged() -> None:
    lines = SAMPLE.read_text().splitlines()
    assert lines
    for line in lines:  # each line is a stored record: canonical JSON with its prev_hash
        assert canonical_json(DecisionRecord.from_json(line).as_dict()) == line


def test_the_chain_hashes_what_the_dict_would_have_hashed(tmp_path: Path) -> None:
    records = [_typed(decision_id=f"dec-{i}", request_id=f"req-{i}") for i in range(5)]
    log = DecisionLog(LogConfig(path=tmp_path / "decisions.db"))

    async def run() -> None:
        log.start(asyncio.get_running_loop())
        for record in records:
            await log.append(record)
        # The engine's serialisation of the input is spliced in instead of serialising it again: same bytes.
        await log.append(_typed(decision_id="dec-5"), input_json=canonical_json(_legacy()["input"]))

    asyncio.run(run())
    log.close()
    rows = sqlite3.connect(tmp_path / "decisions.db").execute(
        "SELECT record, prev_hash, hash FROM decisions ORDER BY seq").fetchall()
    prev = GENESIS
    for i, (body, prev_hash, digest) in enumerate(rows):
        legacy = _legacy(decision_id=f"dec-{i}", request_id=f"req-{i}" if i < 5 else "req-1", prev_hash=prev)
        assert body == canonical_json(legacy)
        assert (prev_hash, digest) == (prev, record_hash(prev, canonical_json(legacy)))
        prev = digest


def test_reading_back_gives_the_record_with_its_place_in_the_chain(tmp_path: Path) -> None:
    log = DecisionLog(LogConfig(path=tmp_path / "decisions.db"))

    async def run() -> None:
        log.start(asyncio.get_running_loop())
        await log.append(_typed())

    asyncio.run(run())
    got = log.get(_typed().decision_id)
    log.close()
    assert got is not None
    assert (got.seq, got.prev_hash, len(got.hash)) == (1, GENESIS, 64)
    assert got.as_dict() == _legacy(prev_hash=GENESIS)
    assert got.answer() == Decision(decision="require_approval", decision_id=got.decision_id,
                                    reasons=(Reason("needs_review", "m"),), obligations={"redact": True},
                                    bundle_revision="rev-42", approval_id="apr_1")


def test_a_record_from_before_a_field_existed_reads_with_it_empty() -> None:
    old = {k: v for k, v in _legacy().items() if k not in ("requested_by", "erased", "masked", "approval_status")}
    record = DecisionRecord.from_dict({**old, "seq": 3, "hash": "c" * 64})
    assert (record.requested_by, record.erased, record.masked, record.approval_status) == ("", (), (), "")
    assert (record.seq, record.hash, record.dry_run) == (3, "c" * 64, False)
    assert record.kind == "tool" and record.principal["agent_id"] == "code-reviewer"


@pytest.mark.parametrize(("broken", "message"), [
    ({"decision_id": None}, "decision_id must be a string"),
    ({"timestamp": "yesterday"}, "timestamp 'yesterday' is not an RFC 3339 time"),
    ({"decision": "maybe"}, "decision 'maybe' is not one of allow, deny, require_approval"),
    ({"reasons": [{"message": "no code"}]}, "reasons must be an array of objects with a code"),
    ({"obligations": [1]}, "obligations must be an object"),
    ({"input": "tool"}, "input must be an object"),
], ids=["decision-id", "timestamp", "decision", "reason-code", "obligations", "input"])
def test_from_dict_names_the_field_that_is_wrong(broken: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        DecisionRecord.from_dict(_legacy(**broken))


def test_from_dict_names_a_missing_required_field() -> None:
    with pytest.raises(ValueError, match=r"^input is missing$"):
        DecisionRecord.from_dict({k: v for k, v in _legacy().items() if k != "input"})


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "not JSON"), ("[1, 2]", "not a JSON object"), (b"\xff", "not JSON"),
], ids=["broken-json", "array", "not-utf8"])
def test_from_json_says_when_the_text_is_not_a_record(text: str | bytes, message: str) -> None:
    with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
        DecisionRecord.from_json(text)


def test_as_dict_is_plain_json_data() -> None:
    assert json.loads(json.dumps(_typed().as_dict())) == _typed().as_dict()
