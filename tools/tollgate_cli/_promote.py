"""Promotion through environments: `tollgate promote`, `tollgate rollback`, `tollgate channel status`.

`tollgate status ENV` shows the same as `tollgate channel status ENV`; without ENV, `tollgate status` is the
status of a running sidecar.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from tollgate_cli._common import EXIT_ERROR, identity

if TYPE_CHECKING:
    from tollgate.authoring.promotion import Environments, Outcome

ORDER = 45  # position in `tollgate --help`
COMMANDS = ("promote", "rollback", "channel")  # the top-level commands register() adds


def add_environment_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--environments", default="bundles/environments.yaml", metavar="FILE",
                        help="the environments file (default %(default)s)")
    parser.add_argument("--channel-root", metavar="DIR",
                        help="publish and read channels under DIR instead of the file's channel_root")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    promote = sub.add_parser(
        "promote", help="check an environment's gates on a bundle and publish it to the environment's channel",
        description="Check every gate of the target environment (tests, signed, replay, from) on a bundle file, "
                    "or on a revision published in the environment its `from` gate names; when all pass, "
                    "publish it to the channel and record who, when, from where, the digest and the gates in "
                    "its history. A failing gate changes nothing. Exit 0: published; 1: not published.")
    promote.add_argument("bundle", metavar="REVISION|FILE",
                         help="a built (and signed) bundle .tar.gz, or a revision of the previous environment")
    promote.add_argument("--to", required=True, metavar="ENV", help="the target environment")
    promote.add_argument("--as", dest="by", metavar="IDENTITY",
                         help="who promotes (default: git config user.email, else $USER)")
    promote.add_argument("--ack", action="append", default=[], metavar="TRANSITION|DECISION_ID",
                         help="acknowledge replay flips: a whole transition (deny→allow, or deny->allow) or one "
                              "decision ID; repeatable, comma-separated")
    promote.add_argument("--ack-file", action="append", default=[], metavar="FILE",
                         help="acknowledge the flips of the decision IDs listed in FILE (one per line, # comments)")
    promote.add_argument("--note", default="", help="a note recorded with the promotion (a ticket, a reason)")
    promote.add_argument("--tests", metavar="DIR|FILE",
                         help="where the tests gate takes the tests from: the policy directory the bundle was built "
                              "from, or the test bundle built beside it (build --tests-output); default: the "
                              "sources the bundle's manifest names, in this git work tree")
    add_environment_flags(promote)
    promote.set_defaults(func=_promote)

    rollback = sub.add_parser(
        "rollback", help="make an environment's previous good revision (or a named one) live again",
        description="Re-publish an earlier revision from the channel's revisions/ as the live bundle, and "
                    "record the rollback in the history. Without --to: the revision live before the current "
                    "one, skipping revisions already rolled back from.")
    rollback.add_argument("env", metavar="ENV")
    rollback.add_argument("--to", metavar="REVISION", help="a revision from the environment's history")
    rollback.add_argument("--as", dest="by", metavar="IDENTITY",
                          help="who rolls back (default: git config user.email, else $USER)")
    rollback.add_argument("--note", default="", help="a note recorded with the rollback (an incident, a reason)")
    rollback.add_argument("--key", metavar="KEY.pem",
                          help="signs the rollback's intent when the revision is older than the live one "
                               "(sidecars refuse an older signed bundle otherwise); needs --kid")
    rollback.add_argument("--kid", metavar="ID", help="the key ID the environment's sidecars trust --key by")
    add_environment_flags(rollback)
    rollback.set_defaults(func=_rollback)

    channel = sub.add_parser("channel", help="promotion channels: what is live in each environment",
                             description="Read environments' channels (see `tollgate promote`).")
    commands = channel.add_subparsers(metavar="COMMAND")
    status = commands.add_parser(
        "status", help="what is live in an environment and its history (every environment without ENV)",
        description="Show the live revision, its digest and who published it, and the history, newest first.")
    status.add_argument("env", nargs="?", metavar="ENV")
    status.add_argument("--json", action="store_true", help="print channel.json (all environments: a list)")
    add_environment_flags(status)
    status.set_defaults(func=channel_status)
    channel.set_defaults(func=lambda args: _usage(channel))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return EXIT_ERROR


def _environments(args: argparse.Namespace) -> Environments:
    from tollgate.authoring.promotion import load_environments

    return load_environments(args.environments, channel_root=args.channel_root)


def _promote(args: argparse.Namespace) -> int:
    from tollgate.authoring.promotion import PromotionError, parse_ack, promote

    try:
        envs = _environments(args)
        ack = parse_ack(args.ack, args.ack_file)
        outcome = promote(envs, args.to, args.bundle, by=identity(args.by), ack=ack, note=args.note, tests=args.tests)
    except PromotionError as exc:
        print(f"tollgate promote: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(f"promote {args.bundle} (revision {outcome.revision}, sha256 {outcome.sha256}) to {outcome.environment}:")
    _print_gates(outcome)
    if not outcome.published:
        failed = ", ".join(g.gate for g in outcome.failed)
        print(f"tollgate promote: not promoted: gate {failed} failed; {outcome.environment}'s channel is unchanged",
              file=sys.stderr)
        return EXIT_ERROR
    channel = envs.get(outcome.environment).channel
    print(f"promoted {outcome.revision} to {outcome.environment}: live at {channel / 'bundle.tar.gz'}")
    return 0


def _rollback(args: argparse.Namespace) -> int:
    from tollgate.authoring.promotion import PromotionError, Signer, rollback
    from tollgate.bundle import BundleError, load_private_key

    if bool(args.key) != bool(args.kid):
        print("tollgate rollback: --key and --kid go together", file=sys.stderr)
        return EXIT_ERROR
    try:
        signer = Signer(load_private_key(args.key), args.kid) if args.key else None
        envs = _environments(args)
        outcome = rollback(envs, args.env, to=args.to, by=identity(args.by), note=args.note, signer=signer)
    except (PromotionError, BundleError) as exc:
        print(f"tollgate rollback: {exc}", file=sys.stderr)
        return EXIT_ERROR
    _print_gates(outcome)
    if not outcome.published:
        print(f"tollgate rollback: not rolled back: {outcome.failed[0].detail}", file=sys.stderr)
        return EXIT_ERROR
    assert outcome.entry is not None
    replaced = outcome.entry.get("replaced") or {}
    print(f"rolled {outcome.environment} back from {replaced.get('revision')} to {outcome.revision} "
          f"(sha256 {outcome.sha256})")
    return 0


def _print_gates(outcome: Outcome) -> None:
    for g in outcome.gates:
        print(f"  {g.gate:<7} {'passed' if g.passed else 'FAILED'}  {g.detail}")


def channel_status(args: argparse.Namespace) -> int:
    from tollgate.authoring.promotion import PromotionError, read_channel

    try:
        envs = _environments(args)
        names = [args.env] if args.env else list(envs.environments)
        channels = [(envs.get(name), read_channel(envs.get(name))) for name in names]
    except PromotionError as exc:
        print(f"tollgate channel status: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        docs = [c.as_dict() for _, c in channels]
        print(json.dumps(docs[0] if args.env else docs, indent=2, ensure_ascii=False))
        return 0
    for i, (env, channel) in enumerate(channels):
        if i:
            print()
        gates = ", ".join(env.gates) or "none"
        source = f"from {env.promote_from}; " if env.promote_from else ""
        print(f"{env.name}  channel {env.channel}  ({source}gates: {gates})")
        live = channel.live
        if live is None:
            print("  live: nothing published yet")
        else:
            print(f"  live: {live.get('revision')}  sha256 {live.get('sha256')}  since {live.get('at')} "
                  f"({live.get('action')} by {live.get('by')})")
        if args.env and channel.history:
            print("  history, newest first:")
            for entry in channel.history[::-1]:
                print(f"    {_history_line(entry)}")
        elif channel.history:
            print(f"  {len(channel.history)} change(s) in the history (`tollgate channel status {env.name}`)")
    return 0


def _history_line(entry: Any) -> str:
    replaced = (entry.get("replaced") or {}).get("revision")
    words = [str(entry.get("at")), f"{entry.get('action', '?'):<8}", str(entry.get("revision")),
             f"sha256 {str(entry.get('sha256'))[:16]}"]
    words.append(f"from {entry['from']}" if entry.get("from") else f"source {entry.get('source')}")
    words.append(f"by {entry.get('by')}")
    if replaced:
        words.append(f"replacing {replaced}")
    if entry.get("gates"):
        words.append(f"gates {','.join(entry['gates'])}")
    acked = (entry.get("acknowledged") or {}).get("decision_ids") or []
    if acked:
        words.append(f"acknowledged {len(acked)} flip(s)")
    if entry.get("note"):
        words.append(f"— {entry['note']}")
    return "  ".join(words)
