"""`valuesTemplate` entries: Jinja2 rendered in a sandbox, parsed as a YAML map. No I/O.

Templates are written by whoever may edit a HelmfileState, and they run inside the operator, so
the environment is a Jinja2 *immutable sandbox*: no loader (no include/import/extends), no access
to private attributes or Python internals, no mutation of the context, only the filters below and
jinja's safe globals. Every failure becomes a TemplateRenderError whose message starts with the
entry's field path and never repeats rendered values, only variable names, types and lines.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NoReturn

import yaml
from jinja2 import nodes
from jinja2.exceptions import (
    SecurityError,
    TemplateAssertionError,
    TemplateError,
    TemplateRuntimeError,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.runtime import Context, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing, object_type_repr

from helmfile_operator import goyaml
from helmfile_operator.goyaml import MAX_DEPTH, MAX_VALUE_NODES
from helmfile_operator.render.errors import TemplateRenderError

__all__ = [
    "CONTEXT_VARIABLES",
    "FILTERS",
    "MAX_DEPTH",
    "MAX_OUTPUT_CHARS",
    "MAX_POWER_BITS",
    "MAX_REPEAT_LENGTH",
    "MAX_VALUE_NODES",
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
# `'x' * n` and `n ** m` are the cheap ways for a template to exhaust memory or CPU.
MAX_REPEAT_LENGTH = 1_000_000
MAX_POWER_BITS = 100_000

_VALUES_ROOTS = ("values", "environment.values")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Characters YAML accepts raw inside a double-quoted scalar, minus the YAML 1.1 line breaks
# (NEL, LS, PS) that a parser would fold: everything else is written as a \u escape.
_NOT_YAML_SAFE = re.compile(
    "[^\t\n\r\x20-\x7e\xa0-\u2027\u202a-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]"
)
_SAFE_MESSAGE_ERRORS = (TypeError, ArithmeticError, IndexError, RecursionError)


class _FunctionError(Exception):
    """Raised by our filters with a message that is safe to show (no values)."""


# --- filters -------------------------------------------------------------------------------------


def _check_defined(value: Any) -> None:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()


def _type_name(value: Any) -> str:
    return type(value).__name__


def _yaml_safe_escape(text: str) -> str:
    """JSON text with characters YAML would reject or fold escaped as `\\uXXXX` (still JSON)."""
    return _NOT_YAML_SAFE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def to_yaml(value: Any) -> str:
    """Block-style YAML without the trailing newline (and without `...` after a scalar). Strings
    helm would read as something else (`y`, `0o17`, `1e3`…) are quoted."""
    _check_defined(value)
    try:
        text = yaml.dump(
            value,
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
    if text.endswith("\n...\n"):
        text = text[: -len("...\n")]
    return text.removesuffix("\n")


def to_json(value: Any) -> str:
    """Compact-ish JSON with sorted keys; safe to embed in YAML."""
    _check_defined(value)
    try:
        text = json.dumps(value, sort_keys=True, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):
        raise _FunctionError(
            f"toJson cannot serialise a value of type {_type_name(value)!r} "
            "(or something inside it: only maps, lists, strings, finite numbers, booleans, null)"
        ) from None
    return _yaml_safe_escape(text)


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
# Filters and globals that would make output non-deterministic.
_REMOVED_FILTERS = ("random",)
_REMOVED_GLOBALS = ("lipsum",)


def _finalize(value: Any) -> Any:
    """`{{ x }}` with x null writes nothing (YAML null), not Python's `None`."""
    return "" if value is None else value


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


class _ValuesEnvironment(ImmutableSandboxedEnvironment):
    """The sandbox of one rendering. It remembers the path of every context map or list the
    template reaches (`values.db`), to name the full path of whatever turns out undefined."""

    intercepted_binops = frozenset({"*", "**"})

    def __init__(self, variables: Mapping[str, Any]) -> None:
        super().__init__(
            undefined=_PathUndefined,
            autoescape=False,
            keep_trailing_newline=True,
            finalize=_finalize,
        )
        for name in _REMOVED_FILTERS:
            self.filters.pop(name, None)
        for name in _REMOVED_GLOBALS:
            self.globals.pop(name, None)
        self.filters.update(FILTERS)
        # id() is safe as a key: only containers of the context are recorded, and the context
        # outlives the rendering.
        self._paths: dict[int, str] = {}
        for name, value in variables.items():
            if isinstance(value, dict | list):
                self._paths.setdefault(id(value), name)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # `x.values`, `x.items`, `x.keys` on a map mean the key, as in Helm, not dict methods.
        if isinstance(obj, dict) and attribute in obj:
            return self._track(obj[attribute], obj, attribute)
        return self._track(super().getattr(obj, attribute), obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        return self._track(super().getitem(obj, argument), obj, argument)

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
        if operator == "*":
            for sequence, count in ((left, right), (right, left)):
                if (
                    isinstance(sequence, str | list | tuple)
                    and isinstance(count, int)
                    and len(sequence) * count > MAX_REPEAT_LENGTH
                ):
                    raise SecurityError(
                        f"repeating a {_type_name(sequence)} would exceed {MAX_REPEAT_LENGTH} items"
                    )
        elif (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and right > 0
            and left.bit_length() * right > MAX_POWER_BITS
        ):
            raise SecurityError(f"the result of '**' would exceed {MAX_POWER_BITS} bits")
        return super().call_binop(context, operator, left, right)


def _join(base: str, name: Any) -> str:
    if isinstance(name, str) and _IDENTIFIER.fullmatch(name):
        return f"{base}.{name}"
    return f"{base}[{name!r}]"


# --- rendering ----------------------------------------------------------------------------------


def render_values_template(
    source: str, context: Mapping[str, Any], *, where: str
) -> dict[str, Any]:
    """Render `source` with `context` in the sandbox and parse the output as a YAML map.

    Empty output (or only comments) gives `{}`. `where` (e.g. `spec.releases[2].valuesTemplate[0]`)
    starts every TemplateRenderError message. The result shares nothing with `context`, and
    the immutable sandbox keeps the template from changing `context`. A map or list reachable
    by two paths of `context` (the same object twice) may be named by the other path in a
    message: pass copies where that matters (render_state does for `environment.values`).
    """
    variables = dict(context)
    env = _ValuesEnvironment(variables)

    try:
        tree = env.parse(source)
        _reject_loader_nodes(tree, where)
        template = env.from_string(tree)
    except TemplateAssertionError as error:  # compile time: unknown filter or test...
        raise TemplateRenderError(
            where,
            f"template error at line {error.lineno}: {_sentence(error.message)}; the filters are "
            f"jinja's built-ins and {', '.join(FILTERS)}",
        ) from None
    except TemplateSyntaxError as error:
        raise TemplateRenderError(
            where,
            f"template syntax error at line {error.lineno}: {_sentence(error.message)}; fix the "
            "Jinja2 syntax (`{{ expression }}`, `{% if %}…{% endif %}`, `{% for %}…{% endfor %}`)",
        ) from None

    try:
        output = _bounded(template.generate(variables), where)
    except TemplateRenderError:
        raise
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

    return _parse_output(output, where)


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


def _bounded(chunks: Iterator[str], where: str) -> str:
    parts: list[str] = []
    size = 0
    for chunk in chunks:
        size += len(chunk)
        if size > MAX_OUTPUT_CHARS:
            raise TemplateRenderError(
                where,
                f"the output is larger than {MAX_OUTPUT_CHARS} characters; a HelmfileRelease "
                "must fit in etcd, so put large data in a ConfigMap and use `valuesFrom`",
            )
        parts.append(chunk)
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
