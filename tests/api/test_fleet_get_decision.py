"""GetDecision on a fleet: the sidecar's own log first, then the records other sidecars shipped into the store.

A real gRPC server (the AuthorizationService's handlers on port 0), a real decisions.db and a real PostgreSQL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from tests.conftest import wait_for
from tests.decisionlog.test_pg_export import _fill, _migrate, _record, _server_processes, _shipping
from tests.pg import PostgresServer
from tollgate.api import AuthorizationServicer, RequestLimits
from tollgate.decisionlog import DecisionLog, LogConfig, PgDecisionReader
from tollgate.ids import new_decision_id
from tollgate.state.postgres import PgOptions, PgStore
from tollgate.v1 import authorization_pb2 as pb
from tollgate.v1 import authorization_pb2_grpc as pb_grpc


async def _ask(own_log: Path, url: str | None, decision_ids: list[str], *,
               before: Callable[[], None] | None = None) -> list[tuple[grpc.StatusCode, str]]:
    """GetDecision for each ID through a servicer on own_log (and the fleet's store at url, when given); before
    runs (in a thread) once the server is up."""
    log = DecisionLog(LogConfig(path=own_log, synchronous="normal"))
    log.start(asyncio.get_running_loop())
    store = PgStore(PgOptions(url, timeout=1.0)) if url else None
    if store is not None:
        await store.open()
    servicer = AuthorizationServicer(
        None, log, RequestLimits(),  # type: ignore[arg-type]  # GetDecision never asks the authorizer
        fleet_log=PgDecisionReader(store) if store is not None else None)
    server = grpc.aio.server()
    server.add_generic_rpc_handlers([servicer.handler()])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    if before is not None:
        await asyncio.to_thread(before)
    answers: list[tuple[grpc.StatusCode, str]] = []
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub: Any = pb_grpc.AuthorizationServiceStub(channel)
            for decision_id in decision_ids:
                try:
                    found = await stub.GetDecision(pb.GetDecisionRequest(decision_id=decision_id), timeout=30)
                    answers.append((grpc.StatusCode.OK, found.decision_id))
                except grpc.aio.AioRpcError as exc:
                    answers.append((exc.code(), exc.details() or ""))
    finally:
        await server.stop(None)
        log.close()
        if store is not None:
            await store.close()
    return answers


def test_a_record_answered_by_another_sidecar_is_found_once_shipped(tmp_path: Path, pg_url: str) -> None:
    _migrate(pg_url)
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    ours = _fill(a, [_record(i) for i in range(3)])
    theirs = _fill(b, [_record(i) for i in range(3, 6)])
    shipping = _shipping(b, pg_url, sidecar_id="sidecar-b")
    shipping.start()
    try:
        wait_for(lambda: shipping.exporters[0].status.cursor == 3)
    finally:
        shipping.stop(1)

    answers = asyncio.run(_ask(a, pg_url, [ours[0], theirs[1], new_decision_id()]))
    assert answers[:2] == [(grpc.StatusCode.OK, ours[0]), (grpc.StatusCode.OK, theirs[1])]
    assert answers[2][0] is grpc.StatusCode.NOT_FOUND and "is not in the log" in answers[2][1]


def test_alone_a_sidecar_answers_from_its_own_log_only(tmp_path: Path, pg_url: str) -> None:
    _migrate(pg_url)
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    ours = _fill(a, [_record(0)])
    theirs = _fill(b, [_record(1)])
    shipping = _shipping(b, pg_url, sidecar_id="sidecar-b")
    shipping.start()
    try:
        wait_for(lambda: shipping.exporters[0].status.cursor == 1)
    finally:
        shipping.stop(1)
    answers = asyncio.run(_ask(a, None, [ours[0], theirs[0]]))
    assert answers[0] == (grpc.StatusCode.OK, ours[0]) and answers[1][0] is grpc.StatusCode.NOT_FOUND


def test_a_store_that_is_down_is_unavailable_not_found(tmp_path: Path) -> None:
    server = PostgresServer()  # its own server: this test stops it
    try:
        url = server.database()
        _migrate(url)
        a = tmp_path / "a.db"
        ours = _fill(a, [_record(0)])
        # The pool opens while the store is up; then the store goes away under it.
        answers = asyncio.run(_ask(a, url, [ours[0], new_decision_id()], before=server.stop))
        assert answers[0] == (grpc.StatusCode.OK, ours[0])  # the sidecar's own log needs no store
        assert answers[1] == (grpc.StatusCode.UNAVAILABLE, "the decision log cannot be read; ask again later")
    finally:
        server.close()


def test_a_store_that_stops_answering_is_unavailable_within_a_bound(tmp_path: Path) -> None:
    # A paused store (or a network dropping packets) answers nothing, not even its statement_timeout: GetDecision
    # must still come back, UNAVAILABLE, instead of holding the call until the client gives up.
    server = PostgresServer()
    paused: list[int] = []

    def pause() -> None:
        paused.extend(_server_processes(server))
        for pid in paused:
            os.kill(pid, signal.SIGSTOP)

    try:
        url = server.database()
        _migrate(url)
        a = tmp_path / "a.db"
        ours = _fill(a, [_record(0)])
        started = time.monotonic()
        answers = asyncio.run(_ask(a, url, [ours[0], new_decision_id()], before=pause))
        assert answers[0] == (grpc.StatusCode.OK, ours[0])
        assert answers[1] == (grpc.StatusCode.UNAVAILABLE, "the decision log cannot be read; ask again later")
        assert time.monotonic() - started < 20  # the store's 1 s timeout + 1 s, and psycopg's 10 s cancel attempt
    finally:
        for pid in paused:
            os.kill(pid, signal.SIGCONT)
        server.close()
