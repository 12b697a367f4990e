"""The client's values: who acts, what Tollgate answered, an approval's state, a usage report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

#: What Decision.decision can be.
Verdict = Literal["allow", "deny", "require_approval"]

#: Reason codes of a DENY the client made itself (no answer from the sidecar; nothing logged).
SIDECAR_UNAVAILABLE = "sidecar_unavailable"
SIDECAR_ERROR = "sidecar_error"


@dataclass(frozen=True)
class Principal:
    """Who is acting. agent_id is required (the capability manifest is keyed by it); the rest narrows the scope
    of kill switches and budgets (session_id is the run)."""

    agent_id: str
    instance_id: str = ""
    session_id: str = ""
    workflow: str = ""
    team: str = ""
    user: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.agent_id:
            raise ValueError("Principal.agent_id: required (the agent whose capability manifest applies)")


@dataclass(frozen=True)
class Reason:
    """Why: a stable code ("tool_not_in_manifest") and a message for people."""

    code: str
    message: str


@dataclass(frozen=True)
class Decision:
    """One answer. `decision_id` names its record in the decision log; it is empty only when the client denied
    by itself (`failed_closed`: the sidecar gave no answer in time, `error` says why)."""

    decision: Verdict
    decision_id: str = ""
    reasons: tuple[Reason, ...] = ()
    #: What the caller must do when it acts, e.g. {"max_output_tokens": 2000}; whole numbers come back as int.
    obligations: Mapping[str, Any] = field(default_factory=dict)
    bundle_revision: str = ""
    #: Set with require_approval: wait on it (wait_for_approval), then ask again with it.
    approval_id: str = ""
    #: Set when an allowed spend reserved budget: report the actual amount against it (report_usage).
    reservation_id: str = ""
    #: The idempotency key the request was sent with (generated when the caller gave none).
    request_id: str = ""
    failed_closed: bool = False
    error: str = ""

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    @property
    def message(self) -> str:
        """The reasons as one line for people, with the decision id to look the record up by."""
        text = "; ".join(f"{r.code}: {r.message}" if r.message else r.code for r in self.reasons) or self.decision
        return f"{text} (decision {self.decision_id})" if self.decision_id else text


@dataclass(frozen=True)
class ApprovalState:
    """What a waiting caller may know of an approval: pending, approved, denied, expired or used."""

    id: str
    status: str
    expires_at: datetime | None = None
    decided_by: str = ""
    reason: str = ""

    @property
    def decided(self) -> bool:
        """No further change will come: approved, denied, expired or used."""
        return self.status != "pending"


@dataclass(frozen=True)
class UsageReport:
    """ReportUsage's answer: what the reservation held, what is now committed, what went back."""

    reservation_id: str
    unit: str
    reserved: float
    committed: float
    released: float
    over_reserved: bool


@dataclass(frozen=True)
class TLS:
    """TLS to the sidecar: the CA that signed its certificate (None: the system roots), and for mutual TLS the
    client's certificate chain and key (PEM files). server_name overrides the name checked in its certificate."""

    root_ca: Path | str | None = None
    client_cert: Path | str | None = None
    client_key: Path | str | None = None
    server_name: str | None = None

    def __post_init__(self) -> None:
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("TLS: client_cert and client_key go together (mutual TLS needs both, plain TLS neither)")
