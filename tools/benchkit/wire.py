"""What goes over the wire: the benchmark's AuthorizeRequest, the no-op servicer, one checked gRPC call."""

from __future__ import annotations

import asyncio
import signal
import struct
import sys

import grpc

from benchkit.procs import HOST, BenchError, Target
from tollgate.sidecar.config import ServeConfig
from tollgate.sidecar.serve import grpc_server
from tollgate.v1 import authorization_pb2 as pb
from tollgate.v1 import authorization_pb2_grpc as pb_grpc

SERVICE = pb.DESCRIPTOR.services_by_name["AuthorizationService"].full_name
METHOD_PATH = f"/{SERVICE}/Authorize"
NOOP_RESPONSE = pb.AuthorizeResponse(decision=pb.DECISION_ALLOW, decision_id="noop")

# -- the request ---------------------------------------------------------------------------------


def bench_request() -> pb.AuthorizeRequest:
    """A realistic tool call that the default library allows: a code reviewer reading a pull request.

    No request_id: with one, every request after the first would be answered from the log
    (idempotency) instead of being evaluated.
    """
    request = pb.AuthorizeRequest(
        principal=pb.Principal(
            agent_id="code-reviewer", instance_id="bench-1", session_id="bench-session",
            workflow="pr-review", team="platform", user="alice@example.com",
        ),
        tool=pb.ToolCall(server="github", name="get_pull_request", resources=["repo:payments-api"]),
    )
    request.tool.arguments.update({"repo": "payments-api", "number": 42})
    request.context.update({"environment": "prod", "task": "review pull request"})
    return request


def grpc_frame(message: bytes) -> bytes:
    """One gRPC length-prefixed message: uncompressed flag, 4-byte big-endian length, the bytes."""
    return b"\x00" + struct.pack(">I", len(message)) + message


# -- the no-op server ----------------------------------------------------------------------------


async def _noop_authorize(request: pb.AuthorizeRequest, context: grpc.aio.ServicerContext) -> pb.AuthorizeResponse:
    """Answers every Authorize with the same ALLOW and does nothing else: the floor to compare with."""
    return NOOP_RESPONSE


async def serve_noop(port: int) -> int:
    server = grpc_server(ServeConfig())
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("tollgate.v1.AuthorizationService", {
        "Authorize": grpc.unary_unary_rpc_method_handler(
            _noop_authorize, request_deserializer=pb.AuthorizeRequest.FromString,
            response_serializer=pb.AuthorizeResponse.SerializeToString),
    }),))
    bound = server.add_insecure_port(f"{HOST}:{port}")
    if bound == 0:
        print(f"noop server: cannot listen on {HOST}:{port}", file=sys.stderr)
        return 1
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"noop: serving on {HOST}:{bound}", flush=True)
    await stop.wait()
    await server.stop(5)
    return 0

# -- the gRPC check ------------------------------------------------------------------------------


def check_authorize(target: Target, request: pb.AuthorizeRequest) -> pb.AuthorizeResponse:
    """Ask once with a real gRPC client; a target that cannot answer with status OK is not measured."""
    with grpc.insecure_channel(target.address) as channel:
        try:
            response: pb.AuthorizeResponse = pb_grpc.AuthorizationServiceStub(channel).Authorize(
                request, timeout=10, wait_for_ready=True)
        except grpc.RpcError as exc:
            raise BenchError(
                f"{target.name} at {target.address}: Authorize failed with {exc.code().name}: {exc.details()}"
            ) from exc
    return response

