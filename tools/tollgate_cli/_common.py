"""What the command modules share."""

from __future__ import annotations

import argparse
import getpass
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tollgate.clock import Clock

DEFAULT_SERVER = "127.0.0.1:50051"
# Exit codes of `tollgate authorize`, so scripts can branch on the verdict; 1 is any error.
EXIT_ALLOW, EXIT_ERROR, EXIT_DENY, EXIT_APPROVAL = 0, 1, 2, 3
#: Where the admin commands find the sidecar's admin token when --token is not given.
ADMIN_TOKEN_ENV = "TOLLGATE_ADMIN_TOKEN"


def identity(given: str | None) -> str:
    """Who runs a command, as recorded: --as, else `git config user.email`, else $USER."""
    if given:
        return given
    try:
        email = subprocess.run(["git", "config", "user.email"], capture_output=True, text=True, timeout=10)
        if email.returncode == 0 and email.stdout.strip():
            return email.stdout.strip()
    except OSError:
        pass
    return os.environ.get("USER") or getpass.getuser()


def add_admin_flags(parser: argparse.ArgumentParser) -> None:
    """--server and --token (and the TLS flags), for commands that call the sidecar's AdminService."""
    parser.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT or unix:PATH (default %(default)s)")
    parser.add_argument("--token", default=None,
                        help=f"the sidecar's admin token (default: ${ADMIN_TOKEN_ENV})")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the answer")
    add_tls_flags(parser)


def add_tls_flags(parser: argparse.ArgumentParser) -> None:
    """--tls-ca, --tls-cert and --tls-key, for a sidecar that serves TLS (--tls-cert) or mTLS (--tls-client-ca)."""
    parser.add_argument("--tls-ca", help="PEM CA the sidecar's certificate chains to (connect over TLS)")
    parser.add_argument("--tls-cert", help="PEM client certificate, for a sidecar that requires one (mTLS)")
    parser.add_argument("--tls-key", help="PEM key of --tls-cert")


def open_channel(args: argparse.Namespace) -> Any:
    """A gRPC channel to --server: over TLS when --tls-ca is given (with --tls-cert/--tls-key, mTLS)."""
    import grpc

    if not getattr(args, "tls_ca", None):
        return grpc.insecure_channel(args.server)
    if bool(args.tls_cert) != bool(args.tls_key):
        raise SystemExit("tollgate: --tls-cert and --tls-key go together (the client certificate and its key)")
    files = {"--tls-ca": args.tls_ca, "--tls-cert": args.tls_cert, "--tls-key": args.tls_key}
    pem: dict[str, bytes | None] = {}
    for flag, path in files.items():
        try:
            pem[flag] = Path(path).read_bytes() if path else None
        except OSError as exc:
            raise SystemExit(f"tollgate: {flag}: cannot read {path} ({exc.strerror or exc})") from exc
    credentials = grpc.ssl_channel_credentials(pem["--tls-ca"], pem["--tls-key"], pem["--tls-cert"])
    return grpc.secure_channel(args.server, credentials)


def add_person_flags(parser: argparse.ArgumentParser) -> None:
    """--server, --token and --token-file: approvals are decided with a person's own token."""
    add_admin_flags(parser)
    parser.add_argument("--token-file", default=None, metavar="FILE",
                        help="a file holding your own token (from `tollgate users token NAME`): you act as "
                             "yourself; instead of the shared admin token")


def person_metadata(args: argparse.Namespace) -> list[tuple[str, str]]:
    """The call metadata carrying --token-file's token (a person's own), else the admin token's."""
    if not getattr(args, "token_file", None):
        return admin_metadata(args.token)
    if args.token:
        raise SystemExit("tollgate: --token and --token-file are two credentials; give one (your own token: "
                         "--token-file)")
    try:
        token = Path(args.token_file).read_text().strip()
    except OSError as exc:
        raise SystemExit(f"tollgate: --token-file: cannot read {args.token_file} ({exc.strerror or exc})") from exc
    if not token or any(c.isspace() for c in token):
        raise SystemExit(f"tollgate: --token-file: {args.token_file} must hold one token (from `tollgate users "
                         "token NAME`)")
    return [("authorization", f"Bearer {token}")]


def admin_metadata(token: str | None) -> list[tuple[str, str]]:
    """The call metadata carrying the admin token (from --token, else $TOLLGATE_ADMIN_TOKEN); none without one."""
    token = token or os.environ.get(ADMIN_TOKEN_ENV, "")
    return [("authorization", f"Bearer {token}")] if token else []


def call_server(args: argparse.Namespace, command: str, stub: Callable[[Any], Any], rpc: Callable[[Any], Any]) -> Any:
    """rpc(stub(channel)) against --server; None, after a message naming the command, when the call fails."""
    import grpc

    with open_channel(args) as channel:
        try:
            return rpc(stub(channel))
        except grpc.RpcError as exc:
            print(f"tollgate {command}: {args.server}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return None


def message_dict(message: Any) -> dict[str, Any]:
    """A response as JSON-ready data, with proto field names and every field, set or not."""
    from google.protobuf import json_format

    doc: dict[str, Any] = json_format.MessageToDict(message, preserving_proto_field_name=True,
                                                   always_print_fields_with_no_presence=True)
    return doc


def time_argument(text: str, *, clock: Clock | None = None) -> datetime:
    """argparse type of --since/--until: RFC 3339, or a span ago (15m, 2h, 7d) on clock.

    The system clock by default: the sidecar's testing aids (TOLLGATE_TESTING_CLOCK_*) start its clock once, at
    its own start, so a command started later could not share that clock anyway. (Imported here, as the rest:
    a command that takes no time pays nothing for it.)
    """
    from tollgate.clock import SystemClock
    from tollgate.encoding import parse_moment

    try:
        return parse_moment(text, now=(clock or SystemClock()).now())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count_argument(text: str) -> int:
    """argparse type of a count: a whole number, zero or more."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 0:
        raise argparse.ArgumentTypeError("must not be negative")
    return n


def positive_argument(text: str) -> int:
    """argparse type of a limit: a whole number, one or more."""
    n = count_argument(text)
    if n == 0:
        raise argparse.ArgumentTypeError("must be at least 1")
    return n


def integral(value: Any) -> Any:
    """Integral numbers as integers, for a person to read: Struct numbers are doubles on the wire (8000.0 is
    8000, "pullNumber": 42.0 is 42), and a logged amount may be 2.0. Past 2**53 a double is no exact integer."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value
