"""What the client raises. A policy answer is never an exception, except where a caller asked for one (spend)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tollgate.client._values import Decision


class TollgateError(Exception):
    """A call to the sidecar failed; `code` is the gRPC status name ("UNAVAILABLE"), empty when none applies."""

    def __init__(self, message: str, *, code: str = "") -> None:
        super().__init__(message)
        self.code = code


class InvalidRequest(TollgateError):
    """The sidecar refused the request as malformed (INVALID_ARGUMENT): a bug in the caller, not a policy
    answer. The message names the field."""


class NotFound(TollgateError):
    """No decision, reservation or approval has the id asked for."""


class SidecarUnavailable(TollgateError):
    """No answer in time (sidecar down, unreachable or overloaded). Raised only by a client made with
    fail_closed=False; by default the client answers DENY (sidecar_unavailable) instead."""


class Denied(TollgateError):
    """Raised by spend() when the spend is not allowed; `decision` is the answer (its reasons say why)."""

    def __init__(self, decision: Decision) -> None:
        super().__init__(f"not allowed: {decision.decision}: {decision.message}", code="")
        self.decision = decision
