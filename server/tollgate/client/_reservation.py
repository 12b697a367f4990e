"""A budget reservation held by spend(): what was reserved, and what the caller says it actually spent."""

from __future__ import annotations

from tollgate.client._values import Decision, UsageReport


class Reservation:
    """Yielded by `with client.spend(...)`. Call report(actual) once the real cost is known; on leaving the block
    that amount is reported and the rest of the reservation released. Without report(), the whole reserved
    amount is reported as spent: a budget must never count less than was spent, and only the caller knows that
    nothing was (report(0) says so)."""

    def __init__(self, decision: Decision, amount: float, unit: str) -> None:
        self.decision = decision
        #: What was asked for and reserved.
        self.amount = amount
        self.unit = unit
        self._actual: float | None = None
        #: The sidecar's answer to the report, set on leaving the block (None when nothing was reserved).
        self.usage: UsageReport | None = None

    @property
    def reservation_id(self) -> str:
        """Empty when the policy allowed the spend without reserving (no budget applies to it)."""
        return self.decision.reservation_id

    @property
    def actual(self) -> float:
        """What will be reported: the amount given to report(), else the whole reservation."""
        return self.amount if self._actual is None else self._actual

    def report(self, actual: float) -> None:
        """Set what was actually spent (>= 0); sent when the block ends."""
        if actual < 0:
            raise ValueError(f"report: actual must be >= 0, not {actual}")
        self._actual = actual
