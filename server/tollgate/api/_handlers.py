"""Building gRPC method handlers for the hand-registered services."""

from __future__ import annotations

from collections.abc import Callable

import grpc


def unary(method: Callable[..., object], request: type, response: type) -> grpc.RpcMethodHandler:
    """A unary-unary handler that parses `request` messages and serialises `response` messages."""
    return grpc.unary_unary_rpc_method_handler(
        method, request_deserializer=request.FromString,  # type: ignore[attr-defined]
        response_serializer=response.SerializeToString)  # type: ignore[attr-defined]
