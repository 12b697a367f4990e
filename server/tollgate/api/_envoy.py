"""Envoy external authorization: `envoy.service.auth.v3.Authorization/Check` answered by the same Authorizer.

Envoy (and agentgateway, kgateway: anything with Envoy's ext_authz gRPC filter) asks before it forwards an HTTP
request. The mapping (README "Envoy external authorization"):

- a POST to a route of `envoy.mcp_servers` carrying an MCP JSON-RPC `tools/call` body (Envoy's
  `with_request_body`) is a tool call: server the route's name, name and arguments from `params`;
- every other request is a generic tool call of server `http`: name the method, arguments {method, host, path,
  query} (the default library denies it: no manifest lists an `http` tool, so an operator opts in per agent);
- the principal comes from headers (`x-tollgate-agent`, ... configurable), else from the one agent the caller's
  `callers` entry names. The caller is the source principal Envoy verified (attributes.source.principal: the
  downstream's SPIFFE ID or certificate subject) when the proxy is trusted to report it (`envoy.trusted_proxies`,
  or no `callers` at all), else the proxy's own connection. The Authorizer checks, as for Authorize, that the
  caller may speak for the principal the headers claim: DENY principal_mismatch, logged.

Every answer is a CheckResponse, never a gRPC error, so that Envoy's failure_mode_allow cannot turn a refusal into
an allow: ALLOW is OK with the decision id in headers (to the upstream and to the client); DENY and
REQUIRE_APPROVAL are 403 with a JSON body {decision_id, decision, reasons[, approval_id]}; a request that cannot
become a decision request (an MCP route without a readable body, a body over `envoy.max_body_bytes`, a path that is
not normalised) is refused with 400 or 413 and a JSON {error, error_description}, like an INVALID_ARGUMENT of
Authorize it is not logged as a decision; a decision log that cannot write is 503.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
import yaml
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2 as ext
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2
from google.rpc import code_pb2, status_pb2

from tollgate.api._authorization import RequestLimits
from tollgate.api._authzen import BadEvaluation, _check_depth, _check_values
from tollgate.api._convert import InvalidRequest, to_decision_request
from tollgate.api._handlers import metadata_value
from tollgate.contract import Decision
from tollgate.decision import Authorizer
from tollgate.decisionlog import DecisionLogError
from tollgate.identity import TOKEN_METADATA_KEY, Caller, CallerMap, CallerResolver
from tollgate.v1 import authorization_pb2 as pb

log = logging.getLogger(__name__)

SERVICE = ext.DESCRIPTOR.services_by_name["Authorization"].full_name
#: The tool server of a request that is not an MCP tool call.
HTTP_SERVER = "http"
#: Headers of Tollgate's answer: to the upstream (ALLOW) and to the client (every answer).
DECISION_ID_HEADER = "x-tollgate-decision-id"
APPROVAL_ID_HEADER = "x-tollgate-approval-id"
OBLIGATIONS_HEADER = "x-tollgate-obligations"
#: Principal field → the request header that names it (envoy.principal_headers replaces any of them).
DEFAULT_PRINCIPAL_HEADERS = {
    "agent_id": "x-tollgate-agent", "session_id": "x-tollgate-session", "instance_id": "x-tollgate-instance",
    "workflow": "x-tollgate-workflow", "team": "x-tollgate-team", "user": "x-tollgate-user",
}
#: The header a retried request presents its approval in (AuthorizeRequest.approval_id).
DEFAULT_APPROVAL_HEADER = "x-tollgate-approval"
#: Envoy sets it when with_request_body.allow_partial_message cut the body short.
PARTIAL_BODY_HEADER = "x-envoy-auth-partial-body"
_KEYS = ("mcp_servers", "principal_headers", "approval_header", "trusted_proxies", "max_body_bytes")
_JSON = "application/json"
#: Path spellings a route match could read differently from the upstream: Envoy's normalize_path, merge_slashes
#: and path_with_escaped_slashes_action remove them; a request still carrying one is refused.
_UNNORMALISED = ("//", "/./", "/../", "%2f", "%2e", "%5c", "\\")


class EnvoyConfigError(ValueError):
    """An `envoy` setting that cannot be used; the message names the key."""


@dataclass(frozen=True)
class EnvoySettings:
    """The `envoy` mapping of `tollgate serve`: how a CheckRequest becomes a decision request."""

    #: Route → MCP server name. A route is HOST (the :authority, port optional), /PATH-PREFIX or HOST/PATH-PREFIX;
    #: a prefix matches whole segments; the longest prefix wins, then a route naming the host.
    mcp_servers: Mapping[str, str] = field(default_factory=dict)
    #: Principal field → header naming it, over DEFAULT_PRINCIPAL_HEADERS ("" reads no header for that field).
    principal_headers: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_PRINCIPAL_HEADERS))
    #: The header carrying the approval id of a retried request ("" reads none).
    approval_header: str = DEFAULT_APPROVAL_HEADER
    #: Caller identities (as in callers) of the proxies whose attributes.source.principal is believed.
    trusted_proxies: frozenset[str] = frozenset()
    #: Largest request body parsed, in bytes; 0: max_request_bytes.
    max_body_bytes: int = 0

    @classmethod
    def parse(cls, raw: Any) -> EnvoySettings:
        """The settings of a mapping, or of its YAML or JSON text (the --envoy flag)."""
        if isinstance(raw, str):
            try:
                raw = yaml.safe_load(raw)
            except yaml.YAMLError as exc:
                raise EnvoyConfigError(f"not YAML or JSON ({exc})") from exc
        if raw is None or raw == {}:
            return cls()
        if not isinstance(raw, dict):
            raise EnvoyConfigError(f"must be a mapping with keys {', '.join(_KEYS)}, got {raw!r}")
        unknown = sorted(set(raw) - set(_KEYS))
        if unknown:
            raise EnvoyConfigError(f"unknown key {unknown[0]!r}; known keys: {', '.join(_KEYS)}")
        servers = _strings_map(raw.get("mcp_servers", {}), "mcp_servers", empty_values=False)
        for route in servers:
            if not route or route.lower() != route or any(c.isspace() for c in route):
                raise EnvoyConfigError(f"mcp_servers: {route!r} is not a route (HOST, /PREFIX or HOST/PREFIX, "
                                       "lower case, no spaces)")
        headers = _strings_map(raw.get("principal_headers", {}), "principal_headers", empty_values=True)
        unknown = sorted(set(headers) - set(DEFAULT_PRINCIPAL_HEADERS))
        if unknown:
            raise EnvoyConfigError(f"principal_headers: {unknown[0]!r} is not a principal field; fields: "
                                   f"{', '.join(DEFAULT_PRINCIPAL_HEADERS)}")
        approval = raw.get("approval_header", DEFAULT_APPROVAL_HEADER)
        proxies = raw.get("trusted_proxies", [])
        if not isinstance(approval, str):
            raise EnvoyConfigError(f"approval_header: must be a header name, got {approval!r}")
        if not isinstance(proxies, list) or not all(isinstance(p, str) and p for p in proxies):
            raise EnvoyConfigError(f"trusted_proxies: must be a list of caller identities, got {proxies!r}")
        size = raw.get("max_body_bytes", 0)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise EnvoyConfigError(f"max_body_bytes: must be 0 (max_request_bytes) or a number of bytes, "
                                   f"got {size!r}")
        return cls(mcp_servers=servers,
                   principal_headers={**DEFAULT_PRINCIPAL_HEADERS, **{k: v.lower() for k, v in headers.items()}},
                   approval_header=approval.lower(), trusted_proxies=frozenset(proxies), max_body_bytes=size)

    @classmethod
    def problem(cls, raw: Any) -> str:
        """Why raw cannot be parsed ("" when it can): for `tollgate serve`'s check of its configuration."""
        try:
            cls.parse(raw)
        except EnvoyConfigError as exc:
            return str(exc)
        return ""

    def mcp_server(self, host: str, path: str) -> str:
        """The MCP server the request's route is mapped to ("" when none is)."""
        host = host.lower()
        bare = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
        best, rank = "", (-1, False)
        for route, server in self.mcp_servers.items():
            where, slash, prefix = route.partition("/")
            prefix = (slash + prefix).rstrip("/")
            if where and where not in (host, bare):
                continue
            if prefix and not (path == prefix or path.startswith(prefix + "/")):
                continue
            if (len(prefix), bool(where)) > rank:
                best, rank = server, (len(prefix), bool(where))
        return best


def _strings_map(value: Any, key: str, *, empty_values: bool) -> dict[str, str]:
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) and (v or empty_values)
                                              for k, v in value.items()):
        raise EnvoyConfigError(f"{key}: must map names to {'' if empty_values else 'non-empty '}strings, "
                               f"got {value!r}")
    return dict(value)


class Refused(Exception):
    """A CheckRequest that cannot become a decision request: answered with HTTP status, not logged."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class HttpCall:
    """What Envoy reports of the HTTP request it asks about."""

    method: str
    host: str
    path: str
    query: str
    headers: Mapping[str, str]
    body: bytes

    @classmethod
    def of(cls, request: ext.CheckRequest) -> HttpCall:
        http = request.attributes.request.http
        if not http.method:
            raise Refused(400, "attributes.request.http: Envoy reported no HTTP request (the filter is an HTTP "
                               "filter: envoy.filters.http.ext_authz)")
        headers = {k.lower(): v for k, v in http.headers.items()}
        for header in http.header_map.headers:  # encode_raw_headers: values are bytes, repeated names repeat
            value = header.raw_value.decode("utf-8", "replace") if header.raw_value else header.value
            name = header.key.lower()
            headers[name] = f"{headers[name]},{value}" if name in headers else value
        target = http.path or headers.get(":path", "")
        path, _, query = target.partition("?")
        host = http.host or headers.get(":authority", "") or headers.get("host", "")
        body = http.raw_body or http.body.encode("utf-8")
        return cls(method=http.method.upper(), host=host.lower(), path=path, query=query, headers=headers,
                   body=body)


class EnvoyAuthorizationServicer:
    """Answers Envoy's Check with the Authorizer: each answer is one logged decision (see the module's doc)."""

    def __init__(self, authorizer: Authorizer, limits: RequestLimits, *, settings: EnvoySettings,
                 resolver: CallerResolver, callers: CallerMap) -> None:
        self._authorizer = authorizer
        self._limits = limits
        self._settings = settings
        self._resolver = resolver
        self._callers = callers
        self._max_body = settings.max_body_bytes or limits.max_request_bytes

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "Check": grpc.unary_unary_rpc_method_handler(
                self.Check, request_deserializer=ext.CheckRequest.FromString,
                response_serializer=ext.CheckResponse.SerializeToString),
        })

    async def Check(  # noqa: N802 - gRPC method name
        self, request: ext.CheckRequest, context: grpc.aio.ServicerContext
    ) -> ext.CheckResponse:
        try:
            call = HttpCall.of(request)
            caller = self.caller(request, context)
            domain = to_decision_request(self.authorize_request(call, caller), max_depth=self._limits.max_depth,
                                         caller=caller)
        except Refused as exc:
            return refusal(exc.status, str(exc))
        except (InvalidRequest, BadEvaluation) as exc:
            return refusal(400, str(exc))
        try:
            decision = await self._authorizer.authorize(domain)
        except DecisionLogError as exc:
            log.error("envoy check: %s", exc)
            return refusal(503, "decision log is unavailable; no decision can be answered")
        except Exception:
            log.exception("envoy check failed")
            return refusal(500, "internal error")
        return to_check_response(decision)

    def caller(self, request: ext.CheckRequest, context: grpc.aio.ServicerContext) -> Caller:
        """The source principal Envoy verified when this proxy is believed, else the proxy's own connection."""
        proxy = self._resolver.resolve(peer=context.peer(), auth_context=context.auth_context(),
                                       token=metadata_value(context, TOKEN_METADATA_KEY))
        source = request.attributes.source.principal
        if not source:
            return proxy
        believed = not self._callers or bool(self._settings.trusted_proxies & set(proxy.names()))
        if not believed:
            # Anyone who reaches this port could write any source principal: recorded, never used as identity.
            return dataclasses.replace(proxy, details={**proxy.details, "untrusted_source_principal": source})
        return Caller(method="envoy", subject=source,
                      details={"source_principal": source, "proxy": proxy.subject, "proxy_method": proxy.method})

    def authorize_request(self, call: HttpCall, caller: Caller) -> pb.AuthorizeRequest:
        """The AuthorizeRequest a Check asks: the principal from headers, the action from the route and body."""
        _check_path(call.path)
        message = pb.AuthorizeRequest(principal=self._principal(call, caller))
        if self._settings.approval_header:
            message.approval_id = call.headers.get(self._settings.approval_header, "")
        http = {"method": call.method, "host": call.host, "path": call.path, "query": call.query}
        server = self._settings.mcp_server(call.host, call.path)
        rpc = self._jsonrpc(call) if server and call.method == "POST" else None
        if rpc is not None and rpc.get("method") == "tools/call":
            name, arguments = _tool_call(rpc)
            message.tool.server, message.tool.name = server, name
            message.tool.arguments.update(arguments)
            message.context.update({"http": http})
        else:
            message.tool.server, message.tool.name = HTTP_SERVER, call.method
            message.tool.arguments.update(http)
            if rpc is not None:
                message.context.update({"mcp_server": server, "mcp_method": str(rpc.get("method", ""))})
        if message.ByteSize() > self._limits.max_request_bytes:
            raise Refused(413, f"request: over the limit of {self._limits.max_request_bytes} bytes")
        return message

    def _principal(self, call: HttpCall, caller: Caller) -> pb.Principal:
        principal = pb.Principal()
        for name, header in self._settings.principal_headers.items():
            if header and call.headers.get(header):
                setattr(principal, name, call.headers[header])
        if not principal.agent_id:
            principal.agent_id = self._only_agent(caller)
        if not principal.agent_id:
            header = self._settings.principal_headers.get("agent_id") or "an agent header"
            raise Refused(403, f"principal: no agent named; send {header}, or give the caller "
                               f"{caller.subject or '(unauthenticated)'} a callers entry listing exactly one agent")
        return principal

    def _only_agent(self, caller: Caller) -> str:
        """The agent a caller speaks for when its callers entries name exactly one (not "*")."""
        names = set(caller.names())
        agents = {a for e in self._callers.entries if e.id in names for a in e.allowed.get("agents", ())}
        return next(iter(agents)) if len(agents) == 1 and "*" not in agents else ""

    def _jsonrpc(self, call: HttpCall) -> dict[str, Any]:
        """The JSON-RPC message of a POST to an MCP route; refused unless it is one whole, readable object."""
        if call.headers.get(PARTIAL_BODY_HEADER, "").lower() == "true":
            raise Refused(413, f"body: Envoy sent part of it (allow_partial_message); an MCP request is decided on "
                               f"its whole body: raise with_request_body.max_request_bytes to {self._max_body}")
        if len(call.body) > self._max_body:
            raise Refused(413, f"body: {len(call.body)} bytes, over the limit of {self._max_body} "
                               "(envoy.max_body_bytes)")
        if not call.body:
            raise Refused(400, "body: an MCP request arrived without its body; configure the ext_authz filter's "
                               "with_request_body so that tools/call can be decided")
        encoding = call.headers.get("content-encoding", "identity").lower()
        if encoding != "identity":
            raise Refused(400, f"body: content-encoding {encoding!r}; an MCP request is decided on a plain body")
        try:
            doc = json.loads(call.body, object_pairs_hook=_unique_keys, parse_constant=_refuse_constant)
        except (ValueError, RecursionError) as exc:
            raise Refused(400, f"body: not valid JSON ({exc})") from exc
        if not isinstance(doc, dict):
            raise Refused(400, "body: must be one JSON-RPC request object (a batch cannot be decided as one call)")
        _check_values(doc)
        # Arguments sit two levels down (params.arguments); to_decision_request names the field past the limit.
        _check_depth(doc, "body", 1, self._limits.max_depth + 2)
        return doc


def _tool_call(rpc: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    params = rpc.get("params")
    if not isinstance(params, dict):
        raise Refused(400, "params: a tools/call request needs params {name, arguments}")
    name, arguments = params.get("name"), params.get("arguments", {})
    if not isinstance(name, str) or not name:
        raise Refused(400, "params.name: required, the tool's name")
    if not isinstance(arguments, dict):
        raise Refused(400, "params.arguments: must be an object")
    return name, arguments


def _check_path(path: str) -> None:
    lowered = path.lower()
    if not path.startswith("/") or any(s in lowered for s in _UNNORMALISED) or lowered.endswith(("/.", "/..")):
        raise Refused(400, f"path: {path[:200]!r} is not normalised (dot segments, doubled or escaped slashes); "
                           "set the listener's normalize_path, merge_slashes and path_with_escaped_slashes_action")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object with a key given twice is refused: the upstream may read the first where json reads the last."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        twice = next(k for k, count in Counter(k for k, _ in pairs).items() if count > 1)
        raise ValueError(f"key {twice[:100]!r} appears twice in one object")
    return doc


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def to_check_response(decision: Decision) -> ext.CheckResponse:
    """ALLOW: OK with the decision id to the upstream and the client; the rest: 403 with the decision as JSON."""
    metadata = struct_pb2.Struct()
    metadata.update({"decision_id": decision.decision_id, "decision": decision.decision})
    ids = [(DECISION_ID_HEADER, decision.decision_id)]
    if decision.decision == "allow":
        upstream = list(ids)
        if decision.obligations:  # the upstream must apply them, as an Authorize caller must
            upstream.append((OBLIGATIONS_HEADER, json.dumps(dict(decision.obligations), sort_keys=True)))
        return ext.CheckResponse(
            status=status_pb2.Status(code=code_pb2.OK), dynamic_metadata=metadata,
            ok_response=ext.OkHttpResponse(headers=_headers(upstream), response_headers_to_add=_headers(ids)))
    body: dict[str, Any] = {"decision_id": decision.decision_id, "decision": decision.decision,
                            "reasons": [r.as_dict() for r in decision.reasons]}
    if decision.decision == "require_approval":
        body["approval_id"] = decision.approval_id
        ids.append((APPROVAL_ID_HEADER, decision.approval_id))
    return ext.CheckResponse(
        status=status_pb2.Status(code=code_pb2.PERMISSION_DENIED, message=decision.decision),
        dynamic_metadata=metadata,
        denied_response=ext.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=http_status_pb2.Forbidden),
            headers=_headers([("content-type", _JSON), *ids]), body=json.dumps(body)))


def refusal(status: int, message: str) -> ext.CheckResponse:
    """A request refused before any decision: the HTTP status and {error, error_description}."""
    error = {400: "invalid_request", 403: "invalid_request", 413: "request_too_large", 503: "unavailable"}
    code = {413: code_pb2.RESOURCE_EXHAUSTED, 503: code_pb2.UNAVAILABLE, 500: code_pb2.INTERNAL}
    return ext.CheckResponse(
        status=status_pb2.Status(code=code.get(status, code_pb2.INVALID_ARGUMENT), message=message),
        denied_response=ext.DeniedHttpResponse(
            status=http_status_pb2.HttpStatus(code=status), headers=_headers([("content-type", _JSON)]),
            body=json.dumps({"error": error.get(status, "internal_error"), "error_description": message})))


def _headers(pairs: list[tuple[str, str]]) -> list[base_pb2.HeaderValueOption]:
    overwrite = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD  # a client may not pre-set our headers
    return [base_pb2.HeaderValueOption(header=base_pb2.HeaderValue(key=k, value=v), append_action=overwrite)
            for k, v in pairs]
