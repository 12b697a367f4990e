"""A real `tollgate serve` polling an HTTPS bundle service behind a private CA that wants a bearer token and a
header: --bundle-ca-file, --bundle-token-file and --bundle-headers-file as a user gives them."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import Serve, tool_request, write_policy
from tests.net.local_server import Answer, LocalServer, Seen
from tests.pki import TestCA
from tollgate.bundle import build_bundle
from tollgate.v1 import authorization_pb2 as pb

POLICY = """
package tollgate

decision := {"decision": "allow", "reasons": [{"code": "served", "message": "from the private service"}]}
"""


def test_a_private_https_bundle_service_is_polled_with_the_ca_token_and_headers_files(
        serve: Serve, tmp_path: Path) -> None:
    archive = tmp_path / "bundle.tar.gz"
    build_bundle(write_policy(tmp_path / "src", POLICY), archive, revision="private-v1")
    body = archive.read_bytes()

    def service(seen: Seen) -> Answer:
        if seen.headers.get("Authorization") != "Bearer bundle-t0k3n" or seen.headers.get("X-Api-Key") != "k-1":
            return Answer(status=401, body=b"who are you?")
        if seen.headers.get("If-None-Match") == '"v1"':
            return Answer(status=304, body=b"", headers=(("ETag", '"v1"'),))
        return Answer(body=body, headers=(("ETag", '"v1"'),))

    ca = TestCA(tmp_path / "pki")
    bundles = LocalServer(script=service, tls=ca.server()).start()
    (tmp_path / "token").write_text("bundle-t0k3n\n")
    (tmp_path / "headers").write_text("X-Api-Key: k-1\n")
    try:
        server = serve(bundle=f"{bundles.url}/prod/bundle.tar.gz", extra=[
            "--bundle-ca-file", str(ca.cert), "--bundle-token-file", str(tmp_path / "token"),
            "--bundle-headers-file", str(tmp_path / "headers"), "--bundle-poll", "0.2"])
        response = server.authorize(tool_request())
        assert (response.decision, response.bundle_revision) == (pb.DECISION_ALLOW, "private-v1")
        deadline = time.monotonic() + 20
        while not any(s.headers.get("If-None-Match") == '"v1"' for s in bundles.seen):
            assert time.monotonic() < deadline, "no conditional poll"
            time.sleep(0.05)
    finally:
        bundles.stop()
    assert all(s.headers["Authorization"] == "Bearer bundle-t0k3n" for s in bundles.seen)
