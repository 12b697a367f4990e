"""The schemas of capability manifests and catalogs (docs/POLICY.md), and a validator that reports YAML lines."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from tollgate.contract import MAX_REQUIRED_APPROVALS

# --- schema vocabulary ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Str:
    """A non-empty string; optionally one of `choices`, matching a test, or the id of a catalog entry."""

    choices: tuple[str, ...] = ()
    prefix: str = ""  # the value must start with this ("/" for absolute paths)
    means: str = ""  # what the prefix asks for, for the message
    catalog: str = ""  # the value must be an id in this catalog ("tools", "models", "databases")


@dataclass(frozen=True)
class Num:
    integer: bool = False
    minimum: float | None = None
    maximum: float | None = None


@dataclass(frozen=True)
class Bool:
    """true or false."""


@dataclass(frozen=True)
class ListOf:
    item: Schema
    nonempty: bool = False
    unique: bool = False


@dataclass(frozen=True)
class MapOf:
    """A mapping with keys chosen by the author (ids, scopes), each value of one schema."""

    key: Str
    value: Schema
    key_joins: tuple[str, ...] = ()  # the key must be these fields of the value joined by "/"


@dataclass(frozen=True)
class Field:
    schema: Schema
    required: bool = False


@dataclass(frozen=True)
class Obj:
    """A mapping with fixed keys; any other key is an error."""

    fields: Mapping[str, Field]
    one_of: tuple[str, ...] = ()  # exactly one of these keys must be present


@dataclass(frozen=True)
class Variant:
    """An Obj whose fields depend on the value of its `tag` key."""

    tag: str
    variants: Mapping[str, Obj]


Schema = Str | Num | Bool | ListOf | MapOf | Obj | Variant


def req(schema: Schema) -> Field:
    return Field(schema, required=True)


def opt(schema: Schema) -> Field:
    return Field(schema)


# --- the schemas ----------------------------------------------------------------------------------------

CATALOG_NAMES = {"tools": "tool catalog", "models": "model catalog", "databases": "database catalog"}

MANIFEST = Obj({
    "description": req(Str()),
    "owner_team": req(Str()),
    "tools": req(ListOf(Str(catalog="tools"), unique=True)),
    "workspace": opt(Str(prefix="/", means="an absolute path")),
    # cwd: the workspace is the harness's working directory (input.context.cwd), inside workspace_root if set.
    "workspace_from": opt(Str(choices=("cwd",))),
    "workspace_root": opt(Str(prefix="/", means="an absolute path")),
    "shell_commands": opt(ListOf(Str(), unique=True)),
    "models": req(MapOf(Str(catalog="models"), Obj({"data_classes": req(ListOf(Str(), unique=True))}))),
    "data_classes": req(ListOf(Str(), unique=True)),
    "max_output_tokens": req(Num(integer=True, minimum=1)),
    "budget": req(Obj({
        "max_request_usd": req(Num(minimum=0)),
        "max_request_tokens": req(Num(minimum=0)),
        "limits": opt(MapOf(Str(choices=("session", "agent", "team", "workflow")),
                            MapOf(Str(choices=("usd", "tokens")), Num(minimum=0)))),
        # Over the UTC calendar month; a session is one run, so it has no monthly limit.
        "monthly_limits": opt(MapOf(Str(choices=("agent", "team", "workflow")),
                                    MapOf(Str(choices=("usd", "tokens")), Num(minimum=0)))),
    })),
    "approval": req(Obj({
        "approvers": req(ListOf(Str(), nonempty=True, unique=True)),
        "ttl_seconds": opt(Num(integer=True, minimum=1)),
        # How many distinct approvers must approve (contract.MAX_REQUIRED_APPROVALS at most).
        "required": opt(Num(integer=True, minimum=1, maximum=MAX_REQUIRED_APPROVALS)),
        # Whether the user the agent acts for may be one of them.
        "allow_requester": opt(Bool()),
    })),
})

TOOL_ARGUMENTS = Variant("kind", {
    "filesystem": Obj({"path_arguments": req(ListOf(Str(), nonempty=True, unique=True))}),
    "sql": Obj({"statement_argument": req(Str()), "database_argument": opt(Str()),
                "database": opt(Str(catalog="databases"))}, one_of=("database_argument", "database")),
    "browser": Obj({"action": opt(Str())}),
    "shell": Obj({"command_argument": req(Str())}),
})

CATALOGS: Mapping[str, Schema] = {
    "tools": MapOf(Str(), Obj({
        "description": opt(Str()),
        "effect": req(Str(choices=("read", "write", "destructive"))),
        "arguments": opt(TOOL_ARGUMENTS),
        # The MCP tool's definition as reviewed (`tollgate mcp-gateway --print-pins`); another one is denied.
        "pin": opt(Str(prefix="sha256:", means="sha256:HEX, as `tollgate mcp-gateway --print-pins` prints it")),
    })),
    "models": MapOf(Str(), Obj({
        "provider": req(Str()),
        "model": req(Str()),
        "hosting": req(Str(choices=("external", "internal"))),
        "max_output_tokens": opt(Num(integer=True, minimum=1)),
        "data_classes": req(ListOf(Str(), unique=True)),
        # What a model call is estimated to cost, reserved against the agent's budgets (usd per 1,000 tokens).
        "price": opt(Obj({
            "input_usd_per_1k": req(Num(minimum=0)),
            "output_usd_per_1k": req(Num(minimum=0)),
        })),
    }), key_joins=("provider", "model")),
    "databases": MapOf(Str(), Obj({
        "description": opt(Str()),
        "role": req(Str(choices=("replica", "primary"))),
    })),
}


# --- reading YAML with its lines ------------------------------------------------------------------------


@dataclass(frozen=True)
class YamlFile:
    """A data file: its value, its YAML node tree (which knows lines), or the line and text of its error."""

    value: Any = None
    node: Any = None  # yaml.Node; None for an empty document or an error
    error: tuple[int, str] | None = field(default=None)


def parse_yaml(text: str, *, is_json: bool = False) -> YamlFile:
    if is_json:
        try:
            value = json.loads(text)
        except ValueError as exc:
            return YamlFile(error=(getattr(exc, "lineno", 1), str(getattr(exc, "msg", exc))))
        try:
            return YamlFile(value, yaml.compose(text, Loader=yaml.SafeLoader))
        except yaml.YAMLError:
            return YamlFile(value)  # JSON that YAML 1.1 reads differently: checked without lines
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        return YamlFile(loader.construct_document(node) if node is not None else None, node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        return YamlFile(error=(mark.line + 1 if mark else 1, f"{problem} ({context})" if context else problem))
    finally:
        loader.dispose()


# --- the validator --------------------------------------------------------------------------------------

_TAG = "tag:yaml.org,2002:"


def validate(node: Any, schema: Schema, catalogs: Mapping[str, set[str]]) -> list[tuple[int, str]]:
    """Check a YAML node tree against a schema; return (line, message) for every problem."""
    validator = _Validator(catalogs)
    validator.check(node, schema, "", None)
    return validator.problems


class _Validator:
    def __init__(self, catalogs: Mapping[str, set[str]]) -> None:
        self.catalogs = catalogs
        self.problems: list[tuple[int, str]] = []
        self._loader = yaml.SafeLoader("")

    def error(self, line: int, path: str, message: str) -> None:
        self.problems.append((line, f"{path}: {message}" if path else message))

    def value(self, node: Any) -> Any:
        return self._loader.construct_object(node, deep=True)

    def check(self, node: Any, schema: Schema, path: str, owner_line: int | None) -> None:
        """owner_line: the line of the key holding this node, where a missing key is reported."""
        line = node.start_mark.line + 1
        if isinstance(schema, Str):
            self.string(node, schema, path, line)
        elif isinstance(schema, Num):
            if not self.expect(node, ("int",) if schema.integer else ("int", "float"), path, line):
                return
            number = self.value(node)
            if not math.isfinite(number):
                self.error(line, path, f"must be a finite number, got {node.value}")
            elif schema.minimum is not None and number < schema.minimum:
                self.error(line, path, f"must be at least {schema.minimum:g}, got {node.value}")
            elif schema.maximum is not None and number > schema.maximum:
                self.error(line, path, f"must be at most {schema.maximum:g}, got {node.value}")
        elif isinstance(schema, Bool):
            self.expect(node, ("bool",), path, line)
        elif isinstance(schema, ListOf):
            if not self.expect(node, ("seq",), path, line):
                return
            if schema.nonempty and not node.value:
                self.error(line, path, "must not be empty")
            seen: set[Any] = set()
            for i, item in enumerate(node.value):
                self.check(item, schema.item, f"{path}[{i}]", None)
                if schema.unique and isinstance(item, yaml.ScalarNode):
                    if item.value in seen:
                        twice = f"{json.dumps(item.value)} is listed twice"
                        self.error(item.start_mark.line + 1, f"{path}[{i}]", twice)
                    seen.add(item.value)
        elif isinstance(schema, MapOf):
            if not self.expect(node, ("map",), path, line):
                return
            for key, value in self.entries(node, path):
                self.string(key, schema.key, path, key.start_mark.line + 1)
                self.check(value, schema.value, _join(path, key.value), key.start_mark.line + 1)
                if schema.key_joins and isinstance(value, yaml.MappingNode):
                    parts = {k.value: v.value for k, v in value.value if isinstance(v, yaml.ScalarNode)}
                    if all(isinstance(parts.get(f), str) for f in schema.key_joins):
                        expected = "/".join(parts[f] for f in schema.key_joins)
                        if key.value != expected:
                            self.error(key.start_mark.line + 1, _join(path, key.value),
                                       f"the id must be <{'>/<'.join(schema.key_joins)}>, here {json.dumps(expected)}")
        elif isinstance(schema, Variant):
            if not self.expect(node, ("map",), path, line):
                return
            tags = [v for k, v in node.value if k.value == schema.tag]
            if not tags:
                self.error(owner_line or line, path, f"missing required key {json.dumps(schema.tag)}")
                return
            tag_field = req(Str(choices=tuple(schema.variants)))
            variant = schema.variants.get(tags[-1].value) if isinstance(tags[-1], yaml.ScalarNode) else None
            if variant is None:
                self.check(tags[-1], tag_field.schema, _join(path, schema.tag), None)
                return
            self.check(node, Obj({schema.tag: tag_field, **variant.fields}, variant.one_of), path, owner_line)
        else:
            self.object(node, schema, path, owner_line or line)

    def object(self, node: Any, schema: Obj, path: str, owner_line: int) -> None:
        if not self.expect(node, ("map",), path, node.start_mark.line + 1):
            return
        present = set()
        for key, value in self.entries(node, path):
            field_ = schema.fields.get(key.value)
            if field_ is None:
                allowed = ", ".join(sorted(schema.fields))
                self.error(key.start_mark.line + 1, path, f"unknown key {json.dumps(key.value)} (allowed: {allowed})")
                continue
            present.add(key.value)
            self.check(value, field_.schema, _join(path, key.value), key.start_mark.line + 1)
        for name, field_ in schema.fields.items():
            if field_.required and name not in present:
                self.error(owner_line, path, f"missing required key {json.dumps(name)}")
        if schema.one_of and len(present & set(schema.one_of)) != 1:
            self.error(owner_line, path, f"needs exactly one of {', '.join(schema.one_of)}")

    def entries(self, node: Any, path: str) -> list[tuple[Any, Any]]:
        """A mapping's (key, value) nodes with string keys; other keys and repeated keys are errors."""
        out, seen = [], set()
        for key, value in node.value:
            line = key.start_mark.line + 1
            if not (isinstance(key, yaml.ScalarNode) and key.tag == _TAG + "str"):
                self.error(line, path, f"key {_describe(key)} must be a string")
            elif key.value in seen:
                self.error(line, path, f"duplicate key {json.dumps(key.value)} (YAML keeps only the last one)")
            else:
                seen.add(key.value)
                out.append((key, value))
        return out

    def string(self, node: Any, schema: Str, path: str, line: int) -> None:
        if not self.expect(node, ("str",), path, line):
            return
        text: str = node.value
        if not text:
            self.error(line, path, "must not be empty")
        elif schema.choices and text not in schema.choices:
            self.error(line, path, f"{json.dumps(text)} is not one of {', '.join(schema.choices)}")
        elif schema.prefix and not text.startswith(schema.prefix):
            self.error(line, path, f"{json.dumps(text)} is not {schema.means}")
        elif schema.catalog and text not in self.catalogs.get(schema.catalog, set()):
            self.error(line, path, f"{json.dumps(text)} is not in the {CATALOG_NAMES[schema.catalog]} "
                                   f"(hint: add it to catalog/{schema.catalog}/data.yaml, or fix the id)")

    def expect(self, node: Any, kinds: tuple[str, ...], path: str, line: int) -> bool:
        if _kind(node) in kinds:
            return True
        wanted = {"str": "a string", "int": "an integer", "float": "a number", "seq": "a list", "map": "a mapping",
                  "bool": "true or false"}
        want = "a number" if "float" in kinds else wanted[kinds[0]]
        self.error(line, path, f"expected {want}, got {_describe(node)}")
        return False


def _kind(node: Any) -> str:
    if isinstance(node, yaml.MappingNode):
        return "map"
    if isinstance(node, yaml.SequenceNode):
        return "seq"
    tag: str = node.tag
    return tag.removeprefix(_TAG)


def _describe(node: Any) -> str:
    kind = _kind(node)
    if kind in ("map", "seq"):
        return {"map": "a mapping", "seq": "a list"}[kind]
    names = {"str": "string", "int": "integer", "float": "number", "bool": "boolean"}
    if kind == "null":
        return "null"
    return f"string {json.dumps(node.value)}" if kind == "str" else f"{names.get(kind, kind)} {node.value}"


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
