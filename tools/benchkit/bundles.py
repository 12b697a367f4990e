"""The bundles the benchmark serves: the one-rule policy, copies with N agent manifests, a new revision on demand."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from tollgate.bundle import DataLimits, load_bundle

TOOLS = Path(__file__).resolve().parents[1]
DEFAULT_LIBRARY = TOOLS.parent / "rego"
#: One package, one rule: allows the benchmark's tool call and denies the rest (its own METADATA says why).
ONE_RULE = TOOLS / "bench_policies" / "one-rule"
#: The manifest every copy is made of; the benchmark's request names this agent.
TEMPLATE_AGENT = "code-reviewer"
#: Data values a manifest bundle may hold: 10,000 copies of the template are ~1.3 million (the sidecar's
#: default limit is one million, a guard against hostile bundles that this measurement has to raise).
MANIFEST_DATA_VALUES = 4_000_000
#: Where decision.rego is in every bundle served here (a new revision appends a comment to it).
DECISION_FILE = Path("tollgate") / "decision.rego"


def copy_policy(source: Path, dest: Path) -> Path:
    """A private copy of a policy directory, so that the benchmark can change it (a new revision) freely."""
    shutil.copytree(source, dest, ignore=shutil.ignore_patterns(".git"))
    return dest


def manifest_bundle(policy: Path, dest: Path, manifests: int, *, library: Path = DEFAULT_LIBRARY) -> Path:
    """policy with exactly `manifests` agent manifests: its own, then copies of code-reviewer's under new ids.

    The copies are the template's document written as data.json (bench-agent-00001, ...): the same data, but
    JSON, which the bundle loader parses ~10x faster than YAML, so a 10,000-manifest bundle starts in seconds
    and the run measures the decision, not PyYAML. A policy without manifests (the one-rule policy) gets the
    template itself and the library's catalog, which manifests are checked against.
    """
    copy_policy(policy, dest)
    agents = dest / "agents"
    if not (agents / TEMPLATE_AGENT).exists():
        shutil.copytree(library / "agents" / TEMPLATE_AGENT, agents / TEMPLATE_AGENT)
    if not (dest / "catalog").exists():
        shutil.copytree(library / "catalog", dest / "catalog")
    have = sum(1 for d in agents.iterdir() if d.is_dir())
    if manifests < have:
        raise ValueError(f"{policy} already holds {have} agent manifests, more than the {manifests} asked for")
    template = load_bundle(library, data_limits=DataLimits(values=MANIFEST_DATA_VALUES)).data["agents"][TEMPLATE_AGENT]
    text = json.dumps(template, indent=1, sort_keys=True) + "\n"
    for n in range(1, manifests - have + 1):
        copy = agents / f"bench-agent-{n:05d}"
        copy.mkdir()
        (copy / "data.json").write_text(text)
    return dest


def new_revision(bundle: Path, n: int) -> None:
    """Change the bundle's bytes, not its meaning: the sidecar's directory poller sees a new revision."""
    with (bundle / DECISION_FILE).open("a") as f:
        f.write(f"\n# tools/bench.py: activation {n} under load\n")
