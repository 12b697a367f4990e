"""`tollgate replay`: what a candidate bundle would change, decided again over recorded decisions."""

from __future__ import annotations

import argparse
import json
import sys

from tollgate_cli._common import count_argument, positive_argument, time_argument

ORDER = 50  # position in `tollgate --help`
COMMANDS = ("replay",)  # the top-level command register() adds

# Exit codes: 0 the gate passed (whatever changed), 1 a --fail-on transition occurred, 2 replay could not run
# or some records could not be read.
EXIT_GATE_PASSED, EXIT_GATE_FAILED, EXIT_REPLAY_ERROR = 0, 1, 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = sub.add_parser(
        "replay", help="decide recorded decisions again with a candidate bundle and report what would change",
        description="Re-evaluate recorded decisions' inputs against a candidate bundle (in-process, with the "
                    "server's contract check and fail-closed mapping) and report which decisions would change. "
                    "Exit 0: the gate passed; 1: a --fail-on transition occurred; 2: an error (unreadable input, "
                    "a bundle that does not compile, records that cannot be read).")
    replay.add_argument("--bundle", required=True, metavar="CANDIDATE",
                        help="the candidate: a policy directory laid out like rego/, or an OPA bundle .tar.gz")
    source = replay.add_mutually_exclusive_group(required=True)
    source.add_argument("--data-dir", help="a server's data directory; its decisions.db is read read-only")
    source.add_argument("--decisions", metavar="FILE",
                        help="an export (`tollgate logs export`): Tollgate JSON Lines or OPA decision-log events, "
                             "one per line, gzipped or not")
    source.add_argument("--state-store", metavar="URL",
                        help="the fleet's decision log in the shared store (postgresql://)")
    replay.add_argument("--state-store-password-file", metavar="FILE", default="",
                        help="the store's password, when not in the URL")
    replay.add_argument("--state-store-timeout", type=float, default=2.0, metavar="SECONDS",
                        help="seconds a state-store call may take (default %(default)s)")
    replay.add_argument("--since", type=time_argument, metavar="T",
                        help="records at or after T (RFC 3339, or 24h, 7d ago)")
    replay.add_argument("--until", type=time_argument, metavar="T", help="records before T (RFC 3339, or 24h, 7d ago)")
    replay.add_argument("--limit", type=positive_argument, metavar="N",
                        help="only the N most recent records in the window")
    replay.add_argument("--format", choices=("text", "json", "markdown"), default="text",
                        help="text (default), json (machine-readable), markdown (a pull-request comment)")
    replay.add_argument("--fail-on", type=_transitions, default=frozenset(), metavar="TRANSITIONS",
                        help="exit 1 if any of these occurred: comma-separated FROM→TO (or FROM->TO), e.g. "
                             "allow→deny,deny→allow; or any")
    replay.add_argument("--examples", type=count_argument, default=5, metavar="N",
                        help="examples shown per transition (default %(default)s)")
    replay.add_argument("--entrypoint", default="tollgate/decision",
                        help="policy document evaluated, as for `tollgate serve` (default %(default)s)")
    replay.set_defaults(func=_replay)





def _transitions(text: str) -> frozenset[tuple[str, str]]:
    from tollgate.authoring.replay import parse_transitions

    try:
        return parse_transitions(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _replay(args: argparse.Namespace) -> int:
    from tollgate.authoring.replay import (
        BadRecord,
        Candidate,
        ReplayError,
        Window,
        gate_spelling,
        read_data_dir,
        read_jsonl,
        read_state_store,
        render_markdown,
        render_text,
        replay,
    )

    window = Window(since=args.since, until=args.until, limit=args.limit)

    def warn(bad: BadRecord) -> None:
        print(f"tollgate replay: {source}: {bad.where}: {bad.message}", file=sys.stderr)

    try:
        if args.decisions is not None:
            source = args.decisions
            records = read_jsonl(args.decisions, window)
        elif args.state_store is not None:
            from tollgate.state.postgres import redact

            source = f"the shared store {redact(args.state_store)}"
            records = read_state_store(args.state_store, window, password_file=args.state_store_password_file,
                                       timeout=args.state_store_timeout)
        else:
            source = f"{args.data_dir}/decisions.db"
            records = read_data_dir(args.data_dir, window)
        with Candidate(args.bundle, entrypoint=args.entrypoint) as candidate:
            report = replay(records, candidate, source=source, window=window, examples=args.examples,
                            on_bad_record=warn)
    except ReplayError as exc:
        print(f"tollgate replay: {exc}", file=sys.stderr)
        return EXIT_REPLAY_ERROR
    if args.format == "json":
        print(json.dumps(report.as_dict(args.fail_on), indent=2, sort_keys=True, ensure_ascii=False))
    elif args.format == "markdown":
        sys.stdout.write(render_markdown(report, args.fail_on))
    else:
        sys.stdout.write(render_text(report))
    if report.bad_records:
        print(f"tollgate replay: {report.bad_records} record(s) in {source} could not be read; the report leaves "
              "them out (fix or remove them, then run again)", file=sys.stderr)
        return EXIT_REPLAY_ERROR
    tripped = report.tripped(args.fail_on)
    if tripped:
        listed = ", ".join(f"{t.label} ({t.count})" for t in tripped)
        print(f"tollgate replay: failing (--fail-on {gate_spelling(args.fail_on)}): {listed}", file=sys.stderr)
        return EXIT_GATE_FAILED
    return EXIT_GATE_PASSED
