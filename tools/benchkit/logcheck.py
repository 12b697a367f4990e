"""After each run: what the decision log gained, by answer, and whether it adds up with what the client counted."""

from __future__ import annotations

import collections
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

from benchkit.h2load import LoadResult
from benchkit.procs import Target
from tollgate.decisionlog import Query, matching, open_read_only
from tollgate.v1 import authorization_pb2 as pb

# -- checks after each run -----------------------------------------------------------------------


@dataclass(frozen=True)
class LogCount:
    """Decision-log rows written during one run, by decision (and reason code for server DENYs)."""

    rows: int
    by_decision: dict[str, int]


def log_key(response: pb.AuthorizeResponse) -> str:
    """How log_rows_since names this kind of answer: the decision, and the first reason code if any."""
    decision = str(pb.Decision.Name(response.decision)).removeprefix("DECISION_").lower()
    return decision + (f":{response.reasons[0].code}" if response.reasons else "")


def log_position(db: Path) -> int:
    with open_read_only(db.parent) as store:
        return store.span(Query())[1]


def settled_log_position(db: Path) -> int:
    """The log position once requests still in flight when h2load stopped have been committed."""
    position, stable_since = log_position(db), time.monotonic()
    deadline = stable_since + 10
    while time.monotonic() < deadline and time.monotonic() - stable_since < 0.3:
        time.sleep(0.05)
        now = log_position(db)
        if now != position:
            position, stable_since = now, time.monotonic()
    return position


def log_rows_since(db: Path, after: int, upto: int) -> LogCount:
    counts: collections.Counter[str] = collections.Counter()
    with open_read_only(db.parent) as store:
        for row in matching(store, Query(), after=after, upto=upto):
            reasons = json.loads(row.record_json).get("reasons") or [{}]
            code = reasons[0].get("code")
            counts[row.decision + (f":{code}" if code else "")] += 1
    by_decision = dict(counts.most_common())
    return LogCount(sum(by_decision.values()), by_decision)


def verify_run(target: Target, result: LoadResult, message_bytes: int, log: LogCount | None) -> list[str]:
    """What does not add up in one run; h2load alone cannot see a gRPC error inside an HTTP 200."""
    problems: list[str] = []
    where = f"{target.name} {result.label}"
    if result.generator == "h2load":
        problems += _verify_h2load(where, result, message_bytes)
    if log is not None:
        if log.rows < result.succeeded:
            problems.append(f"{where}: the load generator counted {result.succeeded} answers but the decision log"
                            f" gained only {log.rows} rows")
        elif log.rows > result.started:
            problems.append(f"{where}: the decision log gained {log.rows} rows for {result.started}"
                            " requests sent")
    return problems


def _verify_h2load(where: str, result: LoadResult, message_bytes: int) -> list[str]:
    problems = []
    if result.failed:
        problems.append(f"{where}: h2load counted {result.failed} failed, errored, timed-out or non-2xx"
                        " requests")
    # A gRPC error comes back trailers-only, without a message: it shows as missing response bytes.
    # Streams cut off when h2load's duration ended may add bytes, never remove them.
    expected = result.succeeded * message_bytes
    if result.data_bytes < expected:
        missing = math.ceil((expected - result.data_bytes) / message_bytes)
        problems.append(f"{where}: about {missing} of {result.succeeded} HTTP-200 responses carried no"
                        f" AuthorizeResponse (gRPC errors): {result.data_bytes} response bytes,"
                        f" expected {expected}")
    return problems

