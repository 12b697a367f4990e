"""How OPA hashes bundle files for signatures, and how OPA (Go) reads a bundle's JSON and YAML files.

OPA's rules, from open-policy-agent/opa v1 (`v1/bundle/verify.go` VerifyBundleFile, `v1/bundle/hash.go` walk and
encodePrimitive, `v1/bundle/bundle.go` IsStructuredDoc and Reader.Read, `v1/util/json.go` Unmarshal), and the
YAML library it uses (sigs.k8s.io/yaml YAMLToJSON over go-yaml v2, `goyaml.v2/resolve.go`):

1. Every file of the archive is hashed except `.signatures.json` itself; the payload lists each by its path in
   the archive without a leading "/". The hash algorithm is named per file; OPA writes "SHA-256".
2. A *structured* file is one whose base name is `data.json`, `data.yaml`, `.manifest` or `signatures.json`
   (note: not `data.yml`, which is hashed like any other file). Its bytes are parsed as util.Unmarshal does: a
   UTF-8 byte-order mark is dropped; bytes that are valid JSON are decoded as JSON with json.Number, so a
   number keeps its literal text (`1.0` stays `1.0`, `1e3` stays `1e3`); anything else is read as YAML 1.1 by
   go-yaml v2 (`y`, `yes`, `on` are true; `0x1F`, `0o17`, `017` and `1_000` are integers; `1e3` is a float;
   timestamps stay strings), converted to JSON by Go's json.Marshal, which writes floats in Go's shortest
   form (8.0 → `8`, 1e21 → `1e+21`, 1.5e-7 → `1.5e-7`; NaN and infinities cannot be converted: an error),
   and decoded again with json.Number.
3. The parsed value is hashed by walk(): an object is `{`, then each key in sorted order (Go sorts by bytes,
   which for UTF-8 is code point order) encoded as a JSON string, `:`, the value's encoding, with `,` between
   members, then `}`; an array is `[`, the elements' encodings joined by `,`, `]`; a string, number, boolean
   or null is encoded by Go's encoding/json with SetEscapeHTML(false): `\\"`, `\\\\`, `\\b`, `\\f`, `\\n`,
   `\\r`, `\\t`, other control characters as `\\u00xx`, U+2028 and U+2029 as `\\u2028`/`\\u2029`, all
   else as raw UTF-8. That is compact JSON with sorted keys and no HTML escaping.
4. Every other file is hashed over its raw bytes.

Because a signature covers the value OPA reads, not the bytes, a data file must mean the same to Tollgate's
loader (PyYAML, JSON) as to OPA, or a file could be changed without changing its hash. check_data_file()
refuses data files the two read differently; builds, signing and verification all apply it.
"""

from __future__ import annotations

import hashlib
import json
import math
import posixpath
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from tollgate.bundle._loader import DEFAULT_DATA_VALUES, BundleError, _parse_data, count_values

#: The hash algorithms a signature may name for a file (OPA also accepts MD5 and SHA-1; Tollgate does not).
HASH_ALGORITHMS: dict[str, Callable[[], Any]] = {
    "SHA-256": hashlib.sha256,
    "SHA-384": hashlib.sha384,
    "SHA-512": hashlib.sha512,
}
DEFAULT_HASH_ALGORITHM = "SHA-256"

_STRUCTURED_NAMES = frozenset({"data.json", "data.yaml", ".manifest", "signatures.json"})
_DATA_NAMES = frozenset({"data.json", "data.yaml", "data.yml"})
_BOM = b"\xef\xbb\xbf"


def is_structured(name: str) -> bool:
    """Whether OPA hashes this file over its parsed value rather than its bytes."""
    return posixpath.basename(name) in _STRUCTURED_NAMES


def file_hash(where: str, name: str, content: bytes, algorithm: str = DEFAULT_HASH_ALGORITHM, *,
              values_limit: int = DEFAULT_DATA_VALUES) -> str:
    """The hex digest OPA computes for this bundle file (see the module docstring). A YAML file holding more
    than values_limit values once its aliases are expanded is refused (TooLarge) before it is encoded."""
    h = HASH_ALGORITHMS[algorithm]()
    if is_structured(name):
        h.update(canonical_bytes(where, name, opa_value(where, name, content, values_limit=values_limit)))
    else:
        h.update(content)
    return str(h.hexdigest())


def opa_value(where: str, name: str, content: bytes, *, values_limit: int = DEFAULT_DATA_VALUES) -> Any:
    """A structured file's content as OPA's util.Unmarshal reads it (numbers from JSON as _JsonNumber)."""
    if content.startswith(_BOM):
        content = content[len(_BOM):]
    try:
        text = content.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleError(f"bundle {where}: {name} is not UTF-8 ({exc})") from exc
    try:
        return _go_json(text)
    except (ValueError, RecursionError):
        pass  # not JSON: OPA reads it as YAML
    try:
        value = yaml.load(text, Loader=_GoYamlLoader)  # a SafeLoader with go-yaml's rules for plain scalars
        count_values(where, name, value, values_limit)
        _check_keys(value, "")
    except _NotRepresentable as exc:
        raise BundleError(f"bundle {where}: {name}: {exc}") from exc
    except (yaml.YAMLError, RecursionError) as exc:
        raise BundleError(f"bundle {where}: {name} does not parse ({exc})") from exc
    return value


def canonical_bytes(where: str, name: str, value: Any) -> bytes:
    """The bytes OPA's walk() feeds to the hash for a parsed structured file."""
    out: list[str] = []
    try:
        _walk(value, out)
    except RecursionError as exc:
        raise BundleError(f"bundle {where}: {name} is nested too deeply") from exc
    except _NotRepresentable as exc:
        raise BundleError(f"bundle {where}: {name}: {exc}") from exc
    return "".join(out).encode("utf-8")


def check_data_file(where: str, name: str, content: bytes, *, values_limit: int = DEFAULT_DATA_VALUES) -> None:
    """Refuse a data file that Tollgate's loader and OPA read differently, naming the first difference."""
    if posixpath.basename(name) not in _DATA_NAMES:
        return
    # Exactly what the loader reads (it refuses non-UTF-8).
    ours = _parse_data(Path(where), name, content, values_limit=values_limit)
    if name.endswith(".json"):
        try:
            opa: Any = _go_json(content.decode("utf-8"))
        except (ValueError, RecursionError) as exc:
            raise BundleError(f"bundle {where}: {name} is not JSON as OPA reads it ({exc})") from exc
    else:
        opa = opa_value(where, name, content, values_limit=values_limit)
    if opa is None and ours == {}:
        raise BundleError(
            f"bundle {where}: {name} is empty: OPA reads it as null, Tollgate as an empty object "
            "(hint: write {} or remove the file)"
        )
    difference = _difference(opa, ours, "")
    if difference is not None:
        path, theirs, mine = difference
        raise BundleError(
            f"bundle {where}: {name}: {path or '/'} is {theirs} to OPA but {mine} to Tollgate "
            "(hint: quote the value if it is meant as a string; YAML 1.1 readers disagree on bare y/n/on/off, "
            "0o/0x/0b numbers, 1e3 and dates)"
        )


class _JsonNumber(str):
    """A JSON number kept as its literal text, as Go's json.Number keeps it."""

    __slots__ = ()


class _NotRepresentable(ValueError):
    """A YAML value OPA cannot turn into JSON, or one Tollgate will not guess about."""


def _go_json(text: str) -> Any:
    """JSON as Go decodes it with UseNumber: numbers keep their literal text; NaN and Infinity are not JSON."""
    return json.loads(text, parse_int=_JsonNumber, parse_float=_JsonNumber, parse_constant=_not_json)


def _not_json(literal: str) -> Any:
    raise ValueError(f"{literal} is not JSON")


# --- go-yaml v2's reading of plain (unquoted) scalars, from goyaml.v2/resolve.go -------------------------

_GO_PLAIN = "tag:tollgate,2026:go-plain"
_GO_MAP: dict[str, Any] = {
    **dict.fromkeys(["y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON"], True),
    **dict.fromkeys(["n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF"], False),
    **dict.fromkeys(["", "~", "null", "Null", "NULL"], None),
}
_GO_NON_FINITE = frozenset(
    sign + dot for sign in ("", "+", "-") for dot in (".inf", ".Inf", ".INF")
) | {".nan", ".NaN", ".NAN"}
_GO_HINTED = frozenset("+-0123456789yYnNtTfFoO~.")
_YAML_STYLE_FLOAT = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?")
# What strconv.ParseFloat accepts after a leading ".": digits, with "_" allowed between digits.
_DOT_FLOAT = re.compile(r"\.[0-9]+(_[0-9]+)*([eE][-+]?[0-9]+(_[0-9]+)*)?")
_DIGITS = {2: frozenset("01"), 8: frozenset("01234567"), 10: frozenset("0123456789"),
           16: frozenset("0123456789abcdefABCDEF")}


def _go_plain_scalar(s: str) -> Any:
    """resolve("", s) of go-yaml v2, as decoded into interface{} (timestamps stay strings there)."""
    if s in _GO_MAP:
        return _GO_MAP[s]
    if s in _GO_NON_FINITE:
        raise _NotRepresentable(f"{s} is not a number JSON can hold")
    if not s or s[0] not in _GO_HINTED or s[0] in "yYnNtTfFoO~":
        return s
    if s[0] == ".":
        return _finite_float(s) if _DOT_FLOAT.fullmatch(s) else s
    plain = s.replace("_", "")
    number, _ = _go_parse_int(plain)
    if number is not None:
        return number
    number, _ = _go_parse_uint(plain)
    if number is not None:
        return number
    if _YAML_STYLE_FLOAT.fullmatch(plain):
        return _finite_float(plain)
    if plain.startswith("0b"):
        number, _ = _go_parse_int(plain[2:], base=2)
        if number is not None:
            return number
    # Newer go-yaml falls back to big.Int for integers past 64 bits; the one in OPA v1.20 keeps them as strings.
    return s


def _finite_float(s: str) -> Any:
    value = float(s)
    return s if math.isinf(value) else value  # strconv.ParseFloat fails on overflow: the scalar stays a string


def _go_parse_uint(s: str, base: int = 0) -> tuple[int | None, str | None]:
    """strconv.ParseUint(s, base, 64): the value, or None and "syntax" / "range"."""
    if not s:
        return None, "syntax"
    digits = s
    if base == 0:
        base = 10
        if s[0] == "0":
            prefix = s[1:2].lower()
            if len(s) >= 3 and prefix in ("b", "o", "x"):
                base, digits = {"b": 2, "o": 8, "x": 16}[prefix], s[2:]
            else:
                base, digits = 8, s[1:]
    if any(ch not in _DIGITS[base] for ch in digits):
        return None, "syntax"
    value = int(digits, base) if digits else 0
    return (value, None) if value < 2**64 else (None, "range")


def _go_parse_int(s: str, base: int = 0) -> tuple[int | None, str | None]:
    """strconv.ParseInt(s, base, 64)."""
    negative = s[:1] == "-"
    body = s[1:] if s[:1] in ("+", "-") else s
    value, error = _go_parse_uint(body, base)
    if value is None:
        return None, error
    if value > 2**63 - 1 + negative:
        return None, "range"
    return (-value if negative else value), None


class _GoYamlLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML ships no type information
    """PyYAML's parser with go-yaml v2's rules for what a plain scalar means."""

    def resolve(self, kind: Any, value: str, implicit: tuple[bool, bool]) -> str:
        if kind is yaml.ScalarNode and implicit[0]:
            return _GO_PLAIN
        resolved: str = super().resolve(kind, value, implicit)
        return resolved

    def flatten_mapping(self, node: Any) -> None:
        for key, _ in node.value:
            if key.tag == _GO_PLAIN and key.value == "<<":
                raise _NotRepresentable("YAML merge keys (<<) are not supported: PyYAML and go-yaml merge them "
                                        "differently (hint: write the keys out)")
        super().flatten_mapping(node)


def _construct_go_plain(loader: Any, node: Any) -> Any:
    return _go_plain_scalar(node.value)


def _refuse_tag(loader: Any, node: Any) -> Any:
    raise _NotRepresentable(f"explicit YAML tag {node.tag} is not supported (hint: remove it)")


_GoYamlLoader.add_constructor(_GO_PLAIN, _construct_go_plain)
for _tag in ("null", "bool", "int", "float", "binary", "timestamp", "omap", "pairs", "set"):
    _GoYamlLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _refuse_tag)


def _check_keys(value: Any, path: str) -> None:
    if isinstance(value, dict):
        for key, child in value.items():
            if not isinstance(key, str):
                raise _NotRepresentable(f"map key {key!r} at {path or '/'} is not a string (hint: quote it)")
            _check_keys(child, f"{path}/{key}")
    elif isinstance(value, list):
        for i, child in enumerate(value):
            _check_keys(child, f"{path}/{i}")


# --- walk() and encodePrimitive of OPA's hash.go ----------------------------------------------------------

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def _walk(value: Any, out: list[str]) -> None:
    if isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value)):
            if i:
                out.append(",")
            out.append(_go_string(key))
            out.append(":")
            _walk(value[key], out)
        out.append("}")
    elif isinstance(value, list):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _walk(item, out)
        out.append("]")
    elif isinstance(value, _JsonNumber):
        out.append(str.__str__(value))
    elif isinstance(value, str):
        out.append(_go_string(value))
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif value is None:
        out.append("null")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(_go_float(value))
    else:
        raise _NotRepresentable(f"{value!r} is not a JSON value")


def _go_string(s: str) -> str:
    """encoding/json's string encoding with SetEscapeHTML(false); Go decodes lone surrogates to U+FFFD."""
    s = _LONE_SURROGATE.sub("\ufffd", s)
    return json.dumps(s, ensure_ascii=False).replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _go_float(f: float) -> str:
    """encoding/json's float64 encoding: shortest digits, exponent form below 1e-6 and from 1e21."""
    if math.isnan(f) or math.isinf(f):
        raise _NotRepresentable(f"{f} is not a number JSON can hold")
    if f == 0:
        return "-0" if math.copysign(1.0, f) < 0 else "0"
    if 1e-6 <= abs(f) < 1e21:
        return format(Decimal(repr(f)).normalize(), "f")
    mantissa, _, exponent = repr(f).partition("e")  # Python's repr also writes these with an exponent
    if exponent.startswith("-0"):
        exponent = "-" + exponent[2:]
    return f"{mantissa}e{exponent}"


# --- comparing OPA's reading of a data file with Tollgate's ------------------------------------------------


def _difference(opa: Any, ours: Any, path: str) -> tuple[str, str, str] | None:
    """The first place where the two readings differ: (path, OPA's reading, Tollgate's reading)."""
    if isinstance(opa, dict) or isinstance(ours, dict):
        if not (isinstance(opa, dict) and isinstance(ours, dict)):
            return path, _show(opa), _show(ours)
        for key in sorted(set(opa) | set(ours), key=str):
            if not isinstance(key, str):
                return f"{path}/{key}", "absent", f"a key that is not a string ({key!r})"
            if key not in opa or key not in ours:
                return f"{path}/{key}", _show(opa.get(key), key in opa), _show(ours.get(key), key in ours)
            found = _difference(opa[key], ours[key], f"{path}/{key}")
            if found:
                return found
        return None
    if isinstance(opa, list) or isinstance(ours, list):
        if not (isinstance(opa, list) and isinstance(ours, list)) or len(opa) != len(ours):
            return path, _show(opa), _show(ours)
        for i, (a, b) in enumerate(zip(opa, ours, strict=True)):
            found = _difference(a, b, f"{path}/{i}")
            if found:
                return found
        return None
    return None if _same_scalar(opa, ours) else (path, _show(opa), _show(ours))


def _same_scalar(opa: Any, ours: Any) -> bool:
    if isinstance(opa, bool) or isinstance(ours, bool) or opa is None or ours is None:
        return type(opa) is type(ours) and opa == ours
    a, b = _number(opa), _number(ours)
    if a is not None or b is not None:
        return a is not None and b is not None and a == b
    return type(ours) is str and isinstance(opa, str) and str.__str__(opa) == ours


def _number(value: Any) -> Decimal | None:
    if isinstance(value, _JsonNumber):
        return Decimal(str.__str__(value))
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return Decimal(value)
    if isinstance(value, float):
        return Decimal(repr(value)) if math.isfinite(value) else None
    return None


def _show(value: Any, present: bool = True) -> str:
    if not present:
        return "absent"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, _JsonNumber):
        return f"the number {str.__str__(value)}"
    if isinstance(value, str):
        return f"the string {json.dumps(value)}"
    if isinstance(value, int):
        return f"the number {value}"
    if isinstance(value, float):
        return f"the number {_go_float(value) if math.isfinite(value) else value}"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    return f"{value} (a {type(value).__name__})"
