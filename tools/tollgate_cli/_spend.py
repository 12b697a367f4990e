"""Budget spend on a running sidecar: `tollgate spend` (AdminService.GetSpend)."""

from __future__ import annotations

import argparse
import json
import sys

from tollgate_cli._common import EXIT_ERROR, add_admin_flags, admin_metadata, call_server, message_dict

ORDER = 65  # position in `tollgate --help`
COMMANDS = ("spend",)  # the top-level command register() adds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    spend = sub.add_parser("spend", help="budget spend (committed and reserved) by scope")
    spend.add_argument("--session", default="", help="a session (its whole run)")
    spend.add_argument("--agent", default="", help="an agent id (today, UTC)")
    spend.add_argument("--team", default="", help="a team (today, UTC)")
    spend.add_argument("--workflow", default="", help="a workflow (today, UTC)")
    spend.add_argument("--json", action="store_true", help="print the scopes as JSON")
    add_admin_flags(spend)
    spend.set_defaults(func=_spend)


def _spend(args: argparse.Namespace) -> int:
    from tollgate.v1 import admin_pb2 as pb
    from tollgate.v1 import admin_pb2_grpc as pb_grpc

    if not (args.session or args.agent or args.team or args.workflow):
        print("tollgate spend: name a scope: --session S, --agent A, --team T or --workflow W", file=sys.stderr)
        return EXIT_ERROR
    request = pb.GetSpendRequest(session=args.session, agent=args.agent, team=args.team, workflow=args.workflow)
    found = call_server(args, "spend", pb_grpc.AdminServiceStub, lambda stub: stub.GetSpend(
        request, timeout=args.timeout, metadata=admin_metadata(args.token)))
    if found is None:
        return EXIT_ERROR
    if args.json:
        print(json.dumps(message_dict(found)["scopes"], indent=2))
        return 0
    for scope in found.scopes:
        print(f"{scope.scope}={scope.value}  ({scope.window})")
        if scope.invalid:
            print(f"  invalid: {scope.invalid}")
        if not scope.units:
            print("  nothing spent")
        for u in scope.units:
            print(f"  {u.unit:<6}  {u.total:g}  (committed {u.committed:g}, reserved {u.reserved:g})")
    return 0
