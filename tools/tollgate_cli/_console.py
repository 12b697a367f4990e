"""`tollgate console`: the web control plane, served by uvicorn on the sidecars' state store."""

from __future__ import annotations

import argparse
import asyncio
import logging
import socket
import sys
from typing import Any

from tollgate_cli._common import EXIT_ERROR

ORDER = 12  # position in `tollgate --help`: after serve
COMMANDS = ("console",)  # the top-level command register() adds


def add_store_flags(parser: argparse.ArgumentParser) -> None:
    """--config, --data-dir, --state-store and its options: the store the sidecars use (one config file for both)."""
    parser.add_argument("--config", help="YAML file: the sidecar's store keys, and the console's under `console:`")
    parser.add_argument("--data-dir", dest="data_dir", default=None,
                        help="data directory of the sidecar (SQLite state.db; default .tollgate)")
    parser.add_argument("--state-store", dest="state_store", default=None, metavar="URL",
                        help="postgresql:// URL of the fleet's shared state store (default: SQLite in the data dir)")
    parser.add_argument("--state-store-password-file", dest="state_store_password_file", default=None,
                        metavar="FILE", help="file holding the state store's password (its first line)")
    parser.add_argument("--state-store-timeout", dest="state_store_timeout", type=float, default=None,
                        help="seconds a state-store call may take (default 2)")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    console = sub.add_parser(
        "console", help="serve the web console (approvals, operations, outcomes) for people",
        description="The web control plane on the sidecars' state store: people sign in (local accounts: "
                    "`tollgate users add`), see what needs them and act, every action audited. docs/CONSOLE.md.")
    console.add_argument("--listen", default=None, help="HOST:PORT (default 127.0.0.1:8181; port 0: any free one)")
    add_store_flags(console)
    console.add_argument("--tls-cert", dest="tls_cert", default=None, help="PEM certificate: serve HTTPS")
    console.add_argument("--tls-key", dest="tls_key", default=None, help="PEM key of --tls-cert")
    console.add_argument("--session-ttl", dest="session_ttl", type=float, default=None,
                         help="seconds a sign-in lasts (default 28800)")
    console.add_argument("--base-url", dest="base_url", default=None,
                         help="the console's address as people reach it (links in notifications)")
    console.add_argument("--log-level", default="info", help="debug, info, warning, error (default %(default)s)")
    console.set_defaults(func=_console)


OVERRIDES = ("listen", "data_dir", "state_store", "state_store_password_file", "state_store_timeout", "tls_cert",
             "tls_key", "session_ttl", "base_url")


def load(args: argparse.Namespace, command: str) -> Any:
    """The console's config from --config and the flags; None after a message when it cannot be used."""
    from tollgate.console import ConsoleConfigError, load_console_config

    try:
        return load_console_config(args.config, {name: getattr(args, name, None) for name in OVERRIDES})
    except ConsoleConfigError as exc:
        print(f"tollgate {command}: {exc}", file=sys.stderr)
        return None


def _console(args: argparse.Namespace) -> int:
    config = load(args, "console")
    if config is None:
        return EXIT_ERROR
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return asyncio.run(_serve(config))


async def _serve(config: Any) -> int:
    import uvicorn

    from tollgate.clock import from_environment
    from tollgate.console import LocalDecisions, create_app
    from tollgate.decisionlog import PgDecisionReader
    from tollgate.state import StateError, open_store

    clock = from_environment()
    try:
        stores = await open_store(config.store, clock=clock)
    except StateError as exc:
        print(f"tollgate console: {exc}", file=sys.stderr)
        return EXIT_ERROR
    try:
        from pathlib import Path

        decisions = PgDecisionReader(stores.pg) if stores.pg is not None else LocalDecisions(Path(
            config.store.data_dir))
        app = create_app(config, state=stores, decisions=decisions, clock=clock)
        host, _, port = config.listen.rpartition(":")
        sock = _bind(host.strip("[]"), int(port))
        server = uvicorn.Server(uvicorn.Config(
            app, ssl_certfile=config.tls_cert or None, ssl_keyfile=config.tls_key or None, log_level="warning",
            access_log=False, proxy_headers=False, server_header=False, date_header=False, lifespan="off"))
        bound_host, bound_port = sock.getsockname()[:2]
        scheme = "https" if config.tls else "http"
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        print(f"tollgate console: serving on {scheme}://{shown}:{bound_port} (state: {stores.where})", flush=True)
        await server.serve(sockets=[sock])
    finally:
        await stores.close()
    return 0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"tollgate console: cannot listen on {host}:{port} ({exc.strerror or exc})") from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock
