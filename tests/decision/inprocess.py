"""The decision path in one process: a real Authorizer, DecisionLog, SQLite state stores and an embedded OPA engine.

Nothing here is mocked: the engine is OPA itself, in-process (InProcessEngine, the Engine protocol over
EmbeddedOpa), the log commits to a temporary file, approvals, budgets and kill switches live in a temporary
state.db, given to the authorizer through the async adapters `tollgate serve` uses (state/_local.py); the tests
read and change them through the sync classes beneath. Time is a ManualClock that every part reads, so tests move
it instead of sleeping.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tollgate.clock import ManualClock
from tollgate.contract import Decision, DecisionRequest
from tollgate.decision import Authorizer, BudgetGuard
from tollgate.decisionlog import DecisionLog, LogConfig
from tollgate.engine import EngineError, EngineSlot, Evaluation, decode_envelope
from tollgate.engine._opa import EmbeddedOpa
from tollgate.identity import CallerMap
from tollgate.state import KillSwitches, LocalApprovals, LocalBudgets, LocalKillSwitches, StateStore
from tollgate.state.approvals import Approvals
from tollgate.state.budgets import Budgets

#: Seconds before a UTC year end: every test's decisions are stamped across midnight, a month and a year end.
START = datetime(2026, 12, 31, 23, 59, 58, tzinfo=UTC)

#: A lax policy: it never looks at kill switches, trusts any presented approval and counts no spend, so what the
#: tests see denied there is the server's own rules, whatever the bundle says.
LAX = """
package tollgate

default decision := {"decision": "allow", "reasons": []}

decision := {"decision": "deny", "reasons": [{"code": "not_allowed", "message": "drop is never allowed"}]} if {
    input.tool.name == "drop"
}

decision := {
    "decision": "require_approval",
    "reasons": [{"code": "destructive", "message": "a person decides"}],
    "approval": {"approvers": ["alice"], "ttl_seconds": 60},
} if {
    input.tool.name == "delete"
    input.approval_id == ""
}

decision := {
    "decision": "allow",
    "reasons": [],
    "reserve": {"amounts": {"usd": input.budget.amount}, "limits": {"session": {"usd": 1}}},
} if input.kind == "budget"

log.mask contains "/input/tool/arguments/token"
"""


#: No `callers` configuration: any caller may claim any principal.
EVERY_CALLER = CallerMap()


class InProcessEngine:
    """The Engine protocol over one in-process EmbeddedOpa: the entrypoint and the mask rule, each on its own."""

    def __init__(self, rego: str, *, revision: str = "rev-1") -> None:
        self._opa = EmbeddedOpa({"policy.rego": rego}, {})
        self._opa.compile()
        self._revision = revision
        #: Inputs evaluated, in order.
        self.asked: list[dict[str, Any]] = []

    @property
    def revision(self) -> str:
        return self._revision

    async def evaluate(self, input_json: bytes) -> Any:
        return self._document(b"tollgate.decision", input_json)

    async def evaluate_with_mask(self, input_json: bytes) -> Evaluation:
        self.asked.append(json.loads(input_json))
        return Evaluation(self._value(b"tollgate.decision", input_json), self._value(b"tollgate.log.mask", input_json))

    async def close(self, *, drain: float = 0.0) -> None:
        self._opa.close()

    def _document(self, path: bytes, input_json: bytes) -> Any:
        return decode_envelope(self._opa.evaluate_raw(path, input_json))

    def _value(self, path: bytes, input_json: bytes) -> Any:
        try:
            return self._document(path, input_json)
        except EngineError as exc:
            return exc


class FailingEngine:
    """An engine that has no answer at all: every evaluation raises the error it was given."""

    def __init__(self, error: EngineError, *, revision: str = "rev-broken") -> None:
        self.error = error
        self.revision = revision

    async def evaluate(self, input_json: bytes) -> Any:
        raise self.error

    async def evaluate_with_mask(self, input_json: bytes) -> Evaluation:
        raise self.error

    async def close(self, *, drain: float = 0.0) -> None:
        pass


@dataclass
class Seen:
    """A DecisionObserver that keeps what it was told."""

    calls: list[dict[str, Any]] = field(default_factory=list)

    def decided(self, *, kind: str, decision: str, reasons: tuple[str, ...], revision: str,
                latency_seconds: float, evaluation_seconds: float) -> None:
        self.calls.append({"kind": kind, "decision": decision, "reasons": reasons, "revision": revision,
                           "latency_seconds": latency_seconds, "evaluation_seconds": evaluation_seconds})


class DecisionPath:
    """One authorizer over real parts, driven from the test's thread on an event loop of its own."""

    def __init__(self, tmp_path: Path) -> None:
        self.clock = ManualClock(START)
        self.loop = asyncio.new_event_loop()
        self.log = DecisionLog(LogConfig(tmp_path / "decisions.db"))
        self.log.start(self.loop)
        self.store = StateStore(tmp_path / "state.db")
        self.kill_switches = KillSwitches(self.store, clock=self.clock)
        self.approvals = Approvals(self.store, clock=self.clock)
        self.budgets = Budgets(self.store, clock=self.clock)
        self.engine = InProcessEngine(LAX)
        self.slot = EngineSlot(self.engine)
        #: What the export gate says: "" while the export keeps up.
        self.export_behind = ""
        self.seen = Seen()
        self.authorizer = self.build()

    def build(self, *, callers: CallerMap = EVERY_CALLER) -> Authorizer:
        return Authorizer(self.slot, self.log, kill_switches=LocalKillSwitches(self.kill_switches),
                          approvals=LocalApprovals(self.approvals), budgets=BudgetGuard(LocalBudgets(self.budgets)),
                          callers=callers, export_gate=lambda: self.export_behind, observer=self.seen,
                          clock=self.clock)

    def use(self, engine: Any) -> None:
        """Make engine the active one (None: no bundle loaded)."""
        self.slot.swap(engine)

    def ask(self, request: DecisionRequest, *, authorizer: Authorizer | None = None) -> Decision:
        return self.loop.run_until_complete((authorizer or self.authorizer).authorize(request))

    def ask_together(self, *requests: DecisionRequest) -> list[Decision]:
        async def together() -> list[Decision]:
            return list(await asyncio.gather(*(self.authorizer.authorize(r) for r in requests)))

        return self.loop.run_until_complete(together())

    def record(self, decision: Decision) -> dict[str, Any]:
        """The logged record of a decision, as JSON would hold it."""
        found = self.log.get(decision.decision_id)
        assert found is not None, f"decision {decision.decision_id} is not in the log"
        return found.as_dict()

    def records(self) -> int:
        with sqlite3.connect(self.log.path) as db:
            count: int = db.execute("SELECT COUNT(*) FROM decisions").fetchone()[0]
        return count

    def close(self) -> None:
        self.log.close()
        self.loop.run_until_complete(self.engine.close())
        self.loop.close()
        self.store.close()


def tool(name: str = "read", *, agent: str = "agent-a", session: str = "s-1",
         arguments: Mapping[str, Any] | None = None, **fields: Any) -> DecisionRequest:
    """A tool call to github/<name>."""
    return DecisionRequest(kind="tool", principal={"agent_id": agent, "session_id": session, "team": "payments"},
                           action={"server": "github", "name": name, "arguments": dict(arguments or {})}, **fields)


def spend(amount: float, *, session: str = "s-1", **fields: Any) -> DecisionRequest:
    """A budget request for amount usd."""
    return DecisionRequest(kind="budget", principal={"agent_id": "agent-a", "session_id": session},
                           action={"amount": amount, "unit": "usd", "category": "model"}, **fields)


def codes(decision: Decision) -> list[str]:
    return [r.code for r in decision.reasons]
