"""Promote bundles through environments (dev → staging → prod): gates, a static channel per environment, history.

An environment's channel is a directory of plain files, so any static HTTP server or object store serves it:

    CHANNEL/bundle.tar.gz              the live bundle (what sidecars poll, with ETag / If-None-Match)
    CHANNEL/revisions/REVISION.tar.gz  every revision ever published there, immutable (what rollback uses)
    CHANNEL/channel.json               the live revision and digest, and the history of promotions and rollbacks

Each file is replaced by a rename (a reader sees the old file or the new one, never part of one), in that order:
the immutable revision, then the live bundle, then channel.json. Environments, their trusted keys and gates are
defined in `bundles/environments.yaml` (see `tollgate.authoring.environments`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from tollgate.authoring.environments import (
    DEFAULT_ENVIRONMENTS,
    GATES,
    Environment,
    Environments,
    EnvironmentsError,
    PromotionError,
    ReplayGate,
    load_environments,
)
from tollgate.authoring.replay import (
    Candidate,
    Recorded,
    ReplayError,
    Transition,
    Window,
    gate_spelling,
    parse_transitions,
    read_data_dir,
    read_jsonl,
    read_state_store,
    replay,
    transition_label,
)
from tollgate.bundle import (
    DEFAULT_SIZE_LIMIT,
    BundleError,
    PrivateKey,
    load_bundle,
    load_public_keys,
    sign_bundle,
    verify_bundle,
    write_file_atomically,
)
from tollgate.bundle._archive import MANIFEST_FILE, SIGNATURES_FILE, read_archive, write_archive
from tollgate.bundle._loader import manifest_sequence
from tollgate.clock import Clock, SystemClock
from tollgate.encoding import format_time, parse_moment

LIVE_BUNDLE = "bundle.tar.gz"
CHANNEL_FILE = "channel.json"
REVISIONS_DIR = "revisions"
CHANNEL_FORMAT = 1
# A revision names a file in the channel (revisions/REVISION.tar.gz), so it must be a plain file name.
_REVISION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


# -- channels -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Channel:
    """What an environment's channel.json says: the live revision and the history (oldest first)."""

    environment: str
    live: Mapping[str, Any] | None
    history: tuple[Mapping[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {"format": CHANNEL_FORMAT, "environment": self.environment, "bundle": LIVE_BUNDLE,
                "live": dict(self.live) if self.live else None, "history": [dict(h) for h in self.history]}

    def entry_for(self, *, revision: str | None = None, sha256: str | None = None) -> Mapping[str, Any] | None:
        """The newest history entry that made this revision (or these bytes) live, or None."""
        for entry in self.history[::-1]:
            if (revision is None or entry.get("revision") == revision) and (
                    sha256 is None or entry.get("sha256") == sha256):
                return entry
        return None


def read_channel(env: Environment) -> Channel:
    """An environment's channel; empty (nothing live, no history) when nothing was ever published there."""
    path = env.channel / CHANNEL_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return Channel(environment=env.name, live=None)
    except OSError as exc:
        raise PromotionError(f"channel {path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        doc = json.loads(raw)
        if not isinstance(doc, dict) or not isinstance(doc.get("history"), list):
            raise ValueError("not an object with a history")
        if doc.get("format", CHANNEL_FORMAT) != CHANNEL_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}; this tollgate reads format {CHANNEL_FORMAT}")
    except ValueError as exc:
        raise PromotionError(f"channel {path}: not a channel file ({exc}) (hint: restore it from a backup; "
                             "the revisions/ directory still holds every bundle)") from exc
    return Channel(environment=env.name, live=doc.get("live"), history=tuple(doc["history"]))


def revision_path(env: Environment, revision: str) -> Path:
    return env.channel / REVISIONS_DIR / f"{revision}.tar.gz"


# -- gates ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GateResult:
    gate: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Acknowledgement:
    """Flips the person promoting has looked at and accepts: whole transitions, or single decisions by ID."""

    transitions: frozenset[Transition] = frozenset()
    decision_ids: frozenset[str] = frozenset()
    files: tuple[str, ...] = ()  # ack files the decision IDs came from, for the record

    def covers(self, transition: Transition, decision_id: str) -> bool:
        return transition in self.transitions or decision_id in self.decision_ids


def parse_ack(values: Sequence[str], files: Sequence[str | Path] = ()) -> Acknowledgement:
    """`--ack` values (a transition such as deny→allow, or a decision ID) and ack files (one decision ID per
    line; blank lines and `#` comments are ignored)."""
    transitions: set[Transition] = set()
    ids: set[str] = set()
    for value in values:
        for part in (p.strip() for p in value.split(",")):
            if not part:
                continue
            if "→" in part or "->" in part:
                try:
                    transitions |= parse_transitions(part)
                except ValueError as exc:
                    raise PromotionError(f"--ack {part}: {exc}") from None
            else:
                ids.add(part)
    for name in files:
        try:
            text = Path(name).read_text()
        except OSError as exc:
            raise PromotionError(f"ack file {name}: cannot be read ({exc.strerror or exc})") from exc
        for line in text.splitlines():
            word = line.split("#", 1)[0].strip()
            if word:
                ids.add(word)
    return Acknowledgement(frozenset(transitions), frozenset(ids), tuple(str(f) for f in files))


@dataclass
class _Candidate:
    """The bundle being promoted: its exact bytes, staged in a private file that every gate reads."""

    path: Path
    content: bytes
    revision: str
    sha256: str
    label: str  # how messages name it (the file given, or ENV:REVISION)
    from_env: str | None  # the environment it was taken from, when given as a revision
    acknowledged: dict[str, Any] = field(default_factory=dict)

    def named(self, message: str) -> str:
        """A message about the staged copy, naming the bundle as the person gave it."""
        return message.replace(str(self.path), self.label)


def _gate_tests(candidate: _Candidate, tests: str | Path | None, environments: Path) -> GateResult:
    from tollgate.authoring._tests_gate import check_tests

    passed, detail = check_tests(candidate.path, label=candidate.label, tests=None if tests is None else Path(tests),
                                 environments=environments)
    return GateResult("tests", passed, detail)


def _gate_signed(env: Environment, candidate: _Candidate) -> GateResult:
    assert env.keys is not None  # load_environments requires keys with the signed gate
    try:
        verified = verify_bundle(candidate.content, load_public_keys(env.keys))
    except BundleError as exc:
        return GateResult("signed", False, str(exc).replace(f"bundle <{len(candidate.content)} bytes>",
                                                            f"bundle {candidate.label}"))
    return GateResult("signed", True, f"signed by {verified.keyid} ({verified.algorithm}), trusted in {env.name}")


def _gate_replay(gate: ReplayGate, candidate: _Candidate, ack: Acknowledgement, *, now: datetime) -> GateResult:
    window = Window(since=parse_moment(gate.since, now=now) if gate.since else None, limit=gate.limit)
    try:
        records = _recorded(gate, window)
        with Candidate(candidate.path, entrypoint=gate.entrypoint) as engine:
            # Every change is kept (not a few examples), so that each flip can be acknowledged by its ID.
            report = replay(records, engine, source=str(gate.source), window=window, examples=sys.maxsize)
    except ReplayError as exc:
        return GateResult("replay", False, candidate.named(str(exc)))
    if report.bad_records:
        first = report.bad_examples[0]
        return GateResult("replay", False, f"{report.bad_records} record(s) in {gate.source} cannot be read "
                                           f"(first: {first.where}: {first.message}); fix them and promote again")
    checked = f"{report.replayed} decisions from {gate.source}"
    watched = " or ".join(gate_spelling(gate.fail_on).split(","))
    flips = [c for t in report.tripped(gate.fail_on) for c in t.examples]
    open_flips = [c for c in flips if not ack.covers(c.transition, c.record.decision_id)]
    if open_flips:
        counts: dict[str, int] = {}
        for c in open_flips:
            counts[transition_label(c.transition, "→")] = counts.get(transition_label(c.transition, "→"), 0) + 1
        shown = ", ".join(f"{c.record.decision_id} ({c.record.agent} {c.record.tool})" for c in open_flips[:5])
        more = f" and {len(open_flips) - 5} more" if len(open_flips) > 5 else ""
        listed = ", ".join(f"{n} {label}" for label, n in counts.items())
        return GateResult("replay", False, f"{listed} unacknowledged in {checked}: {shown}{more} (hint: look at "
                                           f"them with `tollgate replay`; if they are intended, pass --ack "
                                           f"{next(iter(counts))} or list their decision IDs in --ack-file)")
    if flips:
        candidate.acknowledged = {
            "transitions": sorted(transition_label(t, "→") for t in ack.transitions),
            "decision_ids": sorted(c.record.decision_id for c in flips),
            **({"files": list(ack.files)} if ack.files else {}),
        }
        return GateResult("replay", True, f"{len(flips)} {watched} flip(s) in {checked}, all acknowledged")
    return GateResult("replay", True, f"no {watched} flips in {checked} ({report.changed} other change(s))")


def _recorded(gate: ReplayGate, window: Window) -> Iterator[Recorded]:
    """The replay gate's recorded decisions over its window: a JSON Lines file, a sidecar's log, or the fleet's
    log in the shared store (read as `tollgate replay --state-store` reads it)."""
    if gate.state_store is not None:
        password = "" if gate.password_file is None else str(gate.password_file)
        return read_state_store(gate.state_store, window, password_file=password)
    if gate.decisions is not None:
        return read_jsonl(gate.decisions, window)
    return read_data_dir(gate.data_dir or Path("."), window)


def _gate_from(envs: Environments, env: Environment, candidate: _Candidate) -> GateResult:
    assert env.promote_from is not None
    source = envs.get(env.promote_from)
    entry = read_channel(source).entry_for(sha256=candidate.sha256)
    if entry is None:
        return GateResult("from", False, f"{candidate.label} (revision {candidate.revision}, sha256 "
                                         f"{candidate.sha256[:16]}) was never published in {source.name} "
                                         f"(hint: promote it to {source.name} first: {env.name} only takes what "
                                         f"{source.name} has run)")
    return GateResult("from", True, f"{source.name} published it at {entry.get('at')} "
                                    f"(revision {entry.get('revision')})")


# -- promote, rollback ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    """What promote or rollback did (published) or would have done, with every gate's verdict."""

    environment: str
    revision: str
    sha256: str
    gates: tuple[GateResult, ...]
    entry: Mapping[str, Any] | None  # the history entry recorded; None when nothing was published

    @property
    def published(self) -> bool:
        return self.entry is not None

    @property
    def failed(self) -> tuple[GateResult, ...]:
        return tuple(g for g in self.gates if not g.passed)


def promote(envs: Environments, target: str, bundle: str | Path, *, by: str, ack: Acknowledgement = Acknowledgement(),
            note: str = "", tests: str | Path | None = None, clock: Clock = SystemClock()) -> Outcome:
    """Check every gate of the target environment on bundle (a bundle file, or a revision published in the
    environment its `from` gate names) and, when all pass, publish it to the target's channel and record it.
    tests: the sources (or the test bundle built beside it) the tests gate runs the tests from; by default the
    sources the manifest names (see _tests_gate). A failing gate leaves every file as it was. Errors that are not
    a gate's verdict raise PromotionError."""
    env = envs.get(target)
    with _locked(envs), tempfile.TemporaryDirectory(prefix="tollgate-promote-") as tmp:
        candidate = _stage(envs, env, bundle, Path(tmp))
        channel = read_channel(env)
        if channel.live and channel.live.get("sha256") == candidate.sha256:
            raise PromotionError(f"{candidate.label} (revision {candidate.revision}) is already live in {env.name}")
        _check_immutable(env, channel, candidate)
        results = []
        for gate in env.gates:
            if gate == "tests":
                results.append(_gate_tests(candidate, tests, envs.path))
            elif gate == "signed":
                results.append(_gate_signed(env, candidate))
            elif gate == "replay":
                assert env.replay is not None
                results.append(_gate_replay(env.replay, candidate, ack, now=clock.now()))
            else:
                results.append(_gate_from(envs, env, candidate))
        if any(not r.passed for r in results):
            return Outcome(env.name, candidate.revision, candidate.sha256, tuple(results), None)
        entry: dict[str, Any] = {
            "action": "promote", "revision": candidate.revision, "sha256": candidate.sha256,
            "at": format_time(clock.now()), "by": by, "from": candidate.from_env or env.promote_from,
            "source": candidate.label,
            "gates": {r.gate: r.detail for r in results},
        }
        if candidate.acknowledged:
            entry["acknowledged"] = candidate.acknowledged
        _publish(env, channel, candidate.content, entry, note)
        return Outcome(env.name, candidate.revision, candidate.sha256, tuple(results), entry)


@dataclass(frozen=True)
class Signer:
    """The key a rollback signs its intent with (one the environment's sidecars trust), and its key ID."""

    key: PrivateKey
    keyid: str


def rollback(envs: Environments, target: str, *, to: str | None = None, by: str, note: str = "",
             clock: Clock = SystemClock(), signer: Signer | None = None) -> Outcome:
    """Make an earlier revision live again: the named one, or the previous good one (the one live before the
    current one, skipping revisions rolled back from since they were last promoted).

    Sidecars refuse a signed bundle whose manifest sequence is below the highest they accepted (an old signed
    bundle replayed). So when the earlier revision's sequence is below the live one's, the rollback signs its
    intent: the revision's files are published with a manifest whose sequence is one above the live one and
    whose metadata.rollback names the revisions, signed by signer (PromotionError without one). Its history
    entry records those bytes' sha256; revisions/ keeps the revision as first published."""
    env = envs.get(target)
    with _locked(envs):
        channel = read_channel(env)
        if channel.live is None:
            raise PromotionError(f"nothing is live in {env.name}, so there is nothing to roll back "
                                 f"(channel {env.channel})")
        current = channel.live
        entry = channel.entry_for(revision=to) if to is not None else _previous_good(channel)
        if entry is None:
            if to is not None:
                raise PromotionError(f"revision {to} was never live in {env.name} (hint: `tollgate channel status "
                                     f"{env.name}` lists its history)")
            raise PromotionError(f"{env.name} has no earlier good revision to roll back to (hint: name one with "
                                 "--to, or promote a fixed bundle)")
        if entry["sha256"] == current.get("sha256"):
            raise PromotionError(f"revision {entry['revision']} is already live in {env.name}")
        path = revision_path(env, entry["revision"])
        try:
            content = path.read_bytes()
        except OSError as exc:
            raise PromotionError(f"revision {entry['revision']} of {env.name}: {path} cannot be read "
                                 f"({exc.strerror or exc})") from exc
        digest = hashlib.sha256(content).hexdigest()
        published = _as_published(channel, entry)
        if digest != published["sha256"]:
            raise PromotionError(f"{path} has sha256 {digest} but the history recorded {published['sha256']}: the "
                                 "file changed after it was published; refusing to serve it")
        source = str(path.name)
        marked = _signed_intent(env, current, content, entry["revision"], signer=signer, by=by, clock=clock)
        if marked is not None:
            content, sequence = marked
            digest = hashlib.sha256(content).hexdigest()
            assert signer is not None
            source = f"{path.name}, re-signed by {signer.keyid} as a rollback (sequence {sequence})"
        results: tuple[GateResult, ...] = ()
        if env.require_signatures:
            label = f"{env.name}:{entry['revision']}"
            result = _gate_signed(env, _Candidate(path, content, entry["revision"], digest, label, None))
            results = (result,)
            if not result.passed:
                return Outcome(env.name, entry["revision"], digest, results, None)
        record: dict[str, Any] = {"action": "rollback", "revision": entry["revision"], "sha256": digest,
                                  "at": format_time(clock.now()), "by": by, "from": None, "source": source}
        _publish(env, channel, content, record, note)
        return Outcome(env.name, entry["revision"], digest, results, record)


def _as_published(channel: Channel, entry: Mapping[str, Any]) -> Mapping[str, Any]:
    """The history entry that first published entry's revision (a signed rollback records other bytes)."""
    for step in channel.history:
        if step.get("revision") == entry.get("revision") and step.get("action") == "promote":
            return step
    return entry


def _sequence_of(content: bytes) -> int | None:
    try:
        manifest = json.loads(read_archive(content).get(MANIFEST_FILE, b"{}"))
    except (BundleError, ValueError):
        return None
    metadata = manifest.get("metadata") if isinstance(manifest, dict) else None
    return manifest_sequence(metadata) if isinstance(metadata, dict) else None


def _signed_intent(env: Environment, current: Mapping[str, Any], content: bytes, revision: str, *,
                   signer: Signer | None, by: str, clock: Clock) -> tuple[bytes, int] | None:
    """The revision's bundle re-signed as a rollback (and its new sequence), when its sequence is below the live
    bundle's; None when sidecars accept it as it is."""
    try:
        live = (env.channel / LIVE_BUNDLE).read_bytes()
    except OSError as exc:
        raise PromotionError(f"{env.channel / LIVE_BUNDLE}: cannot be read ({exc.strerror or exc})") from exc
    live_sequence, old_sequence = _sequence_of(live), _sequence_of(content)
    if live_sequence is None or (old_sequence is not None and old_sequence >= live_sequence):
        return None
    if signer is None:
        raise PromotionError(f"revision {revision} has sequence {old_sequence} and the live {current.get('revision')} "
                             f"{live_sequence}: {env.name}'s sidecars refuse an older signed bundle unless its "
                             "rollback is signed (hint: pass --key KEY.pem --kid ID, a key they trust)")
    files = read_archive(content)
    files.pop(SIGNATURES_FILE, None)
    manifest = json.loads(files[MANIFEST_FILE])
    sequence = live_sequence + 1
    manifest["metadata"] = {**manifest.get("metadata", {}), "sequence": sequence, "rollback": {
        "from": current.get("revision"), "to": revision, "at": format_time(clock.now()), "by": by}}
    files[MANIFEST_FILE] = json.dumps(manifest, indent=2, sort_keys=True, ensure_ascii=False).encode() + b"\n"
    with tempfile.TemporaryDirectory(prefix="tollgate-rollback-") as tmp:
        staged = Path(tmp) / "bundle.tar.gz"
        staged.write_bytes(write_archive(files))
        try:
            sign_bundle(staged, signer.key, keyid=signer.keyid)
        except BundleError as exc:
            raise PromotionError(f"signing the rollback to {revision}: {exc}") from exc
        return staged.read_bytes(), sequence


def _previous_good(channel: Channel) -> Mapping[str, Any] | None:
    bad: set[str] = set()
    for step in channel.history:
        if step.get("action") == "promote":
            bad.discard(step.get("sha256", ""))
        replaced = step.get("replaced") or {}
        if step.get("action") == "rollback" and replaced.get("sha256"):
            bad.add(replaced["sha256"])
    current = channel.live.get("sha256") if channel.live else None
    for entry in channel.history[::-1]:
        if entry.get("sha256") not in bad and entry.get("sha256") != current:
            return entry
    return None


def _stage(envs: Environments, env: Environment, bundle: str | Path, tmp: Path) -> _Candidate:
    """Read the bundle's bytes once; every gate checks those bytes and those bytes are published."""
    given = Path(bundle)
    from_env = None
    if given.is_file():
        path, label = given, str(given)
    elif isinstance(bundle, Path) or "/" in str(bundle) or str(bundle).endswith(".tar.gz"):
        raise PromotionError(f"bundle {bundle}: no such file (hint: build it with `tollgate build`)")
    else:
        if env.promote_from is None:
            raise PromotionError(f"{env.name} has no `from` gate, so there is no environment to take revision "
                                 f"{bundle} from (hint: promote a bundle file)")
        source = envs.get(env.promote_from)
        entry = read_channel(source).entry_for(revision=str(bundle))
        if entry is None:
            raise PromotionError(f"gate from: revision {bundle} was never published in {source.name}, and "
                                 f"{env.name} only takes what {source.name} has run (hint: `tollgate channel "
                                 f"status {source.name}` lists what was; promote it to {source.name} first)")
        path, label, from_env = revision_path(source, str(bundle)), f"{source.name}:{bundle}", source.name
    try:
        if path.stat().st_size > DEFAULT_SIZE_LIMIT:
            raise PromotionError(f"bundle {label}: larger than the {DEFAULT_SIZE_LIMIT}-byte limit")
        content = path.read_bytes()
    except OSError as exc:
        raise PromotionError(f"bundle {label}: cannot be read ({exc.strerror or exc})") from exc
    digest = hashlib.sha256(content).hexdigest()
    if from_env is not None:
        recorded = read_channel(envs.get(from_env)).entry_for(revision=str(bundle))
        if recorded is not None and recorded.get("sha256") != digest:
            raise PromotionError(f"{path} has sha256 {digest} but {from_env}'s history recorded "
                                 f"{recorded.get('sha256')}: it changed after it was published; refusing it")
    staged = tmp / "bundle.tar.gz"
    staged.write_bytes(content)
    try:
        revision = load_bundle(staged).revision
    except BundleError as exc:
        raise PromotionError(str(exc).replace(str(staged), label)) from exc
    if not _REVISION.match(revision):
        raise PromotionError(f"bundle {label}: revision {revision!r} cannot name a file in the channel (hint: "
                             "rebuild with `tollgate build --revision` using letters, digits, . _ + -)")
    return _Candidate(staged, content, revision, digest, label, from_env)


def _check_immutable(env: Environment, channel: Channel, candidate: _Candidate) -> None:
    path = revision_path(env, candidate.revision)
    if path.exists():
        try:
            existing = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise PromotionError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
        if existing != candidate.sha256:
            raise PromotionError(
                f"revision {candidate.revision} was already published in {env.name} with sha256 {existing}; "
                f"{candidate.label} has sha256 {candidate.sha256}, and a published revision never changes "
                "(hint: build the new bundle with a new --revision)")


def _publish(env: Environment, channel: Channel, content: bytes, entry: dict[str, Any], note: str) -> None:
    previous = channel.live
    entry["replaced"] = ({"revision": previous.get("revision"), "sha256": previous.get("sha256")}
                         if previous else None)
    if note:
        entry["note"] = note
    live = {k: entry[k] for k in ("revision", "sha256", "at", "by", "action")}
    live["path"] = f"{REVISIONS_DIR}/{entry['revision']}.tar.gz"
    updated = Channel(environment=env.name, live=live, history=(*channel.history, entry))
    document = json.dumps(updated.as_dict(), indent=2, ensure_ascii=False).encode() + b"\n"
    target = revision_path(env, entry["revision"])
    try:
        if not target.exists():
            write_file_atomically(target, content)
        write_file_atomically(env.channel / LIVE_BUNDLE, content)
        write_file_atomically(env.channel / CHANNEL_FILE, document)
    except BundleError as exc:
        raise PromotionError(f"publishing to {env.channel} failed: {exc}") from exc


@contextlib.contextmanager
def _locked(envs: Environments) -> Iterator[None]:
    """One promotion or rollback at a time per environments file: each reads a channel, decides, then writes.
    The lock is on the environments file itself, so no lock file appears in any channel."""
    try:
        handle = envs.path.open("rb")
    except OSError as exc:
        raise PromotionError(f"{envs.path}: cannot be opened to lock it ({exc.strerror or exc})") from exc
    with handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)



__all__ = [
    "CHANNEL_FILE",
    "DEFAULT_ENVIRONMENTS",
    "GATES",
    "LIVE_BUNDLE",
    "REVISIONS_DIR",
    "Acknowledgement",
    "Channel",
    "Environment",
    "Environments",
    "EnvironmentsError",
    "GateResult",
    "Outcome",
    "PromotionError",
    "ReplayGate",
    "Signer",
    "load_environments",
    "parse_ack",
    "promote",
    "read_channel",
    "revision_path",
    "rollback",
]
