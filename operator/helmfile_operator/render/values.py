"""Helm values as plain data: merging layers, `--set`-style paths, digests. No I/O."""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from helmfile_operator.api.models import ChartReference, SetValue

__all__ = [
    "MAX_LIST_INDEX",
    "MAX_PATH_DEPTH",
    "MAX_SET_LIST_ITEMS",
    "InvalidValuesError",
    "PathLimitError",
    "PathPart",
    "apply_set",
    "check_set_growth",
    "deep_merge",
    "format_path",
    "get_path",
    "merge_all",
    "parse_path",
    "values_digest",
]

PathPart = str | int

# Like helm's strvals: an index is not an invitation to allocate a list of a billion Nones.
MAX_LIST_INDEX = 10_000
# Parts of one path (keys and indexes), as helm's strvals (MaxNestedNameLevel): each `[N]` part
# may make a list of N+1 items, so depth times index bounds what one entry allocates.
MAX_PATH_DEPTH = 30
# List items that all `set` entries of one release may add (the nulls before an index).
MAX_SET_LIST_ITEMS = 100_000
# A path is quoted in messages only this far: a megabyte-long name would make a huge message.
_QUOTED_PATH_CHARS = 80

_DIGITS = re.compile(r"[0-9]+")
_PATH_HELP = (
    "write keys separated by dots (`a.b.c`), `\\.` for a dot inside a key and `[N]` for the "
    "N-th list item (`a.list[0].b`)"
)


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: maps merge key by key, recursively; anything else (lists, scalars, null) in
    `override` replaces what `base` has. Neither input is modified nor shared with the result."""
    result: dict[str, Any] = copy.deepcopy(dict(base))
    _merge_into(result, override)
    return result


def merge_all(layers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """`deep_merge` of every layer in order, later layers winning; `{}` for no layers."""
    result: dict[str, Any] = {}
    for layer in layers:
        _merge_into(result, layer)
    return result


def _merge_into(target: dict[str, Any], override: Mapping[str, Any]) -> None:
    for key, value in override.items():
        current = target.get(key)
        if isinstance(value, Mapping) and isinstance(current, dict):
            _merge_into(current, value)
        else:
            target[key] = copy.deepcopy(value)


class PathLimitError(ValueError):
    """A `set` path, or all `set` entries of a release, exceed a bound (MAX_LIST_INDEX,
    MAX_PATH_DEPTH, MAX_SET_LIST_ITEMS). `entry` is the position of the entry at fault, when
    known."""

    def __init__(self, message: str, entry: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.entry = entry


def parse_path(dotted: str) -> list[PathPart]:
    """`a.b\\.c.list[0]` → `["a", "b.c", "list", 0]`. Raises ValueError for an invalid path,
    PathLimitError (a ValueError) for one beyond MAX_LIST_INDEX or MAX_PATH_DEPTH.

    A backslash makes the next character literal (`\\.`, `\\[`, `\\\\`)."""
    parts: list[PathPart] = []
    length = len(dotted)
    if length == 0:
        raise ValueError(f"invalid path '': the path is empty; {_PATH_HELP}")
    i = 0
    while True:
        if len(parts) >= MAX_PATH_DEPTH:
            raise _depth_error(dotted)
        key: list[str] = []
        while i < length and dotted[i] not in ".[]":
            if dotted[i] == "\\":
                if i + 1 == length:
                    raise _path_error(dotted, i, "a trailing backslash escapes nothing")
                key.append(dotted[i + 1])
                i += 2
            else:
                key.append(dotted[i])
                i += 1
        if not key:
            raise _path_error(dotted, i, "a key is empty")
        parts.append("".join(key))
        while i < length and dotted[i] == "[":
            end = dotted.find("]", i)
            if end < 0:
                raise _path_error(dotted, i, "'[' is not closed by ']'")
            text = dotted[i + 1 : end]
            if not _DIGITS.fullmatch(text):
                raise _path_error(dotted, i, "a list index must be a non-negative integer")
            # Compared as text first: int() of a million digits is slow (and refused).
            if len(text.lstrip("0")) > len(str(MAX_LIST_INDEX)) or int(text) > MAX_LIST_INDEX:
                raise PathLimitError(
                    _path_message(
                        dotted,
                        i,
                        f"the list index exceeds {MAX_LIST_INDEX}, the largest index a `set` "
                        "path may use; set the whole list as a value instead",
                    )
                )
            if len(parts) >= MAX_PATH_DEPTH:
                raise _depth_error(dotted)
            parts.append(int(text))
            i = end + 1
        if i == length:
            return parts
        if dotted[i] != ".":
            raise _path_error(dotted, i, f"unexpected {dotted[i]!r}")
        i += 1
        if i == length:
            raise _path_error(dotted, i, "the path ends with a dot")


def _path_error(dotted: str, position: int, problem: str) -> ValueError:
    return ValueError(f"{_path_message(dotted, position, problem)}; {_PATH_HELP}")


def _path_message(dotted: str, position: int, problem: str) -> str:
    return f"invalid path {_quoted(dotted)} (at character {position + 1}): {problem}"


def _depth_error(dotted: str) -> PathLimitError:
    return PathLimitError(
        f"invalid path {_quoted(dotted)}: it has more than {MAX_PATH_DEPTH} parts (keys and "
        f"list indexes), the most a `set` path may have; set a map or list as the value of a "
        "shorter path instead"
    )


def _quoted(dotted: str) -> str:
    if len(dotted) <= _QUOTED_PATH_CHARS:
        return repr(dotted)
    return f"{dotted[:_QUOTED_PATH_CHARS]!r}… ({len(dotted)} characters)"


def format_path(parts: Sequence[PathPart]) -> str:
    """The inverse of `parse_path`: `["a", "b.c", 0]` → `a.b\\.c[0]`."""
    out: list[str] = []
    for part in parts:
        if isinstance(part, int):
            out.append(f"[{part}]")
        else:
            escaped = re.sub(r"([\\.\[\]])", r"\\\1", part)
            out.append(f".{escaped}" if out else escaped)
    return "".join(out)


def get_path(values: Mapping[str, Any], dotted: str) -> Any:
    """The value at a dotted path. KeyError when any part is missing, ValueError when the path
    is invalid."""
    current: Any = values
    for part in parse_path(dotted):
        if isinstance(part, int):
            if not isinstance(current, list) or part >= len(current):
                raise KeyError(dotted)
        elif not isinstance(current, Mapping) or part not in current:
            raise KeyError(dotted)
        current = current[part]
    return current


def apply_set(values: Mapping[str, Any], sets: Sequence[SetValue]) -> dict[str, Any]:
    """A copy of `values` with each `set` entry applied in order (like `helm --set`): maps and
    lists are created (or replace scalars) along the path, lists grow with nulls up to an
    index. Raises ValueError naming the entry for an invalid path, PathLimitError (a
    ValueError) when the entries would add more than MAX_SET_LIST_ITEMS list items."""
    result: dict[str, Any] = copy.deepcopy(dict(values))
    growth = _Growth()
    for position, entry in enumerate(sets):
        try:
            parts = parse_path(entry.name)
        except PathLimitError as error:
            raise PathLimitError(f"set[{position}]: {error}", position) from None
        except ValueError as error:
            raise ValueError(f"set[{position}]: {error}") from None
        try:
            _set_in(result, parts, copy.deepcopy(entry.value), growth)
        except PathLimitError as error:
            raise PathLimitError(f"set[{position}]: {error}", position) from None
    return result


def check_set_growth(sets: Sequence[SetValue]) -> None:
    """Raise PathLimitError (with `entry`) if `sets` would add more than MAX_SET_LIST_ITEMS list
    items to some values. Applied to empty values, which need the most: lists already there
    only make the growth smaller. The paths must be valid (parse_path)."""
    root: dict[str, Any] = {}
    growth = _Growth()
    for position, entry in enumerate(sets):
        try:
            _set_in(root, parse_path(entry.name), None, growth)
        except PathLimitError as error:
            raise PathLimitError(error.message, position) from None


class _Growth:
    """List items added so far by the `set` entries of one release."""

    __slots__ = ("items",)

    def __init__(self) -> None:
        self.items = 0


def _set_in(root: dict[str, Any], parts: list[PathPart], value: Any, growth: _Growth) -> None:
    container: Any = root
    for position, part in enumerate(parts[:-1]):
        following = parts[position + 1]
        child = _child(container, part)
        if isinstance(following, int):
            if not isinstance(child, list):
                child = []
                _put(container, part, child, growth)
        elif not isinstance(child, dict):
            child = {}
            _put(container, part, child, growth)
        container = child
    _put(container, parts[-1], value, growth)


def _child(container: Any, part: PathPart) -> Any:
    if isinstance(part, int):
        return container[part] if part < len(container) else None
    return container.get(part)


def _put(container: Any, part: PathPart, value: Any, growth: _Growth) -> None:
    # parse_path starts every path with a key, and _set_in makes a list before an index and a
    # dict before a key, so `container` always has the right type here.
    if isinstance(part, int) and part >= len(container):
        added = part + 1 - len(container)
        growth.items += added
        if growth.items > MAX_SET_LIST_ITEMS:
            raise PathLimitError(
                f"the `set` entries would add more than {MAX_SET_LIST_ITEMS} list items in all "
                "(the nulls before each index); use smaller indexes, or set whole lists as "
                "values"
            )
        container.extend([None] * added)
    container[part] = value


class InvalidValuesError(ValueError, TypeError):
    """Values that cannot be hashed, nor handed to helm as JSON: a type JSON has no form for, a
    non-string key, a non-finite number, a cycle, or nesting too deep to serialise. The message
    names the problem and its path (keys only, never a value). A TypeError too, for callers that
    caught what json.dumps raised before this class existed."""


def _json_default(value: object) -> str:
    # Dates from an earlier values reader: hash them as the text helm would have seen.
    if isinstance(value, datetime.date | datetime.time):
        return value.isoformat()
    raise TypeError(type(value).__name__)  # unreachable: _check_json found it first


def _path_text(path: tuple[Any, ...] | None) -> str:
    parts: list[PathPart] = []
    while path is not None:
        path, part = path
        parts.append(part)
    return format_path(parts[::-1]) or "(top level)"


def _check_json(values: Any) -> None:
    """Raise InvalidValuesError for what JSON cannot hold; iterative, so depth is no problem."""
    # (node, path as a linked list of parts, on the way out), with the containers being visited
    pending: list[tuple[Any, tuple[Any, ...] | None, bool]] = [(values, None, False)]
    visiting: set[int] = set()
    while pending:
        node, path, leaving = pending.pop()
        if leaving:
            visiting.discard(id(node))
            continue
        if isinstance(node, dict | list | tuple):
            if id(node) in visiting:
                raise InvalidValuesError(f"values at '{_path_text(path)}' contain themselves")
            visiting.add(id(node))
            pending.append((node, path, True))
            if isinstance(node, dict):
                for key, child in node.items():
                    if not isinstance(key, str):
                        raise InvalidValuesError(
                            f"values at '{_path_text(path)}' have a key of type "
                            f"{type(key).__name__!r}; keys must be strings"
                        )
                    pending.append((child, (path, key), False))
            else:
                pending.extend((child, (path, i), False) for i, child in enumerate(node))
        elif isinstance(node, float) and not math.isfinite(node):
            raise InvalidValuesError(
                f"values at '{_path_text(path)}' hold a non-finite number (NaN or infinity), "
                "which JSON cannot hold"
            )
        elif node is not None and not isinstance(
            node, str | int | float | datetime.date | datetime.time
        ):
            raise InvalidValuesError(
                f"values at '{_path_text(path)}' hold a {type(node).__name__!r}, which JSON "
                "cannot hold (only maps, lists, strings, numbers, booleans and null)"
            )


def values_digest(chart: ChartReference, values: Mapping[str, Any]) -> str:
    """`sha256:<hex>` of the canonical JSON of chart (repository url, name, version) and values.

    Raises InvalidValuesError (a ValueError), and nothing else, for values JSON cannot hold."""
    _check_json(values)
    payload = {
        "repository": chart.repository.url,
        "chart": chart.name,
        "version": chart.version,
        "values": values,
    }
    try:
        canonical = json.dumps(
            payload, sort_keys=True, separators=(",", ":"), default=_json_default
        )
    except RecursionError:
        raise InvalidValuesError("values are nested too deeply to serialise as JSON") from None
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
