"""`tollgate sign` / `tollgate verify`: OPA-format bundle signatures, checked file by file against trusted keys."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import shlex
import subprocess
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.bundle.test_build import SMALL, write_tree
from tests.conftest import REGO, ROOT, TOLLGATE
from tests.readme import readme_section, run_console_lines, scratch_venv
from tollgate.bundle import (
    PrivateKey,
    SignatureError,
    build_bundle,
    load_bundle,
    load_public_key,
    load_public_keys,
    sign_bundle,
    verify_bundle,
)
from tollgate.bundle._archive import read_archive, write_archive
from tollgate.bundle._canonical import canonical_bytes, opa_value

GENERATE: dict[str, Callable[[], PrivateKey]] = {
    "RS256": lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048),
    "ES256": lambda: ec.generate_private_key(ec.SECP256R1()),
}


def write_key(directory: Path, kid: str, key: PrivateKey, *, private: bool = False) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{kid}.pem"
    if private:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    else:
        path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


@pytest.fixture(scope="module")
def rsa_key() -> PrivateKey:
    return GENERATE["RS256"]()


@pytest.fixture(scope="module")
def ec_key() -> PrivateKey:
    return GENERATE["ES256"]()


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    out = tmp_path / "bundle.tar.gz"
    build_bundle(write_tree(tmp_path / "policy", SMALL), out, revision="r1")
    return out


def jwt_parts(token: str) -> tuple[dict[str, object], dict[str, object]]:
    def part(segment: str) -> dict[str, object]:
        decoded: dict[str, object] = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        return decoded

    header, payload, _ = token.split(".")
    return part(header), part(payload)


def token_of(archive: Path) -> str:
    doc = json.loads(read_archive(archive)[".signatures.json"])
    assert list(doc) == ["signatures"] and len(doc["signatures"]) == 1
    token: str = doc["signatures"][0]
    return token


def rewrite(archive: Path, change: Callable[[dict[str, bytes]], None]) -> None:
    files = read_archive(archive)
    change(files)
    archive.write_bytes(write_archive(files))


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_a_signed_bundle_verifies_with_the_trusted_public_key(
    tmp_path: Path, bundle: Path, algorithm: str, rsa_key: PrivateKey, ec_key: PrivateKey
) -> None:
    key = rsa_key if algorithm == "RS256" else ec_key
    signed = sign_bundle(bundle, key, keyid="ci")
    verified = verify_bundle(bundle, load_public_keys(write_key(tmp_path / "keys", "ci", key).parent))
    assert (signed.algorithm, verified.algorithm, verified.keyid, verified.revision) == (algorithm, algorithm,
                                                                                       "ci", "r1")
    assert verified.files == signed.files == (".manifest", "agents/a/data.yaml", "catalog/data.json",
                                              "tollgate/decision.rego")
    assert verified.sha256 == signed.sha256 == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert load_bundle(bundle).revision == "r1"  # the signed bundle still loads


def test_the_signature_is_opas_format_one_jwt_over_every_file_but_itself(bundle: Path, ec_key: PrivateKey) -> None:
    sign_bundle(bundle, ec_key, keyid="ci-2026")
    files = read_archive(bundle)
    header, payload = jwt_parts(token_of(bundle))
    assert header == {"alg": "ES256", "kid": "ci-2026", "typ": "JWT"}
    assert set(payload) == {"files", "keyid"} and payload["keyid"] == "ci-2026"  # no scope unless asked for
    listed = {f["name"]: f for f in payload["files"]}  # type: ignore[attr-defined]
    assert sorted(listed) == sorted(set(files) - {".signatures.json"})
    assert {f["algorithm"] for f in listed.values()} == {"SHA-256"}
    # Policy is hashed over its bytes; JSON/YAML over compact JSON with sorted keys (OPA's hash.go walk()).
    rego = files["tollgate/decision.rego"]
    assert listed["tollgate/decision.rego"]["hash"] == hashlib.sha256(rego).hexdigest()
    assert listed["agents/a/data.yaml"]["hash"] == hashlib.sha256(
        b'{"enabled":true,"max_usd":2.5,"tools":["read"]}').hexdigest()
    assert listed["catalog/data.json"]["hash"] == hashlib.sha256(
        b'{"tools":{"read":{"effect":"read","weight":1.0}}}').hexdigest()  # a JSON number keeps its text
    manifest = json.loads(files[".manifest"])
    assert listed[".manifest"]["hash"] == hashlib.sha256(
        json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def test_hashes_and_jwt_agree_with_opa_itself(tmp_path: Path, rsa_key: PrivateKey, ec_key: PrivateKey) -> None:
    """The embedded OPA parses each file (json.unmarshal / yaml.unmarshal, as util.Unmarshal does), and its
    io.jwt builtins (another JOSE implementation) verify both signatures."""
    from tollgate.engine import EmbeddedOpa

    out = tmp_path / "rego.tar.gz"
    build_bundle(REGO, out, revision="v1")
    tokens = {}
    for name, key in (("RS256", rsa_key), ("ES256", ec_key)):
        sign_bundle(out, key, keyid=name)
        tokens[name] = token_of(out)
    files = read_archive(out)
    listed = {f["name"]: f["hash"] for f in jwt_parts(tokens["ES256"])[1]["files"]}  # type: ignore[attr-defined]
    with EmbeddedOpa({}, {}) as opa:
        for name, content in files.items():
            if name == ".signatures.json":
                continue
            if name.endswith((".json", ".manifest", ".yaml")):
                parse = "json.unmarshal" if name.endswith((".json", ".manifest")) else "yaml.unmarshal"
                theirs = opa.query(f"x := json.marshal({parse}(input.raw))", {"raw": content.decode()})[0]["x"]
                ours = canonical_bytes("t", name, opa_value("t", name, content)).decode()
                # json.marshal escapes <, > and & (HTML-safe); OPA's signature hashing does not.
                assert ours.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") == theirs, name
                assert listed[name] == hashlib.sha256(ours.encode()).hexdigest()
            else:
                assert listed[name] == opa.query("x := crypto.sha256(input.raw)", {"raw": content.decode()})[0]["x"]
        for name, key in (("RS256", rsa_key), ("ES256", ec_key)):
            pem = key.public_key().public_bytes(serialization.Encoding.PEM,
                                                serialization.PublicFormat.SubjectPublicKeyInfo).decode()
            builtin = "io.jwt.verify_rs256" if name == "RS256" else "io.jwt.verify_es256"
            assert opa.query(f"x := {builtin}(input.token, input.pem)", {"token": tokens[name], "pem": pem}) == [
                {"x": True}]


# Plain YAML scalars whose meaning differs between YAML 1.1 readers; go-yaml v2 (in OPA) is the reference.
TRICKY_SCALARS = ["y", "n", "yes", "On", "off", "True", "~", "null", "1e3", "1.0", "8.0", "0x1F", "0o17", "017", "08",
                  "1_000", "1e21", "1.5e-7", "0.000001", "123456789012345678901234", "0x1FFFFFFFFFFFFFFFFF",
                  "-9223372036854775809", "18446744073709551615", "2001-12-14", "2001-12-14t21:59:43.10-05:00",
                  "12:30", ".5", "+.5", "-.5e3", ".5_0", "1e999", "0b101", "0b-101", "-0b11", "+12", "-0", "-0.0",
                  "1.", "3.14159265358979", "1e-7", "1e20", "1e16", "0.1", "<&>", "0777", "09.5", "+", ".",
                  "9223372036854775807", "9223372036854775808", "0x", "0b", "1__0", "_1", "1_", "abc", '"\\u2028"']


def test_yaml_is_read_as_opas_go_yaml_reads_it() -> None:
    from tollgate.engine import EmbeddedOpa

    doc = "\n".join(f"k{i}: {scalar}" for i, scalar in enumerate(TRICKY_SCALARS)) + "\nempty:\nlist: [1, y, 2.50]\n"
    ours = canonical_bytes("t", "data.yaml", opa_value("t", "data.yaml", doc.encode())).decode()
    with EmbeddedOpa({}, {}) as opa:
        theirs = opa.query("x := json.marshal(yaml.unmarshal(input.raw))", {"raw": doc})[0]["x"]
    assert ours.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") == theirs


def test_resigning_replaces_the_signature_and_leaves_every_other_entry_byte_identical(
    tmp_path: Path, bundle: Path, rsa_key: PrivateKey, ec_key: PrivateKey
) -> None:
    def entries(archive: Path) -> dict[str, bytes]:
        with tarfile.open(archive, "r:gz") as tar:
            return {m.name: m.tobuf(tarfile.PAX_FORMAT) + tar.extractfile(m).read() for m in tar}  # type: ignore[union-attr]

    unsigned = entries(bundle)
    sign_bundle(bundle, rsa_key, keyid="old")
    sign_bundle(bundle, ec_key, keyid="new")
    resigned = entries(bundle)
    assert list(resigned) == sorted(resigned)  # one .signatures.json, entries in order
    assert {k: v for k, v in resigned.items() if k != ".signatures.json"} == unsigned
    keys = tmp_path / "keys"
    write_key(keys, "new", ec_key)
    assert verify_bundle(bundle, load_public_keys(keys)).keyid == "new"
    with pytest.raises(SignatureError, match="signed with key 'new', which is not trusted"):
        verify_bundle(bundle, {"old": rsa_key.public_key()})


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
def test_signing_is_reproducible(tmp_path: Path, bundle: Path, algorithm: str,
                                 rsa_key: PrivateKey, ec_key: PrivateKey) -> None:
    key = rsa_key if algorithm == "RS256" else ec_key  # ES256 uses RFC 6979 nonces
    first = sign_bundle(bundle, key, keyid="ci", output=tmp_path / "a.tar.gz")
    second = sign_bundle(bundle, key, keyid="ci", output=tmp_path / "b.tar.gz")
    assert (tmp_path / "a.tar.gz").read_bytes() == (tmp_path / "b.tar.gz").read_bytes()
    assert first.sha256 == second.sha256


def _modify(files: dict[str, bytes]) -> None:
    files["tollgate/decision.rego"] += b"\nextra := true\n"


def _add(files: dict[str, bytes]) -> None:
    files["tollgate/backdoor.rego"] = b"package tollgate.backdoor\n"


def _remove(files: dict[str, bytes]) -> None:
    del files["agents/a/data.yaml"]


def _change_data(files: dict[str, bytes]) -> None:
    files["agents/a/data.yaml"] = b"tools: [read, delete_everything]\nmax_usd: 2.5\nenabled: true\n"


def _ambiguous(files: dict[str, bytes]) -> None:
    # Same value to OPA (go-yaml reads `y` as true), so the signed hash matches; not to Tollgate's reader.
    files["agents/a/data.yaml"] = b"tools: [read]\nmax_usd: 2.5\nenabled: y\n"


@pytest.mark.parametrize(("change", "reason", "message"), [
    (_modify, "file_modified", "tollgate/decision.rego does not match its signed SHA-256 hash (modified"),
    (_change_data, "file_modified", "agents/a/data.yaml does not match its signed SHA-256 hash (modified"),
    (_add, "file_added", "tollgate/backdoor.rego is in the bundle but not in its signature (added"),
    (_remove, "file_removed", "agents/a/data.yaml is in the signature but not in the bundle (removed"),
    (_ambiguous, "ambiguous_data", "agents/a/data.yaml: /enabled is true to OPA but the string \"y\" to Tollgate"),
], ids=["modified-policy", "modified-data", "added", "removed", "same-to-opa-different-to-tollgate"])
def test_a_bundle_changed_after_signing_fails(
    tmp_path: Path, bundle: Path, ec_key: PrivateKey,
    change: Callable[[dict[str, bytes]], None], reason: str, message: str,
) -> None:
    sign_bundle(bundle, ec_key, keyid="ci")
    rewrite(bundle, change)
    with pytest.raises(SignatureError) as caught:
        verify_bundle(bundle, {"ci": ec_key.public_key()})
    assert caught.value.reason == reason
    assert str(caught.value).startswith(f"bundle {bundle}: ")
    assert message in str(caught.value)


def test_data_reformatted_without_changing_its_value_still_verifies(bundle: Path, ec_key: PrivateKey) -> None:
    sign_bundle(bundle, ec_key, keyid="ci")
    rewrite(bundle, lambda files: files.update({
        "agents/a/data.yaml": b"enabled: true\ntools:\n  - read\nmax_usd: 2.50\n",  # as OPA hashes the value
        "catalog/data.json": b'{\n  "tools": {"read": {"weight": 1.0, "effect": "read"}}\n}'}))
    assert verify_bundle(bundle, {"ci": ec_key.public_key()}).files


def test_an_unsigned_bundle_fails(bundle: Path, ec_key: PrivateKey) -> None:
    with pytest.raises(SignatureError, match=r"unsigned: it has no \.signatures\.json") as caught:
        verify_bundle(bundle, {"ci": ec_key.public_key()})
    assert caught.value.reason == "unsigned"


def test_a_key_that_is_not_trusted_fails(tmp_path: Path, bundle: Path, rsa_key: PrivateKey, ec_key: PrivateKey) -> None:
    sign_bundle(bundle, ec_key, keyid="intruder")
    with pytest.raises(SignatureError) as caught:
        verify_bundle(bundle, load_public_keys(write_key(tmp_path / "keys", "ci", rsa_key).parent))
    assert caught.value.reason == "unknown_key"
    assert "signed with key 'intruder', which is not trusted (trusted: ci)" in str(caught.value)


def test_a_trusted_key_id_with_another_key_behind_it_fails(bundle: Path, ec_key: PrivateKey) -> None:
    sign_bundle(bundle, ec_key, keyid="ci")
    impostor = GENERATE["ES256"]()
    with pytest.raises(SignatureError, match="does not verify with key 'ci'") as caught:
        verify_bundle(bundle, {"ci": impostor.public_key()})
    assert caught.value.reason == "bad_signature"


def test_a_tampered_jwt_fails(bundle: Path, ec_key: PrivateKey) -> None:
    sign_bundle(bundle, ec_key, keyid="ci")
    header, payload, signature = token_of(bundle).split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["files"] = [f for f in claims["files"] if f["name"] != "agents/a/data.yaml"]
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    rewrite(bundle, lambda files: files.update({
        ".signatures.json": json.dumps({"signatures": [f"{header}.{forged}.{signature}"]}).encode()}))
    with pytest.raises(SignatureError, match="does not verify") as caught:
        verify_bundle(bundle, {"ci": ec_key.public_key()})
    assert caught.value.reason == "bad_signature"


def test_an_algorithm_that_does_not_match_the_key_type_fails(bundle: Path, rsa_key: PrivateKey) -> None:
    sign_bundle(bundle, rsa_key, keyid="ci")  # RS256
    trusted_ec = GENERATE["ES256"]().public_key()
    with pytest.raises(SignatureError, match="signed with 'RS256' but key 'ci' is an EC secp256r1 key") as caught:
        verify_bundle(bundle, {"ci": trusted_ec})
    assert caught.value.reason == "algorithm_mismatch"


def test_the_scope_must_match_as_in_opa(bundle: Path, ec_key: PrivateKey) -> None:
    sign_bundle(bundle, ec_key, keyid="ci", scope="write")
    assert jwt_parts(token_of(bundle))[1]["scope"] == "write"
    keys = {"ci": ec_key.public_key()}
    with pytest.raises(SignatureError, match="signed for scope 'write', expected ''") as caught:
        verify_bundle(bundle, keys)
    assert caught.value.reason == "scope_mismatch"
    assert verify_bundle(bundle, keys, scope="write").scope == "write"


def test_verify_takes_the_archive_bytes_and_a_size_limit(bundle: Path, ec_key: PrivateKey) -> None:
    sign_bundle(bundle, ec_key, keyid="ci")
    keys = {"ci": ec_key.public_key()}
    data = bundle.read_bytes()
    verified = verify_bundle(data, keys)
    assert verified.source == f"<{len(data)} bytes>" and verified.revision == "r1"
    with pytest.raises(SignatureError, match="exceeds the 4096-byte limit") as caught:
        verify_bundle(data, keys, size_limit=4096)
    assert caught.value.reason == "unreadable"
    with pytest.raises(SignatureError, match=r"not a readable \.tar\.gz") as caught:
        verify_bundle(data[:-20], keys)


def test_archives_whose_entries_are_not_plain_paths_are_refused(tmp_path: Path, ec_key: PrivateKey) -> None:
    # What is verified must be exactly what the loader loads, so only canonical names are accepted.
    for name in ("./tollgate/x.rego", "a/../b.rego", "../x.rego"):
        raw = io.BytesIO()
        with tarfile.open(fileobj=raw, mode="w:gz") as tar:
            info = tarfile.TarInfo(name)
            tar.addfile(info, io.BytesIO(b""))
        with pytest.raises(SignatureError, match=r"not a plain relative path|escapes the bundle root") as caught:
            verify_bundle(raw.getvalue(), {"ci": ec_key.public_key()})
        assert caught.value.reason == "unreadable"


def test_key_files_that_cannot_be_trusted_are_refused(tmp_path: Path, ec_key: PrivateKey) -> None:
    with pytest.raises(SignatureError, match="holds a private key; trust only the public half"):
        load_public_key(write_key(tmp_path / "a", "ci", ec_key, private=True))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(SignatureError, match="a 1024-bit RSA key; at least 2048 bits"):
        load_public_key(write_key(tmp_path / "b", "old", small))
    with pytest.raises(SignatureError, match="ES256 needs P-256"):
        load_public_key(write_key(tmp_path / "c", "p384", ec.generate_private_key(ec.SECP384R1())))
    (tmp_path / "d").mkdir()
    with pytest.raises(SignatureError, match=r"no KID\.pem public keys"):
        load_public_keys(tmp_path / "d")


def _run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*TOLLGATE, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def test_cli_signs_and_verifies_with_either_of_two_trusted_keys(
    tmp_path: Path, bundle: Path, rsa_key: PrivateKey, ec_key: PrivateKey
) -> None:
    keys = tmp_path / "trusted"
    write_key(keys, "ci-2025", rsa_key)
    write_key(keys, "ci-2026", ec_key)  # rotation: both trusted while bundles signed by either are live
    for kid, key, alg in (("ci-2025", rsa_key, "RS256"), ("ci-2026", ec_key, "ES256")):
        private = write_key(tmp_path / "private", kid, key, private=True)
        signed = _run("sign", str(bundle), "--key", str(private), "--kid", kid)
        assert signed.returncode == 0, signed.stderr
        assert signed.stdout.split()[:4] == ["signed", str(bundle), f"kid={kid}", f"alg={alg}"]
        verified = _run("verify", str(bundle), "--keys", str(keys))
        assert verified.returncode == 0, verified.stderr
        assert verified.stdout.split() == ["verified", str(bundle), "revision=r1", f"kid={kid}", f"alg={alg}",
                                           "files=4"]


def test_cli_verify_fails_naming_the_problem_and_the_file(tmp_path: Path, bundle: Path, ec_key: PrivateKey) -> None:
    keys = tmp_path / "trusted"
    write_key(keys, "ci", ec_key)
    unsigned = _run("verify", str(bundle), "--keys", str(keys))
    assert unsigned.returncode == 1 and unsigned.stdout == ""
    assert unsigned.stderr.startswith(f"tollgate verify: bundle {bundle}: unsigned")
    _run("sign", str(bundle), "--key", str(write_key(tmp_path / "private", "ci", ec_key, private=True)),
         "--kid", "ci")
    rewrite(bundle, _modify)
    modified = _run("verify", str(bundle), "--keys", str(keys))
    assert modified.returncode == 1
    assert "tollgate/decision.rego does not match its signed SHA-256 hash (modified after signing?)" in modified.stderr
    wrong_alg = _run("sign", str(bundle), "--key", str(tmp_path / "private" / "ci.pem"), "--kid", "ci",
                     "--alg", "RS256")
    assert wrong_alg.returncode == 1 and "algorithm RS256 does not fit the key, which signs ES256" in wrong_alg.stderr


def test_readme_build_sign_verify_commands_run_as_shown(tmp_path: Path) -> None:
    """Each `$ ` line of the section's console blocks, run in a scratch directory beside a link to rego/."""
    (tmp_path / "rego").symlink_to(REGO)
    scratch_venv(tmp_path)
    ran = [shlex.split(line)[1] for line in
           run_console_lines(readme_section("Building and signing bundles"), tmp_path, timeout=120)]
    assert {"build", "sign", "verify", "genpkey"} <= set(ran)
