"""`tollgate status`: what a running sidecar serves, and how its bundle source is doing (AdminService)."""

from __future__ import annotations

import argparse
import json
from typing import Any

from tollgate_cli._common import EXIT_ERROR, add_admin_flags, admin_metadata, call_server, message_dict

ORDER = 25  # position in `tollgate --help`
COMMANDS = ("status",)  # the top-level command register() adds
#: Exit code when the sidecar answers but has no bundle active (it denies everything: no_bundle).
EXIT_NOT_SERVING = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    from tollgate_cli import _promote

    status = sub.add_parser(
        "status", help="a running sidecar's active bundle, last activation and last error; or, given ENV, what "
                       "is live in that environment's promotion channel and its history")
    status.add_argument("env", nargs="?", metavar="ENV",
                        help="an environment of bundles/environments.yaml (same as `tollgate channel status ENV`)")
    _promote.add_environment_flags(status)
    add_admin_flags(status)
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    status.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    if args.env:
        from tollgate_cli import _promote

        return _promote.channel_status(args)
    from tollgate.v1 import admin_pb2 as pb
    from tollgate.v1 import admin_pb2_grpc as pb_grpc

    status = call_server(args, "status", pb_grpc.AdminServiceStub, lambda stub: stub.GetStatus(
        pb.GetStatusRequest(), timeout=args.timeout, metadata=admin_metadata(args.token)))
    if status is None:
        return EXIT_ERROR
    if args.json:
        print(json.dumps(message_dict(status), indent=2))
    else:
        print(_text(status))
    return 0 if status.serving else EXIT_NOT_SERVING


def _text(status: Any) -> str:
    from tollgate.v1 import admin_pb2 as pb

    bundle = status.bundle
    state = pb.SourceState.Name(bundle.state).removeprefix("SOURCE_STATE_")
    rows = [
        ("serving", "yes" if status.serving else "no (every request is denied: no_bundle)"),
        ("revision", bundle.active_revision or "(none)"),
        ("source", f"{bundle.source}  [{state}]"),
    ]
    if bundle.HasField("last_activation"):
        a = bundle.last_activation
        extra = "".join([f"  signed by {a.signed_by}" if a.signed_by else "  unsigned",
                         "  (from the persisted copy)" if a.from_persisted else ""])
        rows.append(("activated", f"{_time(a.time)}  {a.revision}  digest {a.digest[:16]}{extra}"))
    if bundle.HasField("last_error"):
        e = bundle.last_error
        rows.append(("last error", f"{_time(e.time)}  {e.reason}: {e.message}"))
    if bundle.etag:
        rows.append(("etag", bundle.etag))
    if bundle.HasField("last_poll"):
        rows.append(("last poll", _time(bundle.last_poll)))
    for export in status.exports:
        export_state = pb.ExportState.Name(export.state).removeprefix("EXPORT_STATE_")
        rows.append((f"export {export.name}",
                     f"{export.url}  [{export_state}]  behind {export.lag_records} records, "
                     f"{export.lag_seconds:.1f}s; uploads {export.uploads_ok} ok, {export.uploads_failed} failed"))
        if export.last_error:
            rows.append(("  last error", export.last_error))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def _time(ts: Any) -> str:
    text: str = ts.ToJsonString()
    return text
