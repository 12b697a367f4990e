"""Decision IDs are UUIDv7: unique, and ordered by creation within a process."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime

from tollgate.clock import ManualClock
from tollgate.ids import DecisionIds, new_decision_id


def test_ids_are_version_7_and_carry_the_time() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid.UUID(new_decision_id())
    after = time.time_ns() // 1_000_000
    assert value.version == 7
    assert value.variant == uuid.RFC_4122
    assert before <= value.int >> 80 <= after + 1


def test_ids_are_unique_and_sorted_even_within_one_millisecond() -> None:
    ids = [new_decision_id() for _ in range(20000)]
    assert len(set(ids)) == len(ids)
    assert ids == sorted(ids)


def test_ids_are_unique_across_threads() -> None:
    out: list[list[str]] = [[] for _ in range(8)]

    def make(i: int) -> None:
        out[i].extend(new_decision_id() for _ in range(2000))

    threads = [threading.Thread(target=make, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [x for chunk in out for x in chunk]
    assert len(set(every)) == len(every)



def test_ids_carry_the_time_of_their_clock() -> None:
    moment = datetime(2031, 1, 1, tzinfo=UTC)
    value = uuid.UUID(DecisionIds(ManualClock(moment)).new())
    assert value.int >> 80 == int(moment.timestamp() * 1000)


def test_ids_stay_sorted_when_their_clock_goes_back() -> None:
    clock = ManualClock(datetime(2031, 1, 1, tzinfo=UTC))
    ids = DecisionIds(clock)
    ahead = ids.new()
    clock.advance(-3600)
    assert ids.new() > ahead
    # Another clock's source is not held back by this one.
    assert uuid.UUID(new_decision_id()).int >> 80 < uuid.UUID(ahead).int >> 80
