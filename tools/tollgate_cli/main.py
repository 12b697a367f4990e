"""`tollgate`: run the sidecar, ask it for decisions, read the decision log, test policy."""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from types import ModuleType

import tollgate_cli
from tollgate_cli._common import EXIT_ERROR


def command_modules() -> list[ModuleType]:
    """Every module of this package that defines register(); ordered by its ORDER (the --help order)."""
    modules = [importlib.import_module(f"tollgate_cli.{m.name}") for m in pkgutil.iter_modules(tollgate_cli.__path__)]
    return sorted((m for m in modules if hasattr(m, "register")), key=lambda m: getattr(m, "ORDER", 100))


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="tollgate", description=__doc__)
    sub = parser.add_subparsers(metavar="COMMAND")
    modules = command_modules()
    # Only the command asked for is registered when it is known: registering `serve` alone imports the whole
    # sidecar configuration, and a hook runs before every tool call.
    wanted = [m for m in modules if argv and argv[0] in m.COMMANDS]
    for module in wanted or modules:
        module.register(sub)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
