"""`tollgate health` (the image's HEALTHCHECK and the pod's readiness probe) against real sidecars."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import grpc

from tests.conftest import TOLLGATE, Server, write_policy
from tests.pki import TestCA


def _health(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOLLGATE, "health", *args], capture_output=True, text=True, timeout=30)


def _socket(tmp_path: Path) -> str:
    return f"unix:{tmp_path}/s.sock"  # pytest keeps tmp_path short enough for a socket address


def test_a_serving_sidecar_on_a_unix_socket_is_healthy(serve: Callable[..., Server], tmp_path: Path) -> None:
    server = serve(listen=_socket(tmp_path))
    answer = _health("--server", server.address)
    assert (answer.returncode, answer.stdout.strip()) == (0, "SERVING")


def test_a_sidecar_without_a_bundle_is_not_serving(serve: Callable[..., Server], tmp_path: Path) -> None:
    broken = write_policy(tmp_path / "broken", "package tollgate\n\ndecision := {\n")
    server = serve(bundle=broken, listen=_socket(tmp_path))
    answer = _health("--server", server.address)
    assert (answer.returncode, answer.stdout.strip()) == (2, "NOT_SERVING")


def test_no_sidecar_is_an_error_naming_the_address(tmp_path: Path) -> None:
    answer = _health("--server", f"unix:{tmp_path}/nothing.sock", "--timeout", "1")
    assert answer.returncode == 1
    assert f"unix:{tmp_path}/nothing.sock" in answer.stderr


def test_health_reaches_an_mtls_listener(serve: Callable[..., Server], tmp_path: Path) -> None:
    ca = TestCA(tmp_path / "pki")
    cert, probe = ca.server(), ca.client("spiffe://acme/probes/kubelet")
    server = serve(extra=["--tls-cert", str(cert.cert), "--tls-key", str(cert.key), "--tls-client-ca", str(ca.cert),
                          "--tls-require-client-cert"],
                   credentials=grpc.ssl_channel_credentials(ca.cert.read_bytes(), *probe.pair()))
    answer = _health("--server", server.address, "--tls-ca", str(ca.cert), "--tls-cert", str(probe.cert),
                     "--tls-key", str(probe.key))
    assert (answer.returncode, answer.stdout.strip()) == (0, "SERVING")
