"""Building gRPC method handlers for the hand-registered services, and reading their calls' metadata."""

from __future__ import annotations

from collections.abc import Callable

import grpc


def metadata_value(context: grpc.aio.ServicerContext, key: str) -> str:
    """The last value the call's metadata gives key ("" when none)."""
    found = ""
    for name, value in context.invocation_metadata() or ():
        if name == key:
            found = value if isinstance(value, str) else value.decode(errors="replace")
    return found


def unary(method: Callable[..., object], request: type, response: type) -> grpc.RpcMethodHandler:
    """A unary-unary handler that parses `request` messages and serialises `response` messages."""
    return grpc.unary_unary_rpc_method_handler(
        method, request_deserializer=request.FromString,  # type: ignore[attr-defined]
        response_serializer=response.SerializeToString)  # type: ignore[attr-defined]
