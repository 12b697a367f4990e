"""Regenerate the Python stubs for proto/tollgate/v1 into server/tollgate/v1 (the one generated package)."""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "proto"
OUT_PACKAGE = ROOT / "server" / "tollgate" / "v1"
INIT_TEXT = '"""Generated from proto/tollgate/v1 by tools/gen_proto.py. Do not edit."""\n'


def generate(out_root: Path) -> list[Path]:
    """Run protoc over every .proto under proto/ into out_root; return the generated files."""
    import grpc_tools
    from grpc_tools import protoc  # imported here: only this script needs grpcio-tools

    protos = sorted(str(p.relative_to(PROTO_ROOT)) for p in PROTO_ROOT.rglob("*.proto"))
    include = Path(grpc_tools.__file__).parent / "_proto"
    args = [
        "protoc",
        f"-I{PROTO_ROOT}",
        f"-I{include}",
        f"--python_out={out_root}",
        f"--pyi_out={out_root}",
        f"--grpc_python_out={out_root}",
        *protos,
    ]
    if protoc.main(args) != 0:
        raise SystemExit(f"protoc failed: {' '.join(args)}")
    package = out_root / "tollgate" / "v1"
    (package / "__init__.py").write_text(INIT_TEXT)
    return sorted(package.iterdir())


def stale_files() -> list[str]:
    """Names of generated files that differ from what protoc would write now (empty when fresh)."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = {p.name: p for p in generate(Path(tmp)) if p.is_file()}
        current = {p.name: p for p in OUT_PACKAGE.iterdir() if p.is_file()} if OUT_PACKAGE.exists() else {}
        names = sorted(set(fresh) | set(current))
        return [
            n for n in names
            if n not in fresh or n not in current or not filecmp.cmp(fresh[n], current[n], shallow=False)
        ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="exit 1 if the checked-in stubs are stale")
    args = parser.parse_args()
    if args.check:
        stale = stale_files()
        if stale:
            print("stale generated stubs: " + ", ".join(stale) + " (run: python tools/gen_proto.py)")
            return 1
        print("generated stubs are up to date")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        files = [p for p in generate(Path(tmp)) if p.is_file()]
        if OUT_PACKAGE.exists():
            shutil.rmtree(OUT_PACKAGE)
        OUT_PACKAGE.mkdir(parents=True)
        for f in files:
            shutil.copy2(f, OUT_PACKAGE / f.name)
    print(f"wrote {len(files)} files to {OUT_PACKAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
