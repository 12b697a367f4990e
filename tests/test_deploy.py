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
POD: list[dict[str, Any]] = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "pod.yaml").read_text()))


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


@pytest.mark.parametrize("path", ["Dockerfile", "deploy/k8s/pod.yaml", "deploy/k8s/fleet/"])
def test_deployment_files_are_linked_from_the_readme(path: str) -> None:
    assert f"]({path})" in (ROOT / "README.md").read_text()


# -- the fleet example (deploy/k8s/fleet/) -------------------------------------------------------------------

FLEET_DIR = ROOT / "deploy" / "k8s" / "fleet"
#: Keys whose files exist only in a pod; the rest of a sidecar's config must validate as it stands.
_POD_FILES = ("bundle_keys", "require_signatures", "admin_token_file", "state_store_password_file", "tls_cert",
              "tls_key")


def _fleet_docs() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(FLEET_DIR.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


def _fleet(kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in _fleet_docs() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], d["spec"]["template"]["spec"]) for d in _fleet_docs()
            if d["kind"] in ("Deployment", "StatefulSet", "Job")]


def _tollgate_containers() -> list[tuple[str, dict[str, Any]]]:
    return [(f"{owner}/{c['name']}", c) for owner, spec in _pod_specs() for c in spec["containers"]
            if c["image"].startswith("tollgate:")]


def _served_config(container: dict[str, Any]) -> tuple[argparse.Namespace, dict[str, Any]]:
    """The serve command line of a sidecar container and the config file it names (from its ConfigMap)."""
    args = _parse_cli(container["args"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == args.config]
    return args, mount


def test_every_fleet_manifest_parses_and_the_kustomization_lists_them_all() -> None:
    kustomization = yaml.safe_load((FLEET_DIR / "kustomization.yaml").read_text())
    files = sorted(p.name for p in FLEET_DIR.glob("*.yaml") if p.name != "kustomization.yaml")
    assert sorted(kustomization["resources"]) == files
    for doc in _fleet_docs():
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        assert doc["metadata"]["name"]
    assert {d["kind"] for d in _fleet_docs()} >= {"Namespace", "Secret", "Service", "StatefulSet", "Job", "Deployment",
                                                 "ConfigMap", "NetworkPolicy"}


def _configs() -> dict[str, dict[str, Any]]:
    """Each sidecar container's config file, parsed from the ConfigMap its --config mount names."""
    found = {}
    for where, container in _tollgate_containers():
        if container["args"][0] != "serve":
            continue
        _, mount = _served_config(container)
        owner = where.split("/")[0]
        (spec,) = [s for name, s in _pod_specs() if name == owner]
        volume = {v["name"]: v for v in spec["volumes"]}[mount["name"]]
        config_map = _fleet("ConfigMap", volume["configMap"]["name"])
        found[where] = yaml.safe_load(config_map["data"][mount["subPath"]])
    return found


def test_every_tollgate_command_in_the_fleet_is_a_real_command_line() -> None:
    commands = {where: _parse_cli(c["args"]).func.__module__ for where, c in _tollgate_containers()}
    assert commands == {"code-reviewer/tollgate": "tollgate_cli._serve",
                        "tollgate-admin/tollgate": "tollgate_cli._serve",
                        "tollgate-migrate-0-1-0/migrate": "tollgate_cli._state"}
    for where, container in _tollgate_containers():
        probe = container.get("readinessProbe", {}).get("exec", {}).get("command")
        if probe:
            assert probe[0] == "tollgate" and _parse_cli(probe[1:]).func.__module__ == "tollgate_cli._health", where
    # The operators' commands shown in admin.yaml's comments are real ones too.
    shown = [line.split("#   ", 1)[1].split("  #")[0].split() for line in (FLEET_DIR / "admin.yaml").read_text()
             .splitlines() if line.startswith("#   tollgate ")]
    assert len(shown) >= 3
    for argv in shown:
        assert _parse_cli(argv[1:]).server == "localhost:50051"


def test_every_fleet_sidecar_config_is_a_valid_serve_config_on_the_shared_store() -> None:
    known = set(ServeConfig.__dataclass_fields__)
    migrate = _parse_cli(dict(_tollgate_containers())["tollgate-migrate-0-1-0/migrate"]["args"])
    db = _fleet("Service", "tollgate-db")
    configs = _configs()
    assert set(configs) == {"code-reviewer/tollgate", "tollgate-admin/tollgate"}
    for where, doc in configs.items():
        assert set(doc) <= known, f"{where}: unknown keys {set(doc) - known}"
        config = ServeConfig(**{k: v for k, v in doc.items() if k not in _POD_FILES}).validate()
        # One store for all, the one the migrate Job migrates, reached through the database's Service.
        assert config.state_store == migrate.state_store == "postgresql://tollgate@tollgate-db:5432/tollgate"
        assert f"@{db['metadata']['name']}:{db['spec']['ports'][0]['port']}/" in config.state_store
        assert doc["state_store_password_file"] == "/etc/tollgate/db/password" == migrate.password_file


def test_the_database_password_reaches_each_part_as_a_file_from_one_secret() -> None:
    secret = _fleet("Secret", "tollgate-db")
    assert set(secret["stringData"]) == {"password"}
    for owner, spec in _pod_specs():
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for container in spec["containers"]:
            for mount in container.get("volumeMounts", []):
                assert mount["name"] in volumes or any(
                    t["metadata"]["name"] == mount["name"] for t in _fleet("StatefulSet", "tollgate-db")["spec"]
                    ["volumeClaimTemplates"]), f"{owner}/{container['name']}: mounts unknown volume {mount['name']}"
            for env in container.get("env", []):  # never in the environment (every process and `kubectl describe`)
                assert "secretKeyRef" not in json.dumps(env) and not env["name"].upper().endswith("PASSWORD"), env
        secret_mounts = [(c["name"], m["mountPath"]) for c in spec["containers"] for m in c.get("volumeMounts", [])
                         if volumes.get(m["name"], {}).get("secret", {}).get("secretName") == "tollgate-db"]
        if owner == "tollgate-db":
            assert secret_mounts == [("postgres", "/run/secrets/tollgate-db")]
        else:  # every Tollgate part of the fleet reads it from /etc/tollgate/db/password, and only Tollgate
            assert [name for name, _ in secret_mounts] in (["tollgate"], ["migrate"]), owner
            assert [path for _, path in secret_mounts] == ["/etc/tollgate/db"], owner


def test_the_fleet_sidecars_register_by_pod_name_and_are_ready_only_while_serving() -> None:
    deployment = _fleet("Deployment", "code-reviewer")
    assert deployment["spec"]["replicas"] >= 2
    for where, container in _tollgate_containers():
        if container["args"][0] != "serve":
            continue
        args = _parse_cli(container["args"])
        assert args.sidecar_id == "$(POD_NAME)"  # Kubernetes expands it from the downward API
        assert {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in container["env"]
        assert "readinessProbe" in container, where
    harness = {c["name"]: c for c in deployment["spec"]["template"]["spec"]["containers"]}["harness"]
    assert harness["env"][0]["value"] == _configs()["code-reviewer/tollgate"]["listen"]


def test_operators_reach_the_fleet_through_the_admin_service_and_only_tollgate_reaches_the_database() -> None:
    for service_name, app in (("tollgate-admin", "tollgate-admin"), ("tollgate-db", "tollgate-db")):
        service = _fleet("Service", service_name)
        assert service["spec"]["selector"] == {"app": app}
        (owner,) = [d for d in _fleet_docs() if d["kind"] in ("Deployment", "StatefulSet")
                    and d["spec"]["template"]["metadata"]["labels"]["app"] == app]
        ports = {p["name"] for c in owner["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
        assert service["spec"]["ports"][0]["targetPort"] in ports
    admin = _configs()["tollgate-admin/tollgate"]
    assert admin["listen"] == "0.0.0.0:50051" and admin["tls_cert"] and admin["admin_token_file"]
    assert ServeConfig(callers=admin["callers"]).caller_map()  # non-empty: no agent may claim a principal here
    # Every pod that reaches the database carries the label its NetworkPolicy admits.
    policy = _fleet("NetworkPolicy", "tollgate-db")
    admitted = policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]
    clients = [d["metadata"]["name"] for d in _fleet_docs() if d["kind"] in ("Deployment", "Job")]
    for name in clients:
        owner = next(d for d in _fleet_docs() if d["metadata"]["name"] == name)
        labels = owner["spec"]["template"]["metadata"]["labels"]
        assert admitted.items() <= labels.items(), name
