"""`tollgate eval`: decide one input offline against a bundle, as the sidecar would, and explain which rules made each
reason (like `opa eval`, without a sidecar)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tollgate_cli._common import EXIT_ALLOW, EXIT_APPROVAL, EXIT_DENY, EXIT_ERROR
from tollgate_cli._sidecar import add_request_flags, build_request

if TYPE_CHECKING:
    from tollgate.authoring.evaluate import EvalResult

ORDER = 38  # position in `tollgate --help`: after check, before build
COMMANDS = ("eval",)  # the top-level command register() adds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    ev = sub.add_parser(
        "eval", help="decide one input offline against a bundle, as the sidecar would (--explain: which rules)",
        description="Evaluate one input against a bundle directory or .tar.gz in-process, with the sidecar's "
                    "contract check and its own rules, and print the decision. The input is a JSON file (--input "
                    "FILE, or - for stdin: the policy's input document, or a decision record as `tollgate decision` "
                    "prints it) or the request flags of `tollgate authorize`, built into the input exactly as the "
                    "sidecar builds it, with no state (no kill switch, spend or approval). Exit 0 on ALLOW, 2 on "
                    "DENY, 3 on REQUIRE_APPROVAL, 1 on an error.")
    ev.add_argument("--bundle", default="rego", metavar="PATH",
                    help="a bundle directory or .tar.gz (default: %(default)s)")
    ev.add_argument("--input", metavar="FILE", help="the input as JSON (- reads stdin) instead of the request flags")
    ev.add_argument("--entrypoint", default="tollgate/decision", help="the policy document (default %(default)s)")
    ev.add_argument("--now", metavar="TIME", help="input.now for a request built from flags (default: the clock)")
    ev.add_argument("--explain", action="store_true",
                    help="name the rules that made each reason and those that passed it on (OPA's trace)")
    ev.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    add_request_flags(ev, required=False)
    ev.set_defaults(func=_eval)


def _eval(args: argparse.Namespace) -> int:
    from tollgate.authoring.evaluate import EvalError, Evaluator

    try:
        input_doc = _input(args)
        with Evaluator(args.bundle, entrypoint=args.entrypoint) as evaluator:
            result = evaluator.evaluate(input_doc, explain=args.explain)
    except EvalError as exc:
        print(f"tollgate eval: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.format == "json":
        print(json.dumps(result.as_dict(), indent=2, ensure_ascii=False))
    else:
        print(_text(result, bundle=args.bundle))
    return {"allow": EXIT_ALLOW, "deny": EXIT_DENY, "require_approval": EXIT_APPROVAL}.get(result.decision,
                                                                                            EXIT_ERROR)


def _input(args: argparse.Namespace) -> dict[str, Any]:
    from tollgate.authoring.evaluate import EvalError, input_from_json, input_from_request

    asked = args.agent is not None or any(getattr(args, a) is not None for a in ("tool", "model", "budget"))
    if args.input is not None:
        if asked:
            raise EvalError("--input and the request flags (--agent, --tool, ...) are two inputs: give one")
        if args.input == "-":
            return input_from_json(sys.stdin.read(), where="stdin")
        try:
            text = Path(args.input).read_text()
        except OSError as exc:
            raise EvalError(f"--input {args.input}: cannot be read ({exc.strerror or exc})") from exc
        return input_from_json(text, where=args.input)
    if args.agent is None or not asked or all(getattr(args, a) is None for a in ("tool", "model", "budget")):
        raise EvalError("no input: give --input FILE (or - for stdin), or --agent with one of --tool, --model, "
                        "--budget as for `tollgate authorize`")
    try:
        request = build_request(args)
    except SystemExit as exc:  # build_request's message for a flag that is not a JSON object
        raise EvalError(str(exc.code).removeprefix("tollgate: ")) from exc
    return input_from_request(request, now=args.now or _now())


def _now() -> str:
    from tollgate.clock import SystemClock
    from tollgate.encoding import format_time

    return format_time(SystemClock().now())


def _text(result: EvalResult, *, bundle: str) -> str:
    """Like `tollgate authorize` prints an answer (no decision id: nothing is logged), with the explanation."""
    prefix = f"{bundle.rstrip('/')}/" if Path(bundle).is_dir() else ""
    lines = [f"{result.decision.upper()}  bundle={result.bundle_revision}"]
    for i, reason in enumerate(result.reasons):
        lines.append(f"  reason {reason.code}: {reason.message}")
        if result.explained is None:
            continue
        explained = result.explained[i]
        if explained.by_server:
            lines.append(f"    made by the server: {explained.by_server}")
        for hit in explained.rules:
            role = "passed on by" if hit.passed_on else "made by"
            lines.append(f"    {role} {hit.package}.{hit.rule}  {prefix}{hit.location}")
        if not explained.rules and not explained.by_server:
            lines.append("    (no rule in the trace writes this reason's code: it is computed; see the policy)")
    if result.obligations:
        lines.append(f"  obligations {json.dumps(dict(result.obligations), sort_keys=True)}")
    if result.approval is not None:
        lines.append(f"  approval approvers={','.join(result.approval.approvers)} "
                     f"ttl_seconds={result.approval.ttl_seconds}")
    if result.error:
        lines.append(f"  error {result.error}")
    return "\n".join(lines)
