"""Data limits: a bundle's data documents are bounded on their bytes before any of them is parsed."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tollgate.bundle import DataLimits, TooLarge, load_bundle, sign_bundle, verify_bundle
from tollgate.bundle._canonical import file_hash
from tollgate.bundle._loader import _value_bound


def _tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return path


@pytest.mark.parametrize(("name", "text", "values"), [
    ("data.json", '{"a": [1, 2, {"b": null}], "c": "x"}', 8),
    ("data.json", "[]", 1),
    ("data.yaml", "a:\n  - 1\n  - 2\nc: x\n", 6),
], ids=["json", "empty-array", "yaml"])
def test_the_value_bound_is_never_below_the_values_a_document_holds(name: str, text: str, values: int) -> None:
    assert _value_bound(name, text.encode()) >= values


def test_data_past_the_byte_limit_is_refused_too_large_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "big").mkdir()
    (tmp_path / "big" / "data.json").write_text('{"text": "' + "x" * 2000 + '"}')
    with pytest.raises(TooLarge, match=r"big/data.json take 2012 bytes, over the 1000-byte data limit"):
        load_bundle(tmp_path, data_limits=DataLimits(bytes=1000))


def test_data_past_the_value_limit_is_refused_before_it_is_parsed(tmp_path: Path) -> None:
    bundle = _tar(tmp_path / "b.tar.gz", {".manifest": b'{"revision": "r"}',
                                         "data.json": b'{"a": [' + b"{}," * 600 + b"{}]}"})
    with pytest.raises(TooLarge, match=r"data.json may hold \d+ values, over the 1000-value data limit"):
        load_bundle(bundle, data_limits=DataLimits(values=1000))


def test_a_yaml_alias_bomb_is_refused_once_its_aliases_are_expanded(tmp_path: Path) -> None:
    # Nine levels of nine aliases: a few hundred bytes that any JSON encoding writes out 387 million times.
    lines = ['a0: &a0 ["x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    (tmp_path / "data.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(TooLarge, match="once its YAML aliases are expanded"):
        load_bundle(tmp_path)
    with pytest.raises(TooLarge, match="once its YAML aliases are expanded"):
        file_hash("b", "data.yaml", (tmp_path / "data.yaml").read_bytes())


def test_verify_refuses_swapped_data_past_the_limits_too_large_not_by_hashing_it(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    bundle = _tar(tmp_path / "b.tar.gz", {".manifest": b'{"revision": "r"}', "data.json": b'{"a": 1}'})
    sign_bundle(bundle, key, keyid="ci")
    with tarfile.open(bundle) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
    files["data.json"] = b'{"a": [' + b"[]," * 5000 + b"[]]}"
    swapped = _tar(tmp_path / "swapped.tar.gz", files)
    with pytest.raises(TooLarge, match="value data limit"):
        verify_bundle(swapped.read_bytes(), {"ci": key.public_key()}, data_limits=DataLimits(values=1000))
