"""`tollgate`: run the sidecar, ask it for decisions, read the decision log, test policy."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from tollgate_cli import _policy, _serve, _sidecar
from tollgate_cli._common import EXIT_ERROR

# Each command module adds its subcommands with register(); order is the order of `tollgate --help`.
COMMANDS = (_serve, _sidecar, _policy)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tollgate", description=__doc__)
    sub = parser.add_subparsers(metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_ERROR
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
