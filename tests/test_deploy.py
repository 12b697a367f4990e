"""The Dockerfile and the Kubernetes example refer to real files, flags and settings (no container engine runs
here, so the image is not built; these checks catch what would break it or the pod)."""

from __future__ import annotations

import argparse
import json
import re
import tomllib
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tollgate.sidecar.config import ServeConfig
from tollgate_cli.main import command_modules

DOCKERFILE = (ROOT / "Dockerfile").read_text()
POD = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "pod.yaml").read_text()))


def _parse_cli(argv: list[str]) -> argparse.Namespace:
    """argv as `tollgate` parses it (an unknown command or flag fails the test)."""
    parser = argparse.ArgumentParser(prog="tollgate", exit_on_error=False)
    sub = parser.add_subparsers()
    for module in command_modules():
        module.register(sub)
    try:
        return parser.parse_args(argv)
    except SystemExit as exc:
        raise AssertionError(f"tollgate {' '.join(argv)}: not a valid command line") from exc


def _instruction(name: str) -> list[str]:
    """Every NAME instruction of the Dockerfile, continuation lines joined."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    return [line[len(name):].strip() for line in joined.splitlines() if line.startswith(f"{name} ")]


def test_the_image_copies_files_that_exist() -> None:
    for args in _instruction("COPY"):
        for source in args.split()[:-1]:
            assert (ROOT / source).exists(), f"Dockerfile: COPY {source}: no such file in the project"


def test_the_image_runs_serve_and_its_health_check_with_real_flags() -> None:
    entrypoint = json.loads(_instruction("ENTRYPOINT")[0])
    command = json.loads(_instruction("CMD")[0])
    assert entrypoint == ["tollgate"]
    served = _parse_cli(command)
    assert (served.func.__module__, served.listen) == ("tollgate_cli._serve", "unix:/run/tollgate/tollgate.sock")
    health = json.loads(_instruction("HEALTHCHECK")[0].split("CMD", 1)[1])
    assert health[0] == "tollgate"
    assert _parse_cli(health[1:]).server == served.listen


def test_the_image_installs_the_opa_engine_that_setup_installs() -> None:
    pin = re.compile(r"opa-golib-python-bindings==[\w.]+")
    assert pin.findall(DOCKERFILE) == pin.findall((ROOT / "tools" / "setup.sh").read_text())
    assert "USER 10001" in DOCKERFILE  # not root


def test_a_non_editable_install_packages_every_tollgate_package() -> None:
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT / "server").parts)
             for p in (ROOT / "server" / "tollgate").rglob("__init__.py")}
    assert found <= listed, f"pyproject.toml packages leaves out {sorted(found - listed)}"


def _kind(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in POD if d["kind"] == kind]
    return doc


def test_the_pod_config_is_a_valid_serve_config() -> None:
    doc = yaml.safe_load(_kind("ConfigMap")["data"]["tollgate.yaml"])
    known = {f for f in ServeConfig.__dataclass_fields__}
    assert set(doc) <= known, f"unknown keys {set(doc) - known}"
    # Files and directories only exist in the pod; everything else must validate as it is.
    present = {k: v for k, v in doc.items() if k not in ("bundle_keys", "require_signatures", "admin_token_file")}
    config = ServeConfig(**present).validate()
    assert config.caller_map().check(_uds(10002), {"agent_id": "code-reviewer", "team": "payments"}) == ""
    assert config.caller_map().check(_uds(10002), {"agent_id": "release-bot"}) != ""


def _uds(uid: int) -> Any:
    from tollgate.identity import uds_caller

    return uds_caller(f"{uid}.10001.1.0")


def test_the_pod_shares_the_socket_and_probes_readiness_with_health() -> None:
    pod = _kind("Pod")
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    containers = {c["name"]: c for c in pod["spec"]["containers"]}
    sidecar, harness = containers["tollgate"], containers["harness"]
    socket_mounts = [m["mountPath"] for c in (sidecar, harness) for m in c["volumeMounts"]
                     if m["name"] == "tollgate-socket"]
    assert socket_mounts == ["/run/tollgate", "/run/tollgate"]
    assert "emptyDir" in volumes["tollgate-socket"]
    assert volumes["tollgate-data"]["persistentVolumeClaim"]["claimName"] == _kind("PersistentVolumeClaim")[
        "metadata"]["name"]
    for container in containers.values():
        for mount in container["volumeMounts"]:
            assert mount["name"] in volumes, f"{container['name']}: mounts unknown volume {mount['name']}"
    assert _parse_cli(sidecar["args"]).config == "/etc/tollgate/tollgate.yaml"
    probe = sidecar["readinessProbe"]["exec"]["command"]
    assert probe[0] == "tollgate" and _parse_cli(probe[1:]).server == "unix:/run/tollgate/tollgate.sock"
    assert harness["env"][0]["value"] == "unix:/run/tollgate/tollgate.sock"
    assert pod["spec"]["securityContext"]["fsGroup"] == 10001  # the socket's group: both containers connect


@pytest.mark.parametrize("path", ["Dockerfile", "deploy/k8s/pod.yaml"])
def test_deployment_files_are_linked_from_the_readme(path: str) -> None:
    assert f"]({path})" in (ROOT / "README.md").read_text()
