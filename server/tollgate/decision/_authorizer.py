"""The decision path: build the policy input, evaluate it, hold the result to the contract, log, answer.

Every failure on this path is a DENY with its own reason code, logged like any other decision.
Only a decision log that cannot commit stops an answer (DecisionLogError): an answer without a
durable record would break the promise every decision ID makes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tollgate.contract import (
    ALLOW,
    DENY,
    NO_BUNDLE,
    REQUIRE_APPROVAL,
    Decision,
    DecisionRequest,
    build_input,
)
from tollgate.decision._budgets import BudgetGuard
from tollgate.decision._rules import (
    Outcome,
    enforce_approval,
    enforce_export_lag,
    enforce_kill_switches,
    policy_outcome,
    server_deny,
)
from tollgate.decisionlog import DecisionLog, failure_summary, mask_record
from tollgate.encoding import canonical_json, format_time
from tollgate.engine import UNDEFINED, Engine, EngineError, EvaluationTimeout
from tollgate.engine._slot import EngineSlot
from tollgate.identity import CALLER_UNAUTHENTICATED, PRINCIPAL_MISMATCH, CallerMap
from tollgate.ids import new_decision_id
from tollgate.state import KillSwitch, KillSwitches
from tollgate.state.approvals import APPROVED, MISMATCH, Approvals

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AuthorizerConfig:
    """How the authorizer records what it evaluated (the engine owns evaluation and its deadline)."""

    #: The entrypoint evaluated, recorded with each decision.
    entrypoint: str = "tollgate/decision"


class Authorizer:
    """Answers DecisionRequests; each answer is committed to the decision log before it is returned."""

    def __init__(self, engines: EngineSlot, decision_log: DecisionLog,
                 config: AuthorizerConfig = AuthorizerConfig(), *,
                 on_decision: Callable[[str, str], None] | None = None,
                 kill_switches: KillSwitches | None = None, approvals: Approvals | None = None,
                 budgets: BudgetGuard | None = None, callers: CallerMap | None = None,
                 export_gate: Callable[[], str] | None = None) -> None:
        self._engines = engines
        self._callers = callers or CallerMap()
        # While it returns a message, answers that are not already DENY become DENY export_lag.
        self._export_gate = export_gate
        self._budgets = budgets
        self._kills = kill_switches
        self._approvals = approvals
        self._on_decision = on_decision  # (decision, bundle revision) for each decision made, e.g. metrics
        self._log = decision_log
        self._config = config
        self._inflight: dict[str, asyncio.Future[tuple[str, str, Decision]]] = {}

    async def authorize(self, request: DecisionRequest) -> Decision:
        if self._budgets is not None and self._budgets.applies(request.kind) and not request.dry_run:
            # Read spend → evaluate → reserve is one step: concurrent spends cannot both take the same room.
            async with self._budgets.step():
                return await self._authorize(request)
        return await self._authorize(request)

    async def _authorize(self, request: DecisionRequest) -> Decision:
        if not request.request_id or self.caller_refusal(request):
            # A refused caller never reaches the idempotency cache: a request_id may not fetch another
            # caller's answer.
            # The digest costs a canonical serialisation; it is only needed to match idempotent
            # retries (and, later, to bind approvals), so plain requests skip it.
            return await self._decide(request, digest="", previous_id="")
        return await self._idempotent(request)

    async def _idempotent(self, request: DecisionRequest) -> Decision:
        """Same request_id and same request → the same logged answer; a changed request is decided anew."""
        digest = request.digest()
        key = request.request_id
        running = self._inflight.get(key)
        if running is not None:
            prior_digest, prior_approval, prior = await asyncio.shield(running)
            if prior_digest == digest and prior_approval == request.approval_id:
                return prior
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[str, str, Decision]] = loop.create_future()
        self._inflight[key] = future
        try:
            record = self._log.latest_for_request(key)
            # A retry may not carry an answer past a kill switch made since: a killed request is decided anew.
            # A retry presents the approval its first ask presented (the record's input), not the one that
            # answer opened: a re-ask with a freshly granted approval is a new question, under any request_id.
            same_approval = record is not None and record["input"].get("approval_id", "") == request.approval_id
            if (record and record["request_digest"] == digest and same_approval
                    and not self._matching_kills(request)):
                decision = Decision.from_record(record)
            else:
                previous = record["decision_id"] if record else ""
                decision = await self._decide(request, digest=digest, previous_id=previous)
            future.set_result((digest, request.approval_id, decision))
            return decision
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it; no "never retrieved" warning
            raise
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]

    async def _decide(self, request: DecisionRequest, *, digest: str, previous_id: str) -> Decision:
        started = time.perf_counter_ns()
        now = format_time(datetime.now(UTC))
        # The kill switches are read once, here: the policy and the server's own check see the same set.
        killed: list[dict[str, str]] = []
        matches: list[KillSwitch] = []
        if self._kills is not None:
            snapshot = self._kills.snapshot()
            killed = snapshot.policy_view
            matches = snapshot.matching(request.kind, request.principal, request.action)
        # The approval presented is read once, here: the policy sees its state, the server enforces it.
        approval: dict[str, str] | None = None
        if request.approval_id and self._approvals is not None:
            digest = digest or request.digest()
            approval = await asyncio.to_thread(self._approval_state, request.approval_id, digest)
        input_doc = build_input(request, now=now, killed=killed, approval=approval)
        refusal = self.caller_refusal(request)
        if refusal is not None:
            # Logged with the input, so that a replay of this record answers as the server did.
            input_doc["auth"]["refused"] = {"code": refusal[0], "message": refusal[1]}
        # Spend is read only for requests that spend (under the budget lock), and the policy sees it.
        spend = None
        if self._budgets is not None and self._budgets.applies(request.kind):
            spend = self._budgets.view(request.principal)
            input_doc["state"]["spend"] = spend.spend.by_scope
            input_doc["state"]["spend_month"] = spend.spend.monthly
        # One canonical serialisation serves both the engine and the log record.
        input_json = canonical_json(input_doc)
        with self._engines.lease() as engine:
            if refusal is not None:
                # The server's own rule, before the policy: it never judges a principal its caller may not claim.
                outcome = Outcome(server_deny(*refusal), error=f"caller refused by the server: {refusal[1]}")
                revision = engine.revision if engine is not None else ""
                # No mask rule was evaluated for it: its arguments and context are erased from the record.
                mask, mask_failed = (), "the caller was refused before the policy was asked"
            elif engine is None:
                outcome = Outcome(server_deny(NO_BUNDLE, "no policy bundle is loaded"))
                revision = ""
                mask, mask_failed = (), "no policy bundle is loaded"
            else:
                # The revision recorded is the one of the engine that evaluated, even across a swap.
                revision = engine.revision
                outcome, mask, mask_failed = await self._evaluate(engine, input_json)
        # What is written of this request (the record, an approval's copy of the action) is masked; the
        # policy decided on the whole input.
        masking = mask_record(mask, input_doc, outcome.raw, failed=mask_failed)
        if matches:
            outcome = enforce_kill_switches(outcome, matches)
        if self._export_gate is not None and outcome.result.decision != DENY:
            behind = self._export_gate()
            if behind:
                outcome = enforce_export_lag(outcome, behind)
        decision_id = new_decision_id()
        approval_id = request.approval_id
        if self._approvals is not None and not request.dry_run:
            logged_action = masking.input.get(request.kind)
            approval_id, outcome = await self._settle_approval(
                request, outcome, approval, digest=digest, decision_id=decision_id,
                logged_action=logged_action if isinstance(logged_action, Mapping) else {})
            if approval_id and not digest:
                digest = request.digest()  # a record linked to an approval also carries what it is bound to
        reservation_id = ""
        if spend is not None and self._budgets is not None and not request.dry_run:
            settled = self._budgets.settle(request.kind, request.principal, request.action, outcome.result, spend,
                                           decision_id=decision_id)
            reservation_id = settled.reservation_id
            if settled.result is not outcome.result:
                outcome = Outcome(settled.result, raw=outcome.raw,
                                  error=f"{outcome.error}; {settled.error}" if outcome.error else settled.error)
        result = outcome.result
        decision = Decision(
            decision=result.decision,
            decision_id=decision_id,
            reasons=result.reasons,
            obligations=result.obligations,
            bundle_revision=revision,
            approval_id=approval_id,
            reservation_id=reservation_id,
        )
        record = {
            "decision_id": decision.decision_id,
            "timestamp": now,
            "input": masking.input,
            "result": masking.scrub(masking.result),
            "decision": decision.decision,
            "reasons": masking.scrub([r.as_dict() for r in decision.reasons]),
            "obligations": dict(decision.obligations),
            "bundle_revision": revision,
            "policy_path": self._config.entrypoint,
            "request_id": request.request_id,
            "request_digest": digest,
            "approval_id": approval_id,
            "approval_status": approval["status"] if approval else "",
            "reservation_id": reservation_id,
            "previous_decision_id": previous_id,
            "requested_by": request.caller.subject,
            "error": masking.scrub("; ".join(e for e in (outcome.error, masking.error) if e)),
            "erased": list(masking.erased),
            "masked": list(masking.masked),
            "latency_us": (time.perf_counter_ns() - started) // 1000,
        }
        if request.dry_run:
            record["dry_run"] = True
        await self._log.append(record, input_json=None if masking.changed else input_json)
        if self._on_decision is not None:
            self._on_decision(decision.decision, revision)
        return decision

    def caller_refusal(self, request: DecisionRequest) -> tuple[str, str] | None:
        """(reason code, message) when the request's caller may not ask it: a caller credential that did not
        verify, or a principal the `callers` mapping does not let it speak for; None when it may."""
        if request.caller.error:
            return CALLER_UNAUTHENTICATED, request.caller.error
        refused = self._callers.check(request.caller, request.principal)
        return (PRINCIPAL_MISMATCH, refused) if refused else None

    def _approval_state(self, approval_id: str, digest: str) -> dict[str, str]:
        assert self._approvals is not None
        found = self._approvals.get(approval_id)
        if found is None:  # an id the server never issued was not granted for this request
            return {"id": approval_id, "status": MISMATCH, "approver": ""}
        return found.policy_state(digest)

    async def _settle_approval(self, request: DecisionRequest, outcome: Outcome, approval: dict[str, str] | None,
                               *, digest: str, decision_id: str,
                               logged_action: Mapping[str, Any]) -> tuple[str, Outcome]:
        """The server's own approval rule, whatever the bundle says; returns (the approval id to answer, outcome).

        An ALLOW on a presented approval stands only if it was approved for this very request and this
        decision is the one that uses it (one atomic UPDATE): otherwise DENY approval_<status>. A
        require_approval opens an approval (or finds the pending one for this request and session), which
        stores logged_action, the action as masked for the log, and is bound to the digest of the whole one.
        """
        assert self._approvals is not None
        result = outcome.result
        if approval is not None and result.decision == ALLOW:
            status = approval["status"]
            if status == APPROVED:
                used = await asyncio.to_thread(self._approvals.consume, approval["id"], request_digest=digest,
                                               decision_id=decision_id)
                if used:
                    return approval["id"], outcome
                status = (await asyncio.to_thread(self._approval_state, approval["id"], digest))["status"]
                status = MISMATCH if status == APPROVED else status  # not reachable: consume only fails when closed
            return approval["id"], enforce_approval(outcome, approval["id"], status)
        if result.decision == REQUIRE_APPROVAL and result.approval is not None:
            digest = digest or request.digest()
            opened = await asyncio.to_thread(
                self._approvals.open, request_digest=digest, kind=request.kind, principal=request.principal,
                action=logged_action, approvers=result.approval.approvers, ttl_seconds=result.approval.ttl_seconds,
                opened_by=decision_id)
            return opened.id, outcome
        return request.approval_id, outcome

    def _matching_kills(self, request: DecisionRequest) -> list[KillSwitch]:
        if self._kills is None:
            return []
        return self._kills.matching(request.kind, request.principal, request.action)

    async def _evaluate(self, engine: Engine, input_json: str) -> tuple[Outcome, Any, str]:
        """The outcome, the mask rule's value (an empty tuple when there is none), and why the mask could not
        be computed (empty when it could)."""
        try:
            evaluation = await engine.evaluate_with_mask(input_json.encode())
        except EngineError as exc:
            if not isinstance(exc, EvaluationTimeout):
                log.warning("policy evaluation failed: %s", exc)
            return policy_outcome(exc, entrypoint=self._config.entrypoint), (), f"no engine answer: {exc.code}"
        if isinstance(evaluation.value, EngineError):
            log.warning("policy evaluation failed: %s", evaluation.value)
        outcome = policy_outcome(evaluation.value, entrypoint=self._config.entrypoint)
        mask = evaluation.mask
        if isinstance(mask, EngineError):
            log.debug("decision log mask rule failed: %s", mask)  # its whole message may quote the input
            return outcome, (), f"data.tollgate.log.mask failed: {failure_summary(mask.code, mask.message)}"
        return outcome, () if mask is UNDEFINED else mask, ""

