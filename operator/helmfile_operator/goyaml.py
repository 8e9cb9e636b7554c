"""YAML as helm reads it.

Helm reads values files (`-f`) and release manifests the same way: k8s.io/apimachinery's
YAMLReader splits the text into documents at `---` lines; go-yaml v2 (`go.yaml.in/yaml/v2`, what
sigs.k8s.io/yaml wraps) decodes the first YAML document of each piece; sigs.k8s.io/yaml turns the
result into JSON (map keys become strings; NaN and infinities are refused); values documents are
then deep-merged in order. PyYAML's SafeLoader disagrees with that in many places that matter to
an operator passing data to helm: it builds dates (`day: 2024-01-01`), reads `12:30` as the
sexagesimal integer 750 and `0o17` as a string, fails on a bare `=`, yields bytes for `!!binary`
and keeps non-string keys, while it reads `y`/`n` as strings where helm reads booleans.

So this module takes only PyYAML's *event stream* (libyaml, in C, when PyYAML was built with it:
the scanner and parser are non-recursive there) and builds the tree itself, iteratively, with
go-yaml v2's rules (`resolve.go`, `decode.go`) and sigs.k8s.io/yaml's key conversion:

- plain scalars: `~`, `null`/`Null`/`NULL` and empty are null; booleans are `y Y yes Yes YES
  true True TRUE on On ON` and `n N no No NO false False FALSE off Off OFF`; integers as Go's
  `strconv.ParseInt(s, 0, 64)` once `_` are removed (sign, `0x`, `0o`, `0b`, leading-0 octal),
  then unsigned 64-bit, then decimal floats (`1e3`, `.5`, `08`); `.inf`/`.nan` spellings are
  floats; everything else (timestamps, `12:30`, `=`, `1e400`) is a string;
- explicit tags: `!!str`, `!!int`, `!!float` (integers convert), `!!bool`, `!!null`,
  `!!timestamp` (checked, kept as text) must fit their scalar; `!!binary` is the decoded text
  (bytes that are not UTF-8 become U+FFFD, as Go's JSON encoder writes them); any other tag is
  ignored (the scalar stays a string);
- merge keys `<<` as go-yaml v2 applies them: in document order, so a `<<` *after* a key
  overrides it, and in a list of maps the earlier map wins;
- keys: int → `"1"`, bool → `"true"`, float → Go's `FormatFloat(f, 'g', -1, 32)`
  (`1e+06`, `3.1415927`); null keys, keys above 2**63-1 and map/list keys are errors (as in
  helm); two keys that become the same string (`1` and `"1"`) are an error too, because helm
  keeps one of them at random (Go map order; observed with helm 4.3);
- duplicate keys: the last one wins.

Every result is JSON-compatible: dicts with str keys, lists, str, int, finite float, bool, None.
Nothing shares structure: aliases are copied. Bounds (input size, nodes after alias expansion,
nesting depth) are checked while building, so no alias bomb expands and no RecursionError can
happen here; every failure is a GoYAMLError whose message names the caller's label, the line
and the bound, and never quotes the document (it may come from a Secret).

Cost, measured on a 2-vCPU Xeon VM with CPython 3.11: a 5 MiB release manifest (3,725 objects,
374k nodes) loads in 1.0-1.7 s, a little faster than `yaml.load_all(text, yaml.CSafeLoader)`
(1.4-3.0 s), whose constructors run in Python, and which can be bounded neither in nodes nor in
depth (its C composer recurses: 100,000 nested `[` overflow the C stack). Without libyaml,
PyYAML's pure-Python parser takes 13 s for the same manifest.
"""

from __future__ import annotations

import binascii
import math
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, NoReturn

import yaml

__all__ = [
    "MANIFEST_LIMITS",
    "MAX_DEPTH",
    "MAX_MANIFEST_CHARS",
    "MAX_MANIFEST_DEPTH",
    "MAX_MANIFEST_NODES",
    "MAX_VALUES_CHARS",
    "MAX_VALUE_NODES",
    "VALUES_LIMITS",
    "GoDumper",
    "GoYAMLError",
    "Limits",
    "load_manifest",
    "load_values",
    "resolve_plain",
]

# Values: a valuesFrom ConfigMap or Secret fits in etcd (about 1.5 MiB), a rendered template in
# 1 MiB (render.templates.MAX_OUTPUT_CHARS): 2 Mi characters leave room and bound the work.
MAX_VALUES_CHARS = 2 << 20
# YAML aliases can make a small document expand to a huge tree ("billion laughs").
MAX_VALUE_NODES = 250_000
# Maps and lists inside each other: helm values are rarely 20 levels deep.
MAX_DEPTH = 100
# A release manifest is stored gzipped in one Secret (1 MiB), so it can be several MiB of text.
MAX_MANIFEST_CHARS = 32 << 20
# Manifests have about one node per 14 characters: 4M leaves room for dense ones, and for aliases.
MAX_MANIFEST_NODES = 4_000_000
# CRD schemas nest deeper than values (two levels per object: `properties`, the field), but the
# tree must stay far from Python's recursion limit for those who walk it recursively (drift).
MAX_MANIFEST_DEPTH = 200


@dataclass(frozen=True)
class Limits:
    """Bounds of one load: characters of text; nodes once aliases are expanded, over all its
    documents; nesting depth (a top-level scalar is at depth 1)."""

    max_chars: int
    max_nodes: int
    max_depth: int


VALUES_LIMITS = Limits(MAX_VALUES_CHARS, MAX_VALUE_NODES, MAX_DEPTH)
MANIFEST_LIMITS = Limits(MAX_MANIFEST_CHARS, MAX_MANIFEST_NODES, MAX_MANIFEST_DEPTH)


class GoYAMLError(ValueError):
    """The text cannot be read as helm would read it, or exceeds a bound.

    `str(error)` is `"{where} {detail}"`, e.g. `"spec.valuesFrom[0]: ConfigMap ns/v key
    'values.yaml' is not valid YAML at line 3, column 7: …"`. Neither `detail` nor the message
    ever contains text of the document; `path` (e.g. `db.hosts[2]`, map keys included) is kept
    apart for callers whose documents are not secret. `reason` is one of: "syntax", "size",
    "nodes", "depth", "value", "key", "document".
    """

    def __init__(
        self,
        where: str,
        detail: str,
        *,
        reason: str,
        line: int | None = None,
        column: int | None = None,
        path: str | None = None,
    ) -> None:
        super().__init__(f"{where} {detail}")
        self.where = where
        self.detail = detail
        self.reason = reason
        self.line = line
        self.column = column
        self.path = path


def load_values(text: str, where: str, limits: Limits = VALUES_LIMITS) -> dict[str, Any]:
    """A values file as `helm -f` reads it: each document a map (or empty), deep-merged in order
    (a later map merges into an earlier one, anything else replaces); `{}` when all are empty.
    Raises GoYAMLError (reason "document" when a document is a list or a scalar)."""
    result: dict[str, Any] = {}
    for document, line in _Loader(text, where, limits).documents():
        if document is None:
            continue
        if not isinstance(document, dict):
            raise GoYAMLError(
                where,
                f"is a YAML {_kind(document)}"
                + (f" (the document at line {line})" if line > 1 else "")
                + ", but it must be a map of values (`key: value` lines) or empty",
                reason="document",
                line=line,
            )
        _merge_into(result, document)
    return result


def load_manifest(text: str, where: str, limits: Limits = MANIFEST_LIMITS) -> list[dict[str, Any]]:
    """The map documents of a multi-document manifest, in order; empty documents and those that
    are not maps are skipped. Raises GoYAMLError."""
    return [
        document
        for document, _ in _Loader(text, where, limits).documents()
        if isinstance(document, dict)
    ]


def _merge_into(target: dict[str, Any], override: dict[str, Any]) -> None:
    """helm's MergeMaps between documents: fresh trees, so nothing is copied."""
    pending = [(target, override)]
    while pending:
        into, source = pending.pop()
        for key, value in source.items():
            current = into.get(key)
            if isinstance(value, dict) and isinstance(current, dict):
                pending.append((current, value))
            else:
                into[key] = value


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "boolean"
    return "number"


# --- scalars: go-yaml v2's resolve() -------------------------------------------------------------

_PREFIX = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP, _BINARY, _MERGE = (
    _PREFIX + name
    for name in ("str", "int", "float", "bool", "null", "timestamp", "binary", "merge")
)
_RESOLVABLE = frozenset(("", _STR, _INT, _FLOAT, _BOOL, _NULL, _TIMESTAMP))

# The Go type behind a decoded scalar matters for keys: "s" string, "i" int, "u" uint64,
# "f" float64, "b" bool, "n" nil.
_Scalar = tuple[str, Any]

_HINTS = dict.fromkeys("+-", "S") | dict.fromkeys("0123456789", "D")
_HINTS |= dict.fromkeys("yYnNtTfFoO~", "M") | {".": "."}
_TRUE = ("y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON")
_FALSE = ("n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF")
_WORDS: dict[str, _Scalar] = {
    **dict.fromkeys(_TRUE, ("b", True)),
    **dict.fromkeys(_FALSE, ("b", False)),
    **dict.fromkeys(("", "~", "null", "Null", "NULL"), ("n", None)),
    **dict.fromkeys((".nan", ".NaN", ".NAN"), ("f", math.nan)),
    **dict.fromkeys((".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF"), ("f", math.inf)),
    **dict.fromkeys(("-.inf", "-.Inf", "-.INF"), ("f", -math.inf)),
}
_YAML_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_DOT_FLOAT = re.compile(r"\.[0-9_]*[0-9][0-9_]*(?:[eE][-+]?[0-9][0-9_]*)?")
_DIGITS = {
    2: re.compile(r"[01]+"),
    8: re.compile(r"[0-7]+"),
    10: re.compile(r"[0-9]+"),
    16: re.compile(r"[0-9a-fA-F]+"),
}
_MAX_INT64 = (1 << 63) - 1
_MAX_UINT64 = (1 << 64) - 1
# time.Parse layouts of go-yaml v2: "2006-1-2T15:4:5.999999999Z07:00" (also "t"),
# "2006-1-2 15:4:5.999999999" and "2006-1-2".
_TIMESTAMP_RE = re.compile(
    r"(?P<y>[0-9]{4})-(?P<m>[0-9]{1,2})-(?P<d>[0-9]{1,2})"
    r"(?:(?:[Tt](?P<hms>[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2})(?:[.,][0-9]+)?"
    r"(?:Z|[-+](?P<zh>[0-9]{2}):(?P<zm>[0-9]{2})))"
    r"|(?: (?P<hms2>[0-9]{1,2}:[0-9]{1,2}:[0-9]{1,2})(?:[.,][0-9]+)?))?"
)
_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


class _Problem(Exception):
    """Something helm refuses; `detail` has an `{at}` slot for the line."""

    def __init__(self, detail: str, reason: str = "value") -> None:
        super().__init__(detail)
        self.detail = detail
        self.reason = reason
        self.line: int | None = None
        self.path: str | None = None

    def at(self, line: int, stack: list[Any]) -> _Problem:
        self.detail = self.detail.replace("{at}", f" at line {line}")
        self.line = line
        self.path = _path(stack)
        return self


def _go_uint(text: str) -> int | None:
    """strconv.ParseUint(text, 0, 64) of text without underscores."""
    base, digits = 10, text
    if text[:1] == "0":
        if text == "0":
            return 0
        prefix = text[1].lower() if len(text) >= 3 else ""
        base = {"b": 2, "o": 8, "x": 16}.get(prefix, 8)
        digits = text[2:] if prefix in ("b", "o", "x") else text[1:]
    if not _DIGITS[base].fullmatch(digits):
        return None
    value = int(digits, base)
    return value if value <= _MAX_UINT64 else None


def _go_int(text: str) -> int | None:
    """strconv.ParseInt(text, 0, 64) of text without underscores."""
    negative = text[:1] == "-"
    unsigned = _go_uint(text[1:] if text[:1] in ("+", "-") else text) if text else None
    if unsigned is None:
        return None
    if negative:
        return -unsigned if unsigned <= _MAX_INT64 + 1 else None
    return unsigned if unsigned <= _MAX_INT64 else None


def _underscores_ok(text: str) -> bool:
    """strconv's underscoreOK: each `_` between two digits (text has no sign or base prefix)."""
    seen = "^"
    for char in text:
        if char.isdigit():
            seen = "0"
        elif char == "_":
            if seen != "0":
                return False
            seen = "_"
        elif seen == "_":
            return False
        else:
            seen = "!"
    return seen != "_"


def _finite(text: str) -> float | None:
    value = float(text)
    return value if math.isfinite(value) else None  # Go's ParseFloat fails on overflow


def _is_timestamp(text: str) -> bool:
    match = _TIMESTAMP_RE.fullmatch(text)
    if match is None:
        return False
    year, month, day = int(match["y"]), int(match["m"]), int(match["d"])
    leap = year % 4 == 0 and (year % 100 != 0 or year % 400 == 0)
    if not 1 <= month <= 12 or not 1 <= day <= (_DAYS[month - 1] - (month == 2 and not leap)):
        return False
    clock = match["hms"] or match["hms2"]
    if clock is not None:
        hour, minute, second = (int(part) for part in clock.split(":"))
        if hour > 23 or minute > 59 or second > 59:
            return False
    return match["zh"] is None or (int(match["zh"]) <= 24 and int(match["zm"]) <= 60)


def _implicit(text: str, tag: str) -> tuple[str, _Scalar]:
    """go-yaml v2's resolve() for a resolvable tag: (resolved tag, Go-typed value)."""
    hint = _HINTS.get(text[0]) if text else "M"
    if hint is not None and tag != _STR:
        word = _WORDS.get(text)
        if word is not None:
            kind = word[0]
            return {"b": _BOOL, "n": _NULL}.get(kind, _FLOAT), word
        if hint == ".":
            if _DOT_FLOAT.fullmatch(text) and ("_" not in text or _underscores_ok(text)):
                value = _finite(text.replace("_", ""))
                if value is not None:
                    return _FLOAT, ("f", value)
        elif hint in ("D", "S"):
            if tag in ("", _TIMESTAMP) and _is_timestamp(text):
                return _TIMESTAMP, ("s", text)  # decoded into interface{}: the text itself
            plain = text.replace("_", "")
            number = _go_int(plain)
            if number is not None:
                return _INT, ("i", number)
            number = _go_uint(plain)
            if number is not None:
                return _INT, ("u", number)
            if _YAML_FLOAT.fullmatch(plain):
                value = _finite(plain)
                if value is not None:
                    return _FLOAT, ("f", value)
    return _STR, ("s", text)


def _short(tag: str) -> str:
    return "!!" + tag.removeprefix(_PREFIX) if tag.startswith(_PREFIX) else "a local tag"


def _binary(text: str) -> str:
    # Go's base64.StdEncoding ignores \r and \n only; Go's JSON encoder then writes each byte
    # that is not UTF-8 as U+FFFD (surrogateescape yields one surrogate per such byte).
    try:
        data = binascii.a2b_base64(text.replace("\n", "").replace("\r", ""), strict_mode=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        raise _Problem("has invalid base64 in a !!binary scalar{at}") from None
    return _LONE_SURROGATE.sub("\ufffd", data.decode("utf-8", "surrogateescape"))


_LONE_SURROGATE = re.compile("[\udc80-\udcff]")


def _scalar(tag: str | None, text: str, plain: bool) -> _Scalar:
    """A scalar event as go-yaml v2 decodes it into interface{}."""
    if not tag:
        if not plain:
            return ("s", text)  # quoted, literal or folded, untagged
        tag = ""
    if tag == _BINARY:
        return ("s", _binary(text))
    if tag not in _RESOLVABLE:
        return ("s", text)  # `!`, `!local`, `!!merge`, `!!set`…: go-yaml keeps the text
    resolved, value = _implicit(text, tag)
    if tag in ("", resolved, _STR):
        return ("s", text) if tag == _STR else value
    if tag == _FLOAT and resolved == _INT and value[0] == "i":
        return ("f", float(value[1]))
    raise _Problem(f"has a scalar tagged {_short(tag)}{{at}} that is not a valid {_short(tag)}")


def resolve_plain(text: str) -> str:
    """The YAML tag go-yaml v2 gives `text` as a plain (unquoted, untagged) scalar; `<<` counts
    as the merge tag, which it is as a key."""
    if text == "<<":
        return _MERGE
    return _implicit(text, "")[0] if text else _NULL


# --- keys: sigs.k8s.io/yaml's convertToJSONableObject --------------------------------------------


def _float32_text(value: float) -> str:
    """Go's strconv.FormatFloat(value, 'g', -1, 32): shortest digits of the float32 value,
    exponent form below 1e-4 and from 1e6 (for shortest output Go's %g uses precision 6)."""
    if math.isnan(value):
        return ".nan"
    try:
        single = struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        single = math.copysign(math.inf, value)
    if math.isinf(single):
        return ".inf" if single > 0 else "-.inf"
    if single == 0:
        return "-0" if math.copysign(1.0, single) < 0 else "0"
    for precision in range(1, 10):
        text = f"{abs(single):.{precision - 1}e}"
        if struct.unpack("<f", struct.pack("<f", float(text)))[0] == abs(single):
            break
    mantissa, exponent_text = text.split("e")
    digits = mantissa.replace(".", "").rstrip("0") or "0"
    exponent = int(exponent_text)
    sign = "-" if single < 0 else ""
    if exponent < -4 or exponent >= 6:
        fraction = f".{digits[1:]}" if len(digits) > 1 else ""
        return f"{sign}{digits[0]}{fraction}e{'-' if exponent < 0 else '+'}{abs(exponent):02d}"
    if exponent < 0:
        return f"{sign}0.{'0' * (-exponent - 1)}{digits}"
    whole, fraction = digits[: exponent + 1], digits[exponent + 1 :]
    return sign + whole.ljust(exponent + 1, "0") + (f".{fraction}" if fraction else "")


def _key_text(key: _Scalar) -> str:
    kind, value = key
    if kind == "s":
        return str(value)
    if kind == "i":
        return str(value)
    if kind == "b":
        return "true" if value else "false"
    if kind == "f":
        return _float32_text(value)
    if kind == "n":
        raise _Problem("has a null map key{at} (`~`, `null` or empty), which helm refuses", "key")
    raise _Problem("has an integer map key above 2**63-1{at}, which helm refuses", "key")


# --- the tree ------------------------------------------------------------------------------------

# A merge source: a map's entries, its Go keys that were not strings, and whether it belongs to
# an anchor (then its values are copied, never moved).
_Source = tuple[dict[str, Any], dict[str, Any] | None, bool]


class _Map:
    __slots__ = ("anchor", "height", "key", "key_line", "key_text", "line", "merging", "out",
                 "owners", "size")  # fmt: skip

    def __init__(self, line: int, anchor: str | None) -> None:
        self.line = line
        self.anchor = anchor
        self.size = 1
        self.height = 1
        self.out: dict[str, Any] = {}
        self.owners: dict[str, Any] | None = None  # JSON key → Go key, for non-string keys
        self.key: Any = None  # the pending key (Go-typed), None when a key is expected
        self.key_text = ""
        self.key_line = 0
        self.merging = False  # the pending key is `<<`


class _Seq:
    __slots__ = ("anchor", "height", "items", "line", "size", "sources")

    def __init__(self, line: int, anchor: str | None) -> None:
        self.line = line
        self.anchor = anchor
        self.size = 1
        self.height = 1
        self.items: list[Any] = []
        self.sources: list[_Source] | None = None  # set for the list value of a `<<` key


class _Node:
    """A finished node on its way to its parent, or an anchor's record."""

    __slots__ = ("height", "line", "merge_key", "owners", "scalar", "shared", "size", "sources",
                 "value")  # fmt: skip

    def __init__(
        self, value: Any, size: int, height: int, line: int, scalar: _Scalar | None = None,
        owners: dict[str, Any] | None = None, sources: list[_Source] | None = None,
    ) -> None:  # fmt: skip
        self.value = value
        self.size = size
        self.height = height
        self.line = line
        self.scalar = scalar  # for scalars: the Go-typed value (keys need the type)
        self.owners = owners  # for maps
        self.sources = sources  # for the list value of a `<<` key
        self.merge_key = False  # a plain `<<` (or `!!merge <<`) scalar
        self.shared = False  # from an alias: copied before it is placed

    def alias(self, line: int) -> _Node:
        node = _Node(self.value, self.size, self.height, line, self.scalar, self.owners)
        node.shared = True
        return node


_Frame = _Map | _Seq
_SCALAR, _MAP_START, _SEQ_START, _END, _ALIAS, _DOC_END = range(6)
_EVENTS = {
    yaml.ScalarEvent: _SCALAR,
    yaml.MappingStartEvent: _MAP_START,
    yaml.SequenceStartEvent: _SEQ_START,
    yaml.MappingEndEvent: _END,
    yaml.SequenceEndEvent: _END,
    yaml.AliasEvent: _ALIAS,
    yaml.DocumentEndEvent: _DOC_END,
}  # the others (stream and document start, stream end) carry nothing to build
_Parser: Any = yaml.CSafeLoader if yaml.__with_libyaml__ else yaml.SafeLoader
_C_PARSERS: tuple[type, ...] = (yaml.CSafeLoader,) if yaml.__with_libyaml__ else ()
# k8s.io/apimachinery's YAMLReader: a line starting with `---` ends a document; after the
# dashes only white space or a comment may follow (anything else is an error, as in helm).
_SEPARATOR = re.compile(r"^---([^\n]*)", re.MULTILINE)
_GO_SPACE = " \t\n\v\f\r\x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000" + "".join(
    map(chr, range(0x2000, 0x200B))
)  # unicode.IsSpace
# libyaml's messages are constant strings; PyYAML's pure-Python ones may quote the input.
_QUOTED = re.compile(r"\s*['\"#].*", re.DOTALL)


def _copy(value: Any) -> Any:
    """A deep copy of a JSON-compatible tree, without recursion."""
    if not isinstance(value, dict | list):
        return value
    root: Any = {} if isinstance(value, dict) else []
    pending = [(value, root)]
    while pending:
        source, target = pending.pop()
        children = source.items() if isinstance(source, dict) else enumerate(source)
        is_list = isinstance(target, list)
        for key, child in children:
            if isinstance(child, dict | list):
                fresh: Any = {} if isinstance(child, dict) else []
                pending.append((child, fresh))
                child = fresh
            if is_list:
                target.append(child)
            else:
                target[key] = child
    return root


class _Loader:
    def __init__(self, text: str, where: str, limits: Limits) -> None:
        if not isinstance(text, str):
            raise TypeError(f"expected YAML text (str), got {type(text).__name__}")
        self.where = where
        self.limits = limits
        self.text = text
        self.nodes = 0  # after alias expansion, over the whole text
        if len(text) > limits.max_chars:
            self._fail(f"is larger than {limits.max_chars} characters", "size")

    def _fail(
        self, detail: str, reason: str, line: int | None = None, column: int | None = None,
        path: str | None = None,
    ) -> NoReturn:  # fmt: skip
        # `from None`: PyYAML's own errors may show the text, and must not travel along.
        raise GoYAMLError(
            self.where, detail, reason=reason, line=line, column=column, path=path
        ) from None

    def documents(self) -> Iterator[tuple[Any, int]]:
        """(root, first line) of each piece between `---` lines: its first YAML document (what
        go-yaml v2 reads), None when it has none."""
        text = self.text
        start = line = 0  # the piece's first character and the number of lines before it
        for match in _SEPARATOR.finditer(text):
            rest = match.group(1).strip(_GO_SPACE)
            separator_line = line + text.count("\n", start, match.start())
            if rest and not rest.startswith("#"):
                self._fail(
                    f"is not valid YAML at line {separator_line + 1}: a line that starts with "
                    "`---` must be a document separator (`---`, then at most a comment)",
                    "syntax",
                    separator_line + 1,
                )
            if match.start() > start:
                yield self._document(text[start : match.start()], line), line + 1
            start, line = match.end() + 1, separator_line + 1
        if start < len(text):
            yield self._document(text[start:], line), line + 1

    def _document(self, piece: str, offset: int) -> Any:
        parser = None
        try:
            parser = _Parser(piece)
            return self._build(parser, offset)
        except _Problem as problem:
            self._fail(problem.detail, problem.reason, problem.line, path=problem.path)
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            problem_text = " ".join(part for part in (error.context, error.problem) if part)
            if not isinstance(parser, _C_PARSERS):
                problem_text = _QUOTED.sub("", problem_text)
            if mark is None:
                self._fail(f"is not valid YAML: {problem_text}", "syntax")
            line, column = mark.line + 1 + offset, mark.column + 1
            self._fail(
                f"is not valid YAML at line {line}, column {column}: {problem_text}",
                "syntax",
                line,
                column,
            )
        except yaml.reader.ReaderError as error:
            line = piece.count("\n", 0, error.position) + 1 + offset
            self._fail(f"is not valid YAML at line {line}: {error.reason}", "syntax", line)
        except yaml.YAMLError:
            self._fail("is not valid YAML", "syntax")
        except UnicodeError:  # a lone surrogate: str that cannot be UTF-8
            self._fail("is not valid YAML: it holds text that is not valid Unicode", "syntax")
        finally:
            if parser is not None:
                parser.dispose()

    def _build(self, parser: Any, offset: int) -> Any:
        """The first document of the stream (go-yaml v2 reads no further), or None."""
        max_nodes, max_depth = self.limits.max_nodes, self.limits.max_depth
        stack: list[_Frame] = []
        anchors: dict[str, _Node] = {}
        root: list[Any] = []
        get_event, events, place = parser.get_event, _EVENTS, self._place
        while (event := get_event()) is not None:
            code = events.get(type(event))
            if code is None:
                continue
            line = event.start_mark.line + 1 + offset
            if code == _SCALAR:
                self.nodes += 1
                if self.nodes > max_nodes or len(stack) >= max_depth:
                    self._bound(line, stack)
                plain = event.implicit[0]
                text = event.value
                tag = event.tag
                if tag is None and (not plain or (text and text[0] not in _HINTS)):
                    scalar = ("s", text)  # quoted, or plain text no rule applies to: a string
                else:
                    try:
                        scalar = _scalar(tag, text, plain)
                    except _Problem as problem:
                        raise problem.at(line, stack) from None
                top = stack[-1] if stack else None
                # The common cases without a _Node: a value under a key, a list item, a key.
                if type(top) is _Map and event.anchor is None:
                    if top.key is not None:
                        value = scalar[1]
                        if type(value) is float and not math.isfinite(value):
                            raise _non_finite(line, stack)
                        top.size += 1
                        if top.height < 2:
                            top.height = 2
                        out, name = top.out, top.key_text
                        if name in out or type(top.key) is not str:
                            self._set(top, top.key, name, value, top.key_line, stack)
                        else:
                            out[name] = value
                        top.key = None
                        continue
                    if (
                        not top.merging
                        and scalar[0] == "s"
                        and not (text == "<<" and (plain or tag == _MERGE))
                    ):
                        top.size += 1
                        top.key = top.key_text = scalar[1]
                        top.key_line = line
                        continue
                elif type(top) is _Seq and top.sources is None and event.anchor is None:
                    value = scalar[1]
                    if type(value) is float and not math.isfinite(value):
                        raise _non_finite(line, stack)
                    top.size += 1
                    if top.height < 2:
                        top.height = 2
                    top.items.append(value)
                    continue
                node = _Node(scalar[1], 1, 1, line, scalar)
                node.merge_key = text == "<<" and (plain or tag == _MERGE)
                if event.anchor is not None:
                    anchors[event.anchor] = node
            elif code in (_MAP_START, _SEQ_START):
                self.nodes += 1
                if self.nodes > max_nodes or len(stack) >= max_depth:
                    self._bound(line, stack)
                parent = stack[-1] if stack else None
                frame: _Frame = (_Map if code == _MAP_START else _Seq)(line, event.anchor)
                if type(parent) is _Map:
                    if parent.merging:
                        if type(frame) is _Seq:
                            frame.sources = []
                    elif parent.key is None:
                        raise _Problem(
                            "has a map or list as a map key{at}, which helm refuses", "key"
                        ).at(line, stack)
                elif type(parent) is _Seq and parent.sources is not None and code == _SEQ_START:
                    raise _bad_merge(line, stack)
                stack.append(frame)
                continue
            elif code == _END:
                frame = stack.pop()
                if isinstance(frame, _Map):
                    node = _Node(
                        frame.out, frame.size, frame.height, frame.line, None, frame.owners
                    )
                elif frame.sources is not None:
                    # Used as a value only through an alias: the list of the maps merged.
                    value = [source for source, _, _ in frame.sources]
                    node = _Node(value, frame.size, frame.height, frame.line, sources=frame.sources)
                else:
                    node = _Node(frame.items, frame.size, frame.height, frame.line)
                if frame.anchor is not None:
                    anchors[frame.anchor] = node
            elif code == _ALIAS:
                target = anchors.get(event.anchor)
                if target is None:
                    raise _Problem(
                        "has an alias{at} to an unknown anchor (an alias must follow its anchor "
                        "in the same document, outside of the anchored node)",
                        "syntax",
                    ).at(line, stack)
                self.nodes += target.size
                if self.nodes > max_nodes or len(stack) + target.height > max_depth:
                    self._bound(line, stack)
                node = target.alias(line)
            else:  # document end
                return root[0] if root else None
            if stack:
                place(stack[-1], node, stack)
            else:
                root.append(_value(node, stack))
        return None

    def _place(self, parent: _Frame, node: _Node, stack: list[_Frame]) -> None:
        parent.size += node.size
        if node.height >= parent.height:
            parent.height = node.height + 1
        if type(parent) is _Seq:
            if parent.sources is None:
                parent.items.append(_value(node, stack))
            elif type(node.value) is dict:  # an item of a `<<` list
                parent.sources.append((node.value, node.owners, node.shared))
            else:
                raise _bad_merge(node.line, stack)
            return
        assert type(parent) is _Map
        if parent.merging:
            parent.merging = False
            sources: list[_Source]
            if node.sources is not None and not node.shared:
                sources = node.sources
            elif type(node.value) is dict:
                sources = [(node.value, node.owners, node.shared)]
            else:
                raise _bad_merge(parent.key_line, stack)
            # go-yaml v2 applies a merge where it stands (a later `<<` overrides earlier keys),
            # and the maps of a list from the last to the first (the first one wins).
            for source, owners, shared in reversed(sources):
                for text, value in source.items():
                    key = (owners.get(text) if owners else None) or text
                    self._set(
                        parent, key, text, _copy(value) if shared else value, node.line, stack
                    )
            return
        if parent.key is None:  # the node is a key
            scalar = node.scalar
            if scalar is None:
                raise _Problem("has a map or list as a map key{at}, which helm refuses", "key").at(
                    node.line, stack
                )
            if node.merge_key and not node.shared:
                parent.merging = True
                parent.key_line = node.line
                return
            try:
                parent.key_text = _key_text(scalar)
            except _Problem as problem:
                raise problem.at(node.line, stack) from None
            kind, value = scalar
            # The Go key: strings stand for themselves (the common case, kept cheap).
            if kind == "s":
                parent.key = value
            elif kind == "f" and math.isnan(value):
                parent.key = ("nan", object())  # every NaN key is a distinct key in Go
            else:
                parent.key = scalar
            parent.key_line = node.line
            return
        self._set(parent, parent.key, parent.key_text, _value(node, stack), parent.key_line, stack)
        parent.key = None

    def _set(
        self, parent: _Map, key: Any, text: str, value: Any, line: int, stack: list[_Frame]
    ) -> None:
        """out[text] = value, unless another Go key already became `text` (duplicates of the
        same key: the last one wins, as in go-yaml v2)."""
        out, owners = parent.out, parent.owners
        if text in out and ((owners.get(text) if owners else None) or text) != key:
            raise _Problem(
                "has two map keys that helm turns into the same string (the one{at} and an "
                'earlier one, e.g. `1` and "1"); helm keeps either of them at random',
                "key",
            ).at(line, stack)
        out[text] = value
        if type(key) is not str:
            if owners is None:
                owners = parent.owners = {}
            owners[text] = key

    def _bound(self, line: int, stack: list[_Frame]) -> NoReturn:
        if self.nodes > self.limits.max_nodes:
            self._fail(
                f"has more than {self.limits.max_nodes} nodes once YAML aliases are expanded "
                f"(reached at line {line})",
                "nodes",
                line,
            )
        self._fail(
            f"has nesting deeper than {self.limits.max_depth} levels (at line {line})",
            "depth",
            line,
            path=_path(stack),
        )


def _value(node: _Node, stack: list[_Frame]) -> Any:
    """The node's value, ready to be placed: checked, and copied if an anchor owns it."""
    value = node.value
    if type(value) is float and not math.isfinite(value):
        raise _non_finite(node.line, stack)
    return _copy(value) if node.shared else value


def _path(stack: list[_Frame]) -> str:
    """Where the next node goes, e.g. `db.hosts[2]` (map keys: for callers that may show them)."""
    path = ""
    for frame in stack:
        if type(frame) is _Map:
            if frame.key is None and not frame.merging:
                break  # at a key: the path of the map
            name = "<<" if frame.merging else frame.key_text
            path = f"{path}.{name}" if path else name
        else:
            assert type(frame) is _Seq
            path += f"[{len(frame.items) if frame.sources is None else len(frame.sources)}]"
    return path


def _non_finite(line: int, stack: list[_Frame]) -> _Problem:
    return _Problem(
        "holds a non-finite number (.nan or .inf){at}, which JSON, and so helm, cannot hold"
    ).at(line, stack)


def _bad_merge(line: int, stack: list[_Frame]) -> _Problem:
    return _Problem(
        "has a merge key `<<`{at} whose value is not a map, an alias of a map or a list of those"
    ).at(line, stack)


# --- writing YAML that reads back the same ------------------------------------------------------

_FOLDED_BREAKS = re.compile("[\x85\u2028\u2029]")


class GoDumper(yaml.SafeDumper):
    """SafeDumper that quotes every string go-yaml v2 would read as something else (`y`, `n`,
    `0o17`, `0X1F`, `1e3`, `08`, `<<`…; and dates, for other readers): what it writes,
    load_values reads back unchanged."""

    def choose_scalar_style(self) -> str:
        style = super().choose_scalar_style()
        # Single quotes keep NEL, LS and PS raw, and readers fold them like line breaks.
        if style == "'" and _FOLDED_BREAKS.search(getattr(self.event, "value", "")):
            return '"'
        return style

    def resolve(self, kind: Any, value: Any, implicit: Any) -> Any:
        if kind is yaml.ScalarNode and implicit[0] and not implicit[1]:
            return resolve_plain(value)
        if kind is yaml.ScalarNode and implicit == (False, True):
            return _STR
        return super().resolve(kind, value, implicit)  # type: ignore[no-untyped-call]
