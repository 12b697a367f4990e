"""Decision IDs: UUIDv7 (RFC 9562), unique and ordered by time, monotonic within one process."""

from __future__ import annotations

import random
import threading
import time

_lock = threading.Lock()
# The random bits come from the random module (seeded from the OS, reseeded after fork): IDs need
# uniqueness, not secrecy, and a getrandom() system call per decision would cost more than the rest.
_last_ms = 0
_seq = 0


def new_decision_id() -> str:
    """A UUIDv7 string: 48-bit Unix milliseconds, a 12-bit per-millisecond counter, 62 random bits.

    Within one process the IDs sort in creation order; across processes the random bits keep them unique.
    """
    global _last_ms, _seq
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms > _last_ms:
            _last_ms, _seq = ms, random.getrandbits(9)  # a random start, with room to count up
        else:
            _seq += 1
            if _seq > 0xFFF:  # counter exhausted: borrow the next millisecond
                _last_ms, _seq = _last_ms + 1, 0
            ms = _last_ms
        seq = _seq
        rand = random.getrandbits(62)
    value = (ms << 80) | (0x7 << 76) | (seq << 64) | (0b10 << 62) | rand
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
