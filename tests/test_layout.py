"""The house keeps its shape: the package tree shows the data flow and imports flow one way (docs/ARCHITECTURE.md).

These read the source as text (ast), so they hold function-level imports too, which an import at run time
would only catch on the path a test happened to take.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGE = ROOT / "server" / "tollgate"
GENERATED = PACKAGE / "v1"
MAX_LOOSE_MODULES = 6
MAX_FUNCTION_LINES = 80
MAX_MODULE_LINES = 600

#: What each package may never import (the direction of the data flow: api → decision → engine / state /
#: decisionlog → bundle; the sidecar and the CLI above; authoring beside, never below the sidecar).
FORBIDDEN = {
    "bundle": ("api", "decision", "engine", "state", "decisionlog", "sidecar", "authoring", "identity", "console"),
    "engine": ("api", "decision", "state", "decisionlog", "sidecar", "authoring", "grpc", "console"),
    "state": ("api", "decision", "sidecar", "authoring", "engine", "decisionlog", "console"),
    # The session timeline reads approvals and reservations beside the records; state never reads the log.
    "decisionlog": ("api", "decision", "sidecar", "authoring", "console"),
    "decision": ("api", "sidecar", "authoring", "grpc", "console"),
    "identity": ("api", "decision", "sidecar", "authoring", "state", "decisionlog", "engine", "console"),
    "api": ("sidecar", "authoring", "console"),
    "sidecar": ("authoring", "console"),
    # The control plane for people reads the store and the log; it never runs a sidecar or serves its API.
    "console": ("api", "sidecar", "authoring", "engine", "decision", "bundle", "mcpgateway", "client", "grpc"),
    "client": ("api", "decision", "sidecar", "authoring", "state", "decisionlog", "engine", "console"),
    # Outbound plumbing under everything that polls or uploads.
    "net": ("api", "decision", "sidecar", "authoring", "state", "decisionlog", "engine", "bundle", "identity",
            "client", "mcpgateway", "console"),
}


def _modules() -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if GENERATED not in path.parents:
            yield path


def _imports(path: Path) -> Iterator[str]:
    """Every module path.py imports, at any level of the file (absolute names)."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _package_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE).parts
    return parts[0] if len(parts) > 1 else ""


def test_at_most_six_loose_modules() -> None:
    loose = sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py")
    assert len(loose) <= MAX_LOOSE_MODULES, loose


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_imports_flow_one_way(package: str) -> None:
    wrong = []
    for path in _modules():
        if _package_of(path) != package:
            continue
        for name in _imports(path):
            top = name.split(".")
            target = top[1] if top[0] == "tollgate" and len(top) > 1 else top[0]
            if target in FORBIDDEN[package]:
                wrong.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not wrong, "\n".join(sorted(set(wrong)))


def test_no_function_is_longer_than_80_lines() -> None:
    long = []
    for path in _modules():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({length} lines)")
    assert not long, "\n".join(long)


def test_no_module_is_longer_than_600_lines() -> None:
    long = [f"{p.relative_to(ROOT)} ({n} lines)" for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES]
    assert not long, "\n".join(long)


def _reachable(start: str) -> set[str]:
    """The tollgate modules start imports, transitively, by reading their source (function-level imports too)."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        path = PACKAGE.parent.joinpath(*name.split(".")).with_suffix(".py")
        if not path.is_file():
            path = PACKAGE.parent.joinpath(*name.split("."), "__init__.py")
        if not path.is_file() or GENERATED in path.parents:
            continue
        seen.add(name)
        todo.extend(i for i in _imports(path) if i.startswith("tollgate."))
    return seen


def test_the_sidecar_never_imports_authoring() -> None:
    reached = _reachable("tollgate.sidecar.serve")
    assert "tollgate.decision" in reached  # the walk follows imports at all
    assert not sorted(m for m in reached if m.startswith("tollgate.authoring")), sorted(reached)


def test_the_sidecar_never_imports_the_console() -> None:
    reached = _reachable("tollgate.sidecar.serve")
    assert not sorted(m for m in reached if m.startswith("tollgate.console")), sorted(reached)


def test_serving_loads_no_authoring_module() -> None:
    # The same at run time, for imports the source walk cannot see (importlib, plugins).
    code = ("import sys; import tollgate.sidecar.serve; "
            "print(sorted(m for m in sys.modules if m.startswith('tollgate.authoring')))")
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert ran.stdout.strip() == "[]"


def test_the_cli_never_imports_the_servicers_except_to_serve() -> None:
    wrong = [f"{p.relative_to(ROOT)} imports {name}" for p in sorted((ROOT / "tools" / "tollgate_cli").glob("*.py"))
             for name in _imports(p) if name.startswith("tollgate.api")]
    assert not wrong, "\n".join(wrong)
