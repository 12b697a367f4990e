"""The decision path, as named steps: read state → evaluate → apply the server's rules → settle → record → answer.

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
from typing import Any

from tollgate.clock import Clock, SystemClock
from tollgate.contract import (
    ALLOW,
    NO_BUNDLE,
    REQUIRE_APPROVAL,
    Decision,
    DecisionRequest,
    Reason,
    build_input,
)
from tollgate.decision._budgets import NO_BUDGETS, SpendGuard, SpendView
from tollgate.decision._observer import NO_OBSERVER, DecisionObserver
from tollgate.decision._rules import (
    Outcome,
    ServerFacts,
    apply_server_rules,
    caller_refusal,
    enforce_approval,
    enforce_state_unavailable,
    policy_outcome,
    server_deny,
)
from tollgate.decisionlog import DecisionLog, DecisionRecord, Masking, failure_summary, mask_record
from tollgate.encoding import canonical_json, format_time
from tollgate.engine import UNDEFINED, Engine, EngineError, EvaluationTimeout
from tollgate.engine._slot import EngineSlot
from tollgate.identity import CallerMap
from tollgate.ids import DecisionIds
from tollgate.state import NO_APPROVALS, NO_KILL_SWITCHES, ApprovalLedger, KillSwitchView, StateError
from tollgate.state.approvals import MISMATCH, SELF_FIELDS

log = logging.getLogger(__name__)

#: input.state.approval.status of an approval the store could not read (the request is DENY state_unavailable).
UNREAD = "unavailable"
#: No `callers` configuration: every caller may claim any principal.
_NO_CALLER_RULES = CallerMap()


def never_behind() -> str:
    """The export gate of a server that does not fail closed on export lag: it never refuses."""
    return ""


@dataclass(frozen=True)
class AuthorizerConfig:
    """How the authorizer records what it evaluated (the engine owns evaluation and its deadline)."""

    #: The entrypoint evaluated, recorded with each decision.
    entrypoint: str = "tollgate/decision"


@dataclass(frozen=True)
class StateRead:
    """What one decision read of the server's state, once: the policy and the server's rules see the same."""

    #: input.now, RFC 3339: the record's timestamp too.
    now: str
    #: Every active kill switch, as input.state.killed holds them.
    killed: list[dict[str, str]]
    #: What the principal's scopes have spent (input.state.spend and spend_month; empty unless it spends).
    spend: SpendView
    #: What the server's own rules read.
    facts: ServerFacts


@dataclass(frozen=True)
class Evaluation:
    """What the policy said of one input, and what the decision-log mask rule said of it."""

    #: The policy's outcome held to the contract; None when the policy was not asked (a refused caller).
    policy: Outcome | None
    #: The bundle revision that evaluated (or was active when the policy was not asked); "" without a bundle.
    revision: str
    #: The mask rule's value (an empty tuple when there is none); ignored when mask_failed is set.
    mask: Any = ()
    #: Why the mask could not be computed; "" when it could.
    mask_failed: str = ""
    #: How long the engine took.
    seconds: float = 0.0


@dataclass(frozen=True)
class Settled:
    """The outcome after the decision's state effects, and what they made."""

    outcome: Outcome
    approval_id: str = ""
    reservation_id: str = ""
    #: The request's digest, when the record must carry it (idempotency, an approval's binding); else "".
    digest: str = ""


class Authorizer:
    """Answers DecisionRequests; each answer is committed to the decision log before it is returned."""

    def __init__(self, engines: EngineSlot, decision_log: DecisionLog,
                 config: AuthorizerConfig = AuthorizerConfig(), *,
                 kill_switches: KillSwitchView = NO_KILL_SWITCHES, approvals: ApprovalLedger = NO_APPROVALS,
                 budgets: SpendGuard = NO_BUDGETS, callers: CallerMap = _NO_CALLER_RULES,
                 export_gate: Callable[[], str] = never_behind, observer: DecisionObserver = NO_OBSERVER,
                 clock: Clock = SystemClock()) -> None:
        self._engines = engines
        self._callers = callers
        # While it returns a message, answers that are not already DENY become DENY export_lag.
        self._export_gate = export_gate
        self._budgets = budgets
        self._kills = kill_switches
        self._approvals = approvals
        self._observer = observer
        self._log = decision_log
        self._config = config
        self._clock = clock
        self._ids = DecisionIds(clock)  # decision IDs are stamped by the clock that stamps the records
        self._inflight: dict[str, asyncio.Future[tuple[str, str, Decision]]] = {}

    async def authorize(self, request: DecisionRequest) -> Decision:
        if self._budgets.applies(request.kind) and not request.dry_run:
            # Read spend → evaluate → reserve is one step: concurrent spends cannot both take the same room.
            async with self._budgets.step(request.kind, request.principal):
                return await self._authorize(request)
        return await self._authorize(request)

    async def _authorize(self, request: DecisionRequest) -> Decision:
        refusal = caller_refusal(request.caller, request.principal, self._callers)
        if not request.request_id or refusal is not None:
            # A refused caller never reaches the idempotency cache: a request_id may not fetch another
            # caller's answer.
            # The digest costs a canonical serialisation; it is only needed to match idempotent
            # retries (and to bind approvals), so plain requests skip it.
            return await self._decide(request, refusal=refusal, digest="", previous_id="")
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
            record = await asyncio.to_thread(self._log.latest_for_request, key)
            # A retry may not carry an answer past a kill switch made since: a killed request is decided anew, and
            # so is every retry while the kill switches cannot be confirmed.
            # A retry presents the approval its first ask presented (the record's input), not the one that
            # answer opened: a re-ask with a freshly granted approval is a new question, under any request_id.
            same_approval = record is not None and record.input.get("approval_id", "") == request.approval_id
            killed = (self._kills.staleness()
                      or self._kills.snapshot().matching(request.kind, request.principal, request.action))
            if record is not None and record.request_digest == digest and same_approval and not killed:
                decision = record.answer()
            else:
                previous = record.decision_id if record is not None else ""
                decision = await self._decide(request, refusal=None, digest=digest, previous_id=previous)
            future.set_result((digest, request.approval_id, decision))
            return decision
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: waiters re-raise it; no "never retrieved" warning
            raise
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]

    async def _decide(self, request: DecisionRequest, *, refusal: Reason | None, digest: str,
                      previous_id: str) -> Decision:
        started = time.perf_counter_ns()
        if request.approval_id and not digest:
            digest = request.digest()  # an approval is granted for one request: its digest
        state = await self.read_state(request, refusal=refusal, digest=digest)
        input_doc = build_input(request, now=state.now, killed=state.killed, approval=state.facts.approval,
                                spend=state.spend.spend.by_scope, spend_month=state.spend.spend.monthly,
                                refused=refusal)
        # One canonical serialisation serves both the engine and the log record.
        input_json = canonical_json(input_doc)
        evaluation = await self.evaluate(input_json, asks_policy=state.facts.asks_policy)
        outcome = apply_server_rules(state.facts, evaluation.policy)
        # What is written of this request (the record, an approval's copy of the action) is masked; the
        # policy decided on the whole input.
        masking = mask_record(evaluation.mask, input_doc, outcome.raw, failed=evaluation.mask_failed)
        decision_id = self._ids.new()
        settled = await self.settle(request, outcome, state, masking=masking, digest=digest, decision_id=decision_id)
        result = settled.outcome.result
        decision = Decision(decision=result.decision, decision_id=decision_id, reasons=result.reasons,
                            obligations=result.obligations, bundle_revision=evaluation.revision,
                            approval_id=settled.approval_id, reservation_id=settled.reservation_id)
        record = self.record(request, decision, state=state, settled=settled, masking=masking,
                             previous_id=previous_id, latency_us=(time.perf_counter_ns() - started) // 1000)
        await self._log.append(record, input_json=None if masking.changed else input_json)
        self._observer.decided(kind=request.kind, decision=decision.decision,
                               reasons=tuple(r.code for r in decision.reasons), revision=decision.bundle_revision,
                               latency_seconds=(time.perf_counter_ns() - started) / 1e9,
                               evaluation_seconds=evaluation.seconds)
        return decision

    # -- the steps -------------------------------------------------------------------------------

    async def read_state(self, request: DecisionRequest, *, refusal: Reason | None, digest: str) -> StateRead:
        """The server's state for this request, read once: the policy and the server's own rules see the same.

        Kill switches come from the in-memory snapshot (with whether it can be trusted), spend only for requests
        that spend (under the budget step), the presented approval from the store (off the event loop). A store
        that cannot give the approval is a fact too: the server's rules then deny (state_unavailable).
        """
        kills = self._kills.snapshot()
        approval, unavailable = None, ""
        if request.approval_id:
            try:
                approval = await self._approval_state(request.approval_id, digest)
            except StateError as exc:
                log.error("approvals: %s", exc)
                unavailable = "the approval presented"
                approval = {"id": request.approval_id, "status": UNREAD, "approver": ""}
        facts = ServerFacts(
            refusal=refusal,
            kill_switches=tuple(kills.matching(request.kind, request.principal, request.action)),
            approval=approval, export_behind=self._export_gate(), stale=self._kills.staleness(),
            unavailable=unavailable)
        return StateRead(now=format_time(self._clock.now()), killed=kills.policy_view,
                         spend=await self._budgets.view(request.kind, request.principal), facts=facts)

    async def evaluate(self, input_json: str, *, asks_policy: bool) -> Evaluation:
        """Ask the active engine's policy (and mask rule) about one input; a missing bundle is a server DENY."""
        with self._engines.lease() as engine:
            if not asks_policy:
                # The server's own rule, before the policy: it never judges a principal its caller may not claim.
                # No mask rule was evaluated for it: its arguments and context are erased from the record.
                return Evaluation(None, engine.revision if engine is not None else "",
                                  mask_failed="the caller was refused before the policy was asked")
            if engine is None:
                return Evaluation(Outcome(server_deny(NO_BUNDLE, "no policy bundle is loaded")), "",
                                  mask_failed="no policy bundle is loaded")
            started = time.perf_counter()
            outcome, mask, mask_failed = await self._ask(engine, input_json)
            # The revision recorded is the one of the engine that evaluated, even across a swap.
            return Evaluation(outcome, engine.revision, mask, mask_failed, time.perf_counter() - started)

    async def settle(self, request: DecisionRequest, outcome: Outcome, state: StateRead, *, masking: Masking,
                     digest: str, decision_id: str) -> Settled:
        """The decision's state effects: use the approval it presented, open the one it asks for, reserve what
        it spends. Each may still turn the answer into a DENY; a dry run acts on nothing."""
        if request.dry_run:
            return Settled(outcome, request.approval_id, digest=digest)
        outcome, approval_id, digest = await self._settle_approval(request, outcome, state.facts.approval,
                                                                   masking=masking, digest=digest,
                                                                   decision_id=decision_id)
        settled = await self._budgets.settle(request.kind, request.principal, request.action, outcome.result,
                                             state.spend, decision_id=decision_id, requested_by=request.caller.subject)
        if settled.result is not outcome.result:
            outcome = Outcome(settled.result, raw=outcome.raw,
                              error=f"{outcome.error}; {settled.error}" if outcome.error else settled.error)
        return Settled(outcome, approval_id, settled.reservation_id, digest)

    def record(self, request: DecisionRequest, decision: Decision, *, state: StateRead, settled: Settled,
               masking: Masking, previous_id: str, latency_us: int) -> DecisionRecord:
        """The decision record as the log stores it: what was asked (masked), what the policy said, the answer."""
        approval = state.facts.approval
        # A reason may quote what the mask took out; its copy in the record is scrubbed like the input (when
        # the mask hid nothing there is nothing to scrub, and the answer's reasons are the record's).
        reasons = decision.reasons if not masking.hidden else tuple(
            Reason(masking.scrub(r.code), masking.scrub(r.message)) for r in decision.reasons)
        return DecisionRecord(
            decision_id=decision.decision_id,
            timestamp=state.now,
            input=masking.input,
            result=masking.scrub(masking.result),
            decision=decision.decision,
            reasons=reasons,
            obligations=dict(decision.obligations),
            bundle_revision=decision.bundle_revision,
            policy_path=self._config.entrypoint,
            request_id=request.request_id,
            request_digest=settled.digest,
            approval_id=decision.approval_id,
            approval_status=approval["status"] if approval else "",
            reservation_id=decision.reservation_id,
            previous_decision_id=previous_id,
            requested_by=request.caller.subject,
            error=masking.scrub("; ".join(e for e in (settled.outcome.error, masking.error) if e)),
            erased=masking.erased,
            masked=masking.masked,
            latency_us=latency_us,
            dry_run=request.dry_run,
        )

    # -- inside the steps ------------------------------------------------------------------------

    async def _approval_state(self, approval_id: str, digest: str) -> dict[str, str]:
        found = await self._approvals.get(approval_id)
        if found is None:  # an id the server never issued was not granted for this request
            return {"id": approval_id, "status": MISMATCH, "approver": ""}
        return found.policy_state(digest)

    async def _settle_approval(self, request: DecisionRequest, outcome: Outcome, approval: Mapping[str, str] | None,
                               *, masking: Masking, digest: str, decision_id: str) -> tuple[Outcome, str, str]:
        """Use the approval an ALLOW stands on, or open the one a require_approval asks for; returns (outcome,
        the approval id to answer, the digest to record).

        apply_server_rules let an ALLOW on a presented approval through only if it was approved for this very
        request; it stands only if this decision is the one that uses it (one atomic change), otherwise DENY
        approval_<status> (a concurrent re-ask used it, or it expired, since it was read). A require_approval
        opens an approval (or finds the pending one for this request and session), which stores the principal
        and action as masked for the log (and which parts were), and is bound to the digest of the whole one.
        A store that cannot use or open it turns the answer into DENY state_unavailable.
        """
        try:
            return await self._use_or_open(request, outcome, approval, masking=masking, digest=digest,
                                           decision_id=decision_id)
        except StateError as exc:
            log.error("approvals: %s", exc)
            what = "the approval presented" if approval is not None else "the approval this request asks for"
            return enforce_state_unavailable(outcome, what, error=str(exc)), request.approval_id, digest

    async def _use_or_open(self, request: DecisionRequest, outcome: Outcome, approval: Mapping[str, str] | None,
                           *, masking: Masking, digest: str, decision_id: str) -> tuple[Outcome, str, str]:
        result = outcome.result
        if approval is not None and result.decision == ALLOW:
            used = await self._approvals.consume(approval["id"], request_digest=digest, decision_id=decision_id)
            if used:
                return outcome, approval["id"], digest
            status = (await self._approval_state(approval["id"], digest))["status"]
            return enforce_approval(outcome, approval["id"], status), approval["id"], digest
        if result.decision == REQUIRE_APPROVAL and result.approval is not None:
            digest = digest or request.digest()
            action, shown_principal = masking.input.get(request.kind), masking.input.get("principal")
            # The principal as masked for the log, but with the identities no one may approve for themselves.
            principal = {**(shown_principal if isinstance(shown_principal, Mapping) else {}),
                         **{k: request.principal[k] for k in SELF_FIELDS if k in request.principal}}
            # What the approver is shown had these parts masked: the approval says so.
            shown = (f"/input/{request.kind}/", "/input/principal/")
            masked = [p for p in (*masking.masked, *masking.erased) if (p + "/").startswith(shown)]
            opened = await self._approvals.open(
                request_digest=digest, kind=request.kind, principal=principal,
                action=action if isinstance(action, Mapping) else {}, approvers=result.approval.approvers,
                ttl_seconds=result.approval.ttl_seconds, opened_by=decision_id, masked=masked,
                required=result.approval.required, allow_requester=result.approval.allow_requester)
            if opened is not None:
                return outcome, opened.id, digest
        return outcome, request.approval_id, digest

    async def _ask(self, engine: Engine, input_json: str) -> tuple[Outcome, Any, str]:
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
