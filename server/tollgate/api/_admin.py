"""AdminService: what the sidecar is serving and how its bundle source is doing (kill switches come later)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tollgate.activation import BundleStatus, SourceState
from tollgate.v1 import admin_pb2 as pb

SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"].full_name

_STATES = {
    SourceState.NOT_READY: pb.SOURCE_STATE_NOT_READY,
    SourceState.OK: pb.SOURCE_STATE_OK,
    SourceState.ERROR: pb.SOURCE_STATE_ERROR,
}


class AdminServicer:
    def __init__(self, bundle_status: Callable[[], BundleStatus]) -> None:
        self._bundle_status = bundle_status

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "GetStatus": grpc.unary_unary_rpc_method_handler(
                self.GetStatus, request_deserializer=pb.GetStatusRequest.FromString,
                response_serializer=pb.Status.SerializeToString),
        })

    async def GetStatus(  # noqa: N802 - gRPC method name
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.Status:
        return to_status_message(self._bundle_status())


def to_status_message(status: BundleStatus) -> pb.Status:
    bundle = pb.BundleStatus(source=status.source, state=_STATES[status.state], etag=status.etag)
    if status.last_poll is not None:
        bundle.last_poll.CopyFrom(_timestamp(status.last_poll))
    if status.active is not None:
        a = status.active
        bundle.active_revision = a.revision
        bundle.last_activation.CopyFrom(pb.BundleActivation(
            time=_timestamp(a.time), revision=a.revision, digest=a.digest, signed_by=a.signed_by,
            from_persisted=a.from_persisted))
    if status.last_error is not None:
        e = status.last_error
        bundle.last_error.CopyFrom(pb.BundleError(time=_timestamp(e.time), message=e.message, reason=e.reason))
    return pb.Status(serving=status.active is not None, bundle=bundle)


def _timestamp(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts
