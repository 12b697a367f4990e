"""Commands for policy authors: `tollgate test`."""

from __future__ import annotations

import argparse
import sys

from tollgate_cli._common import EXIT_ERROR

ORDER = 30  # position in `tollgate --help`


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    test = sub.add_parser("test", help="run the Rego tests (test_* rules) through the embedded OPA engine")
    test.add_argument("paths", nargs="*", default=["rego"], help="policy directories (default: rego)")
    test.add_argument("--run", default="", help="only tests whose name matches this regular expression")
    test.add_argument("-v", "--verbose", action="store_true", help="print passing tests too")
    test.set_defaults(func=_test)


def _test(args: argparse.Namespace) -> int:
    from tollgate.policytest import PolicyTestError, run_tests

    try:
        report = run_tests(args.paths, pattern=args.run)
    except PolicyTestError as exc:
        print(f"tollgate test: {exc}", file=sys.stderr)
        return EXIT_ERROR
    for result in report.results:
        if result.outcome != "PASS" or args.verbose:
            line = f"{result.location}: {result.outcome} {result.package}.{result.name}"
            print(line + (f" ({result.detail})" if result.detail else ""))
    print(report.summary())
    return 0 if report.ok else EXIT_ERROR
