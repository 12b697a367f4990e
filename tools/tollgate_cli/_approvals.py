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
        print(_line(approval))
    return 0


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
