"""`valuesTemplate` entries: Jinja2 rendered in a sandbox, parsed as a YAML map. No I/O.

Templates are written by whoever may edit a HelmfileState, and they run inside the operator, so
the environment is a Jinja2 *immutable sandbox*: no loader (no include/import/extends), no access
to private attributes or Python internals, no mutation of the context, only the filters below and
jinja's safe globals. Every failure becomes a TemplateRenderError whose message starts with the
entry's field path and never repeats rendered values, only variable names, types and lines.

The sandbox also bounds what a template may cost, since one tenant's template runs in the
process that serves every other tenant: the size of every string, list, map and integer an
operation makes (checked before the operation where its size can be computed, so nothing huge is
ever allocated), the steps of a template (loop iterations, calls, filters, operators, lookups),
the memory it makes in all, its output and the output of all templates of a state, and the time
of the whole rendering (`RenderBudget`). Exceeding any of them raises RenderLimitExceeded.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import sys
import time
import traceback
import types
from collections.abc import (
    Callable,
    ItemsView,
    Iterable,
    Iterator,
    KeysView,
    Mapping,
    Sized,
    ValuesView,
)
from typing import Any, NoReturn

import yaml
from jinja2 import nodes
from jinja2.compiler import CodeGenerator, Frame
from jinja2.environment import Environment
from jinja2.exceptions import (
    SecurityError,
    TemplateAssertionError,
    TemplateError,
    TemplateRuntimeError,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.filters import FILTERS as JINJA_FILTERS
from jinja2.filters import make_attrgetter
from jinja2.runtime import Context, LoopContext, Macro, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedFormatter
from jinja2.utils import Namespace, _PassArg, missing, object_type_repr, pass_environment
from markupsafe import EscapeFormatter, Markup

from helmfile_operator import goyaml
from helmfile_operator.goyaml import MAX_DEPTH, MAX_VALUE_NODES
from helmfile_operator.render.errors import RenderError, RenderLimitExceeded, TemplateRenderError

__all__ = [
    "CONTEXT_VARIABLES",
    "FILTERS",
    "MAX_DEPTH",
    "MAX_INTEGER_BITS",
    "MAX_OUTPUT_CHARS",
    "MAX_SEQUENCE_LENGTH",
    "MAX_STATE_OUTPUT_CHARS",
    "MAX_STRING_LENGTH",
    "MAX_TEMPLATE_MEMORY",
    "MAX_TEMPLATE_STEPS",
    "MAX_VALUE_NODES",
    "MAX_WORDWRAP_LENGTH",
    "REMOVED_FILTERS",
    "RenderBudget",
    "b64dec",
    "b64enc",
    "default",
    "nindent",
    "quote",
    "render_values_template",
    "required",
    "to_json",
    "to_yaml",
]

CONTEXT_VARIABLES = ("environment", "state", "release", "values")
# A HelmfileRelease has to fit in etcd (1.5 MiB per object): larger output cannot be stored.
MAX_OUTPUT_CHARS = 1 << 20
# The output of all templates of one state: every rendered value is held (parsed) until the
# state's HelmfileReleases are applied, and 2000 releases of 1 MiB each would be 2 GiB.
MAX_STATE_OUTPUT_CHARS = 4 << 20
# Any string an operation makes (`*`, `+`, `~`, `%`, `format`, filters, method calls), and the
# text of a value written out or converted to a string: more could never be output anyway.
MAX_STRING_LENGTH = 1_000_000
# Items of a list or map an operation makes, and of range(): jinja's own range bound.
MAX_SEQUENCE_LENGTH = 100_000
# Integers made by `*`, `**`, `+`, `-`: multiplying them costs quadratic time, and repeated
# squaring doubles their size at every step.
MAX_INTEGER_BITS = 100_000
# Steps of one template: loop iterations, calls, filters, operators and attribute lookups. Nested
# loops reach it long before they could exhaust the CPU (one million take about 0.3 s).
MAX_TEMPLATE_STEPS = 1_000_000
# Bytes of the strings, lists and maps one template makes in all, whether or not they are still
# referenced: what a template can hold at a time is at most this.
MAX_TEMPLATE_MEMORY = 64 << 20
# wordwrap splits long words with quadratic work (0.3 s for 100,000 characters and width 1).
MAX_WORDWRAP_LENGTH = 100_000
# `MAX_VALUE_NODES` (from goyaml, the bound of a rendered document) also bounds the values, nested
# ones included and every repeated reference counted, of a list or map a template makes: this is
# what keeps comparing, hashing or serialising one bounded (`[x, x, x]` nested ten times is 3**10).

_VALUES_ROOTS = ("values", "environment.values")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Characters YAML accepts raw inside a double-quoted scalar, minus the YAML 1.1 line breaks
# (NEL, LS, PS) that a parser would fold: everything else is written as a \u escape.
_NOT_YAML_SAFE = re.compile(
    "[^\t\n\r\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
_SAFE_MESSAGE_ERRORS = (TypeError, ArithmeticError, IndexError, RecursionError)
_DIGIT_RUNS = re.compile(r"[0-9]+")
# A width or precision with more digits than this is beyond MAX_STRING_LENGTH (and int() of a
# million digits would be slow, or refused).
_MAX_WIDTH_DIGITS = len(str(MAX_STRING_LENGTH))
_UNLIMITED = sys.maxsize
# Characters a `%f` conversion may write besides its width and precision: 1e308 has 309 digits.
_FLOAT_DIGITS = 330


class _FunctionError(Exception):
    """Raised by our filters with a message that is safe to show (no values)."""


class _Limit(Exception):
    """A bound of the sandbox is reached; the message names it and how to stay within it. Not a
    TemplateError nor a ValueError, so that no jinja or filter code catches it on the way."""


def _too_long(what: str) -> str:
    return (
        f"{what} would make a string longer than {MAX_STRING_LENGTH} characters, the limit "
        "for one value; produce less text, or put large data in a ConfigMap and use "
        "`valuesFrom`"
    )


def _too_many(what: str) -> str:
    return (
        f"{what} would make a list or map of more than {MAX_SEQUENCE_LENGTH} items, the limit "
        "for one value; loop over less data, or put large data in a ConfigMap and use "
        "`valuesFrom`"
    )


def _too_nested(what: str) -> str:
    return (
        f"{what} would make a list or map holding more than {MAX_VALUE_NODES} values in all "
        "(nested ones included, each repetition counted), the limit for one value; build "
        "smaller structures"
    )


def _too_wide(what: str) -> str:
    return (
        f"{what} would make an integer of more than {MAX_INTEGER_BITS} bits, the limit for one "
        "number; use smaller numbers"
    )


# --- the budget of one rendering --------------------------------------------------------------


class RenderBudget:
    """What one rendering of a state may spend, shared by all its templates: a time limit (every
    step of every template checks it), the output of all templates (MAX_STATE_OUTPUT_CHARS),
    and a request to stop. `field` is the field being rendered, for the message of whoever
    gives up waiting; it is written by the rendering thread and may be read by another. One
    budget per rendering."""

    def __init__(self, timeout_seconds: float | None = None) -> None:
        self.timeout_seconds = timeout_seconds
        self.deadline: float | None = None
        self.field = "spec"
        self.output_chars = 0
        self._stopped = False
        # (values, characters) of each map and list of the context, by id(): see `remember`.
        self.sizes: dict[int, tuple[int, int]] = {}

    def start(self) -> None:
        """Start the clock (once): rendering may take `timeout_seconds` from now."""
        if self.timeout_seconds is not None and self.deadline is None:
            self.deadline = time.monotonic() + self.timeout_seconds

    def stop(self) -> None:
        """Ask the rendering to stop at its next step (nobody waits for it any more)."""
        self._stopped = True

    def expired(self) -> bool:
        return self._stopped or (self.deadline is not None and time.monotonic() > self.deadline)

    def time_message(self) -> str:
        seconds = self.timeout_seconds
        if seconds is None:
            return "rendering was stopped before it finished"
        return (
            f"rendering the state took longer than {seconds:g} second"
            f"{'' if seconds == 1 else 's'}, the time limit of one rendering; make the templates "
            "cheaper (loop over less data) or split the state"
        )

    def check(self, field: str) -> None:
        """Raise RenderLimitExceeded naming `field` if the time is up."""
        if self.expired():
            raise RenderLimitExceeded(field, self.time_message())

    def remember(self, *roots: Any) -> None:
        """Measure the maps and lists under `roots` once, so that the sandbox need not walk them
        again whenever a template puts them into a list or map of its own. The caller keeps
        them alive and unchanged (the immutable sandbox does) until the rendering ends: ids of
        live objects are unique."""
        self.sizes.update(_container_sizes(roots))


def _leaf_text(item: Any) -> int:
    """Characters of a scalar written out as text, about (and at least, except for escapes)."""
    if isinstance(item, str):
        return len(item) + 4  # quotes and a separator, in a list's text
    if isinstance(item, int):
        return item.bit_length() * 3 // 10 + 3
    if isinstance(item, bytes | bytearray):
        return 4 * len(item) + 3
    return 26  # float, None, and objects whose text is short


Sizes = Mapping[int, tuple[int, int]]
_NO_SIZES: Sizes = types.MappingProxyType({})
_CONTAINERS = (list, tuple, dict)


def _measure(
    value: Any, sizes: Sizes, max_nodes: int, max_text: int, more: Sizes = _NO_SIZES
) -> tuple[int, int]:
    """(values, characters of text) of `value`, nested ones included and each repeated reference
    counted again, as its text would repeat it. Maps and lists found in `sizes` or `more` (by
    id) are not walked again. Iterative, and it stops as soon as either exceeds its maximum,
    so its cost is bounded by the maxima, not by the value."""
    node_count = 0
    text = 0
    pending: list[Any] = [value]
    while pending:
        item = pending.pop()
        node_count += 1
        kind = type(item)
        if kind is str:
            text += len(item) + 4
        elif kind is int or kind is bool:
            text += item.bit_length() * 3 // 10 + 3
        elif kind is float or item is None:
            text += 26
        elif kind in _CONTAINERS or isinstance(item, list | tuple | dict | set | frozenset):
            known = sizes.get(id(item)) or more.get(id(item))
            if known is not None:
                node_count += known[0] - 1
                text += known[1]
            else:
                text += 2 + 4 * len(item)
                if node_count + len(item) > max_nodes:
                    return max_nodes + 1, text
                if isinstance(item, dict):
                    pending.extend(item.keys())
                    pending.extend(item.values())
                else:
                    pending.extend(item)
        elif isinstance(item, Namespace):
            text += 13
            pending.append(object.__getattribute__(item, "_Namespace__attrs"))
        elif isinstance(item, KeysView | ValuesView | ItemsView):
            text += 13
            mapping = getattr(item, "mapping", None)
            pending.append(mapping if mapping is not None else list(item))
        elif isinstance(item, Mapping) and not isinstance(item, Undefined):
            text += 2 + 4 * len(item)
            pending.extend(item.keys())
            pending.extend(item.values())
        else:
            text += _leaf_text(item)
        if node_count > max_nodes or text > max_text:
            break
    return node_count, text


def _container_sizes(roots: Iterable[Any]) -> dict[int, tuple[int, int]]:
    """`_measure` of every map and list under `roots` (JSON-like data), by id(), in one walk."""
    sizes: dict[int, tuple[int, int]] = {}
    pending: list[tuple[Any, bool]] = [(root, False) for root in roots]
    while pending:
        item, children_done = pending.pop()
        if not isinstance(item, dict | list):
            continue
        children = [*item.keys(), *item.values()] if isinstance(item, dict) else item
        if children_done:
            node_count, text = 1, 2 + 4 * len(item)
            for child in children:
                known = sizes.get(id(child)) if isinstance(child, dict | list) else None
                if known is not None:
                    node_count += known[0]
                    text += known[1]
                else:
                    child_nodes, child_text = _measure(child, sizes, _UNLIMITED, _UNLIMITED)
                    node_count += child_nodes
                    text += child_text
            sizes[id(item)] = (node_count, text)
        elif id(item) not in sizes:
            pending.append((item, True))
            pending.extend((child, False) for child in children if isinstance(child, dict | list))
    return sizes


def _among(value: Any, inputs: Iterable[Any]) -> bool:
    return any(value is item for item in inputs)


# --- filters -------------------------------------------------------------------------------------


def _check_defined(value: Any) -> None:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()


def _type_name(value: Any) -> str:
    return type(value).__name__


def _yaml_safe_escape(text: str) -> str:
    """JSON text with characters YAML would reject or fold escaped as `\\uXXXX` (still JSON)."""
    return _NOT_YAML_SAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


class _BoundedText:
    """A text stream that refuses to grow beyond `limit` characters: the serialisers write into
    it piece by piece, so that too long a text stops them before it is all in memory."""

    def __init__(self, what: str, limit: int = MAX_STRING_LENGTH) -> None:
        self._what = what
        self._limit = limit
        self._size = 0
        self._parts: list[str] = []

    def write(self, text: str) -> None:
        self._size += len(text)
        if self._size > self._limit:
            raise _Limit(_too_long(self._what))
        self._parts.append(text)

    def getvalue(self) -> str:
        return "".join(self._parts)


def to_yaml(value: Any) -> str:
    """Block-style YAML without the trailing newline (and without `...` after a scalar). Strings
    helm would read as something else (`y`, `0o17`, `1e3`…) are quoted."""
    _check_defined(value)
    stream = _BoundedText("toYaml")
    try:
        yaml.dump(
            value,
            stream,
            Dumper=goyaml.GoDumper,
            default_flow_style=False,
            sort_keys=False,
            allow_unicode=True,
            width=1 << 30,
        )
    except yaml.YAMLError:
        raise _FunctionError(
            f"toYaml cannot serialise a value of type {_type_name(value)!r} "
            "(or something inside it)"
        ) from None
    text = stream.getvalue()
    if text.endswith("\n...\n"):
        text = text[: -len("...\n")]
    return text.removesuffix("\n")


def to_json(value: Any) -> str:
    """Compact-ish JSON with sorted keys; safe to embed in YAML."""
    _check_defined(value)
    encoder = json.JSONEncoder(sort_keys=True, ensure_ascii=False, allow_nan=False)
    stream = _BoundedText("toJson")
    try:
        for chunk in encoder.iterencode(value):
            stream.write(chunk)
    except (TypeError, ValueError):
        raise _FunctionError(
            f"toJson cannot serialise a value of type {_type_name(value)!r} "
            "(or something inside it: only maps, lists, strings, finite numbers, booleans, null)"
        ) from None
    return _yaml_safe_escape(stream.getvalue())


def _bounded_json_dumps(value: Any, **options: Any) -> str:
    """json.dumps for jinja's `tojson` filter (its `json.dumps_function` policy), written piece
    by piece into a bounded stream: an `indent` repeats on every line."""
    stream = _BoundedText("the `tojson` filter")
    for chunk in json.JSONEncoder(**options).iterencode(value):
        stream.write(chunk)
    return stream.getvalue()


def _scalar_text(value: Any, name: str) -> str:
    _check_defined(value)
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError:
            raise _FunctionError(f"{name}: bytes are not UTF-8") from None
    raise _FunctionError(
        f"{name} expects a string, number or boolean, got {_type_name(value)!r}"
        + ("; use toJson or toYaml for maps and lists" if isinstance(value, dict | list) else "")
    )


def b64enc(value: Any) -> str:
    """Base64 of the UTF-8 text of a string (numbers and booleans are written as text first)."""
    return base64.b64encode(_scalar_text(value, "b64enc").encode()).decode("ascii")


def b64dec(value: Any) -> str:
    """The UTF-8 text of base64 data."""
    text = _scalar_text(value, "b64dec")
    try:
        return base64.b64decode(text, validate=True).decode()
    except (binascii.Error, ValueError):
        raise _FunctionError("b64dec: the input is not valid base64 of UTF-8 text") from None


def required(value: Any, message: str = "a required value is missing") -> Any:
    """`value`, unless it is undefined, null or "": then rendering fails with `message`."""
    if isinstance(value, Undefined) or value is None or value == "":
        raise _FunctionError(f"required: {message}")
    return value


def default(value: Any, fallback: Any = "", boolean: bool = False) -> Any:
    """`fallback` when `value` is undefined, null, "" or an empty list/map (like sprig's
    default, except that `false` and `0` are kept: `enabled | default(true)` must not turn an
    explicit false into true). `boolean=True` replaces every falsy value, like jinja's."""
    if isinstance(value, Undefined) or value is None:
        return fallback
    if boolean:
        return value if value else fallback
    if isinstance(value, str | list | dict) and len(value) == 0:
        return fallback
    return value


def quote(value: Any) -> str:
    """A double-quoted string (JSON syntax, valid YAML): `{{ x | quote }}`; null → `""`."""
    if value is None:
        return '""'
    text = json.dumps(_scalar_text(value, "quote"), ensure_ascii=False)
    return _yaml_safe_escape(text)


def nindent(value: Any, width: int = 2) -> str:
    """A newline, then `value` with every non-empty line indented (helm's nindent)."""
    text = _scalar_text(value, "nindent")
    if (
        isinstance(width, int)
        and len(text) + 1 + (text.count("\n") + 1) * width > MAX_STRING_LENGTH
    ):
        raise _Limit(_too_long("the `nindent` filter"))
    pad = " " * width
    return "\n" + "\n".join(pad + line if line else line for line in text.split("\n"))


FILTERS: Mapping[str, Callable[..., Any]] = {
    "toYaml": to_yaml,
    "toJson": to_json,
    "b64enc": b64enc,
    "b64dec": b64dec,
    "required": required,
    "default": default,
    "d": default,
    "quote": quote,
    "nindent": nindent,
}
# Jinja's filters that are not available: `random` would make the output non-deterministic;
# the HTML ones and `pprint` are of no use in values and cost more than their input allows
# (`striptags` and `urlize` can take quadratic time, `pprint` indents without bound).
REMOVED_FILTERS = ("random", "pprint", "striptags", "urlize", "xmlattr")
# lipsum would make output non-deterministic.
_REMOVED_GLOBALS = ("lipsum",)


def _bounded_range(*args: int) -> range:
    """range() of at most MAX_SEQUENCE_LENGTH items (jinja's safe_range, with our message)."""
    numbers = range(*args)
    try:
        length = len(numbers)
    except OverflowError:  # more items than a C ssize_t
        length = MAX_SEQUENCE_LENGTH + 1
    if length > MAX_SEQUENCE_LENGTH:
        raise _Limit(_too_many("`range()`"))
    return numbers


@pass_environment
def _bounded_sum(
    environment: Environment, iterable: Any, attribute: str | int | None = None, start: Any = 0
) -> Any:
    """jinja's `sum`, in linear time for lists and tuples (`| sum(start=[])` flattens): Python's
    sum() copies the growing result at every item."""
    if not isinstance(start, list | tuple):
        return _JINJA_SUM(environment, iterable, attribute=attribute, start=start)
    sandbox = _sandbox(environment)
    items = sandbox.take(iterable, "the `sum` filter")
    if attribute is not None:
        getter = make_attrgetter(environment, attribute)
        items = [getter(item) for item in items]
    length = len(start)
    for item in items:
        if type(item) is not type(start):
            raise TypeError(
                f"can only concatenate {_type_name(start)} (not {_type_name(item)!r}) to "
                f"{_type_name(start)}"
            )
        length += len(item)
        if length > MAX_SEQUENCE_LENGTH:
            raise _Limit(_too_many("the `sum` filter"))
    result: list[Any] = list(start)
    for item in items:
        result.extend(item)
    return result if isinstance(start, list) else tuple(result)


_JINJA_SUM = JINJA_FILTERS["sum"]


# --- environment --------------------------------------------------------------------------------


class _PathUndefined(StrictUndefined):
    """StrictUndefined that knows the full path of what was missing, e.g. `values.db.host`."""

    __slots__ = ("_path",)

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[TemplateRuntimeError] = UndefinedError,
    ) -> None:
        super().__init__(hint, obj, name, exc)
        self._path: str | None = None

    @property
    def _undefined_message(self) -> str:
        if self._undefined_hint:
            return self._undefined_hint
        if self._path is not None:
            if self._path.startswith(_VALUES_ROOTS):
                advice = "define it in the environment's values or use `| default(...)`"
            else:
                advice = "check the name, or use `| default(...)` if it may be absent"
            return f"undefined variable '{self._path}': {advice}"
        if self._undefined_obj is missing:
            return f"undefined variable '{self._undefined_name}': the variables are " + ", ".join(
                CONTEXT_VARIABLES
            )
        return (
            f"{object_type_repr(self._undefined_obj)} has no attribute or key "
            f"'{self._undefined_name}': check the name, or use `| default(...)`"
        )


# --- bounded filters --------------------------------------------------------------------------


def _arg(
    args: tuple[Any, ...], kwargs: Mapping[str, Any], index: int, name: str, default: Any
) -> Any:
    return args[index] if len(args) > index else kwargs.get(name, default)


_FilterCheck = Callable[
    ["_ValuesEnvironment", tuple[Any, ...], dict[str, Any]],
    "tuple[tuple[Any, ...], dict[str, Any]] | None",
]


def _check_center(env: _ValuesEnvironment, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    width = _arg(args, kwargs, 1, "width", 80)
    if isinstance(width, int) and width > MAX_STRING_LENGTH:
        raise _Limit(_too_long("the `center` filter"))


def _check_indent(env: _ValuesEnvironment, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    text = env.text_of(args[0], "the `indent` filter")
    width = _arg(args, kwargs, 1, "width", 4)
    if isinstance(width, int):
        if width > MAX_STRING_LENGTH:
            raise _Limit(_too_long("the `indent` filter"))
        pad = width
    else:
        pad = len(width) if isinstance(width, str) else 0
    if text is not None and len(text) + (text.count("\n") + 1) * pad > MAX_STRING_LENGTH:
        raise _Limit(_too_long("the `indent` filter"))


def _check_wordwrap(env: _ValuesEnvironment, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    text = env.text_of(args[0], "the `wordwrap` filter")
    if text is None:
        return
    if len(text) > MAX_WORDWRAP_LENGTH:
        raise _Limit(
            f"the `wordwrap` filter takes text of at most {MAX_WORDWRAP_LENGTH} characters, "
            "the limit for wrapping (its work grows with the square of the length); wrap "
            "shorter pieces"
        )
    width = _arg(args, kwargs, 1, "width", 79)
    wrap = _arg(args, kwargs, 3, "wrapstring", None)
    if isinstance(width, int) and width >= 1:
        separator = len(wrap) if isinstance(wrap, str) else 1
        if len(text) + (len(text) // width + 1) * separator > MAX_STRING_LENGTH:
            raise _Limit(_too_long("the `wordwrap` filter"))


def _check_join(
    env: _ValuesEnvironment, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
    value, separator = args[0], _arg(args, kwargs, 1, "d", "")
    attribute = _arg(args, kwargs, 2, "attribute", None)
    separator_text = env.text_of(separator, "the `join` filter")
    if isinstance(value, Undefined) or separator_text is None:
        return None
    items = env.take(value, "the `join` filter")
    if attribute is not None:
        getter = make_attrgetter(env, attribute)
        items = [getter(item) for item in items]
    total = len(separator_text) * max(len(items) - 1, 0)
    for item in items:
        total += env.text_size(item, MAX_STRING_LENGTH - total + 1)
        if total > MAX_STRING_LENGTH:
            raise _Limit(_too_long("the `join` filter"))
    return (items, separator), {}


def _check_replace(env: _ValuesEnvironment, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    what = "the `replace` filter"
    text = env.text_of(args[0], what)
    old = env.text_of(_arg(args, kwargs, 1, "old", ""), what)
    new = env.text_of(_arg(args, kwargs, 2, "new", ""), what)
    count = _arg(args, kwargs, 3, "count", None)
    if text is not None and old is not None and new is not None:
        _check_replacement(text, old, new, count, what)


def _check_replacement(text: Any, old: Any, new: Any, count: Any, what: str) -> None:
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    if len(text) + hits * (len(new) - len(old)) > MAX_STRING_LENGTH:
        raise _Limit(_too_long(what))


def _check_format(env: _ValuesEnvironment, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    text = env.text_of(args[0], "the `format` filter")
    if text is not None:
        env.check_printf(text, kwargs or args[1:], "the `format` filter")


def _check_batch(env: _ValuesEnvironment, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    count = _arg(args, kwargs, 1, "linecount", 1)
    if isinstance(count, int) and count > MAX_SEQUENCE_LENGTH:
        raise _Limit(_too_many("the `batch` filter"))


def _check_slice(env: _ValuesEnvironment, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    count = _arg(args, kwargs, 1, "slices", 1)
    if isinstance(count, int) and count > MAX_SEQUENCE_LENGTH:
        raise _Limit(_too_many("the `slice` filter"))


def _check_serialised(
    env: _ValuesEnvironment, args: tuple[Any, ...], kwargs: dict[str, Any], name: str
) -> None:
    # The serialisers build a node per value before they write anything.
    if env.size_of(args[0])[0] > MAX_VALUE_NODES:
        raise _Limit(
            f"the `{name}` filter would write more than {MAX_VALUE_NODES} values (nested ones "
            "included), more than a rendered template may hold; serialise a smaller part"
        )


def _check_tojson(env: _ValuesEnvironment, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    indent = _arg(args, kwargs, 1, "indent", None)
    if isinstance(indent, int) and indent > MAX_STRING_LENGTH:
        raise _Limit(_too_long("the `tojson` filter"))
    _check_serialised(env, args, kwargs, "tojson")


_FILTER_CHECKS: Mapping[str, _FilterCheck] = {
    "center": _check_center,
    "indent": _check_indent,
    "wordwrap": _check_wordwrap,
    "join": _check_join,
    "replace": _check_replace,
    "format": _check_format,
    "batch": _check_batch,
    "slice": _check_slice,
    "tojson": _check_tojson,
    "toYaml": lambda env, args, kwargs: _check_serialised(env, args, kwargs, "toYaml"),
    "toJson": lambda env, args, kwargs: _check_serialised(env, args, kwargs, "toJson"),
}
# Filters that write their value out as text (str()): a list of a million references to one long
# string is small, its text is not.
_TEXT_FILTERS = frozenset(
    {
        "capitalize", "center", "e", "escape", "forceescape", "format", "indent", "lower",
        "replace", "safe", "string", "title", "trim", "truncate", "upper", "urlencode",
        "wordcount", "wordwrap",
    }
)  # fmt: skip
# Filters that iterate over their value: an iterator is counted (and capped), and those that
# make a list of its items refuse a string of more than MAX_SEQUENCE_LENGTH characters.
_ITERATING_FILTERS = frozenset({"first", "last", "max", "min", "reverse"})
_COLLECTING_FILTERS = frozenset(
    {
        "batch", "groupby", "join", "list", "map", "reject", "rejectattr", "select",
        "selectattr", "slice", "sort", "sum", "unique",
    }
)  # fmt: skip


def _sandbox(environment: Environment) -> _ValuesEnvironment:
    assert isinstance(environment, _ValuesEnvironment)
    return environment


def _bounded_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """`function` (a filter), run by the sandbox's `apply_filter`: counted as a step, its
    arguments checked before and its result after. Keeps what jinja passes it (context,
    evaluation context or environment), and takes the environment itself otherwise."""
    pass_arg = getattr(function, "jinja_pass_arg", None)
    if pass_arg is None:

        def plain(environment: Environment, /, *args: Any, **kwargs: Any) -> Any:
            return _sandbox(environment).apply_filter(name, function, (), args, kwargs)

        wrapper = pass_environment(plain)
    else:

        def passing(first: Any, /, *args: Any, **kwargs: Any) -> Any:
            environment = first if pass_arg is _PassArg.environment else first.environment
            return _sandbox(environment).apply_filter(name, function, (first,), args, kwargs)

        passing.jinja_pass_arg = pass_arg  # type: ignore[attr-defined]
        wrapper = passing
    wrapper.__name__ = getattr(function, "__name__", name)
    wrapper.__doc__ = function.__doc__
    return wrapper


def _all_filters() -> dict[str, Callable[..., Any]]:
    filters = {
        name: function for name, function in JINJA_FILTERS.items() if name not in REMOVED_FILTERS
    }
    filters.update(FILTERS)
    filters["sum"] = _bounded_sum
    return {name: _bounded_filter(name, function) for name, function in filters.items()}


_BOUNDED_FILTERS: Mapping[str, Callable[..., Any]] = types.MappingProxyType(_all_filters())


# --- code generation --------------------------------------------------------------------------


class _BoundedCodeGenerator(CodeGenerator):
    """jinja's code generator, with the constructs the sandbox has no hook for routed through
    the environment: the iterable of every `{% for %}` (nested loops call no hook otherwise),
    `~`, and list, tuple and map literals (`[x, x, x]` nested is a cheap way to a value of
    billions of references). jinja allows no node types of our own, so loop iterables are
    recognised by identity as visit_For visits them."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._loop_iterables: set[int] = set()

    def visit(self, node: nodes.Node, *args: Any, **kwargs: Any) -> Any:
        if id(node) not in self._loop_iterables:
            return super().visit(node, *args, **kwargs)
        self._loop_iterables.discard(id(node))
        self.write("environment.iterate(")
        super().visit(node, *args, **kwargs)
        self.write(")")
        return None

    def visit_For(self, node: nodes.For, frame: Frame) -> None:
        self._loop_iterables.add(id(node.iter))
        super().visit_For(node, frame)

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.join_text((")
        for argument in node.nodes:
            self.visit(argument, frame)
            self.write(", ")
        self.write("))")

    def visit_List(self, node: nodes.List, frame: Frame) -> None:
        self.write("environment.made_literal(")
        super().visit_List(node, frame)
        self.write(")")

    def visit_Dict(self, node: nodes.Dict, frame: Frame) -> None:
        self.write("environment.made_literal(")
        super().visit_Dict(node, frame)
        self.write(")")

    def visit_Tuple(self, node: nodes.Tuple, frame: Frame) -> None:
        if node.ctx != "load":  # an assignment target: `{% for k, v in … %}`
            super().visit_Tuple(node, frame)
            return
        self.write("environment.made_literal(")
        super().visit_Tuple(node, frame)
        self.write(")")


class _Counted:
    """An iterable whose items each count as a step of the template (sized if the original is,
    so that `loop.length` does not copy it)."""

    __slots__ = ("_env", "_iterable")

    def __init__(self, env: _ValuesEnvironment, iterable: Any) -> None:
        self._env = env
        self._iterable = iterable

    def __iter__(self) -> Iterator[Any]:
        tick = self._env.tick
        for item in self._iterable:
            tick()
            yield item

    def __len__(self) -> int:
        return len(self._iterable)


def _occurrences(text: str | bytes, part: Any) -> int:
    """`text.count(part)`, `part` being of the same type as `text`."""
    return text.count(part)


_BUILTIN_METHODS = (types.BuiltinMethodType, types.MethodWrapperType)
_PADDING_METHODS = frozenset({"center", "ljust", "rjust", "zfill"})


class _ValuesEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox of one rendering. It remembers the path of every context map or list the
    template reaches (`values.db`), to name the full path of whatever turns out undefined, and it
    bounds every operation (see the module's docstring): each hook counts a step, checks the time
    and the sizes an operation would make, and charges what it made to the template's memory."""

    intercepted_binops = frozenset({"+", "-", "*", "**", "%"})
    code_generator_class = _BoundedCodeGenerator

    def __init__(self, variables: Mapping[str, Any], budget: RenderBudget) -> None:
        super().__init__(
            undefined=_PathUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            finalize=self._finalize,
        )
        self.filters = dict(_BOUNDED_FILTERS)
        for name in _REMOVED_GLOBALS:
            self.globals.pop(name, None)
        self.globals["range"] = _bounded_range
        self.policies["json.dumps_function"] = _bounded_json_dumps
        self._budget = budget
        self.sizes = budget.sizes
        self._steps = 0
        self._memory = 0
        # Sizes of the lists and maps this template made, by id(): what it builds step by step
        # (`ns.items + [item]` in a loop) is then measured in constant time. The objects are
        # kept, so that their ids stay theirs; they were charged to the template's memory.
        self._made: dict[int, tuple[int, int]] = {}
        self._kept: list[Any] = []
        # id() is safe as a key: only containers of the context are recorded, and the context
        # outlives the rendering.
        self._paths: dict[int, str] = {}
        for name, value in variables.items():
            if isinstance(value, dict | list):
                self._paths.setdefault(id(value), name)

    # -- accounting

    def tick(self) -> None:
        """One step of the template: counted, and the time checked."""
        self._steps += 1
        if self._steps > MAX_TEMPLATE_STEPS:
            raise _Limit(
                f"the template takes more than {MAX_TEMPLATE_STEPS} steps (loop iterations, "
                "calls, filters, operators and lookups), the limit for one template; loop over "
                "less data, or compute the values beforehand and put them in the environment's "
                "values"
            )
        if self._budget.expired():
            raise _Limit(self._budget.time_message())

    def _charge(self, size: int) -> None:
        self._memory += size
        if self._memory > MAX_TEMPLATE_MEMORY:
            raise _Limit(
                f"the template makes more than {MAX_TEMPLATE_MEMORY} bytes of strings, lists "
                "and maps in all, the limit for one template; build long text with `join`, or "
                "write it out directly, instead of growing a variable in a loop"
            )

    def _checked(
        self,
        value: Any,
        what: str,
        inputs: Iterable[Any] = (),
        *,
        items: bool = False,
        size: tuple[int, int] | None = None,
    ) -> Any:
        """`value`, made by `what` from `inputs`, if it is within the limits of one value;
        charged to the template's memory (with its strings if `items`: a filter or call may
        have made them too). `size`: its (values, characters) if the caller knows them."""
        if isinstance(value, str | bytes):
            if len(value) > MAX_STRING_LENGTH:
                raise _Limit(_too_long(what))
            if not _among(value, inputs):
                self._charge(sys.getsizeof(value))
        elif isinstance(value, list | tuple | dict | set | frozenset):
            if id(value) in self.sizes or id(value) in self._made or _among(value, inputs):
                return value
            if len(value) > MAX_SEQUENCE_LENGTH:
                raise _Limit(_too_many(what))
            if size is None:
                size = _measure(value, self.sizes, MAX_VALUE_NODES, _UNLIMITED, self._made)
            if size[0] > MAX_VALUE_NODES:
                raise _Limit(_too_nested(what))
            charge = sys.getsizeof(value)
            if items:
                members = [*value.keys(), *value.values()] if isinstance(value, dict) else value
                charge += sum(sys.getsizeof(m) for m in members if isinstance(m, str | bytes))
            self._charge(charge)
            self._made[id(value)] = size
            self._kept.append(value)
        elif isinstance(value, int):
            if value.bit_length() > MAX_INTEGER_BITS:
                raise _Limit(_too_wide(what))
        elif (
            isinstance(value, Namespace)
            and _measure(value, self.sizes, MAX_VALUE_NODES, _UNLIMITED, self._made)[0]
            > MAX_VALUE_NODES
        ):
            raise _Limit(_too_nested(what))
        return value

    def size_of(self, value: Any) -> tuple[int, int]:
        """(values, characters) of a list or map, as `_measure`, remembered ones looked up."""
        known = self.sizes.get(id(value)) or self._made.get(id(value))
        if known is not None:
            return known
        return _measure(value, self.sizes, MAX_VALUE_NODES, _UNLIMITED, self._made)

    def text_size(self, value: Any, limit: int = MAX_STRING_LENGTH) -> int:
        """Characters of `value` as text (its length for a string), measured up to `limit`."""
        if isinstance(value, str):
            return len(value)
        return _measure(value, self.sizes, _UNLIMITED, limit, self._made)[1]

    def check_text(self, value: Any, what: str, limit: int = MAX_STRING_LENGTH) -> None:
        if self.text_size(value, limit) > limit:
            raise _Limit(_too_long(what))

    def text_of(self, value: Any, what: str) -> str | None:
        """`str(value)` once it is known to be short enough; None for an undefined value (the
        filter itself reports it)."""
        if isinstance(value, str):
            return value
        if isinstance(value, Undefined):
            return None
        self.check_text(value, what)
        return str(value)

    def take(self, iterable: Any, what: str) -> list[Any]:
        """The items of `iterable` as a list, counted, at most MAX_SEQUENCE_LENGTH of them."""
        if isinstance(iterable, list | tuple):
            return list(iterable)
        items: list[Any] = []
        for item in iterable:
            self.tick()
            items.append(item)
            if len(items) > MAX_SEQUENCE_LENGTH:
                raise _Limit(_too_many(what))
        return items

    def _capped(self, iterable: Iterable[Any], what: str) -> Iterator[Any]:
        for count, item in enumerate(iterable, 1):
            if count > MAX_SEQUENCE_LENGTH:
                raise _Limit(_too_many(what))
            self.tick()
            yield item

    def check_printf(self, form: str | bytes, arguments: Any, what: str) -> None:
        """Raise if `form % arguments` could be longer than MAX_STRING_LENGTH: the text of the
        form, its widths and precisions (`%0200000000d`) and the text of the arguments."""
        text = form.decode("latin-1") if isinstance(form, bytes) else form
        positional = arguments if isinstance(arguments, tuple) else (arguments,)
        mapping = arguments if isinstance(arguments, Mapping) else None
        total, keyed, position, i, length = len(text), False, 0, 0, len(text)
        while True:
            i = text.find("%", i) + 1
            if i == 0 or i >= length:
                break
            if text[i] == "(":
                depth, start = 1, i + 1
                i += 1
                while i < length and depth:
                    depth += {"(": 1, ")": -1}.get(text[i], 0)
                    i += 1
                keyed = True
                if mapping is not None:
                    total += self.text_size(mapping.get(text[start : i - 1]), MAX_STRING_LENGTH)
            while i < length and text[i] in "-+ #0":
                i += 1
            for part in ("width", "precision"):
                if part == "precision":
                    if i >= length or text[i] != ".":
                        break
                    i += 1
                if i < length and text[i] == "*":
                    star = positional[position] if position < len(positional) else 0
                    total += abs(star) if isinstance(star, int) else 0
                    position, i = position + 1, i + 1
                    continue
                digits = i
                while i < length and text[i] in "0123456789":
                    i += 1
                if i - digits > _MAX_WIDTH_DIGITS:
                    raise _Limit(_too_long(what))
                total += int(text[digits:i] or 0)
            while i < length and text[i] in "hlL":
                i += 1
            if i < length and text[i] != "%":
                position += 1
                if text[i] in "fF":
                    total += _FLOAT_DIGITS
            i += 1
            if total > MAX_STRING_LENGTH:
                raise _Limit(_too_long(what))
        if not keyed:
            total += self.text_size(arguments, MAX_STRING_LENGTH)
        if total > MAX_STRING_LENGTH:
            raise _Limit(_too_long(what))

    # -- hooks of the sandbox

    def getattr(self, obj: Any, attribute: str) -> Any:
        self.tick()
        # `x.values`, `x.items`, `x.keys` on a map mean the key, as in Helm, not dict methods.
        if isinstance(obj, dict) and attribute in obj:
            return self._track(obj[attribute], obj, attribute)
        return self._track(super().getattr(obj, attribute), obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        self.tick()
        value = self._track(super().getitem(obj, argument), obj, argument)
        if isinstance(argument, slice):  # a copy
            return self._checked(value, "a slice", (obj,))
        return value

    def _track(self, value: Any, obj: Any, name: Any) -> Any:
        base = self._paths.get(id(obj))
        if base is None or not isinstance(obj, dict | list):
            return value
        if isinstance(value, _PathUndefined):
            if value._undefined_hint is None and value._path is None:
                value._path = _join(base, name)
        elif isinstance(value, dict | list):
            # The latest access wins: the undefined that may follow is part of the same chain.
            self._paths[id(value)] = _join(base, name)
        return value

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        self.tick()
        what = f"`{operator}`"
        size = None
        if operator == "*":
            size = self._check_repeat(left, right, what)
        elif operator in ("+", "-"):
            size = self._check_add(operator, left, right, what)
        elif operator == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and right > 0
                and left.bit_length() * right > MAX_INTEGER_BITS
            ):
                raise _Limit(_too_wide(what))
        elif operator == "%" and isinstance(left, str | bytes):
            self.check_printf(left, right, "`%` formatting")
        result = super().call_binop(context, operator, left, right)
        return self._checked(result, what, (left, right), size=size)

    def _check_repeat(self, left: Any, right: Any, what: str) -> tuple[int, int] | None:
        """Raise if `left * right` would exceed a limit; the size of a repeated list."""
        if isinstance(left, int) and isinstance(right, int):
            if left.bit_length() + right.bit_length() > MAX_INTEGER_BITS:
                raise _Limit(_too_wide(what))
            return None
        for sequence, count in ((left, right), (right, left)):
            if not isinstance(count, int):
                continue
            if isinstance(sequence, str | bytes) and len(sequence) * count > MAX_STRING_LENGTH:
                raise _Limit(_too_long(what))
            if isinstance(sequence, list | tuple):
                if len(sequence) * count > MAX_SEQUENCE_LENGTH:
                    raise _Limit(_too_many(what))
                node_count, text = self.size_of(sequence)
                count = max(count, 0)
                size = (1 + count * (node_count - 1), 2 + count * (text - 2))
                if size[0] > MAX_VALUE_NODES:
                    raise _Limit(_too_nested(what))
                return size
        return None

    def _check_add(self, operator: str, left: Any, right: Any, what: str) -> tuple[int, int] | None:
        """Raise if `left + right` would exceed a limit; the size of two lists joined."""
        if isinstance(left, int) and isinstance(right, int):
            if max(left.bit_length(), right.bit_length()) + 1 > MAX_INTEGER_BITS:
                raise _Limit(_too_wide(what))
        elif operator == "+" and isinstance(left, Sized) and isinstance(right, Sized):
            total = len(left) + len(right)
            if isinstance(left, str | bytes) and total > MAX_STRING_LENGTH:
                raise _Limit(_too_long(what))
            if isinstance(left, list | tuple) and isinstance(right, list | tuple):
                if total > MAX_SEQUENCE_LENGTH:
                    raise _Limit(_too_many(what))
                left_nodes, left_text = self.size_of(left)
                right_nodes, right_text = self.size_of(right)
                size = (left_nodes + right_nodes - 1, left_text + right_text - 2)
                if size[0] > MAX_VALUE_NODES:
                    raise _Limit(_too_nested(what))
                return size
        return None

    def call(self, context: Context, obj: Any, /, *args: Any, **kwargs: Any) -> Any:
        self.tick()
        if isinstance(obj, LoopContext) and args:  # `loop(children)` of a recursive loop
            args = (self.iterate(args[0]), *args[1:])
        owner = obj.__self__ if isinstance(obj, _BUILTIN_METHODS) else None
        name = getattr(obj, "__name__", "")
        what = f"`{name}()`" if isinstance(name, str) and name else "a call"
        if isinstance(owner, str | bytes):
            args = self._check_text_method(owner, name, args, kwargs, what)
        elif isinstance(owner, int) and name == "to_bytes":
            length = _arg(args, kwargs, 0, "length", 1)
            if isinstance(length, int) and length > MAX_STRING_LENGTH:
                raise _Limit(_too_long(what))
        result = super().call(context, obj, *args, **kwargs)
        if isinstance(obj, Macro):  # its output was checked as it was joined (`concat`)
            return result
        return self._checked(result, what, (owner, *args, *kwargs.values()), items=True)

    def _check_text_method(
        self,
        text: str | bytes,
        name: str,
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        what: str,
    ) -> tuple[Any, ...]:
        """Raise if a method of a string would make one longer than MAX_STRING_LENGTH (or
        split it into more than MAX_SEQUENCE_LENGTH pieces). The arguments, perhaps with an
        iterable made into a list."""
        same = str if isinstance(text, str) else bytes
        if name in _PADDING_METHODS:
            width = _arg(args, kwargs, 0, "width", 0)
            if isinstance(width, int) and width > MAX_STRING_LENGTH:
                raise _Limit(_too_long(what))
        elif name == "expandtabs":
            size = _arg(args, kwargs, 0, "tabsize", 8)
            tabs = _occurrences(text, "\t" if isinstance(text, str) else b"\t")
            if isinstance(size, int) and len(text) + tabs * size > MAX_STRING_LENGTH:
                raise _Limit(_too_long(what))
        elif name == "join" and args:
            items = self.take(args[0], what)
            total = len(text) * max(len(items) - 1, 0)
            total += sum(len(item) for item in items if isinstance(item, same))
            if total > MAX_STRING_LENGTH:
                raise _Limit(_too_long(what))
            args = (items, *args[1:])
        elif name == "replace" and len(args) >= 2:
            old, new = args[0], args[1]
            if isinstance(old, same) and isinstance(new, same):
                _check_replacement(text, old, new, _arg(args, kwargs, 2, "count", -1), what)
        elif name == "translate" and isinstance(text, str) and args:
            table = args[0]
            replacements = table.values() if isinstance(table, Mapping) else table
            longest = 1
            if isinstance(table, Mapping | list | tuple):
                longest = max([1, *(len(r) for r in replacements if isinstance(r, str))])
            if len(text) * longest > MAX_STRING_LENGTH:
                raise _Limit(_too_long(what))
        elif name in ("split", "rsplit"):
            separator = _arg(args, kwargs, 0, "sep", None)
            if isinstance(separator, same) and separator:
                pieces = _occurrences(text, separator) + 1
                limit = _arg(args, kwargs, 1, "maxsplit", -1)
                if isinstance(limit, int) and limit >= 0:
                    pieces = min(pieces, limit + 1)
                if pieces > MAX_SEQUENCE_LENGTH:
                    raise _Limit(_too_many(what))
        return args

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        """`str.format` and `format_map`, through a formatter that bounds widths and length."""
        if not isinstance(value, types.MethodType | types.BuiltinMethodType) or (
            value.__name__ not in ("format", "format_map")
        ):
            return None
        owner: Any = value.__self__
        if not isinstance(owner, str):
            return None
        text_type: type[str] = type(owner)
        is_format_map = value.__name__ == "format_map"
        formatter: _BoundedFormatter
        if isinstance(owner, Markup):
            formatter = _BoundedEscapeFormatter(self, escape=owner.escape)
        else:
            formatter = _BoundedFormatter(self)

        def wrapper(*args: Any, **kwargs: Any) -> str:
            if is_format_map:
                if kwargs:
                    raise TypeError("format_map() takes no keyword arguments")
                if len(args) != 1:
                    raise TypeError(f"format_map() takes exactly one argument ({len(args)} given)")
                kwargs = args[0]
                args = ()
            return text_type(formatter.vformat(owner, args, kwargs))

        wrapper.__name__ = value.__name__
        return wrapper

    def apply_filter(
        self,
        name: str,
        function: Callable[..., Any],
        passed: tuple[Any, ...],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Run the filter `name`: one step; its value checked as text or iterable; the
        filter's own check; the result checked and charged."""
        self.tick()
        what = f"the `{name}` filter"
        if args:
            value = args[0]
            if name in _TEXT_FILTERS and not isinstance(value, str | Undefined):
                self.check_text(value, what)
            if (
                name in _COLLECTING_FILTERS
                and isinstance(value, str | bytes)
                and len(value) > MAX_SEQUENCE_LENGTH
            ):
                raise _Limit(_too_many(what))
            if (name in _COLLECTING_FILTERS or name in _ITERATING_FILTERS) and (
                isinstance(value, Iterator) and not isinstance(value, Sized)
            ):
                args = (self._capped(value, what), *args[1:])
            check = _FILTER_CHECKS.get(name)
            if check is not None:
                replaced = check(self, args, kwargs)
                if replaced is not None:
                    args, kwargs = replaced
        result = function(*passed, *args, **kwargs)
        return self._checked(result, what, (*args, *kwargs.values()), items=True)

    # -- what the code generator routes here

    def iterate(self, iterable: Any) -> _Counted:
        return _Counted(self, iterable)

    def join_text(self, items: tuple[Any, ...]) -> str:
        """`a ~ b ~ c`: checked before anything is converted or joined."""
        self.tick()
        total = 0
        for item in items:
            total += self.text_size(item, MAX_STRING_LENGTH - total + 1)
            if total > MAX_STRING_LENGTH:
                raise _Limit(_too_long("`~`"))
        return str(self._checked("".join([str(item) for item in items]), "`~`"))

    def made_literal(self, value: Any) -> Any:
        return self._checked(value, "a list or map literal")

    def concat(self, chunks: Iterable[str]) -> str:
        """The output of a macro, `{% set %}` block, `{% filter %}` block or `{% call %}`, joined
        (jinja calls this for everything it renders into a string rather than the output)."""
        parts: list[str] = []
        size = 0
        for chunk in chunks:
            size += len(chunk)
            if size > MAX_STRING_LENGTH:
                raise _Limit(_too_long("the output of a macro or block"))
            parts.append(chunk)
        return str(self._checked("".join(parts), "the output of a macro or block"))

    def _finalize(self, value: Any) -> Any:
        """`{{ x }}` with x null writes nothing (YAML null), not Python's `None`; anything else
        not a string is converted here, once its text is known to fit in the output."""
        if value is None:
            return ""
        if isinstance(value, str):
            return value
        self.check_text(value, "writing out a value", MAX_OUTPUT_CHARS)
        return self._checked(str(value), "writing out a value")


class _BoundedFormatter(SandboxedFormatter):
    """The sandbox's formatter for `str.format`, with every field's width and text bounded, and
    the result's length."""

    def __init__(self, env: _ValuesEnvironment, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        self._bounded_env = env
        self._length = 0

    def vformat(self, format_string: str, args: Any, kwargs: Any) -> str:
        self._length = len(format_string)
        return super().vformat(format_string, args, kwargs)

    def convert_field(self, value: Any, conversion: str | None) -> Any:
        if conversion is not None:  # !r, !s, !a: the text of the value
            self._bounded_env.check_text(value, "`format`")
        return super().convert_field(value, conversion)

    def format_field(self, value: Any, format_spec: str) -> Any:
        env = self._bounded_env
        env.tick()
        width = 0
        for digits in _DIGIT_RUNS.findall(format_spec):  # width, precision (fill: harmless)
            if len(digits) > _MAX_WIDTH_DIGITS:
                raise _Limit(_too_long("`format`"))
            width += int(digits)
        if width > MAX_STRING_LENGTH:
            raise _Limit(_too_long("`format`"))
        env.check_text(value, "`format`")
        text = super().format_field(value, format_spec)
        self._length += len(text)
        if self._length > MAX_STRING_LENGTH:
            raise _Limit(_too_long("`format`"))
        return text


class _BoundedEscapeFormatter(_BoundedFormatter, EscapeFormatter):
    pass


def _join(base: str, name: Any) -> str:
    if isinstance(name, str) and _IDENTIFIER.fullmatch(name):
        return f"{base}.{name}"
    return f"{base}[{name!r}]"


# --- rendering ----------------------------------------------------------------------------------


def render_values_template(
    source: str,
    context: Mapping[str, Any],
    *,
    where: str,
    budget: RenderBudget | None = None,
) -> dict[str, Any]:
    """Render `source` with `context` in the sandbox and parse the output as a YAML map.

    Empty output (or only comments) gives `{}`. `where` (e.g. `spec.releases[2].valuesTemplate[0]`)
    starts every TemplateRenderError message. The result shares nothing with `context`, and
    the immutable sandbox keeps the template from changing `context`. A map or list reachable
    by two paths of `context` (the same object twice) may be named by the other path in a
    message: pass copies where that matters (render_state does for `environment.values`).
    `budget` is that of the whole rendering (time, output of all templates); without one, only
    the limits of this template apply. A limit raises RenderLimitExceeded.
    """
    if budget is None:
        budget = RenderBudget()
    budget.field = where
    variables = dict(context)
    env = _ValuesEnvironment(variables, budget)

    try:
        tree = env.parse(source)
        _reject_loader_nodes(tree, where)
        template = env.from_string(tree)
    except TemplateAssertionError as error:  # compile time: unknown filter or test...
        raise TemplateRenderError(
            where,
            f"template error at line {error.lineno}: {_sentence(error.message)}; the filters are "
            f"jinja's built-ins (but {', '.join(REMOVED_FILTERS)}) and {', '.join(FILTERS)}",
        ) from None
    except TemplateSyntaxError as error:
        raise TemplateRenderError(
            where,
            f"template syntax error at line {error.lineno}: {_sentence(error.message)}; fix the "
            "Jinja2 syntax (`{{ expression }}`, `{% if %}…{% endif %}`, `{% for %}…{% endfor %}`)",
        ) from None

    try:
        output = _bounded(template.generate(variables), where, budget)
    except RenderError:
        raise
    except _Limit as error:
        line = _template_line(error)
        prefix = f"line {line}: " if line is not None else ""
        raise RenderLimitExceeded(where, prefix + str(error)) from None
    except _FunctionError as error:
        _fail(where, error, str(error))
    except SecurityError as error:
        _fail(
            where,
            error,
            f"forbidden in a values template: {_sentence(str(error))}; templates may only read "
            "environment, state, release and values: private attributes, Python internals and "
            "mutating methods are not available",
        )
    except UndefinedError as error:
        _fail(where, error, str(error))
    except TemplateError as error:
        _fail(where, error, f"{error}")
    except _SAFE_MESSAGE_ERRORS as error:
        _fail(where, error, f"{type(error).__name__}: {error}")
    except Exception as error:
        # Other exceptions (ValueError, KeyError...) may quote the data they choked on.
        _fail(where, error, f"{type(error).__name__} while rendering; check the expressions")

    values = _parse_output(output, where)
    budget.check(where)
    return values


def _sentence(text: str | None) -> str:
    return (text or "").strip().rstrip(".")


def _reject_loader_nodes(tree: nodes.Template, where: str) -> None:
    kinds: dict[type[nodes.Node], str] = {
        nodes.Extends: "extends",
        nodes.Include: "include",
        nodes.Import: "import",
        nodes.FromImport: "from … import",
    }
    for node in tree.find_all(tuple(kinds)):
        raise TemplateRenderError(
            where,
            f"`{{% {kinds[type(node)]} %}}` at line {node.lineno} is not allowed: a "
            "valuesTemplate entry cannot load other templates; put what you need in this "
            "entry (a `{% macro %}` works) or in the environment's values",
        )


def _bounded(chunks: Iterator[str], where: str, budget: RenderBudget) -> str:
    parts: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_OUTPUT_CHARS:
            raise RenderLimitExceeded(
                where,
                f"the output is larger than {MAX_OUTPUT_CHARS} characters, the limit for one "
                "template; a HelmfileRelease must fit in etcd, so put large data in a ConfigMap "
                "and use `valuesFrom`",
            )
        if budget.output_chars + size > MAX_STATE_OUTPUT_CHARS:
            raise RenderLimitExceeded(
                where,
                f"the templates of this state render more than {MAX_STATE_OUTPUT_CHARS} "
                "characters in all, the limit for one HelmfileState; render smaller values "
                "(put large data in ConfigMaps and use `valuesFrom`), or split the state",
            )
        parts.append(chunk)
    budget.output_chars += size
    return "".join(parts)


def _fail(where: str, error: BaseException, message: str) -> NoReturn:
    line = _template_line(error)
    prefix = f"line {line}: " if line is not None else ""
    raise TemplateRenderError(where, prefix + message) from None


def _template_line(error: BaseException) -> int | None:
    """jinja rewrites tracebacks so template frames carry template line numbers."""
    line = None
    for frame in traceback.extract_tb(error.__traceback__):
        if frame.filename == "<template>":
            line = frame.lineno
    return line


# --- output -------------------------------------------------------------------------------------

# Advice per kind of goyaml failure, for template authors.
_OUTPUT_ADVICE = {
    "syntax": "check the indentation, and embed values with `toYaml | nindent(n)`, `toJson` or "
    "`quote`",
    "depth": "flatten the values",
    "nodes": "reduce the output",
}


def _parse_output(output: str, where: str) -> dict[str, Any]:
    """The output as helm would read it as a values file (goyaml): a map, or `{}` when empty."""
    try:
        return goyaml.load_values(output, "the rendered output")
    except goyaml.GoYAMLError as error:
        message = str(error)
        # The output is not secret (it is stored in the HelmfileRelease): name the value's path.
        if error.path and error.reason in ("value", "key"):
            message += f" (at '{error.path}')"
        advice = _OUTPUT_ADVICE.get(error.reason)
        raise TemplateRenderError(where, f"{message}; {advice}" if advice else message) from None
