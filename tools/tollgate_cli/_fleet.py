"""The fleet registry: `tollgate fleet` (a sidecar's AdminService.ListSidecars, or the shared store itself)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from tollgate_cli._common import EXIT_ERROR, add_admin_flags, admin_metadata, call_server

if TYPE_CHECKING:
    from tollgate.state import SidecarInfo

ORDER = 62  # position in `tollgate --help`: beside the kill switches
COMMANDS = ("fleet",)  # the top-level command register() adds

#: The table's columns: heading, and the row key it shows.
COLUMNS = (("ID", "id"), ("HOST", "host"), ("VERSION", "version"), ("LISTEN", "listen"),
           ("REVISION", "bundle_revision"), ("HEALTH", "health"), ("EXPORT_LAG", "export_lag_seconds"),
           ("LAST_SEEN", "last_seen"), ("STALE", "stale"))


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    fleet = sub.add_parser(
        "fleet", help="the sidecars of the fleet: revision, health, export lag, last heartbeat (stale ones marked)",
        description="One line per sidecar in the fleet registry, sorted by id; a sidecar is stale once three of its "
                    "heartbeats are missing without a goodbye. Asks --server's AdminService, or with --state-store "
                    "reads the shared store itself (no sidecar needed).")
    fleet.add_argument("--state-store", metavar="URL", default="",
                       help="read the registry from this postgresql:// store instead of asking a sidecar")
    fleet.add_argument("--state-store-password-file", metavar="FILE", default="",
                       help="file holding the store's password (its first line)")
    fleet.add_argument("--json", action="store_true", help="print the sidecars as JSON")
    add_admin_flags(fleet)
    fleet.set_defaults(func=_fleet)


def _fleet(args: argparse.Namespace) -> int:
    now = datetime.now(UTC)  # stale is judged against the reader's clock here, as a sidecar judges it against its own
    rows = _from_store(args, now) if args.state_store else _from_sidecar(args)
    if rows is None:
        return EXIT_ERROR
    rows.sort(key=lambda r: str(r["id"]))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no sidecars are registered")
        return 0
    table = [[heading for heading, _ in COLUMNS], *([_cell(key, row[key]) for _, key in COLUMNS] for row in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(COLUMNS))]
    for line in table:
        print("  ".join(cell.ljust(widths[i]) for i, cell in enumerate(line)).rstrip())
    return 0


def _cell(key: str, value: Any) -> str:
    """A value as the table shows it: never empty and never with a space, so each line splits into its columns."""
    if key == "stale":
        return "yes" if value else "no"
    if key == "export_lag_seconds":
        return f"{float(value):.1f}s"
    if key == "last_seen" and value:
        return str(value)[:19] + "Z"  # to the second: the heartbeat's precision is its interval
    return str(value).replace(" ", "_") or "-"


def _from_sidecar(args: argparse.Namespace) -> list[dict[str, Any]] | None:
    from tollgate.v1 import admin_pb2 as pb
    from tollgate.v1 import admin_pb2_grpc as pb_grpc

    listed = call_server(args, "fleet", pb_grpc.AdminServiceStub, lambda stub: stub.ListSidecars(
        pb.ListSidecarsRequest(), timeout=args.timeout, metadata=admin_metadata(args.token)))
    if listed is None:
        return None
    return [_row(s.id, s.host, s.version, s.listen, s.bundle_revision, s.bundle_digest, s.health,
                 s.export_lag_seconds, _time(s, "started_at"), _time(s, "last_seen"), s.heartbeat_seconds, s.stale)
            for s in listed.sidecars]


def _time(message: Any, field: str) -> str:
    from tollgate.encoding import format_time

    return format_time(getattr(message, field).ToDatetime(tzinfo=UTC)) if message.HasField(field) else ""


def _from_store(args: argparse.Namespace, now: datetime) -> list[dict[str, Any]] | None:
    from tollgate.state import StateError, is_stale
    from tollgate.state.postgres import PgFleet, PgOptions, PgStore, is_postgres_url, redact

    if not is_postgres_url(args.state_store):
        print(f"tollgate fleet: --state-store: must be a postgresql:// URL, not {redact(args.state_store)!r}",
              file=sys.stderr)
        return None

    async def read() -> list[SidecarInfo]:
        store = PgStore(PgOptions(args.state_store, timeout=args.timeout, password_file=args.state_store_password_file,
                                  min_connections=1, max_connections=1, application_name="tollgate fleet"))
        try:
            await store.open()
            fleet = PgFleet(store)
            await fleet.migrate(upgrade=False)  # only checks that the schema is the one this tollgate reads
            return await fleet.sidecars()
        finally:
            await store.close()

    # The pool's own warnings would repeat, in libpq's words, the one line said below.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    try:
        found = asyncio.run(read())
    except StateError as exc:
        print(f"tollgate fleet: {exc}", file=sys.stderr)
        return None
    return [_row(s.id, s.host, s.version, s.listen, s.bundle_revision, s.bundle_digest, s.health, s.export_lag_seconds,
                 s.started_at, s.last_seen, s.heartbeat_seconds, is_stale(s, now=now)) for s in found]


def _row(*values: Any) -> dict[str, Any]:
    """One sidecar as --json prints it (the fields of AdminService's Sidecar message, times in RFC 3339)."""
    keys = ("id", "host", "version", "listen", "bundle_revision", "bundle_digest", "health", "export_lag_seconds",
            "started_at", "last_seen", "heartbeat_seconds", "stale")
    return dict(zip(keys, values, strict=True))
