"""Sign OPA bundles and verify their signatures, in OPA's `.signatures.json` format (one JWT over file hashes)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm
from jwt.utils import der_to_raw_signature

from tollgate.bundle._archive import (
    MANIFEST_FILE,
    SIGNATURES_FILE,
    ArchiveSource,
    archive_bytes,
    describe,
    read_archive,
    write_archive,
    write_file_atomically,
)
from tollgate.bundle._canonical import DEFAULT_HASH_ALGORITHM, HASH_ALGORITHMS, check_data_file, file_hash
from tollgate.bundle._loader import (
    DEFAULT_DATA_LIMITS,
    DEFAULT_SIZE_LIMIT,
    BundleError,
    DataLimits,
    TooLarge,
    check_data_limits,
)

PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

#: The JWS algorithms Tollgate signs and verifies with, and the key each needs.
ALGORITHMS = ("RS256", "ES256")
_MIN_RSA_BITS = 2048


class SignatureError(BundleError):
    """A bundle whose signature does not hold. `reason` says which check failed, for status and metrics:
    unsigned, malformed, bad_signature, unknown_key, algorithm_mismatch, scope_mismatch, file_added,
    file_removed, file_modified, ambiguous_data (a data file OPA and Tollgate read differently), unreadable,
    bad_key."""

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class SignedBundle:
    """What `sign_bundle` wrote."""

    path: Path
    keyid: str
    algorithm: str
    scope: str
    files: tuple[str, ...]  # the files the signature covers, sorted
    sha256: str  # of the signed archive


@dataclass(frozen=True)
class VerifiedBundle:
    """A bundle whose signature verified: who signed it and what it covers (every file but the signature)."""

    source: str
    revision: str
    keyid: str
    algorithm: str
    scope: str
    files: tuple[str, ...]
    sha256: str  # of the archive as verified


# --- keys --------------------------------------------------------------------------------------------------


def load_private_key(path: str | Path) -> PrivateKey:
    """An unencrypted PEM private key (PKCS#8, PKCS#1 or SEC1), RSA of at least 2048 bits or EC P-256."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except OSError as exc:
        raise SignatureError(f"key {path}: cannot be read ({exc.strerror or exc})", reason="bad_key") from exc
    except (ValueError, TypeError) as exc:
        raise SignatureError(
            f"key {path}: not an unencrypted PEM private key ({exc}) "
            "(hint: `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out KEY.pem`)",
            reason="bad_key",
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise SignatureError(f"key {path}: a {type(key).__name__}; Tollgate signs with RSA or EC P-256 keys",
                             reason="bad_key")
    _algorithm_for(key, where=f"key {path}")
    return key


def load_public_keys(directory: str | Path) -> dict[str, PublicKey]:
    """The trusted keys in a directory, by key ID: each `KID.pem` holds one PEM public key. Several keys may be
    trusted at once, so that a signing key can be rotated without a flag day."""
    folder = Path(directory)
    if not folder.is_dir():
        raise SignatureError(f"keys {folder}: not a directory (hint: one KID.pem public key per trusted key)",
                             reason="bad_key")
    keys: dict[str, PublicKey] = {}
    for pem in sorted(folder.glob("*.pem")):
        keys[pem.stem] = load_public_key(pem)
    if not keys:
        raise SignatureError(f"keys {folder}: no KID.pem public keys in it", reason="bad_key")
    return keys


def load_public_key(path: str | Path) -> PublicKey:
    """One PEM public key (SubjectPublicKeyInfo, or PKCS#1 for RSA), RSA of at least 2048 bits or EC P-256."""
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SignatureError(f"key {path}: cannot be read ({exc.strerror or exc})", reason="bad_key") from exc
    if b"PRIVATE KEY" in raw:
        raise SignatureError(
            f"key {path}: holds a private key; trust only the public half "
            f"(hint: `openssl pkey -in PRIVATE.pem -pubout -out {Path(path).name}`)", reason="bad_key")
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, TypeError) as exc:
        raise SignatureError(f"key {path}: not a PEM public key ({exc})", reason="bad_key") from exc
    if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise SignatureError(f"key {path}: a {type(key).__name__}; Tollgate verifies RSA or EC P-256 keys",
                             reason="bad_key")
    _algorithm_for(key, where=f"key {path}")
    return key


def _algorithm_for(key: PublicKey | PrivateKey, *, where: str) -> str:
    """The one JWS algorithm a key signs with: RS256 for RSA, ES256 for EC P-256."""
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < _MIN_RSA_BITS:
            raise SignatureError(f"{where}: a {key.key_size}-bit RSA key; at least {_MIN_RSA_BITS} bits are needed",
                                 reason="bad_key")
        return "RS256"
    if not isinstance(key.curve, ec.SECP256R1):
        raise SignatureError(f"{where}: an EC key on {key.curve.name}; ES256 needs P-256 (secp256r1)",
                             reason="bad_key")
    return "ES256"


def _describe_key(key: PublicKey) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return f"an RSA-{key.key_size} key, which verifies RS256"
    return f"an EC {key.curve.name} key, which verifies ES256"


class _DeterministicES256(ECAlgorithm):
    """ES256 with RFC 6979 nonces, so that signing the same bundle with the same key gives the same bytes.
    The signatures are ordinary ECDSA signatures; any ES256 verifier accepts them."""

    def sign(self, msg: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
        der = key.sign(msg, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
        return der_to_raw_signature(der, key.curve)


def _jws() -> jwt.PyJWS:
    jws = jwt.PyJWS(algorithms=list(ALGORITHMS), options={"enforce_minimum_key_length": True})
    jws.unregister_algorithm("ES256")
    jws.register_algorithm("ES256", _DeterministicES256(ECAlgorithm.SHA256, ec.SECP256R1))
    return jws


# --- signing -----------------------------------------------------------------------------------------------


def sign_bundle(
    path: str | Path,
    key: PrivateKey,
    *,
    keyid: str,
    algorithm: str | None = None,
    scope: str = "",
    output: str | Path | None = None,
    size_limit: int = DEFAULT_SIZE_LIMIT,
) -> SignedBundle:
    """Write `.signatures.json` into the bundle at path (or into a copy at output), replacing any earlier one.

    The JWT header carries `kid`; the payload is `{"files": [{"name", "hash", "algorithm": "SHA-256"}],
    "keyid", "scope"}` (scope only when given, as OPA compares it with the scope configured for the key). All
    other entries of the archive are written back unchanged, so a bundle built by `tollgate build` stays
    reproducible: the same bundle and key give the same signed bytes.
    """
    source = Path(path)
    where = str(source)
    if not keyid or any(ch.isspace() or not ch.isprintable() for ch in keyid):
        raise SignatureError(f"bundle {where}: key ID {keyid!r} must be a non-empty word", reason="bad_key")
    expected = _algorithm_for(key, where=f"key {keyid}")
    if algorithm is not None and algorithm != expected:
        raise SignatureError(
            f"bundle {where}: algorithm {algorithm} does not fit the key, which signs {expected}",
            reason="algorithm_mismatch",
        )
    files = read_archive(source, size_limit=size_limit)
    files.pop(SIGNATURES_FILE, None)
    if MANIFEST_FILE not in files:
        raise BundleError(f"bundle {where}: no .manifest (hint: build it with `tollgate build`)")
    _refuse_decoy_signatures(where, files)
    entries = []
    for name in sorted(files):
        check_data_file(where, name, files[name])
        entries.append({"name": name, "hash": file_hash(where, name, files[name]),
                        "algorithm": DEFAULT_HASH_ALGORITHM})
    claims: dict[str, Any] = {"files": entries, "keyid": keyid}
    if scope:
        claims["scope"] = scope
    payload = json.dumps(claims, separators=(",", ":"), ensure_ascii=False).encode()
    token = _jws().encode(payload, key, algorithm=expected, headers={"kid": keyid})
    signatures = json.dumps({"signatures": [token]}, indent=2).encode() + b"\n"
    archive = write_archive({**files, SIGNATURES_FILE: signatures})
    target = Path(output) if output is not None else source
    write_file_atomically(target, archive)
    return SignedBundle(path=target, keyid=keyid, algorithm=expected, scope=scope, files=tuple(sorted(files)),
                        sha256=hashlib.sha256(archive).hexdigest())


def _refuse_decoy_signatures(where: str, files: Mapping[str, bytes]) -> None:
    # OPA takes any entry whose path ends in "signatures.json" for the signatures file; only the root one is.
    for name in files:
        if name.endswith("signatures.json"):
            raise SignatureError(f"bundle {where}: {name} would be read by OPA as the bundle's signatures file "
                                 "(hint: rename or remove it)", reason="malformed")


# --- verification ------------------------------------------------------------------------------------------


def verify_bundle(
    source: ArchiveSource,
    keys: Mapping[str, PublicKey],
    *,
    scope: str = "",
    size_limit: int = DEFAULT_SIZE_LIMIT,
    data_limits: DataLimits = DEFAULT_DATA_LIMITS,
) -> VerifiedBundle:
    """Check a bundle's `.signatures.json` against trusted public keys by key ID, as OPA does, and stricter.

    source is the archive's path or its bytes (verify the bytes you will load). Raises SignatureError when:
    the bundle is unsigned; the JWT is malformed or does not verify; its key ID is not in keys; its algorithm
    is not the one for that key's type; its scope is not `scope` (OPA's rule: both may be empty); a file in the
    archive is not listed (added), a listed file is missing (removed), or a hash differs (modified); or a data
    file reads differently in OPA and in Tollgate (so that its signed hash would not pin what Tollgate loads).
    Raises TooLarge, before parsing anything, for an archive past size_limit or data past data_limits: a data
    file's signed hash is over its parsed value (OPA's rule), so its size is bounded before it is parsed.
    """
    where = describe(source)
    try:
        archive = archive_bytes(source, size_limit=size_limit)
        files = read_archive(archive, size_limit=size_limit, where=where)
    except TooLarge:
        raise
    except BundleError as exc:
        raise SignatureError(str(exc), reason="unreadable") from exc
    check_data_limits(where, files, data_limits)
    signatures = files.pop(SIGNATURES_FILE, None)
    if signatures is None:
        raise SignatureError(f"bundle {where}: unsigned: it has no .signatures.json "
                             "(hint: sign it with `tollgate sign`)", reason="unsigned")
    _refuse_decoy_signatures(where, files)
    token = _single_token(where, signatures)
    claims, keyid, algorithm = _verify_token(where, token, keys)
    signed_scope = claims.get("scope", "")
    if signed_scope != scope:
        raise SignatureError(f"bundle {where}: signed for scope {signed_scope!r}, expected {scope!r} "
                             "(hint: pass the scope the bundle was signed for)", reason="scope_mismatch")
    listed = _listed_files(where, claims)
    for name in sorted(files):
        if name not in listed:
            raise SignatureError(f"bundle {where}: {name} is in the bundle but not in its signature "
                                 "(added after signing?)", reason="file_added")
    for name in sorted(listed):
        if name not in files:
            raise SignatureError(f"bundle {where}: {name} is in the signature but not in the bundle "
                                 "(removed after signing?)", reason="file_removed")
    for name in sorted(files):
        want, hash_algorithm = listed[name]
        try:
            got = file_hash(where, name, files[name], hash_algorithm, values_limit=data_limits.values)
        except TooLarge:
            raise
        except BundleError as exc:
            raise SignatureError(str(exc), reason="file_modified") from exc
        if got != want.lower():
            raise SignatureError(f"bundle {where}: {name} does not match its signed {hash_algorithm} hash "
                                 "(modified after signing?)", reason="file_modified")
        try:
            check_data_file(where, name, files[name], values_limit=data_limits.values)
        except TooLarge:
            raise
        except BundleError as exc:
            raise SignatureError(str(exc), reason="ambiguous_data") from exc
    return VerifiedBundle(source=where, revision=_revision(files), keyid=keyid, algorithm=algorithm,
                          scope=signed_scope, files=tuple(sorted(files)), sha256=hashlib.sha256(archive).hexdigest())


def _single_token(where: str, raw: bytes) -> str:
    try:
        doc = json.loads(raw)
    except ValueError as exc:
        raise SignatureError(f"bundle {where}: .signatures.json is not JSON ({exc})", reason="malformed") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("signatures"), list):
        raise SignatureError(f"bundle {where}: .signatures.json must be {{\"signatures\": [JWT]}}",
                             reason="malformed")
    if doc.get("plugin"):
        raise SignatureError(f"bundle {where}: signed by the verification plugin {doc['plugin']!r}, "
                             "which Tollgate does not have", reason="malformed")
    tokens = doc["signatures"]
    if len(tokens) != 1 or not isinstance(tokens[0], str):
        raise SignatureError(f"bundle {where}: .signatures.json must hold exactly one JWT, not {len(tokens)}",
                             reason="malformed")
    return tokens[0]


def _verify_token(
    where: str, token: str, keys: Mapping[str, PublicKey]
) -> tuple[dict[str, Any], str, str]:
    jws = _jws()
    try:
        header = jws.get_unverified_header(token)
        unverified = json.loads(jws.decode_complete(token, options={"verify_signature": False})["payload"])
    except (jwt.InvalidTokenError, ValueError) as exc:
        raise SignatureError(f"bundle {where}: the signature is not a JWT ({exc})", reason="malformed") from exc
    # OPA looks for the key ID in the header's kid, then in the payload's (deprecated) keyid claim.
    keyid = header.get("kid") or (unverified.get("keyid") if isinstance(unverified, dict) else None)
    if not isinstance(keyid, str) or not keyid:
        raise SignatureError(f"bundle {where}: the signature names no key (no kid)", reason="malformed")
    key = keys.get(keyid)
    if key is None:
        trusted = ", ".join(sorted(keys)) or "none"
        raise SignatureError(f"bundle {where}: signed with key {keyid!r}, which is not trusted (trusted: {trusted}) "
                             f"(hint: add {keyid}.pem to the trusted keys, or sign with a trusted key)",
                             reason="unknown_key")
    algorithm = _algorithm_for(key, where=f"key {keyid}")
    if header.get("alg") != algorithm:
        raise SignatureError(f"bundle {where}: signed with {header.get('alg')!r} but key {keyid!r} is "
                             f"{_describe_key(key)}", reason="algorithm_mismatch")
    try:
        payload = jws.decode_complete(token, key, algorithms=[algorithm])["payload"]
    except jwt.InvalidSignatureError as exc:
        raise SignatureError(f"bundle {where}: the signature does not verify with key {keyid!r}",
                             reason="bad_signature") from exc
    except jwt.InvalidTokenError as exc:
        raise SignatureError(f"bundle {where}: the signature does not verify with key {keyid!r} ({exc})",
                             reason="bad_signature") from exc
    try:
        claims = json.loads(payload)
    except ValueError as exc:
        raise SignatureError(f"bundle {where}: the signed payload is not JSON", reason="malformed") from exc
    if not isinstance(claims, dict):
        raise SignatureError(f"bundle {where}: the signed payload is not an object", reason="malformed")
    return claims, keyid, algorithm


def _listed_files(where: str, claims: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
    entries = claims.get("files")
    if not isinstance(entries, list):
        raise SignatureError(f"bundle {where}: the signed payload has no files list", reason="malformed")
    listed: dict[str, tuple[str, str]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or not all(isinstance(entry.get(k), str) for k in ("name", "hash")):
            raise SignatureError(f"bundle {where}: a signed file entry is not {{name, hash, algorithm}}",
                                 reason="malformed")
        name = entry["name"][1:] if entry["name"].startswith("/") else entry["name"]
        algorithm = entry.get("algorithm")
        if algorithm not in HASH_ALGORITHMS:
            raise SignatureError(f"bundle {where}: {name} is signed with hash algorithm {algorithm!r}; "
                                 f"Tollgate accepts {', '.join(HASH_ALGORITHMS)}", reason="malformed")
        if name in listed:
            raise SignatureError(f"bundle {where}: {name} is listed twice in the signature", reason="malformed")
        listed[name] = (entry["hash"], str(algorithm))
    return listed


def _revision(files: Mapping[str, bytes]) -> str:
    try:
        manifest = json.loads(files.get(MANIFEST_FILE, b"{}"))
    except ValueError:
        return ""
    revision = manifest.get("revision", "") if isinstance(manifest, dict) else ""
    return revision if isinstance(revision, str) else ""
