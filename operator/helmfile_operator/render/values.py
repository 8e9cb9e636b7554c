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
    "InvalidValuesError",
    "PathPart",
    "apply_set",
    "deep_merge",
    "format_path",
    "get_path",
    "merge_all",
    "parse_path",
    "values_digest",
]

PathPart = str | int

# Like helm's strvals: an index is not an invitation to allocate a list of a billion Nones.
MAX_LIST_INDEX = 65536

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


def parse_path(dotted: str) -> list[PathPart]:
    """`a.b\\.c.list[0]` → `["a", "b.c", "list", 0]`. Raises ValueError for an invalid path.

    A backslash makes the next character literal (`\\.`, `\\[`, `\\\\`)."""
    parts: list[PathPart] = []
    length = len(dotted)
    if length == 0:
        raise ValueError(f"invalid path '': the path is empty; {_PATH_HELP}")
    i = 0
    while True:
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
            index = int(text)
            if index > MAX_LIST_INDEX:
                raise _path_error(dotted, i, f"list index {index} exceeds {MAX_LIST_INDEX}")
            parts.append(index)
            i = end + 1
        if i == length:
            return parts
        if dotted[i] != ".":
            raise _path_error(dotted, i, f"unexpected {dotted[i]!r}")
        i += 1
        if i == length:
            raise _path_error(dotted, i, "the path ends with a dot")


def _path_error(dotted: str, position: int, problem: str) -> ValueError:
    return ValueError(
        f"invalid path {dotted!r} (at character {position + 1}): {problem}; {_PATH_HELP}"
    )


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
    index. Raises ValueError naming the entry for an invalid path."""
    result: dict[str, Any] = copy.deepcopy(dict(values))
    for position, entry in enumerate(sets):
        try:
            parts = parse_path(entry.name)
        except ValueError as error:
            raise ValueError(f"set[{position}]: {error}") from None
        _set_in(result, parts, copy.deepcopy(entry.value))
    return result


def _set_in(root: dict[str, Any], parts: list[PathPart], value: Any) -> None:
    container: Any = root
    for position, part in enumerate(parts[:-1]):
        following = parts[position + 1]
        child = _child(container, part)
        if isinstance(following, int):
            if not isinstance(child, list):
                child = []
                _put(container, part, child)
        elif not isinstance(child, dict):
            child = {}
            _put(container, part, child)
        container = child
    _put(container, parts[-1], value)


def _child(container: Any, part: PathPart) -> Any:
    if isinstance(part, int):
        return container[part] if part < len(container) else None
    return container.get(part)


def _put(container: Any, part: PathPart, value: Any) -> None:
    # parse_path starts every path with a key, and _set_in makes a list before an index and a
    # dict before a key, so `container` always has the right type here.
    if isinstance(part, int) and part >= len(container):
        container.extend([None] * (part + 1 - len(container)))
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
