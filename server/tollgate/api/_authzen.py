"""AuthZEN Authorization API 1.0 over HTTP: access evaluation(s) answered by the same Authorizer as gRPC.

The mapping (docs in README "AuthZEN"): subject {type "agent", id AGENT, properties: the other principal
fields}; resource.type says what is asked — "tool" (id SERVER/NAME, action "call", properties.arguments and
.resources), "model" (id PROVIDER/MODEL, action "invoke", properties.input_tokens, .max_output_tokens,
.data_classes) or "budget" (id the unit, action "spend", action.properties.amount, resource.properties
.category); context is the request context (its request_id and approval_id keys are Tollgate's own fields).
The request is validated exactly as an AuthorizeRequest is (it is turned into one), and every evaluation is
a logged decision. AuthZEN has only true and false: require_approval is false, with the approval in context.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import sys
from collections.abc import Mapping
from typing import Any

from tollgate.api._authorization import RequestLimits
from tollgate.api._convert import InvalidRequest, to_decision_request
from tollgate.api._http import HttpRequest, HttpResponse
from tollgate.contract import MAX_DEPTH, Decision, DecisionRequest
from tollgate.decision import Authorizer
from tollgate.decisionlog import DecisionLogError
from tollgate.identity import TOKEN_METADATA_KEY, Caller, CallerResolver
from tollgate.v1 import authorization_pb2 as pb

log = logging.getLogger(__name__)

EVALUATION_PATH = "/access/v1/evaluation"
EVALUATIONS_PATH = "/access/v1/evaluations"
METADATA_PATH = "/.well-known/authzen-configuration"
#: What each resource type is asked with, and the action name that asks it.
ACTIONS = {"tool": "call", "model": "invoke", "budget": "spend"}
SEMANTICS = ("execute_all", "deny_on_first_deny", "permit_on_first_permit")
#: Evaluations of one execute_all batch decided at the same time.
BATCH_CONCURRENCY = 32
#: Most evaluations in one batch (authzen_max_batch): each is a logged decision, and a 1 MiB body of small
#: items was 16,128 of them from one unauthenticated request.
DEFAULT_MAX_BATCH = 64
#: An integer field of AuthorizeRequest (input_tokens, max_output_tokens) is an int64.
_INT64_LIMIT = 2**63
_JSON = "application/json"
#: AuthorizeRequest field paths (as InvalidRequest names them) → the AuthZEN fields they came from.
_FIELD_NAMES = (
    ("principal.agent_id", "subject.id"), ("tool.arguments", "resource.properties.arguments"),
    ("tool.name", "resource.id"), ("model.model", "resource.id"), ("model.", "resource.properties."),
    ("budget.amount", "action.properties.amount"), ("budget.unit", "resource.id"),
)


class BadEvaluation(ValueError):
    """An evaluation request that breaks the API's schema; the message names the field (HTTP 400)."""


class AuthzenService:
    """Answers the AuthZEN HTTP endpoints with the Authorizer (each evaluation is one logged decision)."""

    def __init__(self, authorizer: Authorizer, limits: RequestLimits, *, callers: CallerResolver,
                 tls: bool = False, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self._tls = tls
        self._max_batch = max_batch
        self._authorizer = authorizer
        self._limits = limits
        self._callers = callers

    async def handle(self, request: HttpRequest) -> HttpResponse:
        echo = {"X-Request-ID": request.headers["x-request-id"]} if "x-request-id" in request.headers else {}
        if request.path == METADATA_PATH:
            if request.method not in ("GET", "HEAD"):
                return _error(405, "method_not_allowed", f"{METADATA_PATH} answers GET", {"Allow": "GET, HEAD"})
            return _json(200, self.metadata(request.headers.get("host", "")), echo)
        if request.path not in (EVALUATION_PATH, EVALUATIONS_PATH):
            return _error(404, "not_found", f"no such endpoint {request.path!r}; this PDP serves "
                                            f"{EVALUATION_PATH}, {EVALUATIONS_PATH} and {METADATA_PATH}")
        if request.method != "POST":
            return _error(405, "method_not_allowed", f"{request.path} answers POST", {"Allow": "POST"})
        caller = self._caller(request)
        try:
            body = _parse_body(request)
            if request.path == EVALUATION_PATH:
                answer: dict[str, Any] = _answer((await self._evaluate([self._domain(body, "", caller)]))[0])
            else:
                answer = await self._evaluations(body, caller)
        except BadEvaluation as exc:
            return _error(400, "invalid_request", str(exc), echo)
        except DecisionLogError as exc:
            log.error("authzen: %s", exc)
            return _error(503, "unavailable", "decision log is unavailable; no decision can be answered", echo)
        return _json(200, answer, echo)

    def metadata(self, host: str) -> dict[str, Any]:
        """The PDP metadata document (AuthZEN's well-known configuration)."""
        base = f"{'https' if self._tls else 'http'}://{host}" if host else ""
        return {"policy_decision_point": base, "access_evaluation_endpoint": f"{base}{EVALUATION_PATH}",
                "access_evaluations_endpoint": f"{base}{EVALUATIONS_PATH}"}

    def _caller(self, request: HttpRequest) -> Caller:
        token = request.headers.get(TOKEN_METADATA_KEY, "")
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        if not token and scheme.lower() == "bearer":
            token = bearer.strip()
        return self._callers.resolve(peer="", auth_context=certificate_context(request.peer_certificate),
                                     token=token)

    async def _evaluations(self, body: Mapping[str, Any], caller: Caller) -> dict[str, Any]:
        items = body.get("evaluations")
        if items is None or items == []:
            # No evaluations array: the defaults are the one request, answered like an evaluation.
            return _answer((await self._evaluate([self._domain(body, "", caller)]))[0])
        if not isinstance(items, list):
            raise BadEvaluation("evaluations: must be an array of evaluation requests")
        if len(items) > self._max_batch:
            raise BadEvaluation(f"evaluations: {len(items)} evaluation requests, over the limit of "
                                f"{self._max_batch} in one batch (authzen_max_batch); send them in smaller batches")
        options = body.get("options") or {}
        if not isinstance(options, dict):
            raise BadEvaluation("options: must be an object")
        semantic = options.get("evaluations_semantic", "execute_all")
        if semantic not in SEMANTICS:
            raise BadEvaluation(f"options.evaluations_semantic: must be one of {', '.join(SEMANTICS)}, "
                                f"got {semantic!r}")
        defaults = {k: body[k] for k in ("subject", "action", "resource", "context") if k in body}
        requests = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise BadEvaluation(f"evaluations[{i}]: must be an object")
            # An item's subject, action, resource or context replaces the default one as a whole.
            requests.append(self._domain({**defaults, **item}, f"evaluations[{i}].", caller))
        # Every item is validated before any is decided: a bad request logs no decision.
        decisions = await self._evaluate(requests, stop_on={"deny_on_first_deny": False,
                                                            "permit_on_first_permit": True}.get(semantic))
        return {"evaluations": [_answer(d) for d in decisions]}

    async def _evaluate(self, requests: list[DecisionRequest], *, stop_on: bool | None = None) -> list[Decision]:
        if stop_on is None:
            # execute_all: decided together (a bounded number at a time), so their log appends share group
            # commits; the answers keep the order of the requests.
            room = asyncio.Semaphore(BATCH_CONCURRENCY)

            async def decide(request: DecisionRequest) -> Decision:
                async with room:
                    return await self._authorizer.authorize(request)

            return list(await asyncio.gather(*(decide(r) for r in requests)))
        decisions = []
        for request in requests:
            decision = await self._authorizer.authorize(request)
            decisions.append(decision)
            if stop_on is not None and (decision.decision == "allow") == stop_on:
                break
        return decisions

    def _domain(self, doc: Mapping[str, Any], where: str, caller: Caller) -> DecisionRequest:
        message = to_authorize_request(doc, where=where, max_depth=self._limits.max_depth)
        if message.ByteSize() > self._limits.max_request_bytes:
            raise BadEvaluation(f"{where or 'request'}: over the limit of {self._limits.max_request_bytes} bytes")
        try:
            return to_decision_request(message, max_depth=self._limits.max_depth, caller=caller)
        except InvalidRequest as exc:
            raise BadEvaluation(where + _authzen_field(str(exc))) from exc


def certificate_context(certificate: Mapping[str, Any] | None) -> dict[str, list[bytes]]:
    """A verified client certificate (ssl's getpeercert() form) as the gRPC auth context names its parts, so that
    one function (tollgate.identity.certificate_caller) names the caller on either port."""
    if not certificate:
        return {}
    sans = [(str(kind), str(value)) for kind, value in certificate.get("subjectAltName", ())]
    uris = [v.encode() for k, v in sans if k == "URI"]
    spiffe = [u for u in uris if u.startswith(b"spiffe://")]
    common = [str(v).encode() for rdn in certificate.get("subject", ()) for k, v in rdn if k == "commonName"]
    context = {"transport_security_type": [b"ssl"], "x509_subject_alternative_name": [v.encode() for _, v in sans],
               "peer_uri": uris, "peer_dns": [v.encode() for k, v in sans if k == "DNS"],
               "x509_common_name": common[:1]}
    if len(spiffe) == 1:  # as gRPC does: a SPIFFE ID only when the certificate carries exactly one
        context["peer_spiffe_id"] = spiffe
    return context


def to_authorize_request(doc: Mapping[str, Any], *, where: str = "", max_depth: int = MAX_DEPTH) -> pb.AuthorizeRequest:
    """An AuthZEN evaluation request as the AuthorizeRequest it asks (errors name the AuthZEN field)."""
    subject = _object(doc, "subject", where)
    action = _object(doc, "action", where)
    resource = _object(doc, "resource", where)
    context = doc.get("context", {})
    if not isinstance(context, dict):
        raise BadEvaluation(f"{where}context: must be an object")
    _check_depth(context, f"{where}context", 1, max_depth)
    if subject.get("type") != "agent":
        raise BadEvaluation(f"{where}subject.type: must be \"agent\" (Tollgate decides for agents), "
                            f"got {subject.get('type')!r}")
    props = _properties(subject, f"{where}subject")
    principal = pb.Principal(agent_id=_text(subject, "id", f"{where}subject"))
    for name in ("instance_id", "session_id", "workflow", "team", "user"):
        setattr(principal, name, _text(props, name, f"{where}subject.properties", required=False))
    labels = props.get("labels", {})
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise BadEvaluation(f"{where}subject.properties.labels: must be an object of strings")
    principal.labels.update(labels)
    kind = resource.get("type")
    if kind not in ACTIONS:
        raise BadEvaluation(f"{where}resource.type: must be one of {', '.join(ACTIONS)}, got {kind!r}")
    verb = _text(action, "name", f"{where}action")
    if verb != ACTIONS[kind]:
        raise BadEvaluation(f"{where}action.name: a {kind} resource is asked with {ACTIONS[kind]!r}, got {verb!r}")
    resource_id = _text(resource, "id", f"{where}resource")
    rprops = _properties(resource, f"{where}resource")
    _check_depth(rprops, f"{where}resource.properties", 1, max_depth)
    message = pb.AuthorizeRequest(principal=principal)
    if kind == "tool":
        server, _, name = resource_id.rpartition("/")
        message.tool.server, message.tool.name = server, name
        arguments = rprops.get("arguments", {})
        if not isinstance(arguments, dict):
            raise BadEvaluation(f"{where}resource.properties.arguments: must be an object")
        message.tool.arguments.update(arguments)
        message.tool.resources.extend(_strings(rprops, "resources", f"{where}resource.properties"))
    elif kind == "model":
        provider, _, model = resource_id.rpartition("/")
        message.model.provider, message.model.model = provider, model
        message.model.input_tokens = _integer(rprops, "input_tokens", f"{where}resource.properties")
        message.model.max_output_tokens = _integer(rprops, "max_output_tokens", f"{where}resource.properties")
        message.model.data_classes.extend(_strings(rprops, "data_classes", f"{where}resource.properties"))
    else:
        amount = _properties(action, f"{where}action").get("amount")
        if isinstance(amount, bool) or not isinstance(amount, int | float):
            raise BadEvaluation(f"{where}action.properties.amount: required, a number (what this step spends)")
        message.budget.amount, message.budget.unit = float(amount), resource_id
        message.budget.category = _text(rprops, "category", f"{where}resource.properties", required=False)
    tollgate_keys = {"request_id", "approval_id"}
    for key in tollgate_keys:
        setattr(message, key, _text(context, key, f"{where}context", required=False))
    if any(k not in tollgate_keys for k in context):
        message.context.update({k: v for k, v in context.items() if k not in tollgate_keys})
    return message


def _answer(decision: Decision) -> dict[str, Any]:
    """A decision as an AuthZEN evaluation response: decision true only for allow; the rest in context."""
    context: dict[str, Any] = {"decision_id": decision.decision_id, "bundle_revision": decision.bundle_revision}
    if decision.reasons:
        context["reasons"] = [r.as_dict() for r in decision.reasons]
    if decision.obligations:
        context["obligations"] = dict(decision.obligations)  # the PEP must apply them, as over gRPC
    if decision.reservation_id:
        context["reservation_id"] = decision.reservation_id
    if decision.decision == "require_approval":
        context["approval_required"] = True
        context["approval_id"] = decision.approval_id
    return {"decision": decision.decision == "allow", "context": context}


def _parse_body(request: HttpRequest) -> dict[str, Any]:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != _JSON:
        raise BadEvaluation(f"content-type: must be {_JSON}, got {media or 'none'!r}")
    try:
        body = json.loads(request.body, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as exc:
        raise BadEvaluation(f"body: not valid JSON ({exc})") from exc
    if not isinstance(body, dict):
        raise BadEvaluation("body: must be a JSON object")
    _check_values(body)
    return body


def _check_values(body: dict[str, Any]) -> None:
    """Refuse, naming the field, what JSON can spell but no request can carry: a number beyond a 64-bit float
    (10**400, 1e400) and a lone surrogate (\\ud800), which protobuf, the engine and the log cannot encode."""
    stack: list[tuple[Any, str]] = [(body, "")]
    while stack:  # iterative: the body's nesting is bounded only by json's own recursion limit
        value, where = stack.pop()
        if isinstance(value, dict):
            for key, child in value.items():
                if not _is_unicode(key):
                    raise BadEvaluation(f"{where or 'body'}: a key is not valid Unicode (it holds a lone surrogate)")
                stack.append((child, f"{where}.{key}" if where else key))
        elif isinstance(value, list):
            stack.extend((child, f"{where}[{i}]") for i, child in enumerate(value))
        elif isinstance(value, str):
            if not _is_unicode(value):
                raise BadEvaluation(f"{where}: not valid Unicode (it holds a lone surrogate such as \\ud800)")
        elif isinstance(value, float) and not math.isfinite(value):
            raise BadEvaluation(f"{where}: must be a finite number (beyond a 64-bit float, as 1e400 is)")
        elif isinstance(value, int) and not isinstance(value, bool) and abs(value) > sys.float_info.max:
            raise BadEvaluation(f"{where}: a number of {len(str(abs(value)))} digits is beyond a 64-bit float")


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _object(doc: Mapping[str, Any], key: str, where: str) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise BadEvaluation(f"{where}{key}: required, an object")
    return value


def _properties(entity: Mapping[str, Any], where: str) -> dict[str, Any]:
    props = entity.get("properties", {})
    if not isinstance(props, dict):
        raise BadEvaluation(f"{where}.properties: must be an object")
    return props


def _text(doc: Mapping[str, Any], key: str, where: str, *, required: bool = True) -> str:
    value = doc.get(key, None if required else "")
    if not isinstance(value, str) or (required and not value):
        raise BadEvaluation(f"{where}.{key}: {'required, ' if required else 'must be '}a string")
    return value


def _integer(doc: Mapping[str, Any], key: str, where: str) -> int:
    value = doc.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadEvaluation(f"{where}.{key}: must be a whole number")
    if not -_INT64_LIMIT <= value < _INT64_LIMIT:
        raise BadEvaluation(f"{where}.{key}: must be a whole number below 2**63, not {value}")
    return value


def _strings(doc: Mapping[str, Any], key: str, where: str) -> list[str]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise BadEvaluation(f"{where}.{key}: must be an array of strings")
    return value


def _check_depth(value: Any, where: str, depth: int, max_depth: int) -> None:
    children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    for child in children:
        if isinstance(child, dict | list):
            if depth >= max_depth:
                raise BadEvaluation(f"{where}: nested deeper than the limit of {max_depth} levels")
            _check_depth(child, where, depth + 1, max_depth)


def _authzen_field(message: str) -> str:
    for ours, theirs in _FIELD_NAMES:
        if message.startswith(ours):
            return theirs + message[len(ours):]
    return message


def _json(status: int, doc: Mapping[str, Any], headers: Mapping[str, str] | None = None) -> HttpResponse:
    return HttpResponse(status, json.dumps(doc).encode(), _JSON, dict(headers or {}))


def _error(status: int, code: str, message: str, headers: Mapping[str, str] | None = None) -> HttpResponse:
    return _json(status, {"error": code, "error_description": message}, headers)


def json_error(status: int, message: str) -> HttpResponse:
    """The HTTP server's own errors (unreadable request, body too large) in the API's error shape."""
    return _error(status, "invalid_request" if status < 500 else "internal_error", message)
