"""AuthorizationService.ReportOutcome: a harness says how a session, or one task of it, ended.

Who may report: a caller that may speak for the session's principal, by the same `callers` rules Authorize holds a
request to (identity/_callers.py). The principal is not taken from the report — a harness could name any — but from
the session's own decisions: this sidecar's log, and on a fleet the records every sidecar shipped. Every distinct
principal those records name must be one the caller may speak for (a session id two teams' harnesses both used is
reported by neither alone), so no harness reports another team's session; a session with no decisions is NOT_FOUND
(an outcome nothing was decided for has no cost and no agent to count it under). With no `callers` configured,
every caller may speak for anyone, as for Authorize.

The outcome keeps the newest record's principal (agent, team, workflow, user), the caller's subject and its peer;
every report is also logged (INFO: stored, replaced or unchanged), a replacement with what it replaced.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from tollgate.api._convert import InvalidRequest
from tollgate.api._errors import NotFound, NotServed, PermissionDenied, unary_errors
from tollgate.api._handlers import metadata_value
from tollgate.decisionlog import Query, StoredRecord, open_read_only
from tollgate.encoding import parse_time
from tollgate.identity import TOKEN_METADATA_KEY, CallerMap, CallerResolver
from tollgate.state import OutcomeError, OutcomeExists, OutcomeReport, OutcomeStore
from tollgate.state._outcomes import PRINCIPAL_FIELDS, Outcome, checked_report
from tollgate.v1 import authorization_pb2 as pb

log = logging.getLogger(__name__)
SERVICE = pb.DESCRIPTOR.services_by_name["AuthorizationService"].full_name
#: The newest records of a session whose principals the caller is checked against.
SESSION_RECORDS = 1000
#: Outcome enum ↔ the stored name.
OUTCOME_NAMES: dict[int, str] = {pb.OUTCOME_SUCCEEDED: "succeeded", pb.OUTCOME_FAILED: "failed",
                                 pb.OUTCOME_ABANDONED: "abandoned"}
OUTCOME_VALUES: dict[str, pb.Outcome] = {"succeeded": pb.OUTCOME_SUCCEEDED, "failed": pb.OUTCOME_FAILED,
                                                   "abandoned": pb.OUTCOME_ABANDONED}


@runtime_checkable
class SessionFinder(Protocol):
    """Where a session's records are found beside this sidecar's log: the fleet's shipped records."""

    async def find(self, query: Query) -> list[Any]: ...


class LocalSessions:
    """This sidecar's decisions.db, read-only, one connection per worker thread."""

    def __init__(self, data_dir: Path) -> None:
        self._data_dir = data_dir
        self._local = threading.local()

    def find(self, query: Query) -> list[StoredRecord]:
        store = getattr(self._local, "store", None)
        if store is None:
            store = self._local.store = open_read_only(self._data_dir)
        return store.find(query)


def principal_of(record: StoredRecord) -> dict[str, str]:
    """The principal fields a record names (the masked input as logged)."""
    try:
        doc = record.record()
    except ValueError:
        return {}
    principal = doc.get("input", {}).get("principal") if isinstance(doc.get("input"), dict) else None
    if not isinstance(principal, dict):
        return {}
    return {name: str(principal.get(name) or "") for name in (*PRINCIPAL_FIELDS, "session_id")}


def to_message(outcome: Outcome, *, unchanged: bool) -> pb.ReportOutcomeResponse:
    stamp = Timestamp()
    stamp.FromDatetime(parse_time(outcome.reported_at))
    return pb.ReportOutcomeResponse(
        session_id=outcome.session_id, task_id=outcome.task_id,
        outcome=OUTCOME_VALUES.get(outcome.outcome, pb.OUTCOME_UNSPECIFIED),
        labels=list(outcome.labels), reported_at=stamp, reported_by=outcome.reported_by, revision=outcome.revision,
        unchanged=unchanged)


class OutcomeServicer:
    """ReportOutcome, registered beside AuthorizationServicer's handler under the same service."""

    def __init__(self, outcomes: OutcomeStore | None, *, data_dir: Path, resolver: CallerResolver | None = None,
                 callers: CallerMap | None = None, fleet_log: object = None) -> None:
        self._outcomes = outcomes
        self._local = LocalSessions(data_dir)
        self._fleet = fleet_log if isinstance(fleet_log, SessionFinder) else None
        self._resolver = resolver or CallerResolver()
        self._callers = callers or CallerMap()

    def handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(SERVICE, {
            "ReportOutcome": grpc.unary_unary_rpc_method_handler(
                self.ReportOutcome, request_deserializer=pb.ReportOutcomeRequest.FromString,
                response_serializer=pb.ReportOutcomeResponse.SerializeToString),
        })

    @unary_errors("report outcome", unavailable="the state store or the decision log is unavailable; report the "
                  "outcome again later", inputs=(OutcomeError,))
    async def ReportOutcome(  # noqa: N802 - gRPC method name
        self, request: pb.ReportOutcomeRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReportOutcomeResponse:
        if not request.session_id:
            raise InvalidRequest("session_id: required")
        if request.outcome not in OUTCOME_NAMES:
            raise InvalidRequest("outcome: required (OUTCOME_SUCCEEDED, OUTCOME_FAILED or OUTCOME_ABANDONED)")
        if self._outcomes is None:
            raise NotServed("this server keeps no outcomes")
        # Bounds first (OutcomeError naming the field): no log read for a report that cannot be stored.
        report = OutcomeReport(session_id=request.session_id, task_id=request.task_id,
                               outcome=OUTCOME_NAMES[request.outcome], labels=tuple(request.labels),
                               summary=request.summary)
        checked_report(report)
        caller = self._resolver.resolve(peer=context.peer(), auth_context=context.auth_context(),
                                        token=metadata_value(context, TOKEN_METADATA_KEY))
        if caller.error:
            raise PermissionDenied(f"{caller.error}; the outcome was not recorded")
        unlisted = self._callers.check(caller, {})  # a caller in no callers entry learns nothing of the log
        if unlisted:
            raise PermissionDenied(unlisted)
        principals = await self._principals(request.session_id)
        if not principals:
            raise NotFound(f"session {request.session_id[:200]!r} has no decisions in the log; an outcome is "
                           "reported for a session Tollgate decided for")
        for principal in principals:
            refused = self._callers.check(caller, principal)
            if refused:
                raise PermissionDenied(f"{refused}: the session's decisions name that principal, so this caller "
                                       "may not report its outcome")
        return await self._store(report, principals[0], caller.subject, context, replace=request.replace)

    async def _store(self, report: OutcomeReport, principal: Mapping[str, str], subject: str,
                     context: grpc.aio.ServicerContext, *, replace: bool) -> pb.ReportOutcomeResponse:
        assert self._outcomes is not None
        full = OutcomeReport(session_id=report.session_id, task_id=report.task_id, outcome=report.outcome,
                             labels=report.labels, summary=report.summary, principal=principal,
                             reported_by=subject, reported_from=context.peer() or "")
        before = await self._outcomes.get(report.session_id, report.task_id) if replace else None
        try:
            done = await self._outcomes.report(full, replace=replace)
        except OutcomeExists as exc:
            log.info("outcome of session %s%s refused from %s: %s", report.session_id[:200],
                     f" task {report.task_id[:200]}" if report.task_id else "", subject or "an unauthenticated caller",
                     exc)
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(exc))
            raise AssertionError("unreachable: abort raises") from None
        stored = done.outcome
        what = "unchanged" if done.unchanged else ("replaced" if stored.revision > 1 else "stored")
        log.info("outcome of session %s%s %s: %s%s (revision %d, agent %s, workflow %s) reported by %s from %s%s",
                 stored.session_id[:200], f" task {stored.task_id[:200]}" if stored.task_id else "", what,
                 stored.outcome, f" [{', '.join(stored.labels)}]" if stored.labels else "", stored.revision,
                 stored.agent_id, stored.workflow or "-", subject or "an unauthenticated caller",
                 stored.reported_from or "?",
                 f"; it was {before.outcome} (revision {before.revision}, by {before.reported_by or '-'})"
                 if before is not None and what == "replaced" else "")
        return to_message(stored, unchanged=done.unchanged)

    async def _principals(self, session_id: str) -> list[dict[str, str]]:
        """The distinct principals the session's newest records name, newest first (local, then the fleet's)."""
        query = Query(session=session_id, limit=SESSION_RECORDS)
        records: list[Any] = list(reversed(await asyncio.to_thread(self._local.find, query)))
        if self._fleet is not None:
            records += list(reversed(await self._fleet.find(query)))
        found: list[dict[str, str]] = []
        for record in records:
            principal = principal_of(record)
            if principal.get("session_id") != session_id:  # the column matched; the hashed record must too
                continue
            if principal not in found:
                found.append(principal)
        return found
