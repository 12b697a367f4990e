"""Retry timing: one jittered exponential backoff for every retry loop (exporters, bundle polls, clients, workers).

Jitter is the point: sidecars that failed together (a receiver restarted, a network blip) must not retry in step
and knock it over again. `FULL` jitter waits anywhere from zero to the step, which spreads retries the most and
suits callers retrying a local sidecar in milliseconds; `EQUAL` jitter waits half the step to all of it, which
keeps a floor under the wait and suits remote services. A server's Retry-After is a floor the wait never goes
below (up to the maximum: a receiver cannot park an exporter for a day).
"""

from __future__ import annotations

import random
from dataclasses import KW_ONLY, dataclass
from enum import Enum


class Jitter(Enum):
    """How much of each step is left to chance."""

    FULL = "full"    # uniform in [0, step]
    EQUAL = "equal"  # uniform in [step / 2, step]


@dataclass(frozen=True)
class Backoff:
    """Waits between retries: step n is initial × multiplier**n, capped at maximum, then jittered."""

    #: Seconds, the step before the first retry (attempt 0).
    initial: float
    #: Seconds, the largest step.
    maximum: float
    _: KW_ONLY
    #: Growth of the step per attempt.
    multiplier: float = 2.0
    jitter: Jitter = Jitter.FULL

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:  # also refuses NaN
            raise ValueError(f"backoff: need 0 < initial <= maximum, got initial={self.initial}, "
                             f"maximum={self.maximum}")
        if not 1 <= self.multiplier < float("inf"):
            raise ValueError(f"backoff: multiplier must be a finite number >= 1, got {self.multiplier}")

    def step(self, attempt: int) -> float:
        """The capped step before retry number attempt (0 for the first), before jitter."""
        try:
            return min(self.maximum, self.initial * self.multiplier ** max(attempt, 0))
        except OverflowError:  # thousands of attempts: long since at the cap
            return self.maximum

    def delay(self, attempt: int, *, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number attempt (0 for the first); at least retry_after, when the server
        sent one, but never past maximum."""
        step = self.step(attempt)
        low = 0.0 if self.jitter is Jitter.FULL else step / 2
        wait = random.uniform(low, step)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.maximum))
        return wait
