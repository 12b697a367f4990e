"""Check a policy directory without running it: Rego parse and compile errors, rules no entrypoint reaches,
manifests and catalogs by schema."""

from __future__ import annotations

import json
import posixpath
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tollgate.authoring._reach import aliases as _aliases
from tollgate.authoring._reach import ground as _strings
from tollgate.authoring._reach import unreached_rules
from tollgate.authoring.schema import CATALOG_NAMES, CATALOGS, MANIFEST, YamlFile, parse_yaml, validate
from tollgate.bundle import DEFAULT_SIZE_LIMIT, BundleError, load_bundle, read_directory
from tollgate.engine import EmbeddedOpa, EngineError


class PolicyCheckError(Exception):
    """A path that cannot be checked at all (missing, not a directory, over the size limit)."""


@dataclass(frozen=True)
class Problem:
    """One error, at a file and line (1-based; 0 when the engine gave no line)."""

    file: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.message}"


@dataclass(frozen=True)
class CheckReport:
    problems: tuple[Problem, ...] = ()  # sorted by file, then line
    modules: int = 0
    manifests: int = 0
    catalogs: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        counts = (f"check: {_plural(self.modules, 'module')}, {_plural(self.manifests, 'manifest')}, "
                  f"{_plural(self.catalogs, 'catalog')}")
        return f"{counts}: no problems" if self.ok else f"{counts}: {_plural(len(self.problems), 'problem')}"


def check_policy(paths: Iterable[str | Path]) -> CheckReport:
    """Check each policy directory (a bundle laid out like rego/, tests included) and report every problem."""
    problems: list[Problem] = []
    modules = manifests = catalogs = 0
    with EmbeddedOpa({}, {}) as parser:
        for path in paths:
            bundle = _BundleCheck(Path(path), parser)
            problems += bundle.run()
            modules += sum(1 for name in bundle.files if name.endswith(".rego"))
            manifests += bundle.manifests
            catalogs += bundle.catalogs
    unique = list(dict.fromkeys(problems))  # sorted stably: a hint or note stays after the error it is about
    return CheckReport(tuple(sorted(unique, key=lambda p: (p.file, p.line))), modules=modules, manifests=manifests,
                       catalogs=catalogs)


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


# --- OPA's error messages -------------------------------------------------------------------------------

_LOCATED = re.compile(r"^(?P<file>[^\s:][^:]*):(?P<line>\d+): (?P<message>.*)$")
_UNLOCATED = re.compile(r"^rego_\w+: ")
_CARET = re.compile(r"^\s*\^\s*$")
_LIMIT = "error limit reached"


@dataclass(frozen=True)
class _RegoError:
    file: str | None  # the module name as given to the engine
    line: int
    message: str


def _rego_errors(text: str) -> list[_RegoError]:
    """Split an engine error ("N errors occurred:\\nf.rego:3: rego_type_error: ...") into one-line errors.

    Continuation lines (the conflicting rule, have/want of a type error) are folded into their error; the
    source excerpt and caret under a parse error are dropped, since the line number says where.
    """
    _, sep, rest = text.partition(" occurred:")
    body = rest if sep else text
    entries: list[tuple[str | None, int, list[str]]] = []
    lines = body.splitlines()
    for i, raw in enumerate(lines):
        line = raw.strip()
        located = _LOCATED.match(line)
        if located:
            entries.append((located["file"], int(located["line"]), [located["message"]]))
        elif _UNLOCATED.match(line) or not entries:
            entries.append((None, 0, [line]))
        elif _CARET.match(raw) or (i + 1 < len(lines) and _CARET.match(lines[i + 1])):
            continue
        elif line:
            entries[-1][2].append(line)
    return [_RegoError(file, line, " ".join(parts)) for file, line, parts in entries if any(parts)]


_V0_SYNTAX = ("keyword is required before rule body", "keyword is required for partial set rules",
              "keyword cannot be used for rule name")
_V0_SYNTAX_HINT = ("(hint: this is Rego v0 syntax and Tollgate loads Rego v1 only; "
                   "`opa fmt --v0-v1 --write FILE` rewrites a v0 module)")
_V0_BUILTIN = "deprecated built-in function"
_V0_BUILTIN_HINT = "(hint: Rego v1 removed this built-in and Tollgate loads Rego v1 only; use its replacement)"


# --- one bundle directory -------------------------------------------------------------------------------

_PARSE = "m := rego.parse_module(input.name, input.source)"


class _BundleCheck:
    def __init__(self, root: Path, parser: EmbeddedOpa) -> None:
        if not root.is_dir():
            raise PolicyCheckError(f"{root}: not a directory (hint: check takes policy directories, such as rego)")
        self.root = root
        self.parser = parser
        try:
            self.files = dict(read_directory(root, DEFAULT_SIZE_LIMIT))  # the loader's own selection
        except BundleError as exc:
            raise PolicyCheckError(str(exc)) from exc
        self.problems: list[Problem] = []
        self.sources: dict[str, str] = {}
        self.data_files: dict[str, YamlFile] = {}
        self.manifests = self.catalogs = 0
        self.unreadable = False

    def where(self, name: str) -> str:
        return str(self.root / name)

    def add(self, name: str, line: int, message: str) -> None:
        self.problems.append(Problem(self.where(name), line, message))

    def run(self) -> list[Problem]:
        for name, content in sorted(self.files.items()):
            try:
                text = content.decode("utf-8")
            except UnicodeDecodeError as exc:
                self.add(name, content.count(b"\n", 0, exc.start) + 1, f"not UTF-8 ({exc.reason} at byte {exc.start})")
                self.unreadable = True
                continue
            if name.endswith(".rego"):
                self.sources[name] = text
            elif name != ".manifest":  # the loader's reader yields modules, data files and .manifest only
                parsed = parse_yaml(text, is_json=name.endswith(".json"))
                if parsed.error is not None:
                    self.add(name, parsed.error[0], f"does not parse: {parsed.error[1]}")
                    self.unreadable = True
                self.data_files[name] = parsed
        modules = self._parse_modules()
        self._compile(modules)
        data = self.data()
        _References(self, modules, data).check()
        for found in unreached_rules(modules, self.sources):
            self.add(found.module, found.line, found.message)
        self._check_data(data)
        if not self.unreadable:
            self._check_bundle_rules()
        return self.problems

    # Rego

    def _parse_modules(self) -> dict[str, Mapping[str, Any]]:
        """Parse each module alone, so a syntax error in one hides nothing in the others."""
        modules: dict[str, Mapping[str, Any]] = {}
        for name, source in sorted(self.sources.items()):
            try:
                modules[name] = self.parser.query(_PARSE, {"name": name, "source": source})[0]["m"]
            except EngineError as exc:
                hinted = False
                for error in _rego_errors(exc.message.partition("rego.parse_module: ")[2] or exc.message):
                    message = error.message
                    if not hinted and any(marker in message for marker in _V0_SYNTAX):
                        message, hinted = f"{message} {_V0_SYNTAX_HINT}", True
                    self.add(error.file or name, error.line or 1, message)
            except (IndexError, KeyError):
                self.add(name, 1, "does not parse (the engine returned no module)")
        return modules

    def _compile(self, modules: Mapping[str, Mapping[str, Any]]) -> None:
        """Compile every module that parses and report every compile error, whatever stage finds it.

        One compilation is not enough: OPA compiles every module, but it stops at the first compiler stage
        that fails (an undefined function in one module hides an unsafe variable or a type error in
        another) and after ten errors. So compile again without the modules that failed, each replaced
        by a stub declaring the same rules and functions (their callers would otherwise fail too), until
        the rest compiles; then compile each module whose errors may have been cut off by the limit alone.
        """
        active = {name: self.sources[name] for name in modules}
        stubs: dict[str, str] = {}
        failed: dict[str, list[_RegoError]] = {}
        truncated: set[str] = set()
        while active:
            errors = _compile_errors({**active, **stubs})
            located = [e for e in errors if e.file in active]
            broken_stubs = {e.file for e in errors if e.file in stubs}
            if not located and broken_stubs:  # a stub this code cannot write: compile without it instead
                for name in broken_stubs:
                    del stubs[str(name)]
                continue
            if not located:
                for e in errors:
                    if e.file is None and _LIMIT not in e.message:
                        self.problems.append(Problem(str(self.root), 0, e.message))
                break
            for name in sorted({e.file for e in located if e.file is not None}):
                failed[name] = [e for e in located if e.file == name]
                stubs[name] = _stub(modules[name])
                del active[name]
                if any(_LIMIT in e.message for e in errors):
                    truncated.add(name)
        cut_off: set[str] = set()
        for name in sorted(truncated):
            others = {other: stubs[other] for other in failed if other != name and other in stubs}
            errors = _compile_errors({**active, **others, name: self.sources[name]})
            failed[name] = [e for e in errors if e.file == name] or failed[name]
            if any(_LIMIT in e.message for e in errors):
                cut_off.add(name)
        unparsed = {_package_of(self.sources[name]) for name in self.sources if name not in modules}
        for name, errors in failed.items():
            package = ".".join(str(t["value"]) for t in modules[name]["package"]["path"][1:])
            for e in errors:
                if _caused_by_unparsed(e.message, package, unparsed):
                    continue
                hint = f" {_V0_BUILTIN_HINT}" if _V0_BUILTIN in e.message else ""
                self.add(name, e.line, e.message + hint)
            if name in cut_off:
                self.add(name, max(e.line for e in errors),
                         "more errors may follow: OPA stops at ten per compilation; fix these and check again")

    # Data

    def data(self) -> dict[str, Any]:
        """The data document every data file that parses places, merged (conflicts are the loader's to report)."""
        merged: dict[str, Any] = {}
        for name, parsed in sorted(self.data_files.items()):
            if isinstance(parsed.value, dict):
                _merge(merged, _placed(name, parsed.value))
        return merged

    def _check_data(self, data: Mapping[str, Any]) -> None:
        catalog: Any = data.get("catalog")
        catalogs = {key: set(catalog[key]) if isinstance(catalog, dict) and isinstance(catalog.get(key), dict)
                    else set() for key in CATALOG_NAMES}
        kinds: dict[str, str] = {}
        for name in self.data_files:
            parts = name.split("/")
            if len(parts) == 3 and parts[0] == "catalog" and parts[1] in CATALOGS:
                kinds[name] = parts[1]
                self.catalogs += 1
            elif len(parts) == 3 and parts[0] == "agents":
                kinds[name] = "manifest"
                self.manifests += 1
        for name, kind in sorted(kinds.items()):
            parsed = self.data_files[name]
            if parsed.node is None and parsed.error is None:  # an empty file is an empty object
                if kind == "manifest":
                    self.add(name, 1, "empty manifest (hint: the fields are listed in docs/POLICY.md)")
                continue
            if parsed.node is not None:
                schema = MANIFEST if kind == "manifest" else CATALOGS[kind]
                for line, message in validate(parsed.node, schema, catalogs):
                    self.add(name, line, message)

    def _check_bundle_rules(self) -> None:
        """The rules the loader enforces on the whole bundle (data conflicts, manifest roots)."""
        try:
            load_bundle(self.root, include_tests=True)
        except BundleError as exc:
            name, line, message = self._locate_bundle_error(str(exc))
            self.problems.append(Problem(self.where(name) if name else str(self.root), line, message))

    def _locate_bundle_error(self, text: str) -> tuple[str, int, str]:
        """Find the file and line a loader error is about; its text names the file, not the line."""
        own = f"bundle {self.root}: "
        if text.startswith(f"{self.root}:"):  # "<root>:<file>: data at a/b is defined twice ..."
            name, _, message = text[len(f"{self.root}:"):].partition(": ")
            conflict = re.match(r"data at (\S+)", message)
            return name, self._data_line(name, conflict.group(1).split("/")) if conflict else 1, message
        message = text.removeprefix(own)
        if ".manifest" in self.files and any(word in message for word in ("manifest", "roots", "rego_version")):
            manifest = self.files[".manifest"].decode("utf-8", "replace")
            key = next((k for k in ("roots", "rego_version", "revision", "metadata") if k in message), "")
            at = manifest.find(f'"{key}"') if key else -1
            return ".manifest", manifest.count("\n", 0, at) + 1 if at >= 0 else 1, message
        for name in self.files:
            if message.startswith(name + " "):
                return name, 1, message
        return "", 0, message

    def _data_line(self, name: str, path: Sequence[str]) -> int:
        """The line of the key at data path `path` inside data file `name` (1 if it is not in the file)."""
        parsed = self.data_files.get(name)
        prefix = [s for s in posixpath.dirname(name).split("/") if s]
        if parsed is None or parsed.node is None or list(path[: len(prefix)]) != prefix:
            return 1
        node, line = parsed.node, 1
        for key in path[len(prefix):]:
            if not isinstance(node, yaml.MappingNode):
                break
            match = [(k, v) for k, v in node.value if k.value == key]
            if not match:
                break
            line, node = match[-1][0].start_mark.line + 1, match[-1][1]
        return line


def _compile_errors(modules: Mapping[str, str]) -> list[_RegoError]:
    try:
        with EmbeddedOpa(modules, {}) as engine:
            engine.compile()  # every module, referenced or not
    except EngineError as exc:
        return _rego_errors(exc.message)
    return []


def _placed(name: str, value: dict[str, Any]) -> dict[str, Any]:
    """The data document a data file contributes, placed by its directory."""
    placed: Any = value
    for segment in reversed([s for s in posixpath.dirname(name).split("/") if s]):
        placed = {segment: placed}
    return dict(placed)


def _package_of(source: str) -> str:
    match = re.search(r"^\s*package\s+([\w.]+)", source, re.MULTILINE)
    return match.group(1) if match else ""


def _caused_by_unparsed(message: str, package: str, unparsed: set[str]) -> bool:
    """An undefined function that a module which does not parse defines; that parse error says enough."""
    match = re.search(r"undefined function (\S+)", message)
    if not match:
        return False
    function = match.group(1)
    qualified = function if function.startswith("data.") else f"data.{package}.{function}"
    return any(qualified.startswith(f"data.{p}.") for p in unparsed if p)


# --- stubs: a failed module's rules without bodies ------------------------------------------------------

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _stub(module: Mapping[str, Any]) -> str:
    """A module declaring the same package, rules and functions as `module`, none of which is ever defined.

    Values are `input` (type any), so no caller gets a type error it would not have had.
    """
    lines = [f"package {_render_ref(module['package']['path'][1:])[0]}", ""]
    for rule in module.get("rules", []):
        head = rule.get("head", {})
        ref, keys = _render_ref(head.get("ref") or [{"type": "var", "value": head.get("name", "")}], head=True)
        body = "; ".join(["false", *(f"{k} := input" for k in keys)])
        if "args" in head:
            stub = f"{ref}({', '.join('_' for _ in head['args'])}) := input if false"
        elif "key" in head and "value" not in head:
            stub = f"{ref} contains input if {{ {body} }}"
        else:
            stub = f"{ref} := input if {{ {body} }}"
        if stub not in lines:
            lines.append(stub)
    return "\n".join(lines) + "\n"


def _render_ref(terms: Sequence[Mapping[str, Any]], *, head: bool = False) -> tuple[str, list[str]]:
    """Rego text for a ref; in a rule head, non-string parts become fresh variables (returned too)."""
    text, keys = "", list[str]()
    for i, term in enumerate(terms):
        value = term.get("value")
        if i == 0 and isinstance(value, str):
            text = value
        elif term.get("type") == "string" and isinstance(value, str):
            text += f".{value}" if _IDENT.match(value) else f"[{json.dumps(value)}]"
        elif head:
            keys.append(f"__stub_k{len(keys)}")
            text += f"[{keys[-1]}]"
    return text, keys


# --- references the compiler lets through ---------------------------------------------------------------


class _References:
    """References into data that nothing in the bundle defines: imports and refs to missing rules.

    OPA accepts both (data may come from elsewhere at run time), but a Tollgate bundle is all the data
    there is, so `import data.tollgate.tool` or `tools.permited` is a typo that would make a rule silently
    undefined, and a deny rule silently never fire.
    """

    def __init__(self, bundle: _BundleCheck, modules: Mapping[str, Mapping[str, Any]], data: Mapping[str, Any]) -> None:
        self.bundle = bundle
        self.modules = modules
        self.packages: set[tuple[str, ...]] = set()
        self.rules: set[tuple[str, ...]] = set()  # full paths of rules (and of packages that do not parse)
        for module in modules.values():
            package = _strings(module["package"]["path"][1:])
            self.packages.add(package)
            for rule in module.get("rules", []):
                head = rule.get("head", {})
                ref = head.get("ref") or [{"type": "var", "value": head.get("name", "")}]
                self.rules.add((*package, str(ref[0]["value"]), *_strings(ref[1:])))
        for name, source in bundle.sources.items():
            if name not in modules and _package_of(source):
                self.rules.add(tuple(_package_of(source).split(".")))
        self.prefixes = {path[:i] for path in self.packages | self.rules for i in range(1, len(path) + 1)}
        self.data = data

    def check(self) -> None:
        for name, module in sorted(self.modules.items()):
            source = _without_comments(self.bundle.sources[name])
            aliases = _aliases(module)
            for imported_path in aliases.values():
                missing = self._missing(imported_path)
                if missing is not None:
                    pattern = r"^\s*import\s+" + _ref_pattern("data", imported_path)
                    message = f"import data.{'.'.join(imported_path)}: {self._explain(imported_path, missing)}"
                    for line in _lines(source, pattern) or [1]:
                        self.bundle.add(name, line, message)
            # The parsed module has no locations: find each undefined reference's lines in the text.
            uses: dict[tuple[str, str], list[bool]] = {}  # (pattern, message) -> whether each use is mocked
            for ref, mocks in _refs(module.get("rules", [])):
                path = _resolve(ref, aliases)
                if path is None:
                    continue
                head, written = str(ref[0]["value"]), _strings(ref[1:])
                missing, imported = self._missing(path), len(path) - len(written)
                if missing is None or missing < imported:  # a broken import is reported once, at the import
                    continue
                pattern = r"(?<![\w.])" + _ref_pattern(head, written[: missing - imported + 1])
                message = f"undefined reference data.{'.'.join(path[: missing + 1])}: {self._explain(path, missing)}"
                mocked = any(_overlaps(path, _resolve(mock, aliases)) for mock in mocks)
                uses.setdefault((pattern, message), []).append(mocked)
            for (pattern, message), flags in uses.items():
                if all(flags):
                    continue  # `expr with data.x as v` defines x for expr
                lines = _lines(source, pattern)
                if any(flags):  # the mocked uses are the ones on a line with `with`
                    text = source.splitlines()
                    lines = [n for n in lines if not re.search(r"\bwith\b", text[n - 1])]
                for line in lines or [1]:
                    self.bundle.add(name, line, message)

    def _missing(self, path: tuple[str, ...]) -> int | None:
        """Index of the first segment of `path` that nothing defines, or None if the path is defined."""
        data: Any = self.data
        for i in range(len(path)):
            prefix = path[: i + 1]
            if prefix in self.rules:
                return None
            data = data.get(path[i], _MISSING) if isinstance(data, dict) else _MISSING
            if data is not _MISSING and not isinstance(data, dict):
                return None  # inside a data value
            if prefix in self.prefixes:
                continue
            if data is not _MISSING:
                return None  # keys inside a data document are data, looked up at run time
            return i
        return None

    def _explain(self, path: tuple[str, ...], missing: int) -> str:
        parent = path[:missing]
        if parent in self.packages:
            return (f"package {'.'.join(parent)} has no rule {path[missing]} "
                    "(hint: check the name; OPA evaluates it as undefined, without an error)")
        return (f"no package, rule or data in the bundle defines data.{'.'.join(path[: missing + 1])} "
                "(hint: check the name)")


_MISSING = object()


def _overlaps(path: tuple[str, ...], mock: tuple[str, ...] | None) -> bool:
    """Whether a `with` on `mock` defines (part of) `path`."""
    return mock is not None and (path[: len(mock)] == mock or mock[: len(path)] == path)


def _resolve(ref: Sequence[Mapping[str, Any]], aliases: Mapping[str, tuple[str, ...]]) -> tuple[str, ...] | None:
    """The ground data path a ref starts with (through an import), or None if it is not a ref into data."""
    head = ref[0].get("value")
    if head == "data":
        return _strings(ref[1:])
    if isinstance(head, str) and head in aliases:
        return aliases[head] + _strings(ref[1:])
    return None


Ref = Sequence[Mapping[str, Any]]


def _refs(node: Any, mocked: tuple[Ref, ...] = ()) -> Iterator[tuple[Ref, tuple[Ref, ...]]]:
    """Every ref term in a parsed module's rules, with the `with` targets its expression mocks; not the targets
    themselves, nor the names of called functions (the compiler reports undefined functions itself)."""
    if isinstance(node, list):
        for item in node:
            yield from _refs(item, mocked)
    elif isinstance(node, dict):
        if node.get("type") == "ref" and isinstance(node.get("value"), list):
            yield node["value"], mocked
            yield from _refs(node["value"][1:], mocked)
        elif node.get("type") == "call" and isinstance(node.get("value"), list):
            yield from _refs(node["value"][1:], mocked)
        elif isinstance(node.get("with"), list):  # an expression: `expr with data.x as v`
            targets = [w.get("target", {}) for w in node["with"] if isinstance(w, dict)]
            inner = mocked + tuple(t["value"] for t in targets if isinstance(t.get("value"), list))
            yield from _refs(node.get("terms"), inner)
            yield from _refs([w.get("value") for w in node["with"] if isinstance(w, dict)], mocked)
        else:
            for value in node.values():
                yield from _refs(value, mocked)


def _ref_pattern(head: str, names: Sequence[str]) -> str:
    parts = [re.escape(head) if head != "data" else r"data\b"]
    for name in names:
        parts.append(rf'\s*(?:\.\s*{re.escape(name)}\b|\[\s*"{re.escape(name)}"\s*\])')
    return "".join(parts)


def _lines(source: str, pattern: str) -> list[int]:
    regex = re.compile(pattern)
    return [i for i, line in enumerate(source.splitlines(), 1) if regex.search(line)]


def _without_comments(source: str) -> str:
    """The source with `#` comments blanked out (a `#` inside a string stays)."""
    out = []
    for line in source.splitlines():
        quote, i = "", 0
        while i < len(line):
            ch = line[i]
            if quote:
                if ch == "\\" and quote == '"':
                    i += 1  # an escaped character, perhaps a quote
                elif ch == quote:
                    quote = ""
            elif ch in "\"`":
                quote = ch
            elif ch == "#":
                line = line[:i]
                break
            i += 1
        out.append(line)
    return "\n".join(out)


def _merge(dst: dict[str, Any], src: Mapping[str, Any]) -> None:
    for key, value in src.items():
        if isinstance(dst.get(key), dict) and isinstance(value, dict):
            _merge(dst[key], value)
        else:
            dst.setdefault(key, value)
