"""AdminService: bundle status, kill switches, spend and the fleet, for holders of the admin token or a listed
admin identity (api/_access.py); every kill and revive is audited."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tollgate.api._access import AdminAccess, audited, authenticate
from tollgate.api._convert import InvalidRequest
from tollgate.api._errors import NotServed, unary_errors
from tollgate.api._handlers import unary
from tollgate.bundle import BundleStatus, SourceState
from tollgate.clock import Clock, SystemClock
from tollgate.decisionlog import ExportState, ExportStatus
from tollgate.encoding import parse_time
from tollgate.identity._tokens import ApiCaller
from tollgate.state import BudgetStore, FleetRegistry, KillSwitch, KillSwitchStore, SidecarInfo, is_stale
from tollgate.v1 import admin_pb2 as pb

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["AdminService"].full_name

_STATES = {
    SourceState.NOT_READY: pb.SOURCE_STATE_NOT_READY,
    SourceState.OK: pb.SOURCE_STATE_OK,
    SourceState.ERROR: pb.SOURCE_STATE_ERROR,
}
_EXPORT_STATES = {
    ExportState.NOT_READY: pb.EXPORT_STATE_NOT_READY,
    ExportState.OK: pb.EXPORT_STATE_OK,
    ExportState.WARN: pb.EXPORT_STATE_WARN,
    ExportState.ERROR: pb.EXPORT_STATE_ERROR,
}


class AdminServicer:
    def __init__(self, bundle_status: Callable[[], BundleStatus], kill_switches: KillSwitchStore, *,
                 access: AdminAccess, budgets: BudgetStore | None = None,
                 exports: Callable[[], Sequence[ExportStatus]] = tuple,
                 fleet: FleetRegistry | None = None, clock: Clock = SystemClock()) -> None:
        self._bundle_status = bundle_status
        self._fleet = fleet
        self._clock = clock  # what `stale` is judged against
        self._exports = exports
        self._budgets = budgets
        self._kills = kill_switches
        self._access = access

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "GetStatus": unary(self.GetStatus, pb.GetStatusRequest, pb.Status),
            "Kill": unary(self.Kill, pb.KillRequest, pb.KillSwitch),
            "Revive": unary(self.Revive, pb.ReviveRequest, pb.KillSwitch),
            "ListKills": unary(self.ListKills, pb.ListKillsRequest, pb.ListKillsResponse),
            "GetSpend": unary(self.GetSpend, pb.GetSpendRequest, pb.GetSpendResponse),
            "ListSidecars": unary(self.ListSidecars, pb.ListSidecarsRequest, pb.ListSidecarsResponse),
        })

    @unary_errors("admin GetStatus")
    async def GetStatus(  # noqa: N802 - gRPC method name
        self, request: pb.GetStatusRequest, context: grpc.aio.ServicerContext
    ) -> pb.Status:
        await self._authenticate(context, "GetStatus")
        return to_status_message(self._bundle_status(), self._exports())

    @unary_errors("admin Kill", unavailable="state store is unavailable; nothing was killed")
    async def Kill(  # noqa: N802 - gRPC method name
        self, request: pb.KillRequest, context: grpc.aio.ServicerContext
    ) -> pb.KillSwitch:
        caller = await self._authenticate(context, "Kill")
        # The commit never runs on the event loop; it returns once this process's snapshot has the switch.
        switch = await self._kills.kill(request.scope, request.value, reason=request.reason, by=request.by)
        log.warning("admin: kill %s=%s by %r (%s): %s", switch.scope, switch.value, switch.killed_by,
                    caller.logged(), switch.reason)
        # `by` is what the caller declared; the trail names the credential that did it.
        await audited(self._access, caller, "killswitch.engage", f"{switch.scope}={switch.value}",
                      f"by {request.by!r}: {switch.reason}")
        return to_kill_switch_message(switch)

    @unary_errors("admin Revive", unavailable="state store is unavailable; nothing was revived")
    async def Revive(  # noqa: N802 - gRPC method name
        self, request: pb.ReviveRequest, context: grpc.aio.ServicerContext
    ) -> pb.KillSwitch:
        caller = await self._authenticate(context, "Revive")
        switch = await self._kills.revive(request.scope, request.value, by=request.by, reason=request.reason)
        log.warning("admin: revive %s=%s by %r (%s)%s", switch.scope, switch.value, request.by, caller.logged(),
                    f": {request.reason}" if request.reason else "")
        await audited(self._access, caller, "killswitch.lift", f"{switch.scope}={switch.value}",
                      f"by {request.by!r}: {request.reason}")
        return to_kill_switch_message(switch)

    @unary_errors("admin ListKills")
    async def ListKills(  # noqa: N802 - gRPC method name
        self, request: pb.ListKillsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListKillsResponse:
        await self._authenticate(context, "ListKills")
        return pb.ListKillsResponse(kill_switches=[to_kill_switch_message(s) for s in await self._kills.list()])

    @unary_errors("admin GetSpend")
    async def GetSpend(  # noqa: N802 - gRPC method name
        self, request: pb.GetSpendRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetSpendResponse:
        await self._authenticate(context, "GetSpend")
        scopes = {scope: value for scope, value in (("session", request.session), ("agent", request.agent),
                                                    ("team", request.team), ("workflow", request.workflow)) if value}
        if not scopes:
            raise InvalidRequest("scope: name at least one of session, agent, team, workflow")
        if self._budgets is None:
            raise NotServed("this server keeps no budgets")
        found = await self._budgets.usage(scopes)
        return pb.GetSpendResponse(scopes=[
            pb.ScopeSpend(scope=s.scope, value=s.value, window=s.window, invalid=s.invalid, units=[
                pb.UnitSpend(unit=unit, committed=c, reserved=r, total=c + r) for unit, (c, r) in s.units.items()])
            for s in found])

    @unary_errors("admin ListSidecars")
    async def ListSidecars(  # noqa: N802 - gRPC method name
        self, request: pb.ListSidecarsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSidecarsResponse:
        await self._authenticate(context, "ListSidecars")
        if self._fleet is None:
            raise NotServed("this server keeps no fleet registry")
        found = await self._fleet.sidecars()
        now = self._clock.now()
        return pb.ListSidecarsResponse(sidecars=[to_sidecar_message(s, stale=is_stale(s, now=now)) for s in found])

    async def _authenticate(self, context: grpc.aio.ServicerContext, method: str) -> ApiCaller:
        return await authenticate(context, self._access, method, people=False)


def to_kill_switch_message(switch: KillSwitch) -> pb.KillSwitch:
    message = pb.KillSwitch(scope=switch.scope, value=switch.value, reason=switch.reason, killed_by=switch.killed_by)
    message.killed_at.FromJsonString(switch.killed_at)
    return message


def to_sidecar_message(info: SidecarInfo, *, stale: bool) -> pb.Sidecar:
    message = pb.Sidecar(
        id=info.id, host=info.host, version=info.version, listen=info.listen, bundle_revision=info.bundle_revision,
        bundle_digest=info.bundle_digest, health=info.health, export_lag_seconds=info.export_lag_seconds,
        heartbeat_seconds=info.heartbeat_seconds, stale=stale)
    for field_name, text in (("started_at", info.started_at), ("last_seen", info.last_seen)):
        try:
            getattr(message, field_name).CopyFrom(_timestamp(parse_time(text)))
        except ValueError:
            pass  # an entry whose time cannot be read leaves it unset (and is stale)
    return message


def to_status_message(status: BundleStatus, exports: Sequence[ExportStatus] = ()) -> pb.Status:
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
    return pb.Status(serving=status.active is not None, bundle=bundle,
                     exports=[to_export_message(e) for e in exports])


def to_export_message(export: ExportStatus) -> pb.DecisionLogExport:
    message = pb.DecisionLogExport(
        name=export.name, url=export.url, state=_EXPORT_STATES[export.state], cursor=export.cursor,
        lag_records=export.lag_records, lag_seconds=export.lag_seconds, max_lag_seconds=export.max_lag,
        uploads_ok=export.uploads_ok, uploads_failed=export.uploads_failed,
        records_exported=export.records_exported, last_error=export.last_error)
    if export.last_upload is not None:
        message.last_upload.CopyFrom(_timestamp(export.last_upload))
    return message


def _timestamp(moment: datetime) -> Timestamp:
    ts = Timestamp()
    ts.FromDatetime(moment)
    return ts
