"""`tollgate fleet`: a real sidecar lists itself with the revision it serves; the shared store is read without one."""

from __future__ import annotations

import asyncio
import json
import subprocess
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, TOLLGATE, Serve, wait_for
from tollgate.clock import ManualClock
from tollgate.state import LocalFleet, SidecarInfo, StateStore
from tollgate.state.postgres import PgFleet, PgOptions, PgStore
from tollgate.v1 import admin_pb2, admin_pb2_grpc


def tollgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOLLGATE, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.clock
def test_a_sidecar_lists_itself_with_its_revision_and_says_goodbye(serve: Serve) -> None:
    server = serve(extra=["--sidecar-id", "pod-a-1", "--fleet-heartbeat", "0.2"])
    status = admin_pb2_grpc.AdminServiceStub(server.channel).GetStatus(
        admin_pb2.GetStatusRequest(), metadata=server.admin_metadata, timeout=10)
    revision = status.bundle.active_revision
    assert revision

    listed = tollgate("fleet", "--server", server.address, "--token", ADMIN_TOKEN)
    assert listed.returncode == 0, listed.stderr
    heading, line, *more = listed.stdout.splitlines()
    assert heading.split() == ["ID", "HOST", "VERSION", "LISTEN", "REVISION", "HEALTH", "EXPORT_LAG", "LAST_SEEN",
                               "STALE"]
    assert more == []
    cells = line.split()
    assert (cells[0], cells[3], cells[4], cells[5], cells[6], cells[8]) == (
        "pod-a-1", server.address, revision, "serving", "0.0s", "no")

    as_json = tollgate("fleet", "--server", server.address, "--token", ADMIN_TOKEN, "--json")
    (entry,) = json.loads(as_json.stdout)
    assert (entry["id"], entry["bundle_revision"], entry["health"], entry["heartbeat_seconds"], entry["stale"]) == (
        "pod-a-1", revision, "serving", 0.2, False)
    assert entry["bundle_digest"] == status.bundle.last_activation.digest
    first_seen = entry["last_seen"]
    wait_for(lambda: json.loads(tollgate("fleet", "--server", server.address, "--token", ADMIN_TOKEN, "--json")
                                .stdout)[0]["last_seen"] != first_seen, timeout=30, what="the next heartbeat")

    assert server.terminate() == 0
    store = StateStore(server.data_dir / "state.db")
    try:
        (gone,) = asyncio.run(LocalFleet(store).sidecars())
    finally:
        store.close()
    assert (gone.id, gone.health) == ("pod-a-1", "stopped")


def test_a_restarted_sidecar_keeps_its_generated_id(serve: Serve, tmp_path: Any) -> None:
    ids = []
    for _ in range(2):
        server = serve(data_dir=tmp_path / "data")
        listed = json.loads(tollgate("fleet", "--server", server.address, "--token", ADMIN_TOKEN, "--json").stdout)
        ids.append([e["id"] for e in listed])
        assert server.terminate() == 0
    assert ids[0] == ids[1] and len(ids[0]) == 1
    assert ids[0][0] == (tmp_path / "data" / "sidecar-id").read_text().strip()


def test_the_fleet_needs_the_admin_token(serve: Serve) -> None:
    server = serve()
    refused = tollgate("fleet", "--server", server.address)
    assert refused.returncode == 1
    assert f"tollgate fleet: {server.address}: UNAUTHENTICATED: admin RPCs need the admin token" in refused.stderr


def _entry(sidecar_id: str, revision: str) -> SidecarInfo:
    return SidecarInfo(id=sidecar_id, host=f"{sidecar_id}.pods", version="0.1.0", listen="0.0.0.0:50051",
                       bundle_revision=revision, bundle_digest="sha256:00", health="serving", export_lag_seconds=1.25,
                       started_at="2026-11-21T17:00:00Z", last_seen="", heartbeat_seconds=5.0)


def _heartbeats(url: str, beats: list[tuple[SidecarInfo, datetime]], *, migrate: bool = True) -> None:
    async def main() -> None:
        store = PgStore(PgOptions(url))
        await store.open()
        try:
            for info, when in beats:
                fleet = PgFleet(store, clock=ManualClock(when))
                if migrate:
                    await fleet.migrate(upgrade=True)
                await fleet.heartbeat(info)
        finally:
            await store.close()

    asyncio.run(main())


def test_the_shared_store_is_read_without_a_sidecar_and_a_silent_one_is_stale(pg_url: str) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    _heartbeats(pg_url, [(_entry("pod-b", "prod-8"), now), (_entry("pod-a", "prod-7"), now - timedelta(minutes=5))])
    listed = tollgate("fleet", "--state-store", pg_url)
    assert listed.returncode == 0, listed.stderr
    _, *lines = listed.stdout.splitlines()
    rows = [line.split() for line in lines]
    assert [(r[0], r[1], r[4], r[5], r[6], r[8]) for r in rows] == [  # sorted by id
        ("pod-a", "pod-a.pods", "prod-7", "serving", "1.2s", "yes"),  # five minutes without a heartbeat
        ("pod-b", "pod-b.pods", "prod-8", "serving", "1.2s", "no")]
    as_json = json.loads(tollgate("fleet", "--state-store", pg_url, "--json").stdout)
    assert [(e["id"], e["stale"], e["last_seen"][:19]) for e in as_json] == [
        ("pod-a", True, (now - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S")),
        ("pod-b", False, now.strftime("%Y-%m-%dT%H:%M:%S"))]


@pytest.mark.parametrize(("args", "message"), [
    (["--state-store", "mysql://db/fleet"], "tollgate fleet: --state-store: must be a postgresql:// URL, not "
                                           "'mysql://db/fleet'"),
    (["--state-store", "postgresql://u:hunter2@127.0.0.1:1/x", "--timeout", "0.5"],
     "tollgate fleet: state store postgresql://u:***@127.0.0.1:1/x: cannot connect"),
], ids=["not-postgresql", "unreachable-password-hidden"])
def test_a_store_that_cannot_be_read_is_an_error_naming_it(args: list[str], message: str) -> None:
    refused = tollgate("fleet", *args)
    assert refused.returncode == 1
    assert refused.stderr.startswith(message), refused.stderr
    assert len(refused.stderr.splitlines()) == 1
    assert "hunter2" not in refused.stderr


def test_a_store_without_the_fleet_schema_names_the_migration(pg_url: str) -> None:
    refused = tollgate("fleet", "--state-store", pg_url)
    assert refused.returncode == 1
    assert "fleet schema is version 0, this tollgate needs 1" in refused.stderr
    assert "tollgate state migrate" in refused.stderr


@pytest.mark.clock
def test_a_sidecar_that_went_silent_is_shown_stale_through_admin_service(serve: Serve, tmp_path: Any) -> None:
    data_dir = tmp_path / "data"
    server = serve(data_dir=data_dir, extra=["--sidecar-id", "live"])
    an_hour_ago = server.clock_range()[0] - timedelta(hours=1)  # by the sidecar's clock (--clock-start moves it)
    assert server.terminate() == 0
    store = StateStore(data_dir / "state.db")  # a sidecar of an earlier run that was SIGKILLed an hour ago
    try:
        asyncio.run(LocalFleet(store, clock=ManualClock(an_hour_ago)).heartbeat(_entry("crashed", "prod-6")))
    finally:
        store.close()
    server = serve(data_dir=data_dir, extra=["--sidecar-id", "live"])
    listed = tollgate("fleet", "--server", server.address, "--token", ADMIN_TOKEN)
    rows = {line.split()[0]: line.split() for line in listed.stdout.splitlines()[1:]}
    assert (rows["crashed"][5], rows["crashed"][8]) == ("serving", "yes")
    assert (rows["live"][5], rows["live"][8]) == ("serving", "no")
