"""Decision IDs: UUIDv7 (RFC 9562), unique and ordered by time, monotonic within one source."""

from __future__ import annotations

import random
import threading

from tollgate.clock import Clock, SystemClock


class DecisionIds:
    """UUIDv7 strings stamped by one clock: 48-bit Unix milliseconds, a 12-bit per-millisecond counter, 62 random
    bits.

    IDs from one source sort in creation order, even if its clock goes back (an ID never carries a millisecond
    before the last one's); across sources and processes the random bits keep them unique. Each clock gets its
    own source (the authorizer's stamps its records' IDs), so an in-process test on a clock years ahead cannot
    hold back the IDs of the system clock's source.
    """

    def __init__(self, clock: Clock = SystemClock()) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._last_ms = 0
        self._seq = 0

    def new(self) -> str:
        with self._lock:
            ms = int(self._clock.time() * 1000)
            if ms > self._last_ms:
                self._last_ms, self._seq = ms, random.getrandbits(9)  # a random start, with room to count up
            else:
                self._seq += 1
                if self._seq > 0xFFF:  # counter exhausted: borrow the next millisecond
                    self._last_ms, self._seq = self._last_ms + 1, 0
                ms = self._last_ms
            seq = self._seq
            # The random bits come from the random module (seeded from the OS, reseeded after fork): IDs need
            # uniqueness, not secrecy, and a getrandom() system call per decision would cost more than the rest.
            rand = random.getrandbits(62)
        value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
        h = f"{value:032x}"
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


_system = DecisionIds()


def new_decision_id() -> str:
    """A UUIDv7 string on the system clock (see DecisionIds)."""
    return _system.new()
