"""`tollgate eval`: one input decided offline against a bundle, as the sidecar decides it, and which rules made each
reason.

The input is the policy's input document: built from a request exactly as the sidecar builds it (the API's own
validation, `contract.build_input`), or given as JSON (an input document, or a decision record, whose logged
`input` is used). It is evaluated by one embedded OPA engine holding the bundle, held to the contract and put
through the server's own rules (`policy_outcome`, `apply_server_rules`), as `tollgate replay` does. Offline there
is no state store: the state is what the input carries (`input.state`; empty for a request built from flags).

The explanation comes from OPA's evaluation trace (the embedded engine's `trace`, as `opa eval --explain`): every
rule body that completed, with the variables bound there. A reason is attributed to each completed rule that
writes its code literally (the rule that made it) and to each completed rule that bound the whole reason to
a variable (a rule that passed it on, such as `deny contains reason if some reason in ...`), in the order the
evaluation completed them: the maker first, then each rule outwards to the decision.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tollgate.bundle import BundleError, load_bundle
from tollgate.contract import MAX_DEPTH, ApprovalSpec, Reason, build_input
from tollgate.decision import Outcome, ServerFacts, apply_server_rules, policy_outcome
from tollgate.engine import EmbeddedOpa, EngineError

DEFAULT_ENTRYPOINT = "tollgate/decision"


class EvalError(Exception):
    """The bundle or the input cannot be evaluated; the message says what and what to do."""


@dataclass(frozen=True)
class RuleHit:
    """One rule that made or passed on a reason."""

    package: str
    rule: str
    location: str  # FILE:LINE, the file as the bundle names it
    passed_on: bool  # False for the rule whose head writes the reason's code

    def as_dict(self) -> dict[str, Any]:
        return {"package": self.package, "rule": self.rule, "location": self.location, "passed_on": self.passed_on}


@dataclass(frozen=True)
class ExplainedReason:
    reason: Reason
    #: The rules that made it, then those that passed it on, in evaluation order; empty when the server made it.
    rules: tuple[RuleHit, ...]
    #: Why the server gave this reason instead of the policy (a contract break, a kill switch it enforced); "".
    by_server: str = ""


@dataclass(frozen=True)
class EvalResult:
    """The answer the sidecar would give to one input (no decision id: nothing is logged)."""

    decision: str
    reasons: tuple[Reason, ...]
    obligations: Mapping[str, Any]
    approval: ApprovalSpec | None
    bundle_revision: str
    input: Mapping[str, Any]
    #: The policy's own value (what a record's `result` holds); None when undefined or the engine failed.
    result: Any
    #: Why the server decided instead of the policy, as a record's `error` says; "" for the policy's decision.
    error: str
    explained: tuple[ExplainedReason, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        reasons: list[dict[str, Any]] = []
        for i, reason in enumerate(self.reasons):
            entry: dict[str, Any] = reason.as_dict()
            if self.explained is not None:
                explained = self.explained[i]
                entry["rules"] = [hit.as_dict() for hit in explained.rules]
                if explained.by_server:
                    entry["by_server"] = explained.by_server
            reasons.append(entry)
        doc: dict[str, Any] = {"decision": self.decision, "reasons": reasons, "obligations": dict(self.obligations),
                               "bundle_revision": self.bundle_revision}
        if self.approval is not None:
            doc["approval"] = {"approvers": list(self.approval.approvers), "ttl_seconds": self.approval.ttl_seconds}
            if self.approval.required != 1:  # the defaults are left out, as the policy leaves them out
                doc["approval"]["required"] = self.approval.required
            if self.approval.allow_requester:
                doc["approval"]["allow_requester"] = True
        return doc | {"error": self.error, "result": self.result, "input": dict(self.input)}


# -- the input ---------------------------------------------------------------------------------------------------


def input_from_request(message: Any, *, now: str) -> dict[str, Any]:
    """The input document the sidecar builds for an AuthorizeRequest message asked at `now` (RFC 3339), by an
    unauthenticated caller, with no state (no kill switch, no spend, no approval): the API's own validation, so a
    request the sidecar refuses as INVALID_ARGUMENT is refused here too (EvalError naming the field)."""
    from tollgate.api._convert import InvalidRequest, to_decision_request  # the servicers' mapping, not a servicer

    try:
        request = to_decision_request(message, max_depth=MAX_DEPTH)
    except InvalidRequest as exc:
        raise EvalError(f"invalid request: {exc} (the sidecar would answer INVALID_ARGUMENT)") from exc
    return build_input(request, now=now)


def input_from_json(text: str, *, where: str) -> dict[str, Any]:
    """An input document given as JSON: the document itself (what `opa eval --input` takes), or a decision record
    (what `tollgate decision ID` prints), whose logged `input` is evaluated again."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise EvalError(f"{where}: not JSON ({exc})") from exc
    if not isinstance(doc, dict):
        raise EvalError(f"{where}: the input must be a JSON object (the policy's input document)")
    if "decision_id" in doc and isinstance(doc.get("input"), dict):
        doc = doc["input"]
    if "kind" not in doc:
        raise EvalError(f"{where}: no `kind` (hint: give the policy input document, {{\"kind\": \"tool\", "
                        "\"principal\": ..., \"tool\": ...}, or a decision record)")
    return dict(doc)


# -- the evaluation ----------------------------------------------------------------------------------------------


class Evaluator:
    """A bundle (directory or .tar.gz, tests left out as the sidecar loads it) in one in-process engine."""

    def __init__(self, bundle: str | Path, *, entrypoint: str = DEFAULT_ENTRYPOINT) -> None:
        try:
            loaded = load_bundle(bundle)
        except BundleError as exc:
            raise EvalError(str(exc)) from exc
        self.source = str(bundle)
        self.revision = loaded.revision
        self.entrypoint = entrypoint
        self._path = entrypoint.strip("/").replace("/", ".")
        self._packages = {name: _package(source) for name, source in loaded.modules.items()}
        try:
            self._engine = EmbeddedOpa(loaded.modules, loaded.data)
            self._engine.compile()  # as the sidecar's workers do: a bundle that does not compile is refused now
        except EngineError as exc:
            raise EvalError(f"bundle {bundle} does not compile: {exc.message}") from exc

    def evaluate(self, input_doc: Mapping[str, Any], *, explain: bool = False) -> EvalResult:
        facts = ServerFacts.recorded(input_doc)
        policy: Outcome | None = None
        trace: list[dict[str, Any]] = []
        if facts.asks_policy:  # a caller the server refused was denied before the policy was asked
            evaluated: Any
            try:
                if explain:
                    evaluated, trace = self._engine.evaluate_with_trace(self._path, dict(input_doc))
                else:
                    evaluated = self._engine.evaluate(self._path, dict(input_doc))
            except EngineError as exc:
                evaluated = exc
            policy = policy_outcome(evaluated, entrypoint=self.entrypoint)
        outcome = apply_server_rules(facts, policy)
        result = outcome.result
        explained = None
        if explain:
            made_by_policy = set(policy.result.reasons) if policy is not None and not policy.error else set()
            explained = tuple(self._explain(reason, trace, outcome, made_by_policy) for reason in result.reasons)
        return EvalResult(decision=result.decision, reasons=result.reasons, obligations=result.obligations,
                          approval=result.approval, bundle_revision=self.revision, input=input_doc,
                          result=outcome.raw, error=outcome.error, explained=explained)

    def _explain(self, reason: Reason, trace: Sequence[Mapping[str, Any]], outcome: Outcome,
                 made_by_policy: set[Reason]) -> ExplainedReason:
        if reason not in made_by_policy:
            return ExplainedReason(reason, (), by_server=outcome.error or "the server's own rule")
        return ExplainedReason(reason, tuple(self._hits(reason, trace)))

    def _hits(self, reason: Reason, trace: Sequence[Mapping[str, Any]]) -> list[RuleHit]:
        code = f'"code": {json.dumps(reason.code)}'
        whole = reason.as_dict()
        hits: list[RuleHit] = []
        for event in trace:
            if event.get("op") != "Exit":
                continue
            rule = _completed_rule(event)
            if rule is None:
                continue
            name, node, file, line = rule
            locals_ = event.get("locals") or {}
            values = list(locals_.values()) if isinstance(locals_, dict) else []
            if code in node and (reason.message in values or not any(isinstance(v, str) for v in values)
                                 or f'"message": {json.dumps(reason.message)}' in node):
                hit = RuleHit(self._packages.get(file, ""), name, f"{file}:{line}", passed_on=False)
            elif whole in values:
                hit = RuleHit(self._packages.get(file, ""), name, f"{file}:{line}", passed_on=True)
            else:
                continue
            if hit not in hits:
                hits.append(hit)
        return hits

    def close(self) -> None:
        self._engine.close()

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# A rule body's trace node: the rule's head (`deny contains {...}`, `x := v`, `f(a) := v`, `p[k] := v`, `p`), then
# ` if { ... }`. Expressions and comprehension bodies start with a compiler variable or do not match.
_RULE_NODE = re.compile(r"^(?:default\s+)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:\[[^\]]*\])?(?:\([^)]*\))?"
                        r"(?:\s+contains\s|\s*:?=\s|\s+if\s|$)")
_LOCATION = re.compile(r"^(?P<file>.+):(?P<line>\d+)$")


def _completed_rule(event: Mapping[str, Any]) -> tuple[str, str, str, int] | None:
    """(rule name, its compiled text, file, line) of a trace event that completes a rule body; None for other
    events. The compiler may move a head's value into the body (`deny contains __local1__ if { ...;
    __local1__ = {"code": ...} }`), so the whole text is searched, not the head alone."""
    node, location = str(event.get("node", "")), _LOCATION.match(str(event.get("location", "")))
    match = _RULE_NODE.match(node)
    if location is None or match is None or match["name"].startswith("__local"):
        return None
    return match["name"], node, location["file"], int(location["line"])


_PACKAGE = re.compile(r"^[ \t]*package[ \t]+([\w.]+)", re.M)


def _package(source: str) -> str:
    match = _PACKAGE.search(source)
    return match.group(1) if match else ""
