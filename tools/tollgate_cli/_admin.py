"""Kill switches on a running sidecar: `tollgate kill`, `tollgate revive`, `tollgate kills` (AdminService)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from typing import Any

from tollgate_cli._common import EXIT_ERROR, add_admin_flags, admin_metadata, call_server, identity, message_dict

ORDER = 60  # position in `tollgate --help`
COMMANDS = ("kill", "revive", "kills")  # the top-level commands register() adds

_TARGET_HELP = ("what to stop: agent=ID, instance=ID, session=ID, workflow=NAME, team=NAME, user=NAME, "
                "tool=SERVER/NAME, mcp_server=NAME, model=MODEL, or all")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    kill = sub.add_parser("kill", help="stop every request a scope names, from the next decision (a kill switch)")
    kill.add_argument("target", metavar="SCOPE=VALUE", help=_TARGET_HELP)
    kill.add_argument("--reason", required=True, help="why (an incident, a ticket); shown in every denial")
    kill.add_argument("--as", dest="by", help="who kills it (default: git config user.email, else $USER)")
    add_admin_flags(kill)
    kill.set_defaults(func=_kill)

    revive = sub.add_parser("revive", help="lift a kill switch")
    revive.add_argument("target", metavar="SCOPE=VALUE", help="a kill switch, as `tollgate kills` lists it")
    revive.add_argument("--reason", default="", help="why it is safe again (recorded)")
    revive.add_argument("--as", dest="by", help="who revives it (default: git config user.email, else $USER)")
    add_admin_flags(revive)
    revive.set_defaults(func=_revive)

    kills = sub.add_parser("kills", help="the active kill switches")
    add_admin_flags(kills)
    kills.add_argument("--json", action="store_true", help="print them as JSON")
    kills.set_defaults(func=_kills)


def _target(text: str) -> tuple[str, str]:
    """SCOPE=VALUE → (scope, value); the sidecar validates both and names what is wrong."""
    scope, _, value = text.partition("=")
    return scope.strip(), value


def _call(args: argparse.Namespace, command: str, rpc: Callable[[Any], Any]) -> Any:
    """Run rpc(stub) against --server's AdminService; None (after a message) when it fails."""
    from tollgate.v1 import admin_pb2_grpc as pb_grpc

    return call_server(args, command, pb_grpc.AdminServiceStub, rpc)


def _kill(args: argparse.Namespace) -> int:
    from tollgate.v1 import admin_pb2 as pb

    scope, value = _target(args.target)
    request = pb.KillRequest(scope=scope, value=value, reason=args.reason, by=identity(args.by))
    switch = _call(args, "kill", lambda stub: stub.Kill(
        request, timeout=args.timeout, metadata=admin_metadata(args.token)))
    if switch is None:
        return EXIT_ERROR
    print(f"killed {switch.scope}={switch.value}  by {switch.killed_by}  at {switch.killed_at.ToJsonString()}: "
          f"{switch.reason}")
    return 0


def _revive(args: argparse.Namespace) -> int:
    from tollgate.v1 import admin_pb2 as pb

    scope, value = _target(args.target)
    request = pb.ReviveRequest(scope=scope, value=value, by=identity(args.by), reason=args.reason)
    switch = _call(args, "revive", lambda stub: stub.Revive(
        request, timeout=args.timeout, metadata=admin_metadata(args.token)))
    if switch is None:
        return EXIT_ERROR
    print(f"revived {switch.scope}={switch.value}  (killed {switch.killed_at.ToJsonString()} by {switch.killed_by}: "
          f"{switch.reason})")
    return 0


def _kills(args: argparse.Namespace) -> int:
    from tollgate.v1 import admin_pb2 as pb

    listed = _call(args, "kills", lambda stub: stub.ListKills(
        pb.ListKillsRequest(), timeout=args.timeout, metadata=admin_metadata(args.token)))
    if listed is None:
        return EXIT_ERROR
    if args.json:
        print(json.dumps(message_dict(listed)["kill_switches"], indent=2))
        return 0
    if not listed.kill_switches:
        print("no kill switches are active")
        return 0
    rows = [(f"{s.scope}={s.value}", s.killed_at.ToJsonString(), s.killed_by, s.reason) for s in listed.kill_switches]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    for row in rows:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row[:3])) + f"  {row[3]}")
    return 0
