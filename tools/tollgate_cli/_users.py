"""`tollgate users`: the console's local accounts in the state store (passwords read from stdin, kept as scrypt
hashes)."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from tollgate_cli._common import EXIT_ERROR
from tollgate_cli._tokens import add_token_commands, revoke_all

ORDER = 13  # position in `tollgate --help`: after console
COMMANDS = ("users",)  # the top-level command register() adds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from tollgate_cli._console import add_store_flags

    users = sub.add_parser("users", help="the console's local accounts (add, list, remove, passwd) and people's "
                                         "API tokens",
                           description="Local accounts people sign in to `tollgate console` with, kept in the "
                                       "state store the console and the sidecars use. A password is read from "
                                       "stdin (a terminal asks twice), never from the command line.")
    commands = users.add_subparsers(metavar="SUBCOMMAND")

    def usage(_args: argparse.Namespace) -> int:
        users.print_help()
        return EXIT_ERROR

    users.set_defaults(func=usage)
    add = commands.add_parser("add", help="add an account (password from stdin)")
    add.add_argument("name")
    add.add_argument("--group", action="append", default=[], metavar="GROUP",
                     help="a group the person is in (repeat); the console's roles map groups to roles")
    listing = commands.add_parser("list", help="every account and its groups")
    remove = commands.add_parser("remove", help="remove an account and end its sessions")
    remove.add_argument("name")
    passwd = commands.add_parser("passwd", help="set an account's password (from stdin) and end its sessions")
    passwd.add_argument("name")
    for parser, func in ((add, _add), (listing, _list), (remove, _remove), (passwd, _passwd)):
        add_store_flags(parser)
        parser.set_defaults(func=func)
    add_token_commands(commands, add_store_flags, _run, _operator)  # token, tokens, revoke-token


def read_password(*, confirm: bool = True) -> str:
    """The new password: asked twice on a terminal, else stdin's first line."""
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Again: ") != first:
            raise SystemExit("tollgate users: the passwords differ")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def new_hash() -> str:
    """The scrypt hash of the password read from stdin (SystemExit with the reason when it cannot be one)."""
    from tollgate.identity._people import hash_password

    try:
        return hash_password(read_password())
    except ValueError as exc:
        raise SystemExit(f"tollgate users: {exc}") from None


def _run(args: argparse.Namespace, work: Callable[[Any], Awaitable[int]]) -> int:
    from tollgate.state import StateError, UserError, open_store
    from tollgate_cli._console import load

    config = load(args, "users")
    if config is None:
        return EXIT_ERROR

    async def main() -> int:
        stores = await open_store(config.store)
        try:
            return await work(stores)
        finally:
            await stores.close()

    try:
        return asyncio.run(main())
    except (StateError, UserError, ValueError) as exc:
        print(f"tollgate users: {exc}", file=sys.stderr)
        return EXIT_ERROR


def _checked_name(name: str) -> str:
    from tollgate.identity._people import valid_person_name

    if not valid_person_name(name):
        raise SystemExit(f"tollgate users: {name[:140]!r} is not a name (a letter or digit, then up to 127 letters, "
                         "digits or . _ @ + -)")
    return name


def _add(args: argparse.Namespace) -> int:
    from tollgate.identity._people import valid_group_name

    name = _checked_name(args.name)
    bad = [g for g in args.group if not valid_group_name(g)]
    if bad:
        raise SystemExit(f"tollgate users: {bad[0][:140]!r} is not a group name")
    hashed = new_hash()

    async def work(stores: Any) -> int:
        await stores.users.add(name, groups=sorted(set(args.group)), password_hash=hashed)
        await stores.audit.record(_operator(), "cli", "user.add", name, f"groups: {', '.join(args.group) or 'none'}")
        print(f"user {name} added (groups: {', '.join(sorted(set(args.group))) or 'none'})")
        return 0

    return _run(args, work)


def _list(args: argparse.Namespace) -> int:
    async def work(stores: Any) -> int:
        accounts = await stores.users.list()
        for account in accounts:
            print(f"{account.name}\t{','.join(account.groups) or '-'}\tsince {account.created_at}")
        if not accounts:
            print("no accounts (add one: tollgate users add NAME --group admin)", file=sys.stderr)
        return 0

    return _run(args, work)


def _remove(args: argparse.Namespace) -> int:
    async def work(stores: Any) -> int:
        if not await stores.users.remove(args.name):
            print(f"tollgate users: no account {args.name!r}", file=sys.stderr)
            return EXIT_ERROR
        await stores.audit.record(_operator(), "cli", "user.remove", args.name)
        print(f"user {args.name} removed; their sessions ended")
        if revoked := await revoke_all(stores, args.name):  # and their API tokens with them
            await stores.audit.record(_operator(), "cli", "token.revoke", args.name, f"{revoked} (account removed)")
            print(f"{revoked} API token{'s' if revoked != 1 else ''} of {args.name} revoked")
        return 0

    return _run(args, work)


def _passwd(args: argparse.Namespace) -> int:
    hashed = new_hash()

    async def work(stores: Any) -> int:
        await stores.users.set_password(args.name, hashed)
        await stores.audit.record(_operator(), "cli", "user.passwd", args.name)
        print(f"password of {args.name} set; their sessions ended")
        return 0

    return _run(args, work)


def _operator() -> str:
    """Who ran the command, as the audit names them (the local user: the CLI has no sign-in)."""
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
