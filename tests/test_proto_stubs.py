"""The generated package matches proto/: editing a .proto without regenerating fails here."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import ROOT


def test_generated_stubs_are_up_to_date() -> None:
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "gen_proto.py"), "--check"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_detects_a_stale_stub(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import importlib.util
    import shutil

    spec = importlib.util.spec_from_file_location("gen_proto", ROOT / "tools" / "gen_proto.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    stale = tmp_path / "v1"
    shutil.copytree(gen.OUT_PACKAGE, stale)
    (stale / "authorization_pb2.py").write_text("# edited by hand\n")
    monkeypatch.setattr(gen, "OUT_PACKAGE", stale)
    assert gen.stale_files() == ["authorization_pb2.py"]
