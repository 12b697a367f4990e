"""`tollgate health`: ask a sidecar's gRPC health service whether it serves (for container health checks)."""

from __future__ import annotations

import argparse
import sys

from tollgate_cli._common import DEFAULT_SERVER, EXIT_ERROR, add_tls_flags, open_channel

ORDER = 26  # position in `tollgate --help`
COMMANDS = ("health",)  # the top-level command register() adds
#: Exit code when the sidecar answers NOT_SERVING (no policy bundle active: it denies everything).
EXIT_NOT_SERVING = 2


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    health = sub.add_parser(
        "health", help="check a running sidecar with the gRPC health service: exit 0 SERVING, 2 NOT_SERVING, "
                       "1 unreachable (needs no admin token; for Docker HEALTHCHECK and Kubernetes probes)")
    health.add_argument("--server", default=DEFAULT_SERVER, help="HOST:PORT or unix:PATH (default %(default)s)")
    health.add_argument("--service", default="", help="service name to check (default: the whole server)")
    health.add_argument("--timeout", type=float, default=3.0, help="seconds to wait for the answer")
    add_tls_flags(health)
    health.set_defaults(func=_health)


def _health(args: argparse.Namespace) -> int:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with open_channel(args) as channel:
        try:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout)
        except grpc.RpcError as exc:
            print(f"tollgate health: {args.server}: {exc.code().name}: {exc.details()}", file=sys.stderr)
            return EXIT_ERROR
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)
    print(status)
    return 0 if answer.status == health_pb2.HealthCheckResponse.SERVING else EXIT_NOT_SERVING

