"""`tollgate users token|tokens|revoke-token`: people's own API tokens, with which they decide approvals as
themselves (`tollgate approvals approve ID --token-file FILE`). The secret is printed once; the store keeps its
hash only."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from tollgate_cli._common import EXIT_ERROR

Run = Callable[[argparse.Namespace, Callable[[Any], Awaitable[int]]], int]


def add_token_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser],
                       add_store_flags: Callable[[argparse.ArgumentParser], None], run: Run,
                       operator: Callable[[], str]) -> None:
    """The token subcommands of `tollgate users` (run: how a users command opens the store and reports)."""
    issue = commands.add_parser("token", help="issue NAME a token of their own for the API (printed once)")
    issue.add_argument("name")
    issue.add_argument("--ttl", default=None, metavar="DURATION",
                       help="how long it is valid (45m, 12h, 30d, 2w; default: until revoked)")
    issue.add_argument("--note", default="", help="what it is for (shown in `users tokens`)")
    listing = commands.add_parser("tokens", help="issued tokens (never their secrets), newest first")
    listing.add_argument("name", nargs="?", default="", help="only this person's")
    revoke = commands.add_parser("revoke-token", help="revoke a token by its id (tok_...)")
    revoke.add_argument("id")
    for parser, func in ((issue, _issue), (listing, _list), (revoke, _revoke)):
        add_store_flags(parser)
        parser.set_defaults(func=lambda args, f=func: f(args, run, operator))


def _tokens(stores: Any) -> Any:
    from tollgate.state import StateStore
    from tollgate.state._tokens import LocalPersonTokens
    from tollgate.state.postgres._tokens import PgPersonTokens

    if stores.pg is not None:
        return PgPersonTokens(stores.pg)
    return LocalPersonTokens(StateStore(stores.sqlite_path))


async def revoke_all(stores: Any, person: str) -> int:
    """Revoke every live token of person (their account was removed); how many were."""
    tokens = _tokens(stores)
    revoked = 0
    for token in await tokens.list(person):
        if not token.revoked_at and await tokens.revoke(token.id):
            revoked += 1
    return revoked


def _issue(args: argparse.Namespace, run: Run, operator: Callable[[], str]) -> int:
    from tollgate.encoding import parse_duration

    try:
        ttl = parse_duration(args.ttl) if args.ttl else None
    except ValueError as exc:
        raise SystemExit(f"tollgate users token: --ttl: {exc}") from None

    async def work(stores: Any) -> int:
        issued = await _tokens(stores).issue(args.name, ttl=ttl, note=args.note)
        t = issued.token
        await stores.audit.record(operator(), "cli", "token.issue", f"{t.person} {t.id}",
                                  f"expires {t.expires_at or 'never'}; {t.note}".rstrip("; "))
        print(issued.secret)
        print(f"token {t.id} for {t.person}, expires {t.expires_at or 'never (revoke: tollgate users revoke-token ID)'}"
              "; shown once: keep it in a file only they can read (--token-file)", file=sys.stderr)
        return 0

    return run(args, work)


def _list(args: argparse.Namespace, run: Run, operator: Callable[[], str]) -> int:
    async def work(stores: Any) -> int:
        found = await _tokens(stores).list(args.name)
        for t in found:
            state = f"revoked {t.revoked_at}" if t.revoked_at else f"expires {t.expires_at or 'never'}"
            print(f"{t.id}\t{t.person}\tsince {t.created_at}\t{state}{chr(9) + t.note if t.note else ''}")
        if not found:
            print("no tokens (issue one: tollgate users token NAME)", file=sys.stderr)
        return 0

    return run(args, work)


def _revoke(args: argparse.Namespace, run: Run, operator: Callable[[], str]) -> int:
    async def work(stores: Any) -> int:
        if not await _tokens(stores).revoke(args.id):
            print(f"tollgate users revoke-token: no unrevoked token {args.id!r}", file=sys.stderr)
            return EXIT_ERROR
        await stores.audit.record(operator(), "cli", "token.revoke", args.id)
        print(f"token {args.id} revoked")
        return 0

    return run(args, work)
