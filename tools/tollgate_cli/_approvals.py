"""Approvals on a running sidecar: `tollgate approvals list|approve|deny|watch` (ApprovalService)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from tollgate_cli._common import EXIT_DENY, EXIT_ERROR, add_person_flags, call_server, person_metadata

ORDER = 55  # position in `tollgate --help`
COMMANDS = ("approvals",)  # the top-level command register() adds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    approvals = sub.add_parser("approvals", help="list, approve, deny and watch requests waiting for approval")
    commands = approvals.add_subparsers(dest="approvals_command", required=True, metavar="COMMAND")

    listing = commands.add_parser("list", help="approvals, newest first")
    listing.add_argument("--approver", default="", help="only those this identity may decide")
    listing.add_argument("--agent", default="", help="only those of this agent_id")
    listing.add_argument("--session", default="", help="only those of this session_id")
    listing.add_argument("--status", default="", help="pending, approved, denied, expired or used")
    listing.add_argument("--json", action="store_true", help="print them as JSON")
    add_person_flags(listing)
    listing.set_defaults(func=_list)

    for verb, helptext in (("approve", "allow the request, once"), ("deny", "refuse the request")):
        decide = commands.add_parser(verb, help=helptext)
        decide.add_argument("id", metavar="ID", help="the approval id (AuthorizeResponse.approval_id)")
        decide.add_argument("--as", dest="by", default="",
                            help="optional: the name your credential names; the server takes the approver from "
                                 "the credential (--token-file: yours; the admin token: admin-token) and refuses "
                                 "any other name")
        decide.add_argument("--reason", required=True, help="why (recorded with the decision)")
        add_person_flags(decide)
        decide.set_defaults(func=_decide, approve=verb == "approve")

    show = commands.add_parser("show", help="the whole request an approval is for: principal, arguments, the "
                                            "policy's reasons, approvers, status, time left")
    show.add_argument("id", metavar="ID", help="the approval id")
    show.add_argument("--json", action="store_true", help="print it as JSON (the approval and the reasons)")
    add_person_flags(show)
    show.set_defaults(func=_show)

    watch = commands.add_parser("watch", help="print the approval's state and each change until it is decided or "
                                              "expires; exit 0 approved, 2 denied or expired")
    watch.add_argument("id", metavar="ID", help="the approval id")
    add_person_flags(watch)
    watch.set_defaults(func=_watch)


def _call(args: argparse.Namespace, rpc: Callable[[Any], Any]) -> Any:
    """Run rpc(stub) against --server's ApprovalService; None (after a message) when it fails."""
    from tollgate.v1 import approval_pb2_grpc as pb_grpc

    return call_server(args, f"approvals {args.approvals_command}", pb_grpc.ApprovalServiceStub, rpc)


def _line(a: Any) -> str:
    action = dict(a.action)
    what = f"{action.get('server')}/{action.get('name')}" if a.kind == "tool" else a.kind
    decided = f"  {a.status} by {a.decided_by}: {a.reason}" if a.decided_by else f"  {a.status}"
    line = (f"{a.id}  {a.principal['agent_id']}  {what}  expires {a.expires_at.ToJsonString()}  "
            f"approvers {','.join(a.approvers)}{decided}")
    if a.masked:
        # Approving approves the whole request, hidden parts included: the approver must know there are some.
        line += f"\n  masked: {', '.join(a.masked)} (hidden here; approving approves them as asked)"
    return line


def _summary(a: Any) -> str:
    """The line under an approval in a list: its session and a short summary of what it asks."""
    from tollgate.decisionlog._query import action_summary

    asked = action_summary({"kind": a.kind, a.kind: plain(_dict(a.action))}, arguments=True)
    return f"\n  session {a.principal['session_id'] or '(none)'}  {asked}"


def _dict(message: Any) -> dict[str, Any]:
    from google.protobuf import json_format

    found: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True)
    return found


def plain(value: Any) -> Any:
    """value with the whole numbers a protobuf Struct holds as floats (7.0) as the integers they were asked as."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _list(args: argparse.Namespace) -> int:
    from google.protobuf import json_format

    from tollgate.v1 import approval_pb2 as pb

    request = pb.ListApprovalsRequest(approver=args.approver, agent_id=args.agent, session_id=args.session,
                                      status=args.status)
    listed = _call(args, lambda stub: stub.ListApprovals(request, timeout=args.timeout,
                                                         metadata=person_metadata(args)))
    if listed is None:
        return EXIT_ERROR
    if args.json:
        print(json.dumps([json_format.MessageToDict(a, preserving_proto_field_name=True)
                          for a in listed.approvals], indent=2))
        return 0
    if not listed.approvals:
        print("no approvals")
    for approval in listed.approvals:
        print(_line(approval) + _summary(approval))
    return 0


def _show(args: argparse.Namespace) -> int:
    from tollgate.v1 import approval_pb2 as pb

    found = _call(args, lambda stub: stub.GetApproval(pb.GetApprovalRequest(id=args.id), timeout=args.timeout,
                                                      metadata=person_metadata(args)))
    if found is None:
        return EXIT_ERROR
    approval = plain(_dict(found))
    reasons = _reasons(args, found.opened_by)
    if args.json:
        print(json.dumps({**approval, "reasons": reasons}, indent=2))
        return 0
    print(shown(approval, reasons))
    return 0


def _reasons(args: argparse.Namespace, decision_id: str) -> list[dict[str, str]] | None:
    """The reasons of the decision that opened the approval (None when it cannot be read)."""
    from tollgate.v1 import authorization_pb2 as pb
    from tollgate.v1 import authorization_pb2_grpc as pb_grpc

    record = call_server(args, "approvals show", pb_grpc.AuthorizationServiceStub, lambda stub: stub.GetDecision(
        pb.GetDecisionRequest(decision_id=decision_id), timeout=args.timeout)) if decision_id else None
    return None if record is None else [{"code": r.code, "message": r.message} for r in record.reasons]


def shown(approval: dict[str, Any], reasons: list[dict[str, str]] | None) -> str:
    """An approval as `approvals show` prints it: every field a person decides on, arguments as indented JSON."""
    from datetime import UTC, datetime

    from tollgate.decisionlog._query import action_summary
    from tollgate.encoding import parse_time

    status, expires = approval.get("status", ""), approval.get("expires_at", "")
    left = (parse_time(expires) - datetime.now(UTC)).total_seconds() if expires else 0
    when = f"expires {expires}" + (f" ({_span(left)} left)" if status in ("pending", "approved") and left > 0 else "")
    lines = [f"approval {approval.get('id', '')}  {status}  {when}"]
    principal = approval.get("principal") or {}
    for name in ("agent_id", "instance_id", "user", "team", "workflow", "session_id"):
        if principal.get(name):
            lines.append(f"  {name:<12} {principal[name]}")
    for name, value in sorted((principal.get("labels") or {}).items()):
        lines.append(f"  {'label':<12} {name}={value}")
    kind, action = str(approval.get("kind", "")), dict(approval.get("action") or {})
    lines.append(f"  {'request':<12} {kind} {action_summary({'kind': kind, kind: action})}")
    arguments = action.pop("arguments", None)
    for name, value in sorted(action.items()):  # what the summary leaves out: resources, data classes, ...
        if value not in ("", [], {}, None) and not (kind == "tool" and name in ("server", "name")):
            lines.append(f"  {name:<12} {json.dumps(value, sort_keys=True, ensure_ascii=False)}")
    if arguments is not None:
        text = json.dumps(arguments, indent=2, sort_keys=True, ensure_ascii=False).replace("\n", "\n" + " " * 15)
        lines.append(f"  {'arguments':<12} {text}")
    for pointer in approval.get("masked") or ():
        lines.append(f"  {'masked':<12} {pointer} (hidden here; approving approves it as asked)")
    if reasons is None:
        lines.append(f"  {'reasons':<12} (decision {approval.get('opened_by', '')} not found)")
    for reason in reasons or ():
        lines.append(f"  {'reason':<12} {reason['code']}: {reason['message']}")
    lines.append(f"  {'approvers':<12} {', '.join(approval.get('approvers') or ())}")
    if int(approval.get("required", 1)) > 1:
        lines.append(f"  {'required':<12} {approval['required']} distinct approvers")
    for vote in approval.get("votes") or ():
        verb = "approved" if vote.get("approve") else "denied"
        lines.append(f"  {'vote':<12} {vote.get('voter', '')} {verb} at {vote.get('voted_at', '')}: "
                     f"{vote.get('reason', '')}")
    if approval.get("decided_by"):
        lines.append(f"  {'decided':<12} {status} by {approval['decided_by']} at {approval.get('decided_at', '')}: "
                     f"{approval.get('reason', '')}")
    lines.append(f"  {'opened by':<12} decision {approval.get('opened_by', '')}")
    if approval.get("used_by"):
        lines.append(f"  {'used by':<12} decision {approval['used_by']}")
    return "\n".join(lines)


def _span(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m" if hours else f"{minutes}m {secs:02d}s"


def _decide(args: argparse.Namespace) -> int:
    from tollgate.v1 import approval_pb2 as pb

    request = pb.DecideRequest(id=args.id, approve=args.approve, by=args.by, reason=args.reason)
    decided = _call(args, lambda stub: stub.Decide(request, timeout=args.timeout, metadata=person_metadata(args)))
    if decided is None:
        return EXIT_ERROR
    print(f"{decided.status} {decided.id}  by {decided.decided_by}: {decided.reason}")
    return 0


def _watch(args: argparse.Namespace) -> int:
    from tollgate.v1 import approval_pb2 as pb

    def follow(stub: Any) -> str:
        status = ""
        # No deadline: the stream ends when the approval is decided or expires.
        for approval in stub.WatchApproval(pb.GetApprovalRequest(id=args.id), metadata=person_metadata(args)):
            print(_line(approval), flush=True)
            status = approval.status
        return status

    final = _call(args, follow)
    if final is None:
        return EXIT_ERROR
    return 0 if final in ("approved", "used") else EXIT_DENY
