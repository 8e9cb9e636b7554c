"""render/templates.py: the sandboxed values templates, filters and error messages."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
import yaml

from helmfile_operator.render.errors import RenderError, RenderLimitExceeded, TemplateRenderError
from helmfile_operator.render.templates import (
    MAX_OUTPUT_CHARS,
    MAX_VALUE_NODES,
    b64dec,
    b64enc,
    quote,
    render_values_template,
    to_json,
    to_yaml,
)

WHERE = "spec.releases[2].valuesTemplate[0]"
SECRET = "s3cr3t-value"


def context() -> dict[str, Any]:
    values = {
        "replicas": 3,
        "db": {"host": "db.local", "password": SECRET, "port": 5432},
        "hosts": ["a.example.com", "b.example.com"],
        "enabled": False,
        "empty": "",
        "nothing": None,
        "items": "a key named like a dict method",
        "text": 'line "one"\nline two: \\ é 😀',
    }
    return {
        "environment": {"name": "prod", "values": values},
        "state": {
            "name": "platform",
            "namespace": "apps",
            "labels": {"team": "x"},
            "annotations": {},
        },
        "release": {
            "name": "web",
            "namespace": "web",
            "labels": {},
            "chart": "repo/web",
            "version": None,
        },
        "values": values,
    }


def render(source: str, ctx: dict[str, Any] | None = None) -> dict[str, Any]:
    return render_values_template(source, context() if ctx is None else ctx, where=WHERE)


def render_error(source: str, ctx: dict[str, Any] | None = None) -> TemplateRenderError:
    with pytest.raises(TemplateRenderError) as error:
        render(source, ctx)
    assert isinstance(error.value, RenderError)
    assert error.value.field == WHERE
    assert str(error.value).startswith(f"{WHERE}: ")
    assert SECRET not in str(error.value)
    return error.value


# --- rendering ----------------------------------------------------------------------------------


def test_renders_context_variables() -> None:
    source = """
replicaCount: {{ environment.values.replicas }}
env: {{ environment.name }}
state: {{ state.name }}/{{ state.namespace }}
team: {{ state.labels.team }}
release: {{ release.name }} in {{ release.namespace }} from {{ release.chart }}
database:
  host: {{ values.db.host }}
  port: {{ values.db.port }}
hosts:
{% for host in values.hosts %}
  - {{ host }}
{% endfor %}
"""
    assert render(source) == {
        "replicaCount": 3,
        "env": "prod",
        "state": "platform/apps",
        "team": "x",
        "release": "web in web from repo/web",
        "database": {"host": "db.local", "port": 5432},
        "hosts": ["a.example.com", "b.example.com"],
    }


def test_keys_win_over_dict_methods() -> None:
    # `environment.values` must be the values, not dict.values; same for any key.
    assert render("x: {{ values['items'] }}\nz: {{ values.items }}") == {
        "x": "a key named like a dict method",
        "z": "a key named like a dict method",
    }


@pytest.mark.parametrize(
    "source", ["", "\n\n", "# just a comment\n", "{% if false %}a: 1{% endif %}"]
)
def test_empty_output_is_empty_map(source: str) -> None:
    assert render(source) == {}


def test_none_renders_as_yaml_null() -> None:
    assert render("v: {{ release.version }}\nm: {{ values.nothing }}") == {"v": None, "m": None}


def test_yaml_output_is_json_compatible() -> None:
    source = (
        "a: &a [1, 2]\nb: [*a, *a]\nday: 2024-01-01\n404: not found\ntrue: yes\n"
        "bin: !!binary aGk=\n"
    )
    result = render(source)
    assert result == {
        "a": [1, 2],
        "b": [[1, 2], [1, 2]],
        "day": "2024-01-01",  # no implicit timestamps: helm sees a string too
        "404": "not found",
        "true": True,
        "bin": "hi",  # helm decodes !!binary to text
    }
    result["b"][0].append(3)
    assert result["a"] == [1, 2]  # aliases are expanded into separate lists
    json.dumps(result)


def test_context_is_not_mutated_and_not_shared() -> None:
    ctx = context()
    before = json.dumps(ctx, sort_keys=True)
    result = render("hosts: {{ values.hosts | toJson }}", ctx)
    result["hosts"].append("c")
    assert json.dumps(ctx, sort_keys=True) == before


def test_macros_and_namespace_work() -> None:
    source = (
        "{% macro port(p) %}{{ p + 1 }}{% endmacro %}"
        "{% set ns = namespace(n=0) %}"
        "{% for h in values.hosts %}{% set ns.n = ns.n + 1 %}{% endfor %}"
        "port: {{ port(values.db.port) }}\ncount: {{ ns.n }}"
    )
    assert render(source) == {"port": 5433, "count": 2}


# --- filters ------------------------------------------------------------------------------------


def test_to_yaml_filter() -> None:
    source = (
        "database:\n  {{ values.db | toYaml | indent(2) }}\n"
        "hosts: {{ values.hosts | toYaml | nindent(2) }}"
    )
    assert render(source) == {
        "database": context()["values"]["db"],
        "hosts": context()["values"]["hosts"],
    }
    assert to_yaml({"b": 1, "a": [1]}) == "b: 1\na:\n- 1"  # key order kept, no trailing newline
    assert to_yaml("plain") == "plain"
    assert to_yaml(5) == "5"
    assert to_yaml({}) == "{}"


def test_to_json_filter() -> None:
    assert to_json({"b": 1, "a": [True, None]}) == '{"a": [true, null], "b": 1}'
    assert render("x: {{ values.db | toJson }}") == {"x": context()["values"]["db"]}


def test_quote_filter_round_trips_through_yaml() -> None:
    text = context()["values"]["text"] + "\x85\u2028\x7f"
    ctx = context()
    ctx["values"]["text"] = text
    assert render("x: {{ values.text | quote }}", ctx) == {"x": text}
    assert render("x: {{ values.replicas | quote }}") == {"x": "3"}
    assert render("x: {{ values.enabled | quote }}") == {"x": "false"}
    assert quote(None) == '""'
    assert json.loads(quote('a"b')) == 'a"b'


def test_quote_and_to_json_survive_yaml_for_any_text() -> None:
    text = "".join(chr(c) for c in range(0, 0x3000, 7)) + "😀\ufeff"
    assert yaml.safe_load(f"x: {quote(text)}") == {"x": text}
    assert yaml.safe_load(f"x: {to_json([text])}") == {"x": [text]}
    assert json.loads(to_json([text])) == [text]


def test_b64_filters() -> None:
    assert b64enc("héllo") == "aMOpbGxv"
    assert b64dec("aMOpbGxv") == "héllo"
    assert b64enc(12) == "MTI="
    assert render("x: {{ values.db.host | b64enc | b64dec }}") == {"x": "db.local"}


def test_required_filter() -> None:
    assert render("x: {{ values.db.host | required('db host is needed') }}") == {"x": "db.local"}
    for expression in ["values.missing", "values.nothing", "values.empty"]:
        error = render_error(
            f"a: 1\nx: {{{{ {expression} | required('set db.host in the environment') }}}}"
        )
        assert error.message == "line 2: required: set db.host in the environment"


def test_default_filter() -> None:
    source = """
missing: {{ values.missing | default(1) }}
none: {{ values.nothing | default(2) }}
empty: {{ values.empty | default("e") }}
emptyList: {{ [] | default([1]) }}
keepsFalse: {{ values.enabled | default(true) }}
keepsZero: {{ 0 | default(7) }}
booleanMode: {{ values.enabled | default(true, true) }}
alias: {{ values.missing | d("d") }}
present: {{ values.replicas | default(9) }}
"""
    assert render(source) == {
        "missing": 1,
        "none": 2,
        "empty": "e",
        "emptyList": [1],
        "keepsFalse": False,
        "keepsZero": 0,
        "booleanMode": True,
        "alias": "d",
        "present": 3,
    }


def test_is_defined_test() -> None:
    assert render("x: {{ values.missing is defined }}\nz: {{ values.db is defined }}") == {
        "x": False,
        "z": True,
    }


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("x: {{ values.db | quote }}", "quote expects a string, number or boolean, got 'dict'"),
        ("x: {{ values.hosts | b64enc }}", "b64enc expects a string"),
        ("x: {{ 'not base64!' | b64dec }}", "b64dec: the input is not valid base64"),
        ("x: {{ namespace(a=1) | toJson }}", "toJson cannot serialise a value of type 'Namespace'"),
        ("x: {{ namespace(a=1) | toYaml }}", "toYaml cannot serialise a value of type 'Namespace'"),
        ("x: {{ values.missing | toYaml }}", "undefined variable 'values.missing'"),
        ("x: {{ values.missing | toJson }}", "undefined variable 'values.missing'"),
        ("x: {{ values.missing | quote }}", "undefined variable 'values.missing'"),
    ],
)
def test_filter_errors(source: str, expected: str) -> None:
    assert expected in render_error(source).message


# --- errors -------------------------------------------------------------------------------------


def test_undefined_environment_value() -> None:
    error = render_error("replicas: {{ environment.values.replica }}")
    assert error.message == (
        "line 1: undefined variable 'environment.values.replica': define it in the "
        "environment's values or use `| default(...)`"
    )


@pytest.mark.parametrize(
    ("source", "path"),
    [
        ("x: {{ values.db.user }}", "values.db.user"),
        ("x: {{ values.db.user.name }}", "values.db.user"),
        ("x: {{ values['db']['user'] }}", "values.db.user"),
        ("x: {{ values['my-key'] }}", "values['my-key']"),
        ("x: {{ values.hosts[5] }}", "values.hosts[5]"),
        ("x: {{ environment.values.db.user }}", "environment.values.db.user"),
    ],
)
def test_undefined_paths(source: str, path: str) -> None:
    error = render_error(source)
    assert f"undefined variable '{path}'" in error.message


def test_undefined_other_variables() -> None:
    assert (
        "undefined variable 'release.chartVersion': check the name"
        in render_error("x: {{ release.chartVersion }}").message
    )
    message = render_error("\n\nx: {{ Values.db }}").message
    assert message.startswith("line 3: undefined variable 'Values'")
    assert "environment, state, release, values" in message


def test_undefined_inside_loop_and_condition() -> None:
    assert "values.nope" in render_error("{% for x in values.nope %}{% endfor %}").message
    assert "values.nope" in render_error("{% if values.nope %}a: 1{% endif %}").message


def test_syntax_error_has_line_number() -> None:
    error = render_error("a: 1\nb: {{ values.db.host \nc: 3\n")
    assert error.message.startswith("template syntax error at line 3:")
    assert "fix the Jinja2 syntax" in error.message
    error = render_error("a: 1\n{% if x %}\nb: 2\n")
    assert "template syntax error at line" in error.message


def test_unknown_filter_is_reported_with_the_list() -> None:
    error = render_error("a: 1\nb: {{ values.db | toyaml }}")
    assert error.message.startswith("template error at line 2: No filter named 'toyaml'")
    assert "toYaml" in error.message


@pytest.mark.parametrize(
    "source",
    [
        "x: {{ ''.__class__.__mro__ }}",
        "x: {{ ''.__class__.__mro__[1].__subclasses__() }}",
        "x: {{ cycler.__init__.__globals__ }}",
        "x: {{ joiner.__init__.__globals__.os }}",
        "x: {{ namespace.__init__.__globals__ }}",
        "x: {{ range.__globals__ }}",
        "x: {{ values.__class__ }}",
        "x: {{ values.db.host.__class__.__base__ }}",
        "x: {{ '{0.__class__}'.format(1) }}",
        "x: {{ values|attr('__class__') }}",
        "x: {{ values.update({'replicas': 1}) }}",
        "x: {{ values.hosts.append('evil') }}",
        "x: {{ values.db.pop('host') }}",
    ],
)
def test_sandbox_escapes_fail(source: str) -> None:
    error = render_error(source)
    assert "forbidden in a values template" in error.message or "undefined" in error.message


def test_mutation_attempts_leave_the_context_unchanged() -> None:
    ctx = context()
    before = json.dumps(ctx, sort_keys=True)
    for source in [
        "x: {{ values.update({'replicas': 1}) }}",
        "x: {{ values.hosts.append('evil') }}",
        "{% set values.replicas = 1 %}",
        "{% set x = values.hosts.pop() %}",
        "{% set values = {} %}x: 1",
    ]:
        with contextlib.suppress(TemplateRenderError):
            render(source, ctx)
    assert json.dumps(ctx, sort_keys=True) == before


def test_sandbox_error_message_explains() -> None:
    error = render_error("x: {{ ''.__class__ }}")
    assert error.message == (
        "line 1: forbidden in a values template: access to attribute '__class__' of 'str' "
        "object is unsafe; templates may only read environment, state, release and values: "
        "private attributes, Python internals and mutating methods are not available"
    )


@pytest.mark.parametrize(
    "source",
    [
        "{% include 'other.yaml' %}",
        "{% extends 'base.yaml' %}",
        "{% import 'macros' as m %}",
        "{% from 'macros' import m %}",
    ],
)
def test_no_loading_of_other_templates(source: str) -> None:
    assert "is not allowed" in render_error(source).message


@pytest.mark.parametrize("name", ["lipsum", "os", "environ", "open", "__import__", "self"])
def test_no_dangerous_globals(name: str) -> None:
    render_error(f"x: {{{{ {name}() }}}}")


def test_random_filter_is_removed() -> None:
    assert "No filter named 'random'" in render_error("x: {{ values.hosts | random }}").message


@pytest.mark.parametrize(
    ("source", "kind"),
    [
        ("- a\n- b\n", "list"),
        ("just text", "string"),
        ("42", "number"),
        ("true", "boolean"),
    ],
)
def test_output_must_be_a_map(source: str, kind: str) -> None:
    error = render_error(source)
    assert error.message.startswith(f"the rendered output is a YAML {kind}, but it must be a map")


def test_invalid_yaml_output_does_not_echo_content() -> None:
    error = render_error("password: {{ values.db.password }}\n  bad: indentation: here")
    assert error.message.startswith("the rendered output is not valid YAML at line 2")
    assert "nindent" in error.message


def test_output_is_read_as_helm_reads_values() -> None:
    # y/n/on/off are booleans for helm (go-yaml v2), also as keys; 12:30 and = are strings.
    assert render("y: n\nt: 12:30\ne: =\no: 0o17\n") == {
        "true": False,
        "t": "12:30",
        "e": "=",
        "o": 15,
    }
    assert render("a: {{ values.db.port }}\n---\nb: 2\n") == {"a": 5432, "b": 2}  # merged


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("null: x", "has a null map key at line 1"),
        ("a: 1\nm: {1: a, '1': b}", "has two map keys that helm turns into the same string"),
        ("a: {<<: 1}", "has a merge key `<<` at line 1 whose value is not a map"),
    ],
)
def test_keys_helm_refuses_are_errors(source: str, problem: str) -> None:
    assert render_error(source).message.startswith(f"the rendered output {problem}")


def test_to_yaml_quotes_what_helm_would_not_read_as_a_string() -> None:
    words = ["y", "N", "on", "0o17", "0X1F", "1e3", "08", "<<", "", "=", "12:30", "2024-01-01"]
    text = to_yaml({word: word for word in words})
    assert render(f"x:\n  {text.replace(chr(10), chr(10) + '  ')}") == {"x": {w: w for w in words}}


def test_non_json_values_are_rejected() -> None:
    assert "non-finite" in render_error("a:\n  b: [.nan]").message
    assert "'a.b[0]'" in render_error("a:\n  b: [.inf]").message


def test_runtime_errors_keep_type_and_line() -> None:
    assert render_error("a: 1\nx: {{ 1 + 'a' }}").message.startswith(
        "line 2: TypeError: unsupported"
    )
    assert render_error("x: {{ 1 / 0 }}").message == "line 1: ZeroDivisionError: division by zero"


def test_value_errors_do_not_echo_values() -> None:
    # list.index quotes the value it did not find ("'s3cr3t-value' is not in list"): only the
    # exception type is reported (render_error also checks the secret is not in the message).
    error = render_error("x: {{ values.hosts.index(values.db.password) }}")
    assert error.message == "line 1: ValueError while rendering; check the expressions"


def test_output_size_is_limited() -> None:
    # Repetition, `**`, loops and the other limits: test_render_limits.py.
    with pytest.raises(RenderLimitExceeded) as error:
        render("{% for i in range(100000) %}k{{ i }}: " + "x" * 20 + "\n{% endfor %}")
    assert error.value.field == WHERE
    assert str(MAX_OUTPUT_CHARS) in error.value.message


def test_alias_expansion_is_limited() -> None:
    levels = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    for i in range(1, 7):
        levels.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]")
    error = render_error("\n".join(levels))
    assert str(MAX_VALUE_NODES) in error.message


@pytest.mark.parametrize(
    "source",
    ["x: " + "[" * 1500 + "]" * 1500, "x: {{ '[' * 1500 }}{{ ']' * 1500 }}"],
)
def test_deep_nesting_is_an_error(source: str) -> None:
    assert "nesting deeper than 100 levels" in render_error(source).message


def test_runaway_recursion_is_an_error() -> None:
    source = "{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"
    assert "RecursionError" in render_error(source).message
