"""Promotion dev → staging → prod: gates that change nothing when they fail, a static channel, history, rollback."""

from __future__ import annotations

import hashlib
import http.server
import json
import re
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.bundle.test_signing import write_key
from tests.conftest import REGO, ROOT, TOLLGATE, Server, tool_request
from tests.readme import readme_section, run_console_lines, scratch_venv
from tollgate.authoring.promotion import (
    EnvironmentsError,
    PromotionError,
    Signer,
    load_environments,
    parse_ack,
    promote,
    read_channel,
    rollback,
)
from tollgate.bundle import build_bundle, load_private_key, sign_bundle, verify_bundle
from tollgate.bundle._archive import read_archive

SAMPLE = ROOT / "samples" / "decisions.jsonl"


def _sample_decision_id(agent: str, server: str, tool: str) -> str:
    for line in SAMPLE.read_text().splitlines():
        record = json.loads(line)
        action = record["input"].get("tool") or {}
        if record["input"]["principal"]["agent_id"] == agent and (action.get("server"), action.get("name")) == (
                server, tool):
            found: str = record["decision_id"]
            return found
    raise AssertionError(f"{SAMPLE} holds no {agent} call of {server}/{tool}")


# In the sample: data-analyst asked for github/get_file_contents, which its manifest does not list (denied).
FLIPPED_ID = _sample_decision_id("data-analyst", "github", "get_file_contents")
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")  # encoding.format_time

ENVIRONMENTS = """\
channel_root: channels
environments:
  dev:
    keys: keys/dev
    require_signatures: false
    gates:
      tests: true
  staging:
    keys: keys/staging
    gates:
      tests: true
      signed: true
      replay:
        decisions: {sample}
      from: dev
  prod:
    keys: keys/prod
    gates:
      tests: true
      signed: true
      replay:
        decisions: {sample}
        fail_on: [deny→allow, require_approval→allow]
      from: staging
"""


@dataclass(frozen=True)
class Bundles:
    good: Path  # v1, signed with the trusted key
    newer: Path  # v2, the same policy, signed with the trusted key
    unsigned: Path  # v3
    untrusted: Path  # v4, signed with a key no environment trusts
    failing: Path  # v5, one of its sources' Rego tests fails
    flip: Path  # v6, data-analyst may use github/get_file_contents: a deny → allow flip in the sample
    untested: Path  # v7, whose sources the tests gate is not told of (and cannot find)
    trusted_public: Path  # the trusted key's public half, ci.pem


def _policy(root: Path, *, failing: bool = False, flip: bool = False) -> Path:
    shutil.copytree(REGO, root)
    if failing:
        (root / "tollgate" / "promotion_test.rego").write_text(
            "package tollgate.promotion_test\n\ntest_a_broken_expectation if {\n\t1 == 2\n}\n")
    if flip:
        manifest = root / "agents" / "data-analyst" / "data.yaml"
        manifest.write_text(manifest.read_text().replace("  - postgres/query\n",
                                                         "  - postgres/query\n  - github/get_file_contents\n"))
    return root


#: The policy directory each bundle was built from, by revision: what the tests gate runs the tests from (promote
#: --tests). Bundles hold no tests; v7 has no entry, so its promotion gives the gate no tests.
SOURCES: dict[str, Path] = {}


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> Bundles:
    out = tmp_path_factory.mktemp("bundles")
    trusted, other = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    write_key(out / "private", "ci", trusted, private=True)
    public = write_key(out / "public", "ci", trusted)
    write_key(out / "private", "stranger", other, private=True)

    def make(revision: str, source: Path = REGO, kid: str | None = "ci", tests: bool = True) -> Path:
        path = out / f"{revision}.tar.gz"
        build_bundle(source, path, revision=revision)
        if tests:
            SOURCES[revision] = source
        if kid is not None:
            sign_bundle(path, load_private_key(out / "private" / f"{kid}.pem"), keyid=kid)
        return path

    return Bundles(
        good=make("v1"), newer=make("v2"), unsigned=make("v3", kid=None), untrusted=make("v4", kid="stranger"),
        failing=make("v5", _policy(out / "failing", failing=True)), flip=make("v6", _policy(out / "flip", flip=True)),
        untested=make("v7", tests=False),
        trusted_public=public,
    )


@pytest.fixture
def world(tmp_path: Path, bundles: Bundles) -> Path:
    """An environments file whose staging and prod trust the ci key, and an empty channel root beside it."""
    return _world(tmp_path, bundles)


def _world(root: Path, bundles: Bundles) -> Path:
    for env in ("dev", "staging", "prod"):
        (root / "keys" / env).mkdir(parents=True)
        if env != "dev":
            shutil.copy(bundles.trusted_public, root / "keys" / env / "ci.pem")
    (root / "environments.yaml").write_text(ENVIRONMENTS.format(sample=SAMPLE))
    (root / "channels").mkdir()
    return root


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory, bundles: Bundles) -> Path:
    """Channels (built once, copied by `seeded`): v1 live in dev, staging and prod; then v2, v3, v4 and v6
    promoted into dev only, so that staging's `from` gate lets them through and prod's does not."""
    root = tmp_path_factory.mktemp("published")
    _world(root, bundles)
    # Seeding, not testing: dev without its tests gate, so that its five promotions take no time.
    config = root / "environments.yaml"
    dev_gates = "    require_signatures: false\n    gates:\n      tests: true\n"
    assert dev_gates in config.read_text()
    config.write_text(config.read_text().replace(dev_gates, "    require_signatures: false\n"))
    for env in ("dev", "staging", "prod"):
        _promote(root, bundles.good if env == "dev" else "v1", env)
    for bundle in (bundles.newer, bundles.unsigned, bundles.untrusted, bundles.flip):
        _promote(root, bundle, "dev")
    return root / "channels"


@pytest.fixture
def seeded(world: Path, published: Path) -> Path:
    shutil.rmtree(world / "channels")
    shutil.copytree(published, world / "channels")
    return world


def _cli(world: Path, *args: str | Path) -> subprocess.CompletedProcess[str]:
    """Run tollgate; a promotion is given the tests of the bundle's sources (SOURCES) unless it names --tests."""
    extra: list[str] = []
    if args[0] == "promote" and "--tests" not in args:
        source = SOURCES.get(Path(args[1]).name.removesuffix(".tar.gz"))
        extra = ["--tests", str(source)] if source else []
    return subprocess.run([*TOLLGATE, *map(str, args), *extra, "--environments", str(world / "environments.yaml")],
                          capture_output=True, text=True, timeout=180, cwd=world)


def _channel(world: Path, env: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((world / "channels" / env / "channel.json").read_text())
    return doc


def _snapshot(root: Path) -> dict[str, bytes | None]:
    """Every file (with its bytes) and directory under root."""
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _promote(world: Path, bundle: str | Path, env: str, **kwargs: Any) -> None:
    kwargs.setdefault("tests", SOURCES.get(Path(bundle).name.removesuffix(".tar.gz"), REGO))
    outcome = promote(load_environments(world / "environments.yaml"), env, bundle, by="test", **kwargs)
    assert outcome.published, outcome.gates


def test_a_bundle_goes_from_dev_to_staging_to_prod_and_each_channel_records_it(world: Path, bundles: Bundles) -> None:
    first = _cli(world, "promote", bundles.good, "--to", "dev", "--as", "alice@example.com")
    assert first.returncode == 0, first.stdout + first.stderr
    assert "tests   passed" in first.stdout and "promoted v1 to dev" in first.stdout
    for env in ("staging", "prod"):
        done = _cli(world, "promote", "v1", "--to", env, "--as", "alice@example.com", "--note", "CHG-42")
        assert done.returncode == 0, done.stdout + done.stderr
        for gate in ("tests", "signed", "replay", "from"):
            assert re.search(rf"^  {gate} +passed  ", done.stdout, re.M), done.stdout

    digest = _sha256(bundles.good)
    sources: dict[str, str | None] = {"dev": None, "staging": "dev", "prod": "staging"}
    for env, source in sources.items():
        channel_dir = world / "channels" / env
        assert (channel_dir / "bundle.tar.gz").read_bytes() == bundles.good.read_bytes()
        assert (channel_dir / "revisions" / "v1.tar.gz").read_bytes() == bundles.good.read_bytes()
        doc = _channel(world, env)
        assert doc["environment"] == env and doc["bundle"] == "bundle.tar.gz"
        assert doc["live"]["revision"] == "v1" and doc["live"]["sha256"] == digest
        assert doc["live"]["path"] == "revisions/v1.tar.gz"
        [entry] = doc["history"]
        assert entry["action"] == "promote" and entry["revision"] == "v1" and entry["sha256"] == digest
        assert entry["by"] == "alice@example.com" and RFC3339_UTC.match(entry["at"])
        assert entry["from"] == source and entry["replaced"] is None
        assert list(entry["gates"]) == (["tests"] if env == "dev" else ["tests", "signed", "replay", "from"])
    assert _channel(world, "prod")["history"][0]["note"] == "CHG-42"
    rego_tests = sum(len(re.findall(r"^test_", f.read_text(), re.M)) for f in REGO.rglob("*_test.rego"))
    assert f"{rego_tests} tests passed" in _channel(world, "dev")["history"][0]["gates"]["tests"]


FAILURES = [
    # id, bundle attribute (already in dev, see `published`, but for the failing one), target, gate, reason
    ("unsigned", "unsigned", "staging", "signed", "unsigned"),
    ("untrusted-key", "untrusted", "staging", "signed", "'stranger', which is not trusted"),
    ("failing-test", "failing", "dev", "tests", "tollgate.promotion_test.test_a_broken_expectation FAIL"),
    ("no-tests-in-the-bundle", "untested", "dev", "tests", "the bundle holds no tests"),
    ("deny-to-allow-flip", "flip", "staging", "replay", "1 deny→allow unacknowledged"),
    ("skipping-staging", "newer", "prod", "from", "never published in staging"),
]


@pytest.mark.parametrize(("attr", "target", "gate", "reason"), [f[1:] for f in FAILURES],
                         ids=[f[0] for f in FAILURES])
def test_a_failing_gate_changes_nothing_and_says_which_gate_and_why(
        seeded: Path, bundles: Bundles, attr: str, target: str, gate: str, reason: str) -> None:
    world = seeded  # v1 is live in every environment: there is something to keep intact
    snapshot = _snapshot(world)

    failed = _cli(world, "promote", getattr(bundles, attr), "--to", target)

    assert failed.returncode == 1, failed.stdout + failed.stderr
    line = re.search(rf"^  {gate} +FAILED  (.*)$", failed.stdout, re.M)
    assert line and reason in line.group(1), failed.stdout
    assert f"gate {gate} failed" in failed.stderr and f"{target}'s channel is unchanged" in failed.stderr
    assert _snapshot(world) == snapshot


def test_a_revision_the_previous_environment_never_ran_is_refused(world: Path, bundles: Bundles) -> None:
    _promote(world, bundles.good, "dev")
    snapshot = _snapshot(world)
    refused = _cli(world, "promote", "v1", "--to", "prod")
    assert refused.returncode == 1
    assert "gate from: revision v1 was never published in staging" in refused.stderr
    assert _snapshot(world) == snapshot


def test_an_acknowledged_flip_is_published_and_the_acknowledgement_recorded(seeded: Path) -> None:
    world = seeded  # v6, the flip, is live in dev
    wrong = world / "wrong-ids.txt"
    wrong.write_text("# not the flip\n01a1ff86-cc35-7113-94c0-c55ee0c2271a\n")
    still = _cli(world, "promote", "v6", "--to", "staging", "--ack-file", wrong)
    assert still.returncode == 1 and FLIPPED_ID in still.stdout

    acks = world / "acks.txt"
    acks.write_text(f"# PR 812: data-analyst may read files on GitHub\n{FLIPPED_ID}\n")
    by_id = _cli(world, "promote", "v6", "--to", "staging", "--ack-file", acks, "--as", "bob")
    assert by_id.returncode == 0, by_id.stdout + by_id.stderr
    assert "1 deny→allow flip(s)" in by_id.stdout and "all acknowledged" in by_id.stdout
    entry = _channel(world, "staging")["history"][-1]
    assert entry["acknowledged"] == {"transitions": [], "decision_ids": [FLIPPED_ID], "files": [str(acks)]}

    whole = _cli(world, "promote", "v6", "--to", "prod", "--ack", "deny->allow", "--ack", "require_approval→allow")
    assert whole.returncode == 0, whole.stdout + whole.stderr
    entry = _channel(world, "prod")["history"][-1]
    assert entry["acknowledged"] == {"transitions": ["deny→allow", "require_approval→allow"],
                                     "decision_ids": [FLIPPED_ID]}


def test_rollback_makes_the_previous_good_revision_live_and_records_it(world: Path, bundles: Bundles) -> None:
    _promote(world, bundles.good, "dev")
    _promote(world, bundles.newer, "dev")
    live = world / "channels" / "dev" / "bundle.tar.gz"
    assert live.read_bytes() == bundles.newer.read_bytes()

    back = _cli(world, "rollback", "dev", "--as", "oncall", "--note", "INC-7")
    assert back.returncode == 0, back.stdout + back.stderr
    assert "rolled dev back from v2 to v1" in back.stdout
    assert live.read_bytes() == bundles.good.read_bytes()
    doc = _channel(world, "dev")
    assert doc["live"]["revision"] == "v1" and doc["live"]["action"] == "rollback"
    entry = doc["history"][-1]
    assert entry["action"] == "rollback" and entry["by"] == "oncall" and entry["note"] == "INC-7"
    assert entry["replaced"] == {"revision": "v2", "sha256": _sha256(bundles.newer)}

    # v2 was rolled back from, so it is not "the previous good revision": there is none left.
    snapshot = _snapshot(world)
    again = _cli(world, "rollback", "dev")
    assert again.returncode == 1 and "no earlier good revision" in again.stderr
    assert _snapshot(world) == snapshot
    # Named explicitly, it can come back.
    forward = _cli(world, "rollback", "dev", "--to", "v2")
    assert forward.returncode == 0, forward.stderr
    assert live.read_bytes() == bundles.newer.read_bytes()


def test_rollback_refuses_a_revision_file_changed_after_publishing(seeded: Path, bundles: Bundles) -> None:
    (seeded / "channels" / "dev" / "revisions" / "v4.tar.gz").write_bytes(bundles.unsigned.read_bytes())
    with pytest.raises(PromotionError, match="changed after it was published"):
        rollback(load_environments(seeded / "environments.yaml"), "dev", by="test")
    assert (seeded / "channels" / "dev" / "bundle.tar.gz").read_bytes() == bundles.flip.read_bytes()


def test_a_published_revision_never_changes(world: Path, bundles: Bundles, tmp_path: Path) -> None:
    _promote(world, bundles.good, "dev")
    impostor = tmp_path / "impostor.tar.gz"
    build_bundle(_policy(tmp_path / "other", flip=True), impostor, revision="v1", include_tests=True)
    snapshot = _snapshot(world)
    refused = _cli(world, "promote", impostor, "--to", "dev")
    assert refused.returncode == 1 and "a published revision never changes" in refused.stderr
    assert _snapshot(world) == snapshot


def test_channel_status_shows_what_is_live_and_the_history(seeded: Path, bundles: Bundles) -> None:
    world = seeded
    shown = _cli(world, "channel", "status", "dev")
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[1].startswith(f"  live: v6  sha256 {_sha256(bundles.flip)}")
    history = [line.split()[2] for line in lines[3:]]
    assert history == ["v6", "v4", "v3", "v2", "v1"], shown.stdout
    assert "replacing v4" in lines[3] and "by test" in lines[3]
    every = _cli(world, "channel", "status")
    assert re.search(r"^prod  channel .*\(from staging; gates: tests, signed, replay, from\)$", every.stdout, re.M)
    assert "  live: v1  sha256" in every.stdout
    as_json = json.loads(_cli(world, "channel", "status", "dev", "--json").stdout)
    assert as_json == _channel(world, "dev")
    # `tollgate status ENV`, as the issue names it, is the same command (without ENV it asks a sidecar).
    assert _cli(world, "status", "dev").stdout == shown.stdout


class _StaticFiles(http.server.SimpleHTTPRequestHandler):
    """Plain files, with what every static server and object store adds: an ETag per file version, and 304
    for a matching If-None-Match (Python's http.server has neither; nginx and S3 both do)."""

    def send_head(self) -> Any:
        path = Path(self.translate_path(self.path))
        if path.is_file():
            etag = f'"{hashlib.md5(path.read_bytes()).hexdigest()}"'  # as S3's ETag for a simple upload
            if self.headers.get("If-None-Match") == etag:
                self.send_response(304)
                self.send_header("ETag", etag)
                self.end_headers()
                return None
            self._etag = etag
        return super().send_head()

    def end_headers(self) -> None:
        if getattr(self, "_etag", None):
            self.send_header("ETag", self._etag)
        super().end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def static_server(seeded: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             partial(_StaticFiles, directory=str(seeded / "channels")))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _get(url: str, etag: str | None = None) -> tuple[int, bytes, str]:
    request = urllib.request.Request(url, headers={"If-None-Match": etag} if etag else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read(), response.headers["ETag"]
    except urllib.error.HTTPError as exc:
        if exc.code == 304:
            return 304, b"", exc.headers["ETag"]
        raise


def test_a_static_http_server_serves_the_channel_as_published(seeded: Path, bundles: Bundles,
                                                              static_server: str) -> None:
    status, body, etag = _get(f"{static_server}/dev/bundle.tar.gz")
    assert status == 200 and etag and body == bundles.flip.read_bytes()
    assert _get(f"{static_server}/dev/bundle.tar.gz", etag)[0] == 304  # what a polling sidecar sees
    assert _get(f"{static_server}/dev/revisions/v6.tar.gz")[1] == body
    assert _get(f"{static_server}/prod/bundle.tar.gz")[1] == bundles.good.read_bytes()
    channel = json.loads(_get(f"{static_server}/dev/channel.json")[1])
    assert channel["live"]["sha256"] == hashlib.sha256(body).hexdigest()

    assert _cli(seeded, "rollback", "dev").returncode == 0
    status, body, new_etag = _get(f"{static_server}/dev/bundle.tar.gz", etag)
    assert status == 200 and new_etag != etag and body == bundles.untrusted.read_bytes()


def test_a_sidecar_on_the_channel_url_serves_each_promotion_and_rollback(
        seeded: Path, static_server: str, serve: Callable[..., Server]) -> None:
    """The whole path: promote and roll back, while a real `tollgate serve` polls prod's channel over HTTP."""
    server = serve(bundle=f"{static_server}/prod/bundle.tar.gz",
                   extra=["--bundle-poll", "0.2", "--bundle-keys", str(seeded / "keys" / "prod"),
                          "--require-signatures"])
    assert server.authorize(tool_request()).bundle_revision == "v1"

    _promote(seeded, "v2", "staging")  # v2 is in dev's history (see `published`)
    _promote(seeded, "v2", "prod")
    _wait_for_revision(server, "v2")
    assert _cli(seeded, "rollback", "prod").returncode == 0
    _wait_for_revision(server, "v1")


def _wait_for_revision(server: Server, revision: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = server.authorize(tool_request()).bundle_revision
        if seen == revision:
            return
        time.sleep(0.1)
    raise AssertionError(f"the sidecar still serves {seen!r}, not {revision!r}:\n{server.stderr}")


def test_a_replay_gate_without_its_recorded_decisions_fails(seeded: Path, bundles: Bundles) -> None:
    config = seeded / "environments.yaml"
    config.write_text(config.read_text().replace(str(SAMPLE), str(seeded / "missing.jsonl")))
    snapshot = _snapshot(seeded)
    failed = _cli(seeded, "promote", "v2", "--to", "staging")
    assert failed.returncode == 1
    assert re.search(r"^  replay +FAILED  cannot read decisions file .*missing\.jsonl", failed.stdout, re.M)
    assert _snapshot(seeded) == snapshot


def test_a_replay_gate_reads_the_fleets_log_in_the_shared_store(seeded: Path, pg_url: str) -> None:
    """state_store: the sample's decisions, appended to a sidecar's log and shipped to the fleet's store, are what
    the gate replays (as `tollgate replay --state-store` reads them): the flip is found there as in the file."""
    from tests.conftest import wait_for
    from tests.decisionlog.test_pg_export import _fill, _migrate, _shipping

    sample = [json.loads(line) for line in SAMPLE.read_text().splitlines()]
    _fill(seeded / "decisions.db", sample)
    _migrate(pg_url)
    shipping = _shipping(seeded / "decisions.db", pg_url)
    shipping.start()
    try:
        wait_for(lambda: shipping.exporters[0].status.cursor == len(sample), what="the sample shipped")
    finally:
        shipping.stop(1)
    config = seeded / "environments.yaml"
    password = seeded / "pg-password"
    password.write_text("not-needed-under-trust\n")
    staging = "  staging:\n    keys: keys/staging\n    gates:\n      tests: true\n"
    assert staging in config.read_text()  # the gate under test is replay: staging's tests gate is left out here
    config.write_text(config.read_text().replace(staging, "  staging:\n    keys: keys/staging\n    gates:\n")
                      .replace(f"decisions: {SAMPLE}", f"state_store: {pg_url}\n        password_file: pg-password"))
    gate = load_environments(config).get("staging").replay
    assert gate is not None and gate.state_store == pg_url and gate.password_file == password
    snapshot = _snapshot(seeded)

    failed = _cli(seeded, "promote", "v6", "--to", "staging")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    line = re.search(r"^  replay +FAILED  (.*)$", failed.stdout, re.M)
    assert line and f"1 deny→allow unacknowledged in {len(sample)} decisions from the fleet's decision log in " \
                     f"{pg_url}: {FLIPPED_ID}" in line.group(1), failed.stdout
    assert _snapshot(seeded) == snapshot
    recent = _cli(seeded, "promote", "v2", "--to", "staging")
    assert recent.returncode == 0, recent.stdout + recent.stderr
    assert f"no deny→allow flips in {len(sample)} decisions from the fleet's decision log" in recent.stdout

    password.write_text("")  # the file is read: an empty one is refused, and the gate fails closed
    empty = _cli(seeded, "promote", "v6", "--to", "staging")
    assert empty.returncode == 1 and re.search(r"^  replay +FAILED  .*password_file.* is empty", empty.stdout,
                                                re.M), empty.stdout


@pytest.mark.parametrize(("replay", "message"), [
    ("{state_store: 'sqlite:///x.db'}", "state_store: must be a postgresql:// URL, not 'sqlite:///x.db'"),
    ("{state_store: 'postgresql://u:secret@db/fleet'}", "state_store: holds a password: put it in a file"),
    ("{decisions: d.jsonl, password_file: pw}", "password_file: only with state_store"),
    ("{decisions: d.jsonl, state_store: 'postgresql://db/fleet'}", "exactly one of decisions"),
])
def test_a_replay_gates_state_store_is_checked_when_the_file_is_read(tmp_path: Path, replay: str,
                                                                      message: str) -> None:
    path = tmp_path / "environments.yaml"
    path.write_text(f"environments: {{dev: {{require_signatures: false, gates: {{replay: {replay}}}}}}}\n")
    with pytest.raises(EnvironmentsError, match=re.escape(message)) as raised:
        load_environments(path)
    assert "secret" not in str(raised.value)


def test_concurrent_promotions_into_one_environment_lose_no_history(world: Path, bundles: Bundles) -> None:
    """Each promotion reads the channel, runs its gates (seconds), then writes: without the lock, the second
    writer would drop the first one's history entry."""
    envs = load_environments(world / "environments.yaml")
    errors: list[BaseException] = []

    def run(bundle: Path) -> None:
        try:
            assert promote(envs, "dev", bundle, by=bundle.name, tests=REGO).published
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(b,)) for b in (bundles.good, bundles.newer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    doc = _channel(world, "dev")
    assert sorted(h["revision"] for h in doc["history"]) == ["v1", "v2"]
    assert doc["history"][1]["replaced"]["revision"] == doc["history"][0]["revision"]
    assert doc["live"]["revision"] == doc["history"][1]["revision"]


def test_acknowledgements_parse_transitions_ids_and_files(tmp_path: Path) -> None:
    listed = tmp_path / "acks.txt"
    listed.write_text("# reviewed in PR 812\n\nid-3  # the third\n")
    ack = parse_ack(["deny->allow,id-1", "id-2"], [listed])
    assert ack.transitions == {("deny", "allow")} and ack.decision_ids == {"id-1", "id-2", "id-3"}
    assert ack.covers(("deny", "allow"), "any") and ack.covers(("require_approval", "allow"), "id-3")
    assert not ack.covers(("require_approval", "allow"), "id-4")
    with pytest.raises(PromotionError, match="--ack deny→allw: 'deny→allw' is not a transition"):
        parse_ack(["deny→allw"])
    with pytest.raises(PromotionError, match=r"ack file .*missing\.txt: cannot be read"):
        parse_ack([], [tmp_path / "missing.txt"])


def test_a_channel_file_from_a_newer_format_is_refused(seeded: Path) -> None:
    path = seeded / "channels" / "prod" / "channel.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "format": 2}))
    refused = _cli(seeded, "channel", "status", "prod")
    assert refused.returncode == 1 and "not a channel file (format 2; this tollgate reads format 1)" in refused.stderr


# -- the environments file ------------------------------------------------------------------------------------


def test_the_projects_environments_file_is_valid() -> None:
    envs = load_environments(ROOT / "bundles" / "environments.yaml")
    assert list(envs.environments) == ["dev", "staging", "prod"]
    assert envs.get("prod").promote_from == "staging" and envs.get("staging").promote_from == "dev"
    assert envs.get("prod").gates == ("tests", "signed", "replay", "from")


BAD_CONFIGS = [
    ("unknown-top-key", "chanel_root: x\nenvironments: {dev: {require_signatures: false}}",
     "chanel_root: unknown key"),
    ("no-environments", "channel_root: x", "environments: must map"),
    ("unknown-env-key", "environments: {dev: {require_signatures: false, key: k}}",
     "environments.dev.key: unknown key (known: keys, require_signatures, channel, gates)"),
    ("unknown-gate", "environments: {dev: {require_signatures: false, gates: {test: true}}}",
     "environments.dev.gates.test: unknown key (known: tests, signed, replay, from)"),
    ("signatures-without-gate", "environments: {prod: {keys: k}}",
     "environments.prod.gates: require_signatures is true, so the `signed` gate must be on"),
    ("signed-without-keys", "environments: {prod: {gates: {signed: true}}}", "environments.prod.keys: required"),
    ("from-unknown-env", "environments: {dev: {require_signatures: false, gates: {from: stagin}}}",
     "environments.dev.gates.from: 'stagin' is not an environment"),
    ("from-cycle", "environments: {a: {require_signatures: false, gates: {from: b}}, "
                   "b: {require_signatures: false, gates: {from: a}}}", "form a cycle"),
    ("replay-without-source", "environments: {dev: {require_signatures: false, gates: {replay: {}}}}",
     "environments.dev.gates.replay: name the recorded decisions"),
    ("replay-bad-transition", "environments: {dev: {require_signatures: false, gates: {replay: "
                              "{decisions: d.jsonl, fail_on: [deny→allw]}}}}",
     "environments.dev.gates.replay.fail_on: 'deny→allw' is not a transition"),
    ("require-signatures-not-bool", "environments: {dev: {require_signatures: 'no'}}",
     "environments.dev.require_signatures: must be true or false"),
    ("shared-channel", "environments: {a: {require_signatures: false, channel: x}, "
                       "b: {require_signatures: false, channel: x}}", "environments.b.channel"),
]


@pytest.mark.parametrize(("text", "message"), [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_a_wrong_environments_file_is_refused_naming_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "environments.yaml"
    path.write_text(text)
    with pytest.raises(EnvironmentsError) as caught:
        load_environments(path)
    assert str(caught.value).startswith(f"{path}: ")
    assert message in str(caught.value)


@pytest.mark.parametrize(("since", "accepted"), [("7d", True), ("1h30m", True), ("2026-11-01T00:00:00Z", True),
                                                ("last week", False)], ids=["days", "compound", "rfc3339", "prose"])
def test_a_replay_gate_since_is_a_time_or_a_duration_back(tmp_path: Path, since: str, accepted: bool) -> None:
    path = tmp_path / "environments.yaml"
    path.write_text("environments: {dev: {require_signatures: false, gates: {replay: "
                    f"{{decisions: d.jsonl, since: '{since}'}}}}}}}}")
    if accepted:
        gate = load_environments(path).get("dev").replay
        assert gate is not None and gate.since == since
    else:
        with pytest.raises(EnvironmentsError, match=r"environments\.dev\.gates\.replay\.since"):
            load_environments(path)


def test_the_cli_names_the_key_of_a_wrong_environments_file(tmp_path: Path) -> None:
    (tmp_path / "environments.yaml").write_text("environments: {dev: {require_signatures: false, gates: {x: 1}}}")
    result = _cli(tmp_path, "channel", "status")
    assert result.returncode == 1 and "environments.dev.gates.x: unknown key" in result.stderr


def test_channel_root_flag_moves_every_channel(world: Path, bundles: Bundles, tmp_path: Path) -> None:
    elsewhere = tmp_path / "published"
    done = _cli(world, "promote", bundles.good, "--to", "dev", "--channel-root", elsewhere)
    assert done.returncode == 0, done.stderr
    assert (elsewhere / "dev" / "bundle.tar.gz").is_file() and not (world / "channels" / "dev").exists()
    assert read_channel(load_environments(world / "environments.yaml", channel_root=elsewhere).get("dev")).live


# -- the README -----------------------------------------------------------------------------------------------


def test_readme_promotion_commands_run_as_shown(tmp_path: Path) -> None:
    """Each `$ ` line of the section's console blocks, run in a scratch checkout: rego/, samples/, bundles/
    (without channels), and the CI key the signing section made."""
    (tmp_path / "rego").symlink_to(REGO)
    (tmp_path / "samples").symlink_to(ROOT / "samples")
    shutil.copytree(ROOT / "bundles", tmp_path / "bundles", ignore=shutil.ignore_patterns("channels"))
    scratch_venv(tmp_path)
    write_key(tmp_path, "ci-2026", ec.generate_private_key(ec.SECP256R1()), private=True)
    (tmp_path / "ci-2026.pem").rename(tmp_path / "ci-2026.key")
    ran = run_console_lines(readme_section("Promoting bundles"), tmp_path)
    assert sum("tollgate promote" in line for line in ran) == 3 and "channel status prod" in ran[-1]
    prod = json.loads((tmp_path / "bundles" / "channels" / "prod" / "channel.json").read_text())
    assert prod["live"]["revision"] == "v1.4.0" and prod["history"][0]["note"] == "CHG-1234"


def test_rollback_to_an_older_sequence_signs_its_intent_and_refuses_without_a_key(
        world: Path, bundles: Bundles, tmp_path: Path) -> None:
    key = load_private_key(bundles.trusted_public.parent.parent / "private" / "ci.pem")
    built = {}
    for sequence, revision in enumerate(["s1", "s2"], 1):
        path = tmp_path / f"{revision}.tar.gz"
        build_bundle(REGO, path, revision=revision, sequence=sequence)
        sign_bundle(path, key, keyid="ci")
        built[revision] = path.read_bytes()
        _promote(world, path, "dev")
    envs = load_environments(world / "environments.yaml")
    snapshot = _snapshot(world)
    with pytest.raises(PromotionError, match=r"revision s1 has sequence 1 and the live s2 2: .* --key"):
        rollback(envs, "dev", to="s1", by="oncall")
    assert _snapshot(world) == snapshot

    live = world / "channels" / "dev" / "bundle.tar.gz"
    for to, sequence in (("s1", 3), ("s2", 4), ("s1", 5)):  # back, forward again, back again
        outcome = rollback(envs, "dev", to=to, by="oncall", signer=Signer(key, "ci"))
        assert outcome.published and outcome.entry is not None
        verified = verify_bundle(live.read_bytes(), {"ci": key.public_key()})
        assert verified.revision == to
        metadata = json.loads(read_archive(live.read_bytes())[".manifest"])["metadata"]
        assert metadata["sequence"] == sequence
        assert {k: metadata["rollback"][k] for k in ("to", "by")} == {"to": to, "by": "oncall"}
        assert outcome.entry["sha256"] == _sha256(live) and "re-signed by ci" in outcome.entry["source"]
    # revisions/ keeps each revision as first published.
    assert (world / "channels" / "dev" / "revisions" / "s1.tar.gz").read_bytes() == built["s1"]
