"""Commands for policy authors: `tollgate test`."""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import TYPE_CHECKING

from tollgate_cli._common import EXIT_ERROR

if TYPE_CHECKING:
    from tollgate.authoring.policytest import RegoTestReport

ORDER = 30  # position in `tollgate --help`
COMMANDS = ("test",)  # the top-level command register() adds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    test = sub.add_parser("test", help="run the Rego tests (test_* rules) through the embedded OPA engine",
                          description="Evaluate every test_* rule in every package; todo_test_* rules are "
                                      "reported as skipped. Exit 0 only when every test passes (and the "
                                      "coverage threshold holds).")
    test.add_argument("paths", nargs="*", default=["rego"], help="policy directories (default: rego)")
    test.add_argument("--run", default="", type=_regex, metavar="REGEX",
                      help="only tests whose package.name matches this regular expression")
    test.add_argument("-v", "--verbose", action="store_true", help="print passing tests too")
    test.add_argument("--coverage", action="store_true", help="report line coverage per policy file and in total")
    test.add_argument("--threshold", type=float, metavar="PERCENT",
                      help="fail when total coverage is below PERCENT (implies --coverage)")
    test.add_argument("--format", choices=("text", "json"), default="text")
    test.add_argument("--fail-on-empty", action="store_true", help="fail when no test ran")
    test.set_defaults(func=_test)


def _regex(text: str) -> str:
    try:
        re.compile(text)
    except re.error as exc:
        raise argparse.ArgumentTypeError(f"not a regular expression: {exc}") from exc
    return text


def _test(args: argparse.Namespace) -> int:
    from tollgate.authoring.policytest import PolicyTestError, run_tests

    coverage = args.coverage or args.threshold is not None
    try:
        report = run_tests(args.paths, pattern=args.run, coverage=coverage)
    except PolicyTestError as exc:
        print(f"tollgate test: {exc}", file=sys.stderr)
        return EXIT_ERROR
    failures: list[str] = []
    ran = len(report.results) - report.count("SKIP")
    if args.fail_on_empty and ran == 0:
        failures.append("no tests ran (--fail-on-empty)")
    if args.threshold is not None and report.coverage_percent < args.threshold:
        failures.append(f"coverage {report.coverage_percent:.1f}% is below the threshold of {args.threshold:g}%")
    if args.format == "json":
        doc = report.as_dict()
        doc["failures"] = failures
        print(json.dumps(doc, indent=2))
    else:
        _print_text(report, verbose=args.verbose)
        for failure in failures:
            print(f"FAIL: {failure}")
    return 0 if report.ok and not failures else EXIT_ERROR


def _print_text(report: RegoTestReport, *, verbose: bool) -> None:
    for result in report.results:
        if result.outcome != "PASS" or verbose:
            line = f"{result.location}: {result.outcome} {result.package}.{result.name}"
            print(line + (f" ({result.detail})" if result.detail else ""))
    if report.coverage is not None:
        print("coverage:")
        for f in report.coverage:
            missing = _ranges(sorted(f.not_covered))
            print(f"  {f.percent:6.1f}%  {f.file}" + (f"  (not covered: {missing})" if missing else ""))
        print(f"  {report.coverage_percent:6.1f}%  total")
    print(report.summary())


def _ranges(lines: list[int]) -> str:
    """[3, 4, 5, 9] → "3-5, 9"."""
    out: list[str] = []
    for n in lines:
        if out and int(out[-1].split("-")[-1]) == n - 1:
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)
