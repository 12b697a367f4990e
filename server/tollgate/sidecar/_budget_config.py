"""The `tollgate serve` settings of budget requests: how long a reservation holds, and the bounded line of one
scope's requests at this sidecar. ServeConfig inherits them, so each is a config key and a flag."""

from __future__ import annotations

from dataclasses import dataclass

from tollgate.sidecar._config_files import ConfigError


@dataclass(frozen=True)
class BudgetSettings:
    """The budget keys of ServeConfig."""

    #: How long a budget reservation holds its amount when no usage is reported, in seconds.
    reservation_ttl: float = 900.0
    #: Budget requests of one scope that may wait at this sidecar (past it, DENY scope_overloaded); 256, so that a
    #: burst of 200 of one session is decided whole (tests/e2e).
    budget_line: int = 256
    #: Seconds a budget request may wait in its scope's line at this sidecar before it is DENY scope_overloaded.
    #: The line holds many store calls in turn (each bounded by state_store_timeout on its own), so this bound is
    #: of a queue that will not be served in time, not of one slow call: 300 requests of one session spread over a
    #: three-sidecar fleet took 2-5 s to drain on a busy 2-core machine.
    budget_line_wait: float = 10.0

    def _validate_budgets(self) -> None:
        if self.reservation_ttl <= 0:
            raise ConfigError("reservation_ttl: must be greater than 0 seconds")
        if self.budget_line < 1:
            raise ConfigError("budget_line: must be 1 or more")
        if not 0 < self.budget_line_wait <= 600:  # also refuses NaN
            raise ConfigError(f"budget_line_wait: must be above 0 and at most 600 seconds, not "
                              f"{self.budget_line_wait:g}")
