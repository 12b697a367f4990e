"""Commands that talk to a running sidecar: `tollgate authorize` and `tollgate decision`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import TYPE_CHECKING, Any

from tollgate_cli._common import (
    DEFAULT_SERVER,
    EXIT_ALLOW,
    EXIT_APPROVAL,
    EXIT_DENY,
    EXIT_ERROR,
    add_tls_flags,
    integral,
    open_channel,
)

if TYPE_CHECKING:
    from tollgate.v1 import authorization_pb2

ORDER = 20  # position in `tollgate --help`
COMMANDS = ("authorize", "decision")  # the top-level commands register() adds
#: Where `tollgate authorize` finds a caller token when --caller-token is not given.
CALLER_TOKEN_ENV = "TOLLGATE_CALLER_TOKEN"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    auth = sub.add_parser("authorize", help="ask a running sidecar for one decision")
    auth.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT or unix:PATH (default %(default)s)")
    add_request_flags(auth, required=True)
    auth.add_argument("--json", action="store_true", help="print the response as JSON")
    auth.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    auth.add_argument("--caller-token", default=None,
                      help=f"a caller token (JWT) naming who asks (default: ${CALLER_TOKEN_ENV}; see README "
                           "\"Caller identity\")")
    add_tls_flags(auth)
    auth.set_defaults(func=_authorize)

    dec = sub.add_parser("decision", help="show one logged decision record")
    dec.add_argument("decision_id")
    dec.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT or unix:PATH (default %(default)s)")
    add_tls_flags(dec)
    dec.set_defaults(func=_decision)


def add_request_flags(parser: argparse.ArgumentParser, *, required: bool) -> None:
    """The flags that spell one AuthorizeRequest (`tollgate authorize`, and `tollgate eval` offline, where the request
    may come from a JSON input instead: required=False); build_request reads them."""
    parser.add_argument("--agent", required=required, help="principal.agent_id")
    for name in ("session", "instance", "workflow", "team", "user"):
        parser.add_argument(f"--{name}", default="", help=f"principal.{name}")
    action = parser.add_mutually_exclusive_group(required=required)
    action.add_argument("--tool", help="SERVER/NAME (or NAME for a built-in tool)")
    action.add_argument("--model", help="PROVIDER/MODEL")
    action.add_argument("--budget", type=float, metavar="AMOUNT", help="amount to spend")
    parser.add_argument("--args", default="{}", help="tool arguments as a JSON object")
    parser.add_argument("--resource", action="append", default=[], help="tool resource (repeatable)")
    parser.add_argument("--input-tokens", type=int, default=0)
    parser.add_argument("--max-output-tokens", type=int, default=0)
    parser.add_argument("--data-class", action="append", default=[], help="model data class (repeatable)")
    parser.add_argument("--unit", default="usd", help="budget unit: usd or tokens")
    parser.add_argument("--category", default="", help="budget category: model, tool, compute")
    parser.add_argument("--context", default="{}", help="request context as a JSON object")
    parser.add_argument("--request-id", default="", help="idempotency key")
    parser.add_argument("--approval-id", default="", help="ask again with this approval (tollgate approvals)")


def build_request(args: argparse.Namespace) -> authorization_pb2.AuthorizeRequest:
    """The AuthorizeRequest the request flags spell (protobuf is imported here, not when the module loads)."""
    from tollgate.v1 import authorization_pb2 as pb

    request = pb.AuthorizeRequest(
        principal=pb.Principal(agent_id=args.agent, session_id=args.session, instance_id=args.instance,
                               workflow=args.workflow, team=args.team, user=args.user),
        request_id=args.request_id, approval_id=args.approval_id,
    )
    request.context.update(_json_object(args.context, "--context"))
    if args.tool is not None:
        server, _, name = args.tool.rpartition("/")
        request.tool.server, request.tool.name = server, name
        request.tool.arguments.update(_json_object(args.args, "--args"))
        request.tool.resources.extend(args.resource)
    elif args.model is not None:
        provider, _, model = args.model.rpartition("/")
        request.model.CopyFrom(pb.ModelCall(provider=provider, model=model, input_tokens=args.input_tokens,
                                            max_output_tokens=args.max_output_tokens,
                                            data_classes=args.data_class))
    else:
        request.budget.CopyFrom(pb.BudgetRequest(amount=args.budget, unit=args.unit, category=args.category))
    return request


def _json_object(text: str, flag: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise SystemExit(f"tollgate: {flag} is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise SystemExit(f"tollgate: {flag} must be a JSON object")
    return value


def _authorize(args: argparse.Namespace) -> int:
    import grpc
    from google.protobuf import json_format

    from tollgate.v1 import authorization_pb2 as pb
    from tollgate.v1 import authorization_pb2_grpc as pb_grpc

    request = build_request(args)
    with open_channel(args) as channel:
        try:
            from tollgate.identity import TOKEN_METADATA_KEY

            token = args.caller_token or os.environ.get(CALLER_TOKEN_ENV, "")
            response = pb_grpc.AuthorizationServiceStub(channel).Authorize(
                request, timeout=args.timeout, metadata=[(TOKEN_METADATA_KEY, token)] if token else None)
        except grpc.RpcError as exc:
            print(f"tollgate authorize: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return EXIT_ERROR
    if args.json:
        print(_to_json(response))
    else:
        verdict = pb.Decision.Name(response.decision).removeprefix("DECISION_")
        print(f"{verdict}  decision_id={response.decision_id}  bundle={response.bundle_revision}")
        for r in response.reasons:
            print(f"  reason {r.code}: {r.message}")
        if response.obligations.fields:
            obligations = integral(json_format.MessageToDict(response.obligations))
            print(f"  obligations {json.dumps(obligations, sort_keys=True)}")
        if response.approval_id:
            print(f"  approval_id {response.approval_id}")
        if response.reservation_id:
            print(f"  reservation_id {response.reservation_id}")
    return {pb.DECISION_ALLOW: EXIT_ALLOW, pb.DECISION_DENY: EXIT_DENY,
            pb.DECISION_REQUIRE_APPROVAL: EXIT_APPROVAL}.get(response.decision, EXIT_ERROR)


def _to_json(message: Any) -> str:
    from google.protobuf import json_format

    return json.dumps(integral(json_format.MessageToDict(message, preserving_proto_field_name=True)), indent=2)


def record_of(message: authorization_pb2.DecisionRecord) -> dict[str, Any]:
    """A GetDecision answer as the log keeps the record (DecisionRecord.as_dict: `input.principal`, `decision:
    "allow"`), with its hash; the log's seq is not in the message. The same shape as `logs query --format json` and
    the JSON Lines export print."""
    from datetime import UTC

    from google.protobuf import json_format

    from tollgate.contract import Reason
    from tollgate.decisionlog import DecisionRecord
    from tollgate.encoding import format_time
    from tollgate.v1 import authorization_pb2 as pb

    result = json_format.MessageToDict(message.result) if message.HasField("result") else None
    record = DecisionRecord(
        decision_id=message.decision_id, timestamp=format_time(message.timestamp.ToDatetime(tzinfo=UTC)),
        input=json_format.MessageToDict(message.input), result=result,
        decision=pb.Decision.Name(message.decision).removeprefix("DECISION_").lower(),
        reasons=tuple(Reason(r.code, r.message) for r in message.reasons),
        obligations=json_format.MessageToDict(message.obligations), bundle_revision=message.bundle_revision,
        policy_path=message.policy_path, request_id=message.request_id, request_digest=message.request_digest,
        approval_id=message.approval_id, approval_status=message.approval_status,
        reservation_id=message.reservation_id, previous_decision_id=message.previous_decision_id,
        requested_by=message.requested_by, error=message.error, erased=tuple(message.erased),
        masked=tuple(message.masked), latency_us=message.latency_us, dry_run=message.dry_run,
        prev_hash=message.prev_hash)
    return {**record.as_dict(), "hash": message.hash}


def _decision(args: argparse.Namespace) -> int:
    import grpc

    from tollgate.v1 import authorization_pb2 as pb
    from tollgate.v1 import authorization_pb2_grpc as pb_grpc

    with open_channel(args) as channel:
        try:
            record = pb_grpc.AuthorizationServiceStub(channel).GetDecision(
                pb.GetDecisionRequest(decision_id=args.decision_id), timeout=5)
        except grpc.RpcError as exc:
            print(f"tollgate decision: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return EXIT_ERROR
    print(json.dumps(integral(record_of(record)), indent=2, sort_keys=True, ensure_ascii=False))
    return 0
