"""The decision observer: what the authorizer tells metrics (or any watcher) about each decision it made."""

from __future__ import annotations

from typing import Protocol


class DecisionObserver(Protocol):
    """Told of every decision the authorizer made and logged (an idempotent retry answered from the log is not one).

    Called on the event loop after the record is committed and before the answer is returned: keep it cheap
    and never raise (a failing observer would fail the request).
    """

    def decided(self, *, kind: str, decision: str, reasons: tuple[str, ...], revision: str,
                latency_seconds: float, evaluation_seconds: float) -> None:
        """One decision: the request kind (tool, model, budget), the decision answered (allow, deny,
        require_approval), its reason codes in order (unbounded: bound them before they become labels), the
        bundle revision that decided it ("" without a bundle), the seconds from the request reaching the
        authorizer to its record committed, and the seconds the policy engine took (0.0 when it was not asked)."""
        ...


class NoObserver:
    """Watches nothing."""

    def decided(self, *, kind: str, decision: str, reasons: tuple[str, ...], revision: str,
                latency_seconds: float, evaluation_seconds: float) -> None:
        pass


NO_OBSERVER = NoObserver()

