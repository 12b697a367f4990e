"""How a session ended, told to a running sidecar: `tollgate outcome` (AuthorizationService.ReportOutcome)."""

from __future__ import annotations

import argparse
import json
import os

from tollgate_cli._common import DEFAULT_SERVER, EXIT_ERROR, add_tls_flags, call_server, message_dict

ORDER = 22  # position in `tollgate --help`: beside authorize
COMMANDS = ("outcome",)  # the top-level command register() adds
#: Where the caller token is found when --caller-token is not given (as for `tollgate authorize`).
CALLER_TOKEN_ENV = "TOLLGATE_CALLER_TOKEN"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    out = sub.add_parser("outcome", help="report how a session (or one task of it) ended",
                         description="Report how a session, or one task of it (--task), ended: succeeded, failed "
                                     "or abandoned, with labels such as ci_passed or pr_merged. The session must "
                                     "have decisions, and the caller must be one that may speak for its principal. "
                                     "Reporting the same outcome again changes nothing; a different one needs "
                                     "--replace.")
    out.add_argument("session", metavar="SESSION", help="the session's principal.session_id")
    kind = out.add_mutually_exclusive_group(required=True)
    for name in ("succeeded", "failed", "abandoned"):
        kind.add_argument(f"--{name}", dest="outcome", action="store_const", const=name, help=f"it {name}")
    out.add_argument("--task", default="", help="one task of the session (default: the session as a whole)")
    out.add_argument("--label", action="append", default=[], metavar="LABEL",
                     help="a label such as ci_passed, pr_merged, reverted (repeatable; at most 16)")
    out.add_argument("--summary", default="", help="a line for people (at most 1,000 characters)")
    out.add_argument("--replace", action="store_true", help="replace an outcome already reported")
    out.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT or unix:PATH (default %(default)s)")
    out.add_argument("--caller-token", default=None,
                     help=f"a caller token (JWT) naming who reports (default: ${CALLER_TOKEN_ENV})")
    out.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    out.add_argument("--json", action="store_true", help="print the stored outcome as JSON")
    add_tls_flags(out)
    out.set_defaults(func=_outcome)


def _outcome(args: argparse.Namespace) -> int:
    from tollgate.client._outcome import outcome_request, to_receipt
    from tollgate.identity import TOKEN_METADATA_KEY
    from tollgate.v1 import authorization_pb2_grpc as pb_grpc

    request = outcome_request(args.session, args.outcome, task_id=args.task, labels=args.label,
                              summary=args.summary, replace=args.replace)
    token = args.caller_token or os.environ.get(CALLER_TOKEN_ENV, "")
    found = call_server(args, "outcome", pb_grpc.AuthorizationServiceStub, lambda stub: stub.ReportOutcome(
        request, timeout=args.timeout, metadata=[(TOKEN_METADATA_KEY, token)] if token else None))
    if found is None:
        return EXIT_ERROR
    if args.json:
        print(json.dumps(message_dict(found), indent=2))
        return 0
    receipt = to_receipt(found)
    what = "unchanged" if receipt.unchanged else ("replaced" if receipt.revision > 1 else "recorded")
    target = f"session {receipt.session_id}" + (f" task {receipt.task_id}" if receipt.task_id else "")
    labels = f" [{', '.join(receipt.labels)}]" if receipt.labels else ""
    print(f"{target}: {receipt.outcome}{labels} {what} (revision {receipt.revision}, {receipt.reported_at}"
          f"{', by ' + receipt.reported_by if receipt.reported_by else ''})")
    return 0
