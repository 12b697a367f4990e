"""`tollgate state`: create, upgrade and inspect the schema of a fleet's shared PostgreSQL state store."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING

from tollgate_cli._common import EXIT_ERROR

if TYPE_CHECKING:
    from tollgate.state.postgres import PgStore

ORDER = 75  # position in `tollgate --help`: after the admin commands
COMMANDS = ("state",)  # the top-level command register() adds

#: `state status`: some component is missing, older or newer than this tollgate knows (1 is any error).
EXIT_NOT_CURRENT = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    state = sub.add_parser(
        "state", help="create, upgrade and inspect a shared PostgreSQL state store's schema",
        description="The schema of the PostgreSQL store a fleet shares (state_store): budgets, approvals, kill "
                    "switches, the fleet registry and the shipped decision log, each versioned on its own.")
    commands = state.add_subparsers(metavar="SUBCOMMAND")

    def usage(_args: argparse.Namespace) -> int:
        state.print_help()
        return EXIT_ERROR

    state.set_defaults(func=usage)
    migrate = commands.add_parser(
        "migrate", help="create or upgrade every component's schema (safe to run again, and from several places)",
        description="Bring every component to the version this tollgate knows; prints what it did per component. "
                    "Migrations run under one advisory lock, so two at once never both apply a step. A component "
                    "newer than this tollgate knows is refused (run the newer tollgate).")
    _store_flags(migrate)
    migrate.set_defaults(func=_migrate)
    status = commands.add_parser(
        "status", help="each component's schema version in the store vs. what this tollgate knows",
        description=f"Read-only. Exit 0 when every component is at this tollgate's version, {EXIT_NOT_CURRENT} "
                    f"when one is missing, older or newer, {EXIT_ERROR} when the store cannot be read.")
    _store_flags(status)
    status.set_defaults(func=_status)


def _store_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--state-store", required=True, metavar="URL",
                        help="postgresql://USER@HOST:PORT/DB (libpq parameters such as ?sslmode=verify-full pass "
                             "through; PGPASSFILE works)")
    parser.add_argument("--password-file", "--state-store-password-file", dest="password_file", default="",
                        metavar="FILE", help="file holding the password (its first line)")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds to wait for the store, and for each step (default %(default)s)")


def _store(args: argparse.Namespace, command: str) -> PgStore | None:
    from tollgate.state import StateError
    from tollgate.state.postgres import PgOptions, PgStore, is_postgres_url, redact

    if not is_postgres_url(args.state_store):
        print(f"tollgate state {command}: --state-store: must be a postgresql:// URL, not "
              f"{redact(args.state_store)!r}", file=sys.stderr)
        return None
    try:
        return PgStore(PgOptions(args.state_store, timeout=args.timeout, password_file=args.password_file,
                                 min_connections=1, max_connections=1, application_name=f"tollgate state {command}"))
    except StateError as exc:
        print(f"tollgate state {command}: {exc}", file=sys.stderr)
        return None


def _migrate(args: argparse.Namespace) -> int:
    from tollgate.sidecar.state import migrate
    from tollgate.state import StateError

    store = _store(args, "migrate")
    if store is None:
        return EXIT_ERROR

    async def run() -> int:
        try:
            await store.open()
            done = await migrate(store, upgrade=True)
        except StateError as exc:
            print(f"tollgate state migrate: {exc}", file=sys.stderr)
            return EXIT_ERROR
        finally:
            await store.close()
        print(f"state store {store.name}")
        width = max(len(m.component) for m in done)
        for m in done:
            what = ("up to date" if m.before == m.after else "created" if m.before == 0
                    else f"upgraded from version {m.before}")
            print(f"  {m.component:<{width}}  version {m.after}  {what}")
        return 0

    return asyncio.run(run())


async def _versions(store: PgStore) -> dict[str, int]:
    """Each component's version, read only (PgStore.versions creates the table first: status may run as a role
    that can only read)."""
    async with store.connection("read the schema versions") as conn:
        row = await (await conn.execute("SELECT to_regclass('tollgate_schema')")).fetchone()
        if row is None or row[0] is None:  # never migrated
            return {}
        rows = await (await conn.execute("SELECT component, version FROM tollgate_schema")).fetchall()
    return {str(c): int(v) for c, v in rows}


def _status(args: argparse.Namespace) -> int:
    from tollgate.sidecar.state import schema
    from tollgate.state import StateError

    store = _store(args, "status")
    if store is None:
        return EXIT_ERROR

    async def run() -> int:
        try:
            await store.open()  # fails here, with libpq's reason, when the store cannot be reached
            versions = await _versions(store)
        except StateError as exc:
            print(f"tollgate state status: {exc}", file=sys.stderr)
            return EXIT_ERROR
        finally:
            await store.close()
        print(f"state store {store.name}")
        components = schema()
        width = max(len(c.name) for c in components)
        current = True
        for component in components:
            have, know = versions.get(component.name, 0), len(component.steps)
            verdict = ("up to date" if have == know else
                       "missing (run `tollgate state migrate`)" if have == 0 else
                       "older (run `tollgate state migrate`)" if have < know else
                       "newer than this tollgate knows (run the newer tollgate)")
            current = current and have == know
            print(f"  {component.name:<{width}}  store {have}, this tollgate {know}  {verdict}")
        return 0 if current else EXIT_NOT_CURRENT

    return asyncio.run(run())
