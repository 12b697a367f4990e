"""`tollgate logs`: verify the decision log's hash chain, query it, show one run's timeline, export it to files.

query and timeline read a sidecar's data dir or, with --state-store, the whole fleet's log in the shared store.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tollgate_cli._common import integral, positive_argument, time_argument

if TYPE_CHECKING:
    from tollgate.decisionlog import (
        ApprovalState,
        DecisionRecord,
        DecisionStore,
        PgDecisionReader,
        Query,
        SpendLine,
        StoredRecord,
        Timeline,
    )
    from tollgate.decisionlog._toolruns import ToolRunView

ORDER = 55  # position in `tollgate --help`: after replay
COMMANDS = ("logs",)  # the top-level command register() adds

# Exit codes: 0 done (verify: the chain holds), 1 verify found a break, 2 the log could not be read or written.
EXIT_OK, EXIT_BROKEN, EXIT_UNREADABLE = 0, 1, 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    logs = sub.add_parser(
        "logs", help="verify, query, trace and export the decision log (read-only; safe on a live server)",
        description="Read a server's decision log (DATA_DIR/decisions.db) read-only, also while the server runs.")
    commands = logs.add_subparsers(metavar="SUBCOMMAND")

    def usage(_args: argparse.Namespace) -> int:
        logs.print_help()
        return EXIT_UNREADABLE

    logs.set_defaults(func=usage)

    verify = commands.add_parser(
        "verify", help="prove the hash chain and name the first broken record",
        description="Check every record (or a range) against its hash and its predecessor. Exit 0 with a summary "
                    "when the chain holds; 1 naming the first broken record (edited, deleted, reordered); 2 when "
                    "the log cannot be read.")
    _data_dir(verify)
    verify.add_argument("--from", dest="first", metavar="SEQ|DECISION_ID", help="start of the range (default: "
                        "the oldest record)")
    verify.add_argument("--to", dest="last", metavar="SEQ|DECISION_ID", help="end of the range, included "
                        "(default: the newest record)")
    verify.add_argument("--expect-head", metavar="HASH",
                        help="a head hash printed by an earlier verify (or the last hash of an export): it must "
                             "still be in the log, which shows when the newest records were deleted")
    verify.add_argument("--checkpoints", type=Path, metavar="FILE",
                        help="the sidecar's checkpoint file (decision_log_checkpoint_file): every head it holds must "
                             "still be in the log, so a chain re-hashed or cut since then fails")
    verify.add_argument("--key", type=Path, metavar="KEY_FILE",
                        help="the checkpoint key (the HMAC secret, or the Ed25519/P-256 public or private key): "
                             "checkpoints and retention anchors must be signed by it, the log's own checkpoints "
                             "are checked too, and a prefix deleted behind a forged anchor fails")
    verify.set_defaults(func=_verify)

    query = commands.add_parser("query", help="find decisions by ID, agent, session, instance, decision, tool, time",
                                description="List matching decisions, oldest first (the most recent --limit), from "
                                            "a sidecar's data dir or, with --state-store, from every sidecar of "
                                            "the fleet (the records they shipped).")
    _source(query)
    query.add_argument("--decision-id", default="", metavar="ID")
    query.add_argument("--agent", default="", metavar="AGENT_ID")
    query.add_argument("--session", default="", metavar="SESSION_ID")
    query.add_argument("--instance", default="", metavar="INSTANCE_ID")
    query.add_argument("--decision", default="", choices=("allow", "deny", "require_approval"))
    query.add_argument("--tool", default="", metavar="SERVER/NAME", help="a tool call (NAME alone: on any server)")
    _window(query)
    query.add_argument("--limit", type=positive_argument, default=100, metavar="N",
                       help="only the N most recent matches (default %(default)s)")
    query.add_argument("--format", choices=("table", "json", "jsonl"), default="table",
                       help="table (default); json (an array of records with seq and hash, and from the store "
                            "sidecar_id: whose seq it is); jsonl (one per line)")
    query.set_defaults(func=_query)

    timeline = commands.add_parser(
        "timeline", help="one agent run in order: decisions, approvals, spend",
        description="Every decision of a session in order, with the approvals it opened or used (who decided, "
                    "why) and its spend (reserved, committed), read from DATA_DIR/state.db when it is there; with "
                    "--state-store, the session across the fleet, approvals and spend from the same store.")
    timeline.add_argument("session", metavar="SESSION_ID")
    _source(timeline)
    timeline.add_argument("--format", choices=("text", "json"), default="text")
    timeline.set_defaults(func=_timeline)

    export = commands.add_parser(
        "export", help="write decisions to a file as OPA decision-log events or JSON Lines, once or continuously",
        description="Write one event per line. FILE ending in .gz is gzip; `-o -` is stdout. With --follow, keep "
                    "exporting records as they are committed, rotating FILE past --rotate-bytes; the cursor file "
                    "lets a restarted export resume without losing or repeating a record.")
    _data_dir(export)
    export.add_argument("--format", choices=("opa", "jsonl"), default="opa",
                        help="opa: OPA decision-log events (default); jsonl: Tollgate's records with seq and hash")
    export.add_argument("-o", "--output", required=True, metavar="FILE", help="the file to write, or - for stdout")
    _window(export)
    export.add_argument("--follow", action="store_true", help="keep exporting new records until interrupted")
    export.add_argument("--cursor", type=Path, metavar="PATH",
                        help="where the export's position is kept (default with --follow: FILE.cursor); with a "
                             "cursor, FILE is appended to and each run continues where the last stopped")
    export.add_argument("--rotate-bytes", type=positive_argument, metavar="N",
                        help="move FILE to FILE.1 once it passes N bytes (needs a cursor)")
    export.add_argument("--keep", type=positive_argument, default=5, metavar="K",
                        help="rotated files kept: FILE.1 .. FILE.K (default %(default)s)")
    export.add_argument("--interval", type=float, default=1.0, metavar="SECONDS",
                        help="with --follow, how often to look for new records (default %(default)s)")
    export.add_argument("--instance-id", default=None, metavar="ID",
                        help="labels.id of OPA events (default: each record's principal instance_id)")
    export.set_defaults(func=_export)


def _data_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", required=True, type=Path, help="the server's data directory (read-only)")


def _source(parser: argparse.ArgumentParser) -> None:
    """--data-dir (one sidecar's log) or --state-store (the fleet's), and how to reach the store."""
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--data-dir", type=Path, help="the server's data directory (read-only)")
    where.add_argument("--state-store", metavar="URL",
                       help="the fleet's shared store, postgresql://USER@HOST:PORT/DB: every sidecar's shipped "
                            "records (libpq parameters such as ?sslmode=verify-full pass through; PGPASSFILE works)")
    parser.add_argument("--state-store-password-file", default="", metavar="FILE",
                        help="with --state-store: a file holding the password (its first line)")
    parser.add_argument("--state-store-timeout", type=float, default=10.0, metavar="SECONDS",
                        help="with --state-store: seconds to wait for the store and for each read "
                             "(default %(default)s)")


def _window(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--since", type=time_argument, metavar="T",
                        help="records at or after T (RFC 3339, or 15m, 2h, 7d ago)")
    parser.add_argument("--until", type=time_argument, metavar="T",
                        help="records before T (RFC 3339, or 15m, 2h, 7d ago)")




def _fail(command: str, message: object) -> int:
    print(f"tollgate logs {command}: {message}", file=sys.stderr)
    return EXIT_UNREADABLE


@contextlib.contextmanager
def _log(data_dir: Path) -> Iterator[DecisionStore]:
    from tollgate.decisionlog import open_read_only

    with open_read_only(data_dir) as store:
        yield store


# -- verify ------------------------------------------------------------------------------------------------


def _checkpoint_problems(store: DecisionStore, args: argparse.Namespace) -> list[str]:
    """With --checkpoints and/or --key: what the log fails to hold (the log's own checkpoints count only with a key:
    without one, whoever rewrote the log could have rewritten them too)."""
    from tollgate.decisionlog._checkpoint import checkpoint_problems, load_key, read_checkpoints

    if args.checkpoints is None and args.key is None:
        return []
    key = load_key(args.key, setting="--key") if args.key is not None else None
    found = read_checkpoints(args.checkpoints) if args.checkpoints is not None else []
    if key is not None:
        found += store.checkpoints()
    return checkpoint_problems(store, found, key=key)


def _verify(args: argparse.Namespace) -> int:
    from tollgate.decisionlog import LogReadError, verify
    from tollgate.decisionlog._checkpoint import CheckpointError

    try:
        with _log(args.data_dir) as store:
            first = store.position(args.first) if args.first else None
            last = store.position(args.last) if args.last else None
            result = verify(store, first=first, last=last, expect_head=args.expect_head)
            problems = _checkpoint_problems(store, args)
    except (LogReadError, CheckpointError) as exc:
        return _fail("verify", exc)
    if result.broken is None and problems:
        for problem in problems:
            print(f"tollgate logs verify: {args.data_dir}/decisions.db: against the checkpoints: {problem}",
                  file=sys.stderr)
        return EXIT_BROKEN
    if result.broken is not None:
        print(f"tollgate logs verify: {args.data_dir}/decisions.db: {result.summary()}", file=sys.stderr)
        if result.records:
            print(f"tollgate logs verify: the {result.records} record(s) before it (seq {result.first_seq}.."
                  f"{result.last_seq}) hold", file=sys.stderr)
        return EXIT_BROKEN
    print(result.summary())
    return EXIT_OK


# -- query -------------------------------------------------------------------------------------------------


def _query(args: argparse.Namespace) -> int:
    from tollgate.decisionlog import LogReadError, Query, ShippedRecord, jsonl_record
    from tollgate.state import StateError

    try:
        query = Query(decision_id=args.decision_id, agent=args.agent, session=args.session, instance=args.instance,
                      decision=args.decision, tool=args.tool, since=args.since, until=args.until, limit=args.limit)
        rows: Sequence[StoredRecord]
        if args.state_store:
            rows = _from_store(args, lambda reader: reader.find(query))
        else:
            with _log(args.data_dir) as store:
                rows = store.find(query)
        found = [(row, row.record()) for row in rows]
    except (LogReadError, StateError, ValueError) as exc:
        return _fail("query", exc)
    records = [jsonl_record(record, seq=row.seq, hash=row.hash) for row, record in found]
    for (row, _), record in zip(found, records, strict=True):
        if isinstance(row, ShippedRecord):  # a seq is one sidecar's: say whose
            record["sidecar_id"] = row.sidecar_id
    if args.format == "json":  # for people: 2.0 prints as 2; jsonl keeps the numbers as the chain hashed them
        print(json.dumps(integral(records), indent=2, sort_keys=True, ensure_ascii=False))
    elif args.format == "jsonl":
        for record in records:
            print(json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False))
    else:
        sys.stdout.write(_table(records))
    return EXIT_OK


def _table(records: list[dict[str, Any]]) -> str:
    from tollgate.decisionlog import action_summary, first_reason

    header = ("TIME", "DECISION ID", "AGENT", "SESSION", "KIND", "TARGET", "DECISION", "REASON")
    lines: list[tuple[str, ...]] = [header]
    for record in records:
        input_doc = record.get("input") if isinstance(record.get("input"), dict) else {}
        assert isinstance(input_doc, dict)
        principal = input_doc.get("principal") if isinstance(input_doc.get("principal"), dict) else {}
        assert isinstance(principal, dict)
        lines.append((str(record.get("timestamp", "")), str(record.get("decision_id", "")),
                      str(principal.get("agent_id", "")), str(principal.get("session_id", "")) or "-",
                      str(input_doc.get("kind", "")), action_summary(input_doc), str(record.get("decision", "")),
                      first_reason(record) or "-"))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip() for line in lines]
    if not records:
        out.append("(no matching decisions)")
    return "\n".join(out) + "\n"


# -- timeline ----------------------------------------------------------------------------------------------


def _timeline(args: argparse.Namespace) -> int:
    from tollgate.decisionlog import LogReadError, render_timeline, timeline
    from tollgate.state import StateError

    try:
        if args.state_store:
            line = _from_store(args, lambda reader: _fleet_timeline(reader, args.session))
        else:
            with _log(args.data_dir) as store, _run_state(args.data_dir / STATE_FILE) as state:
                line = timeline(store, args.session, state=state)
    except (LogReadError, StateError) as exc:
        return _fail("timeline", exc)
    if args.format == "json":
        print(json.dumps(line.as_dict(), indent=2, sort_keys=True, ensure_ascii=False))
    else:
        sys.stdout.write(render_timeline(line))
    return EXIT_OK


#: The state store's file name inside a server's data directory.
STATE_FILE = "state.db"


class _StateReader:
    """The timeline's RunState from a server's state store, opened read-only beside the running server (the
    decision log does not import the state store; the command joins them)."""

    def __init__(self, path: Path) -> None:
        from tollgate.state import StateError, StateStore
        from tollgate.state._toolresults import ToolResults
        from tollgate.state.approvals import Approvals
        from tollgate.state.budgets import Budgets

        self.note = ""
        self._approvals: Approvals | None = None
        self._budgets: Budgets | None = None
        self._results: ToolResults | None = None
        self._store: StateStore | None = None
        if not path.is_file():
            self.note = f"no state store at {path}: approval decisions and spend are not shown"
            return
        try:
            self._store = StateStore(path, read_only=True)
            self._approvals = Approvals(self._store)
            self._budgets = Budgets(self._store)
            self._results = ToolResults(self._store)  # read-only: a state.db without the table has no results
        except StateError as exc:
            self.note = f"{exc}: approval decisions and spend are not shown"

    def approval(self, approval_id: str) -> ApprovalState | None:
        from tollgate.decisionlog import ApprovalState

        found = self._approvals.get(approval_id) if self._approvals is not None else None
        if found is None:
            return None
        return ApprovalState(found.id, found.status, found.approvers, found.decided_by, found.decided_at,
                             found.reason)

    def spend(self, reservation_id: str) -> tuple[SpendLine, ...]:
        from tollgate.decisionlog import SpendLine
        from tollgate.state.budgets import ReservationNotFound

        if self._budgets is None:
            return ()
        try:
            found = self._budgets.get(reservation_id)
        except ReservationNotFound:
            return ()
        return tuple(SpendLine(r.unit, r.amount, r.committed, r.status, r.over_reported) for r in found)

    def tool_run(self, decision_id: str) -> ToolRunView | None:
        return self._results.for_decisions([decision_id]).get(decision_id) if self._results is not None else None

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


@contextlib.contextmanager
def _run_state(path: Path) -> Iterator[_StateReader]:
    state = _StateReader(path)
    try:
        yield state
    finally:
        state.close()


# -- the fleet's log, in the shared store -------------------------------------------------------------------


_T = TypeVar("_T")


def _from_store(args: argparse.Namespace, read: Callable[[PgDecisionReader], Awaitable[_T]]) -> _T:
    """What read returns from a reader on --state-store (StateError when the store cannot be reached)."""
    from tollgate.decisionlog import open_reader
    from tollgate.state import StateError
    from tollgate.state.postgres import is_postgres_url, redact

    if not is_postgres_url(args.state_store):
        raise StateError(f"--state-store: must be a postgresql:// URL, not {redact(args.state_store)!r}")

    async def run() -> _T:
        async with open_reader(args.state_store, password_file=args.state_store_password_file,
                               timeout=args.state_store_timeout) as reader:
            return await read(reader)

    return asyncio.run(run())


async def _fleet_timeline(reader: PgDecisionReader, session: str) -> Timeline:
    from tollgate.decisionlog import LogReadError, session_timeline

    if not session:
        raise LogReadError("a session ID is required (input.principal.session_id of the run)")
    records = await reader.session(session)
    return session_timeline(session, records, state=await _FleetRunState.read(reader, records))


class _FleetRunState:
    """The timeline's RunState from the shared store: the run's approvals and reservations, read before the
    timeline is built (the store is async, the timeline asks one at a time)."""

    def __init__(self, approvals: dict[str, ApprovalState], spend: dict[str, tuple[SpendLine, ...]],
                 note: str, runs: Mapping[str, ToolRunView] | None = None) -> None:
        self._approvals, self._spend, self.note = approvals, spend, note
        self._runs = runs or {}

    @classmethod
    async def read(cls, reader: PgDecisionReader, records: Sequence[DecisionRecord]) -> _FleetRunState:
        from tollgate.decisionlog import ApprovalState, SpendLine
        from tollgate.state import StateError
        from tollgate.state.budgets import ReservationNotFound
        from tollgate.state.postgres import PgApprovals, PgBudgets

        approvals: dict[str, ApprovalState] = {}
        spend: dict[str, tuple[SpendLine, ...]] = {}
        ledger, pending = PgBudgets(reader.store), PgApprovals(reader.store)
        try:
            for approval_id in dict.fromkeys(r.approval_id for r in records if r.approval_id):
                found = await pending.get(approval_id)
                if found is not None:
                    approvals[approval_id] = ApprovalState(found.id, found.status, found.approvers,
                                                           found.decided_by, found.decided_at, found.reason)
            for reservation_id in dict.fromkeys(r.reservation_id for r in records if r.reservation_id):
                with contextlib.suppress(ReservationNotFound):
                    spend[reservation_id] = tuple(SpendLine(u.unit, u.amount, u.committed, u.status, u.over_reported)
                                                  for u in await ledger.get(reservation_id))
        except StateError as exc:  # a store without approvals or budgets (yet): the decisions still show
            return cls({}, {}, f"{exc}: approval decisions and spend are not shown")
        return cls(approvals, spend, "", await _fleet_runs(reader, records))

    def approval(self, approval_id: str) -> ApprovalState | None:
        return self._approvals.get(approval_id)

    def spend(self, reservation_id: str) -> tuple[SpendLine, ...]:
        return self._spend.get(reservation_id, ())

    def tool_run(self, decision_id: str) -> ToolRunView | None:
        return self._runs.get(decision_id)


async def _fleet_runs(reader: PgDecisionReader, records: Sequence[DecisionRecord]) -> Mapping[str, ToolRunView]:
    """The tool results reported for the records (none from a store without the table yet)."""
    from tollgate.state import StateError
    from tollgate.state.postgres._toolresults import PgToolResults

    try:
        return await PgToolResults(reader.store).for_decisions([r.decision_id for r in records if r.kind == "tool"])
    except StateError:
        return {}


# -- export ------------------------------------------------------------------------------------------------


def _export(args: argparse.Namespace) -> int:
    from tollgate.decisionlog import FileExportError, LogReadError, Query

    to_stdout = args.output == "-"
    cursor = args.cursor
    if cursor is None and args.follow and not to_stdout:
        cursor = Path(args.output + ".cursor")
    if args.rotate_bytes is not None and (cursor is None or to_stdout):
        return _fail("export", "--rotate-bytes needs a file and a cursor (--follow, or --cursor PATH)")
    if cursor is not None and to_stdout:
        return _fail("export", "--cursor needs a file (-o FILE): stdout cannot be cut back to the cursor")
    if args.follow and args.until is not None:
        return _fail("export", "--until cannot be combined with --follow (a follower exports every new record)")
    query = Query(since=args.since, until=args.until)
    try:
        with _log(args.data_dir) as store:
            if cursor is None and not args.follow:
                count = _export_once(store, args, query)
            else:
                count = _export_resumable(store, args, query, cursor)
    except (LogReadError, FileExportError, OSError) as exc:
        return _fail("export", exc)
    if not to_stdout:
        print(f"exported {count} record(s) to {args.output}", file=sys.stderr)
    return EXIT_OK


def _export_once(store: DecisionStore, args: argparse.Namespace, query: Query) -> int:
    from tollgate.decisionlog import export_once, open_output

    with open_output(args.output, sys.stdout.buffer) as out:
        return export_once(store, out, fmt=args.format, query=query, instance_id=args.instance_id)


def _export_resumable(store: DecisionStore, args: argparse.Namespace, query: Query, cursor: Path | None) -> int:
    from tollgate.decisionlog import FileExport, Rotation, StreamExport, follow

    export: FileExport | StreamExport
    if cursor is None:  # --follow -o -: from the start (or --since), for a pipe
        export = StreamExport(store, sys.stdout.buffer, fmt=args.format, query=query, instance_id=args.instance_id)
    else:
        rotation = Rotation(args.rotate_bytes, args.keep) if args.rotate_bytes is not None else None
        export = FileExport(store, Path(args.output), fmt=args.format, cursor_path=cursor, rotation=rotation,
                            query=query, instance_id=args.instance_id,
                            on_loss=lambda text: print(f"tollgate logs export: {text}", file=sys.stderr))
    if not args.follow:
        return export.step()
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    return follow(export.step, interval=args.interval, stop=stopping.wait)
