"""`tollgate check`: every Rego parse and compile error, and every manifest or catalog problem, at once."""

from __future__ import annotations

import argparse
import sys

from tollgate_cli._common import EXIT_ERROR

ORDER = 35  # position in `tollgate --help`
COMMANDS = ("check",)  # the top-level command register() adds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    check = sub.add_parser(
        "check",
        help="check policy without running it: Rego syntax and compile errors, manifests and catalogs",
        description="Report every problem as FILE:LINE: MESSAGE, sorted; exit 1 if there is any.",
    )
    check.add_argument("paths", nargs="*", default=["rego"], help="policy directories (default: rego)")
    check.set_defaults(func=_check)


def _check(args: argparse.Namespace) -> int:
    from tollgate.authoring.check import PolicyCheckError, check_policy

    try:
        report = check_policy(args.paths)
    except PolicyCheckError as exc:
        print(f"tollgate check: {exc}", file=sys.stderr)
        return EXIT_ERROR
    for problem in report.problems:
        print(problem)
    print(report.summary())
    return 0 if report.ok else EXIT_ERROR
