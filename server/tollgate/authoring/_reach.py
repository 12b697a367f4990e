"""Decision-shaped rules that no entrypoint reaches: a rule package the decision never reads is a silent no-op.

The default decision (rego/tollgate/decision.rego) walks the prefix data.tollgate.rules: every package directly
under it contributes its `deny` and `require_approval` sets. A `deny` anywhere else counts only if something an
entrypoint evaluates refers to it (as tollgate.rules.tools refers to data.tollgate.arguments[kind].deny). This
module follows the references of the parsed modules from the entrypoints, over-approximating (a dynamic part of
a reference reaches every rule it could name, a local variable named like a rule reaches that rule), so what it
reports is certainly never evaluated by a decision.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Where rule packages go: each package `tollgate.rules.<name>` contributes to the decision (docs/POLICY.md).
RULES_PREFIX = ("tollgate", "rules")
#: The rules the decision reads from each rule package.
COLLECTED = ("deny", "require_approval")
#: Rule names that read as a decision: the collected ones, and the ones OPA and Cerbos users write.
DECISION_SHAPED = frozenset({*COLLECTED, "allow", "violation"})
#: What the server evaluates: the default entrypoint and the decision-log mask (sidecar defaults), besides
#: any rule a `# METADATA` block marks `entrypoint: true`.
DEFAULT_ENTRYPOINTS = (("tollgate", "decision"), ("tollgate", "log", "mask"))

#: Term types a rule's value can be written as that are never a set (`deny if ...` is the boolean true).
_NOT_SETS = frozenset({"boolean", "string", "number", "null", "object", "array"})

Path = tuple[str, ...]
#: A reference as data path segments; None is a dynamic part, which may name anything.
Pattern = tuple[str | None, ...]


@dataclass(frozen=True)
class Unreached:
    """One package's decision-shaped rule that no entrypoint evaluates."""

    module: str  # the module's name in the bundle (its path)
    line: int
    message: str


def unreached_rules(modules: Mapping[str, Mapping[str, Any]], sources: Mapping[str, str]) -> list[Unreached]:
    """Every decision-shaped rule of a non-test module that no entrypoint reaches, once per package and name.

    modules: the parsed modules by name; sources: their text, by the same name.
    Nothing is reported when the bundle defines no entrypoint (it cannot be judged), nor for test modules.
    """
    rules = [_Rule.of(name, module) for name, module in sorted(modules.items()) if not _is_test(name, module)]
    flat = [rule for group in rules for rule in group]
    marked = {(name, rule) for name, source in sources.items() for rule in _marked_entrypoints(source)}
    roots = [r for r in flat if r.path in DEFAULT_ENTRYPOINTS or (r.module, r.name) in marked]
    if not roots:
        return []
    reached = _reach(flat, roots)
    found: dict[tuple[Path, str], Unreached] = {}
    for rule in flat:
        key = (rule.package, rule.name)
        if key in found or rule.name not in DECISION_SHAPED:
            continue
        if rule.path not in reached:
            message = _message(rule.package, rule.name)
        elif rule.package[:-1] == RULES_PREFIX and rule.name in COLLECTED and rule.not_a_set:
            message = (f"package {'.'.join(rule.package)} defines {rule.name} as one value, not a set of reasons: "
                       f"the decision denies every request it is defined for as invalid_rule (hint: write "
                       f'`{rule.name} contains {{"code": ..., "message": ...}} if {{ ... }}`)')
        else:
            continue
        found[key] = Unreached(rule.module, _head_line(sources.get(rule.module, ""), rule.name), message)
    return list(found.values())


def _message(package: Path, name: str) -> str:
    dotted = ".".join(package)
    wanted = ".".join((*RULES_PREFIX, package[-1]))
    if package[:-1] == RULES_PREFIX:  # a rule package, but a rule the decision does not read
        return (f"package {dotted} defines {name}, which the decision never reads: a rule package contributes "
                f"{' and '.join(COLLECTED)} only (hint: write it as a deny or require_approval reason; what no rule "
                "package denies is allowed)")
    where = "/".join((*RULES_PREFIX, package[-1]))
    return (f"package {dotted} defines {name}, but no entrypoint reaches it: its reasons never reach a decision "
            f"(hint: rule packages are the packages directly under data.{'.'.join(RULES_PREFIX)}: make it "
            f"`package {wanted}` in {where}/, or refer to it from one; see docs/POLICY.md, \"Adding a rule\")")


def _is_test(name: str, module: Mapping[str, Any]) -> bool:
    package = ground(module["package"]["path"][1:])
    return name.endswith("_test.rego") or any(p.endswith("_test") for p in package)


@dataclass(frozen=True)
class _Rule:
    module: str
    package: Path
    name: str
    path: Path  # the package, the rule's name, the ground parts of its head reference
    patterns: tuple[Pattern, ...]  # what its head and body refer to
    not_a_set: bool  # its value is written as a scalar, object or array (`deny if ...`): never a set of reasons

    @classmethod
    def of(cls, module_name: str, module: Mapping[str, Any]) -> list[_Rule]:
        package = ground(module["package"]["path"][1:])
        imported = aliases(module)
        raw = module.get("rules", [])
        local = {_head_name(rule) for rule in raw}
        out = []
        for rule in raw:
            head = rule.get("head", {})
            ref = head.get("ref") or [{"type": "var", "value": head.get("name", "")}]
            patterns = tuple(dict.fromkeys(_patterns(rule, package, imported, local)))
            value = head.get("value") if "key" not in head or "value" in head else None
            scalar = isinstance(value, dict) and value.get("type") in _NOT_SETS
            out.append(cls(module_name, package, _head_name(rule), (*package, _head_name(rule), *ground(ref[1:])),
                           patterns, scalar))
        return out


def _head_name(rule: Mapping[str, Any]) -> str:
    head = rule.get("head", {})
    ref = head.get("ref") or [{"type": "var", "value": head.get("name", "")}]
    return str(ref[0].get("value", ""))


def _patterns(node: Any, package: Path, imported: Mapping[str, Path], local: set[str]) -> Iterator[Pattern]:
    """What a rule refers to: data references (through imports), and rules of its own package by name."""
    if isinstance(node, list):
        for item in node:
            yield from _patterns(item, package, imported, local)
        return
    if not isinstance(node, dict):
        return
    kind, value = node.get("type"), node.get("value")
    if kind == "ref" and isinstance(value, list) and value:
        head = value[0].get("value")
        rest = tuple(_segment(t) for t in value[1:])
        if head == "data":
            yield rest
        elif isinstance(head, str) and head in imported:
            yield (*imported[head], *rest)
        elif isinstance(head, str) and head in local:
            yield (*package, head, *rest)
        yield from _patterns(value[1:], package, imported, local)
        return
    if kind == "var" and isinstance(value, str) and value in local:
        yield (*package, value)
        return
    for child in node.values():
        yield from _patterns(child, package, imported, local)


def _segment(term: Mapping[str, Any]) -> str | None:
    value = term.get("value")
    return value if term.get("type") == "string" and isinstance(value, str) else None


def _matches(path: Path, pattern: Pattern) -> bool:
    """Whether evaluating the reference `pattern` may evaluate the rule at `path` (one is a prefix of the other)."""
    return all(p is None or p == s for p, s in zip(pattern, path, strict=False))


def _reach(rules: Sequence[_Rule], roots: Sequence[_Rule]) -> set[Path]:
    """The paths of every rule an entrypoint may evaluate. Each definition of a rule (`deny` is usually several)
    is followed: reaching a path reaches all of them."""
    reached: set[Path] = set()
    todo = [r.path for r in roots]
    seen: set[Pattern] = set()
    while todo:
        path = todo.pop()
        if path in reached:
            continue
        reached.add(path)
        for rule in rules:
            if rule.path != path:
                continue
            for pattern in rule.patterns:
                if pattern not in seen:
                    seen.add(pattern)
                    todo.extend(o.path for o in rules if o.path not in reached and _matches(o.path, pattern))
    return reached


def ground(terms: Sequence[Mapping[str, Any]]) -> Path:
    """The leading string parts of a ref (the ground prefix a dynamic part ends)."""
    out: list[str] = []
    for term in terms:
        if term.get("type") != "string":
            break
        out.append(str(term["value"]))
    return tuple(out)


def aliases(module: Mapping[str, Any]) -> dict[str, Path]:
    """The data paths a module imports, by the name it uses for each."""
    found: dict[str, Path] = {}
    for imp in module.get("imports", []):
        terms = imp["path"]["value"]
        if terms[0].get("value") == "data":
            path = ground(terms[1:])
            found[imp.get("alias") or (path[-1] if path else "data")] = path
    return found


_ENTRYPOINT = re.compile(r"^\s*#\s*entrypoint:\s*true\s*$")
_RULE_START = re.compile(r"^\s*(?:default\s+)?([A-Za-z_][A-Za-z0-9_]*)")


def _marked_entrypoints(source: str) -> Iterator[str]:
    """The rules a `# METADATA` block marks `entrypoint: true`: the first rule after the block."""
    lines = source.splitlines()
    for i, line in enumerate(lines):
        if _ENTRYPOINT.match(line):
            following = (text for text in lines[i + 1:] if text.strip() and not text.lstrip().startswith("#"))
            match = _RULE_START.match(next(following, ""))
            if match:
                yield match.group(1)


def _head_line(source: str, name: str) -> int:
    pattern = re.compile(rf"^\s*{re.escape(name)}\b")
    return next((i for i, line in enumerate(source.splitlines(), 1) if pattern.match(line)), 1)
