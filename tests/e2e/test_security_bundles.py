"""Attacks on the bundle path of a real `tollgate serve`: memory bombs, slow policies, replayed old revisions."""

from __future__ import annotations

import gzip
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.bundle.test_signing import write_key
from tests.conftest import ROOT, TOLLGATE, Server, tool_request, wait_for, write_policy
from tests.e2e.test_live_bundles import (
    POLICY,
    BundleService,
    make_bundle,
    revision_of,
    service,
    signing_key,
    status,
)
from tollgate.authoring.promotion import load_environments, promote
from tollgate.bundle import build_bundle, sign_bundle
from tollgate.bundle._archive import read_archive, write_archive

__all__ = ["make_bundle", "service", "signing_key"]  # fixtures, imported to be used here

#: How much a refused activation may add to the server's peak RSS (README: Live bundle updates).
REFUSAL_RSS_BOUND = 256 * 1024 * 1024


def _rss(server: Server) -> tuple[int, int]:
    """The server process's (current RSS, peak RSS) in bytes, from /proc/PID/status."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{server.proc.pid}/status").read_text().splitlines())
    return int(fields["VmRSS"].split()[0]) * 1024, int(fields["VmHWM"].split()[0]) * 1024


def _json_bomb(size: int) -> bytes:
    """size bytes of legal JSON that a parser turns into many small objects: {"bomb": [{}, {}, ...]}."""
    count = (size - 12) // 3
    return b'{"bomb":[' + b"{}," * count + b"{}]}"


def _with_data(archive: bytes, data: bytes) -> bytes:
    files = read_archive(archive)
    files["tollgate/data.json"] = data
    return write_archive(files)


@pytest.mark.parametrize("signed", [True, False], ids=["signed-swapped-data", "unsigned"])
def test_a_data_memory_bomb_is_refused_too_large_within_the_rss_bound(
        serve, service: BundleService, make_bundle, signing_key, tmp_path: Path, signed: bool) -> None:
    key, keys = signing_key
    good = make_bundle("v1", key=key if signed else None)
    service.publish(good)
    flags = ["--bundle-poll", "0.2", *(["--bundle-keys", str(keys), "--require-signatures"] if signed else [])]
    server = serve(bundle=service.url, extra=flags)
    assert revision_of(server) == "v1"
    server.authorize(tool_request())
    before, _ = _rss(server)
    bomb = _json_bomb((16 if signed else 32) * 1024 * 1024)
    if signed:  # a signed bundle with a data file, then that file swapped after signing
        path = tmp_path / "v2.tar.gz"
        path.write_bytes(_with_data(make_bundle("v2"), b'{"small": true}'))
        sign_bundle(path, key, keyid="ci-2026")
        attack = _with_data(path.read_bytes(), bomb)
    else:
        attack = _with_data(make_bundle("v2"), bomb)
    assert len(attack) < 100_000 and len(gzip.decompress(attack)) > 16 * 1024 * 1024
    service.publish(attack)
    wait_for(lambda: status(server).bundle.last_error.reason != "", timeout=120, what="the bomb refused")
    error = status(server).bundle.last_error
    _, peak = _rss(server)
    print(f"RSS before {before / 2**20:.0f} MiB, peak after {peak / 2**20:.0f} MiB")
    assert error.reason == "too_large", error.message
    assert "tollgate/data.json" in error.message
    assert peak - before < REFUSAL_RSS_BOUND, f"peak RSS grew by {(peak - before) / 2**20:.0f} MiB"
    assert server.authorize(tool_request()).bundle_revision == "v1"


@pytest.mark.parametrize("shape", ["objects", "members"])
def test_a_signed_bundle_swapped_for_data_just_under_the_limits_is_refused_within_the_rss_bound(
        serve, service: BundleService, make_bundle, signing_key, tmp_path: Path, shape: str) -> None:
    # The worst a bundle under the data limits can do: as many values as allowed, each as costly as can be,
    # parsed to be hashed, and then refused because the hash does not match.
    key, keys = signing_key
    service.publish(make_bundle("v1", key=key))
    server = serve(bundle=service.url, extra=["--bundle-poll", "0.2", "--bundle-keys", str(keys),
                                              "--require-signatures"])
    server.authorize(tool_request())
    before, _ = _rss(server)
    path = tmp_path / "v2.tar.gz"
    path.write_bytes(_with_data(make_bundle("v2"), b'{"small": true}'))
    sign_bundle(path, key, keyid="ci-2026")
    if shape == "objects":
        bomb = _json_bomb(3 * 495_000)  # each {} counts twice, its { and its ,
    else:  # distinct keys with number values: ~430 bytes per member once parsed and hashed
        bomb = b"{" + b",".join(b'"k%d":1.5' % i for i in range(495_000)) + b"}"
    service.publish(_with_data(path.read_bytes(), bomb))
    wait_for(lambda: status(server).bundle.last_error.reason != "", timeout=120, what="the swap refused")
    error = status(server).bundle.last_error
    _, peak = _rss(server)
    print(f"RSS before {before / 2**20:.0f} MiB, peak after {peak / 2**20:.0f} MiB")
    assert error.reason == "signature" and "modified after signing" in error.message, error.message
    assert peak - before < REFUSAL_RSS_BOUND, f"peak RSS grew by {(peak - before) / 2**20:.0f} MiB"
    assert server.authorize(tool_request()).bundle_revision == "v1"


# Loops for seconds (9 million iterations) on the inputs `slow_when` matches; the deadline is 100 ms.
SLOW_POLICY = """
package tollgate

decision := {{"decision": "allow", "reasons": [{{"code": "revision", "message": "{revision}"}}]}} if {{
    {slow_when}
    n := 3000 + count(input.principal.agent_id)  # depends on the input, so nothing is computed at compile time
    count([1 | some i in numbers.range(1, n); some j in numbers.range(1, n); i != j]) > 0
}}

decision := {{"decision": "allow", "reasons": [{{"code": "revision", "message": "{revision}"}}]}} if {{
    not {slow_when}
}}
"""


@pytest.mark.parametrize("slow_when", ["true", 'input.principal.agent_id != "tollgate-smoke-test"'],
                         ids=["on-every-input", "only-on-real-agents"])
def test_a_policy_that_runs_past_the_deadline_is_refused_smoke_test_and_the_old_one_keeps_answering(
        serve, service: BundleService, make_bundle, slow_when: str) -> None:
    service.publish(make_bundle("v1"))
    server = serve(bundle=service.url, extra=["--bundle-poll", "0.2", "--eval-timeout-ms", "100"])
    assert server.authorize(tool_request()).bundle_revision == "v1"  # a recent decision: a smoke input
    service.publish(make_bundle("v2", policy=SLOW_POLICY.replace("{slow_when}", slow_when)))
    wait_for(lambda: status(server).bundle.last_error.reason != "" or revision_of(server) != "v1", timeout=60,
             what="the slow bundle refused")
    error = status(server).bundle.last_error
    assert error.reason == "smoke_test", error.message
    assert "deadline" in error.message
    assert revision_of(server) == "v1"
    for _ in range(5):
        answer = server.authorize(tool_request())
        assert (answer.decision, answer.bundle_revision, answer.reasons[0].message) == (1, "v1", "v1")


ENVIRONMENTS = """\
channel_root: channels
environments:
  prod:
    keys: {keys}
    gates:
      signed: true
"""


def _signed_v1_v2(tmp_path: Path, key: Any) -> dict[str, Path]:
    """Bundles v1 and v2 of POLICY, built with sequences 1 and 2 and signed by ci-2026."""
    built = {}
    for sequence, revision in enumerate(["v1", "v2"], 1):
        out = tmp_path / f"{revision}.tar.gz"
        build_bundle(write_policy(tmp_path / f"src-{revision}", POLICY.format(revision=revision)), out,
                     revision=revision, sequence=sequence)
        sign_bundle(out, key, keyid="ci-2026")
        built[revision] = out
    return built


def test_an_older_signed_revision_offered_again_is_refused_rollback_until_tollgate_rollback_signs_it(
        serve, service: BundleService, signing_key, tmp_path: Path) -> None:
    key, keys = signing_key
    envs_file = tmp_path / "environments.yaml"
    envs_file.write_text(ENVIRONMENTS.format(keys=keys))
    envs = load_environments(envs_file)
    live = tmp_path / "channels" / "prod" / "bundle.tar.gz"
    built: dict[str, bytes] = {}
    for revision, out in _signed_v1_v2(tmp_path, key).items():
        built[revision] = out.read_bytes()
        assert promote(envs, "prod", out, by="ci").published
    service.publish(built["v1"])
    server = serve(bundle=service.url, extra=["--bundle-poll", "0.2", "--bundle-keys", str(keys),
                                              "--require-signatures"])
    service.publish(live.read_bytes())  # v2, as promoted
    wait_for(lambda: revision_of(server) == "v2", what="v2")
    assert json.loads((server.data_dir / "bundles" / "sequence.json").read_text())["sequence"] == 2

    service.publish(built["v1"])  # the attack: the old, validly signed v1 served again
    wait_for(lambda: status(server).bundle.last_error.reason != "", what="the replayed v1 refused")
    error = status(server).bundle.last_error
    assert error.reason == "rollback", error.message
    assert "sequence 1" in error.message and "sequence 2 (revision v2)" in error.message
    assert revision_of(server) == "v2"
    assert server.authorize(tool_request()).reasons[0].message == "v2"

    unsigned = subprocess.run([*TOLLGATE, "rollback", "prod", "--to", "v1", "--environments", str(envs_file)],
                              capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert unsigned.returncode == 1 and "--key" in unsigned.stderr, unsigned.stderr
    private = write_key(tmp_path / "private", "ci-2026", key, private=True)
    done = subprocess.run([*TOLLGATE, "rollback", "prod", "--to", "v1", "--environments", str(envs_file),
                           "--key", str(private), "--kid", "ci-2026", "--as", "oncall@example.com"],
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    service.publish(live.read_bytes())  # the signed rollback to v1
    wait_for(lambda: revision_of(server) == "v1", what="the signed rollback to v1")
    assert server.authorize(tool_request()).reasons[0].message == "v1"
    assert json.loads((server.data_dir / "bundles" / "sequence.json").read_text())["sequence"] == 3
    # ... and the old v2, served again after the rollback, is refused in turn.
    service.publish(built["v2"])
    wait_for(lambda: status(server).bundle.last_error.reason == "rollback", what="the replayed v2 refused")
    assert revision_of(server) == "v1"


def test_the_highest_sequence_outlives_a_restart_so_a_replayed_revision_is_refused_at_start_up(
        serve, service: BundleService, signing_key, tmp_path: Path) -> None:
    key, keys = signing_key
    built: dict[str, bytes] = {}
    for revision, out in _signed_v1_v2(tmp_path, key).items():
        built[revision] = out.read_bytes()
    flags = ["--bundle-poll", "0.2", "--bundle-keys", str(keys), "--require-signatures"]
    data = tmp_path / "data"
    service.publish(built["v2"])
    first = serve(bundle=service.url, data_dir=data, extra=flags)
    assert revision_of(first) == "v2"
    assert first.terminate() == 0

    service.publish(built["v1"])  # replayed while the sidecar was down
    server = serve(bundle=service.url, data_dir=data, extra=flags)
    bundle = status(server).bundle
    assert (bundle.last_error.reason, bundle.active_revision) == ("rollback", "v2"), bundle.last_error.message
    assert bundle.last_activation.from_persisted  # the last good v2, not the replayed v1
    assert server.authorize(tool_request()).reasons[0].message == "v2"
