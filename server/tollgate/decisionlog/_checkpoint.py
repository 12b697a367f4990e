"""Signed checkpoints of the decision log's chain head, signed retention anchors, and proving a log against both.

A hash chain shows an edit only to someone who kept a hash from before it: whoever can write decisions.db can
re-hash every record after an edit, or delete a prefix and write the retention anchor that would explain it.
A checkpoint is the head (seq, hash, time) signed with a key the data directory does not hold: an HMAC secret
(both sides need it) or an Ed25519 / ECDSA P-256 private key (verifying needs only the public key). The
sidecar publishes one at an interval; retention signs each anchor it writes with the same key. A rewrite is then
seen as a checkpointed hash the log no longer holds, or an anchor no key signed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from tollgate.decisionlog._store import Anchor, DecisionStore
from tollgate.encoding import canonical_json

CHECKPOINT_TYPE = "tollgate.checkpoint"
ANCHOR_TYPE = "tollgate.anchor"
#: Shortest HMAC secret accepted, in bytes (SHA-256's block of security).
MIN_HMAC_BYTES = 32
#: Largest key file read.
_MAX_KEY_BYTES = 64 * 1024


class CheckpointError(Exception):
    """A checkpoint key or file cannot be used (the message names the file and what to do)."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class CheckpointKey:
    """Signs and checks checkpoints and anchors: an HMAC secret, or an Ed25519 / P-256 key (public: check only)."""

    def __init__(self, *, algorithm: str, key_id: str, secret: bytes = b"",
                 private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | None = None,
                 public: ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey | None = None) -> None:
        self.algorithm = algorithm  # "hmac-sha256", "ed25519" or "es256"
        self.key_id = key_id
        self._secret = secret
        self._private = private
        self._public = public

    @property
    def can_sign(self) -> bool:
        return bool(self._secret) or self._private is not None

    def sign(self, message: bytes) -> str:
        if self._secret:
            return _b64(hmac.new(self._secret, message, hashlib.sha256).digest())
        if isinstance(self._private, ed25519.Ed25519PrivateKey):
            return _b64(self._private.sign(message))
        if isinstance(self._private, ec.EllipticCurvePrivateKey):
            return _b64(self._private.sign(message, ec.ECDSA(hashes.SHA256())))
        raise CheckpointError(f"checkpoint key {self.key_id} is a public key: it can check checkpoints, not sign them")

    def check(self, message: bytes, signature: str) -> bool:
        try:
            raw = _unb64(signature)
        except ValueError:
            return False
        if self._secret:
            return hmac.compare_digest(raw, hmac.new(self._secret, message, hashlib.sha256).digest())
        try:
            if isinstance(self._public, ed25519.Ed25519PublicKey):
                self._public.verify(raw, message)
            elif isinstance(self._public, ec.EllipticCurvePublicKey):
                self._public.verify(raw, message, ec.ECDSA(hashes.SHA256()))
            else:
                return False
        except InvalidSignature:
            return False
        return True


def load_key(path: str | Path, *, setting: str = "decision_log_checkpoint_key_file") -> CheckpointKey:
    """The key in a file: a PEM Ed25519 or P-256 private key (signs), its PEM public key (checks), or else an HMAC
    secret of at least MIN_HMAC_BYTES bytes (surrounding whitespace ignored)."""
    where = f"{setting}: {path}"
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_KEY_BYTES + 1)
    except OSError as exc:
        raise CheckpointError(f"{where}: cannot read the key ({exc.strerror or exc})") from exc
    if len(raw) > _MAX_KEY_BYTES:
        raise CheckpointError(f"{where}: larger than {_MAX_KEY_BYTES} bytes: not a key file")
    if raw.lstrip().startswith(b"-----BEGIN"):
        return _pem_key(raw, where)
    secret = raw.strip()
    if len(secret) < MIN_HMAC_BYTES:
        raise CheckpointError(f"{where}: an HMAC secret must be at least {MIN_HMAC_BYTES} bytes (found {len(secret)});"
                              " make one with `head -c 32 /dev/urandom | base64 > FILE`, outside the data directory")
    key_id = "hmac:" + hashlib.sha256(b"tollgate checkpoint key\n" + secret).hexdigest()[:16]
    return CheckpointKey(algorithm="hmac-sha256", key_id=key_id, secret=secret)


def _pem_key(raw: bytes, where: str) -> CheckpointKey:
    private: Any = None
    try:
        private = serialization.load_pem_private_key(raw, password=None)
        public: Any = private.public_key()
    except (ValueError, TypeError):
        try:
            public = serialization.load_pem_public_key(raw)
        except ValueError as exc:
            raise CheckpointError(f"{where}: not a PEM key without a password ({exc})") from exc
    if isinstance(public, ed25519.Ed25519PublicKey):
        algorithm = "ed25519"
    elif isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1):
        algorithm = "es256"
    else:
        raise CheckpointError(f"{where}: only Ed25519 and ECDSA P-256 keys sign checkpoints "
                              f"(found {type(public).__name__})")
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    key_id = f"{algorithm}:" + hashlib.sha256(der).hexdigest()[:16]
    return CheckpointKey(algorithm=algorithm, key_id=key_id, private=private, public=public)


@dataclass(frozen=True)
class Checkpoint:
    """The chain head at a moment, signed: record `seq` hashed `hash` when the sidecar looked at `time`."""

    seq: int
    hash: str
    time: str
    key_id: str = ""
    signature: str = ""

    def statement(self) -> bytes:
        """What the signature covers."""
        return canonical_json({"type": CHECKPOINT_TYPE, "seq": self.seq, "hash": self.hash,
                               "time": self.time}).encode()

    def signed(self, key: CheckpointKey) -> Checkpoint:
        return Checkpoint(self.seq, self.hash, self.time, key.key_id, key.sign(self.statement()))

    def as_dict(self) -> dict[str, Any]:
        return {"type": CHECKPOINT_TYPE, "seq": self.seq, "hash": self.hash, "time": self.time,
                "key_id": self.key_id, "signature": self.signature}

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> Checkpoint:
        if value.get("type") != CHECKPOINT_TYPE:
            raise ValueError(f"type is {value.get('type')!r}, not {CHECKPOINT_TYPE!r}")
        seq = value.get("seq")
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
            raise ValueError(f"seq is {seq!r}, not a record number")
        fields = {name: value.get(name, "") for name in ("hash", "time", "key_id", "signature")}
        for name, text in fields.items():
            if not isinstance(text, str):
                raise ValueError(f"{name} is {text!r}, not a string")
        return cls(seq, **fields)


def anchor_statement(anchor: Anchor) -> bytes:
    """What an anchor's signature covers."""
    return canonical_json({"type": ANCHOR_TYPE, "upto_seq": anchor.upto_seq, "last_hash": anchor.last_hash,
                           "pruned_at": anchor.pruned_at}).encode()


def read_checkpoints(path: str | Path) -> list[Checkpoint]:
    """The checkpoints in a JSON Lines file (the sidecar's checkpoint file, or an export's checkpoint lines);
    other lines (decision records of an export) are skipped."""
    found: list[Checkpoint] = []
    try:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if CHECKPOINT_TYPE not in line:
                    continue
                try:
                    found.append(Checkpoint.from_dict(json.loads(line)))
                except (ValueError, AttributeError) as exc:
                    raise CheckpointError(f"{path}:{number}: not a checkpoint ({exc})") from exc
    except OSError as exc:
        raise CheckpointError(f"cannot read checkpoints {path} ({exc.strerror or exc})") from exc
    return found


def checkpoint_problems(store: DecisionStore, checkpoints: Iterable[Checkpoint], *,
                        key: CheckpointKey | None) -> list[str]:
    """What is wrong with the log against these checkpoints (and, with a key, with its anchors): [] when the log
    holds every checkpointed head. Without a key, a checkpoint is taken as a head hash kept elsewhere."""
    problems: list[str] = []
    anchors = store.anchors()
    if key is not None:
        problems += anchor_problems(anchors, key)
    bounds = store.bounds()
    for cp in sorted(checkpoints, key=lambda c: c.seq):
        named = f"checkpoint of seq {cp.seq} at {cp.time}"
        if key is not None and not key.check(cp.statement(), cp.signature):
            problems.append(f"{named}: not signed by key {key.key_id} (forged, or signed by another key)")
            continue
        if bounds is not None and bounds[0] <= cp.seq <= bounds[1]:
            found = store.hash_at(cp.seq)
            if found != cp.hash:
                problems.append(f"seq {cp.seq}: hashes {str(found)[:16]}… but the {named} signed {cp.hash[:16]}…: "
                                "the chain was rewritten (records edited and re-hashed, or deleted) since then")
        elif bounds is None or cp.seq > bounds[1]:
            high = bounds[1] if bounds else 0
            if cp.seq > max(high, _pruned(anchors)):
                problems.append(f"{named}: the log ends at seq {high}: records after it were deleted")
        elif not _covered(anchors, cp):
            problems.append(f"{named}: seq {cp.seq} is gone but no retention anchor covers it: records were deleted")
    return problems


def anchor_problems(anchors: Sequence[Anchor], key: CheckpointKey) -> list[str]:
    """Each anchor that this key did not sign: a deleted prefix behind a forged anchor."""
    return [f"the retention anchor at seq {a.upto_seq} is not signed by key {key.key_id}: records up to seq "
            f"{a.upto_seq} were deleted and the anchor forged (or pruned before the key was configured)"
            for a in anchors if not key.check(anchor_statement(a), a.signature)]


def _pruned(anchors: Sequence[Anchor]) -> int:
    return max((a.upto_seq for a in anchors), default=0)


def _covered(anchors: Sequence[Anchor], cp: Checkpoint) -> bool:
    exact = next((a for a in anchors if a.upto_seq == cp.seq), None)
    if exact is not None:
        return exact.last_hash == cp.hash
    return any(a.upto_seq >= cp.seq for a in anchors)
