"""goyaml: YAML read as helm reads it. CASES is also checked against the real helm
(tests/integration/test_yaml_parity.py)."""

from __future__ import annotations

import base64
import contextlib
import json
import math
import time
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from fakes import FakeKube
from hypothesis import given, settings
from hypothesis import strategies as st

from helmfile_operator import goyaml
from helmfile_operator.api.models import ChartReference, ChartRepository, ValuesReference
from helmfile_operator.reconcile.drift import manifest_objects
from helmfile_operator.reconcile.values import ValuesSourceError, read_reference
from helmfile_operator.render.values import InvalidValuesError, values_digest

WHERE = "spec.valuesFrom[0]: Secret ns/creds key 'values.yaml'"
SECRET = "s3cr3t"


@dataclass(frozen=True)
class Refused:
    """load_values raises GoYAMLError with this reason. `helm`: what helm does with the text:
    "refuses" it too, "random" (accepts it, keeping one of two colliding keys at random), or
    "accepts" (one of our bounds, stricter than helm's)."""

    reason: str
    helm: str = "refuses"


@dataclass(frozen=True)
class Case:
    id: str
    text: str
    expected: Any  # the values, or Refused


def _bomb(levels: int) -> str:
    lines = [f"a0: &a0 [{SECRET}, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


CASES = [
    Case(
        "equals-signs",
        "a: =\nb: =~\nc: [=, =~, '!=', '!~', ==]\n",
        {"a": "=", "b": "=~", "c": ["=", "=~", "!=", "!~", "=="]},
    ),
    Case(
        "timestamps-are-text",
        "d: 2024-01-01\nt: 2001-12-14t21:59:43.10-05:00\ns: 2001-12-14 21:59:43.10\n"
        "bad: 2024-13-45\n",
        {
            "d": "2024-01-01",
            "t": "2001-12-14t21:59:43.10-05:00",
            "s": "2001-12-14 21:59:43.10",
            "bad": "2024-13-45",
        },
    ),
    Case(
        "no-sexagesimal",
        "t: 12:30\nu: 1:20:30\nv: -1:30\nw: 190:20:30.15\n",
        {"t": "12:30", "u": "1:20:30", "v": "-1:30", "w": "190:20:30.15"},
    ),
    Case(
        "booleans",
        "a: yes\nb: no\nc: on\nd: off\ne: y\nf: n\ng: Y\nh: N\ni: YES\nj: Off\nk: true\n"
        "l: False\nm: TRUE\no: yEs\np: tRUE\nq: ON\nr: oN\n",
        {
            "a": True,
            "b": False,
            "c": True,
            "d": False,
            "e": True,
            "f": False,
            "g": True,
            "h": False,
            "i": True,
            "j": False,
            "k": True,
            "l": False,
            "m": True,
            "o": "yEs",
            "p": "tRUE",
            "q": True,
            "r": "oN",
        },
    ),
    Case(
        "boolean-keys",
        "y: 1\nmap: {n: 2, on: 3}\n",
        {"true": 1, "map": {"false": 2, "true": 3}},
    ),
    Case(
        "nulls",
        "a: ~\nb: null\nc: Null\nd: NULL\ne:\nf: ''\ng: nULL\nh: !!null ''\n",
        {"a": None, "b": None, "c": None, "d": None, "e": None, "f": "", "g": "nULL", "h": None},
    ),
    Case(
        "integers",
        "octal_o: 0o17\noctal_O: 0O17\noctal: 017\nhex: 0x1F\nHEX: 0X1f\nbinary: 0b101\n"
        "binary_B: 0B11\nunderscores: 1_000\ndouble: 1__0\ntrailing: 1_\nsigned: -0x1F\n"
        "plus: +12\nzero: 0\nminus_zero: -0\nsign_underscore: -_1\nlead: _1\nprefix_only: 0x\n"
        "octal_only: 0o\nbad_binary: 0b2\nquoted: '12'\n",
        {
            "octal_o": 15,
            "octal_O": 15,
            "octal": 15,
            "hex": 31,
            "HEX": 31,
            "binary": 5,
            "binary_B": 3,
            "underscores": 1000,
            "double": 10,
            "trailing": 1,
            "signed": -31,
            "plus": 12,
            "zero": 0,
            "minus_zero": 0,
            "sign_underscore": -1,
            "lead": "_1",
            "prefix_only": "0x",
            "octal_only": "0o",
            "bad_binary": "0b2",
            "quoted": "12",
        },
    ),
    Case(
        "floats",
        "e: 1e3\nE: 1E+3\nneg: -1.5e-3\ndot: .5\nneg_dot: -.5\nplus_dot: +.5\ntrailing: 1.\n"
        "dot_exp: 1.e3\nnot_octal: 08\nnot_octal_fraction: 09.5\ndot_underscores: .5_5\n"
        "bad_underscore: ._5\nnot_a_float: 1e\nhex_float: 0x1p-2\nhuge: 1e400\n"
        "huge_dot: .5e400\ntiny: 1e-400\ninfinity: infinity\nnan: nan\ncomma: 1,000\n",
        {
            "e": 1000.0,
            "E": 1000.0,
            "neg": -0.0015,
            "dot": 0.5,
            "neg_dot": -0.5,
            "plus_dot": 0.5,
            "trailing": 1.0,
            "dot_exp": 1000.0,
            "not_octal": 8.0,
            "not_octal_fraction": 9.5,
            "dot_underscores": 0.55,
            "bad_underscore": "._5",
            "not_a_float": "1e",
            "hex_float": "0x1p-2",
            "huge": "1e400",
            "huge_dot": ".5e400",
            "tiny": 0.0,
            "infinity": "infinity",
            "nan": "nan",
            "comma": "1,000",
        },
    ),
    Case(
        "big-integers",
        "u64: 18446744073709551615\nover: 18446744073709551616\n"
        "plus_u64: +18446744073709551615\nmin: -9223372036854775808\n"
        "below: -9223372036854775809\nhex_u64: 0xFFFFFFFFFFFFFFFF\n",
        {
            "u64": 18446744073709551615,
            "over": 1.8446744073709552e19,
            "plus_u64": 1.8446744073709552e19,  # ParseInt overflows, ParseUint takes no sign
            "min": -9223372036854775808,
            "below": -9.223372036854776e18,
            "hex_u64": 18446744073709551615,
        },
    ),
    Case(
        "binary",
        "a: !!binary aGk=\nb: !!binary |\n  aGVs\n  bG8=\nc: !!binary /w==\nd: !!binary 4oI=\n"
        "e: !!binary ''\n",
        {"a": "hi", "b": "hello", "c": "\ufffd", "d": "\ufffd\ufffd", "e": ""},
    ),
    Case(
        "explicit-tags",
        "a: !!str 12\nb: !!int '12'\nc: !!float 1\nd: !!bool yes\ne: !!timestamp 2024-01-01\n"
        "f: !custom 12\ng: ! 12\nh: !!str\ni: !!float '0x10'\nj: !!timestamp 2024-02-29T10:00:00Z\n"
        "k: !!set {x: 1}\nl: !!python/tuple [1]\n",
        {
            "a": "12",
            "b": 12,
            "c": 1.0,
            "d": True,
            "e": "2024-01-01",
            "f": "12",
            "g": "12",
            "h": "",
            "i": 16.0,
            "j": "2024-02-29T10:00:00Z",
            "k": {"x": 1},
            "l": [1],
        },
    ),
    Case(
        "merge-keys-in-document-order",
        "base: &b {a: 1, b: 1}\nafter: {a: 2, <<: *b}\nbefore: {<<: *b, a: 2}\n"
        "list: {<<: [{a: 3}, {a: 4, c: 4}], d: 5}\nnested: {<<: {<<: *b, c: 3}}\n",
        {
            "base": {"a": 1, "b": 1},
            "after": {"a": 1, "b": 1},  # go-yaml v2: a later `<<` overrides earlier keys
            "before": {"a": 2, "b": 1},
            "list": {"a": 3, "c": 4, "d": 5},  # in a list, the first map wins
            "nested": {"a": 1, "b": 1, "c": 3},
        },
    ),
    Case(
        "merge-key-spellings",
        "a: {!!merge <<: {x: 1}}\nb: {'<<': q}\nc: <<\nd: !!merge <<\n",
        {"a": {"x": 1}, "b": {"<<": "q"}, "c": "<<", "d": "<<"},
    ),
    Case(
        "non-string-keys",
        "m: {1: a, 1.5: b, 1e3: c, 0x10: d, 3.14159265358979: e, 1000000.0: f, 0.00001: g,\n"
        "    -0.0: h, 16777217.0: i, 1e39: j, -.inf: k, 2024-01-01: l}\n",
        {
            "m": {
                "1": "a",
                "1.5": "b",
                "1000": "c",
                "16": "d",
                "3.1415927": "e",
                "1e+06": "f",
                "1e-05": "g",
                "-0": "h",
                "1.6777216e+07": "i",
                ".inf": "j",
                "-.inf": "k",
                "2024-01-01": "l",
            }  # float keys: Go's FormatFloat(f, 'g', -1, 32)
        },
    ),
    Case("duplicate-keys", "a: 1\nb: 1\na: 2\n", {"a": 2, "b": 1}),
    Case("same-go-key", "m: {y: 1, true: 2, 1: 3, 0x1: 4}\n", {"m": {"true": 2, "1": 4}}),
    Case("alias-key", "a: &k key\nb: {*k : v}\n", {"a": "key", "b": {"key": "v"}}),
    Case(
        "aliases",
        "a: &a [1, {x: 2}]\nb: *a\nc: &s text\nd: *s\n",
        {"a": [1, {"x": 2}], "b": [1, {"x": 2}], "c": "text", "d": "text"},
    ),
    Case(
        "documents-merge",
        "a: {p: 1, q: 2}\nl: [1]\n---\na: {q: 3}\nl: [2]\n--- # a comment\nb: 1\n---\n---\n",
        {"a": {"p": 1, "q": 3}, "l": [2], "b": 1},
    ),
    Case("document-end-marker", "a: 1\n...\nb: 2\n", {"a": 1}),  # go-yaml reads one document
    Case("empty", "", {}),
    Case("comments-only", "# nothing\n\n", {}),
    Case("null-document", "~\n", {}),
    Case("crlf", "a: 1\r\nb:\r\n  - x\r\n", {"a": 1, "b": ["x"]}),
    # Refused -----------------------------------------------------------------------------------
    Case("null-key", f"~: {SECRET}\n", Refused("key")),
    Case("empty-key", f"? \n: {SECRET}\n", Refused("key")),
    Case("no-key", f": {SECRET}\n", Refused("syntax")),
    Case("uint64-key", f"18446744073709551615: {SECRET}\n", Refused("key")),
    Case("map-key", f"? [{SECRET}]\n: 1\n", Refused("key")),
    Case("colliding-keys", f"m: {{1: {SECRET}, '1': b}}\n", Refused("key", helm="random")),
    Case("colliding-number-keys", f"m: {{1: {SECRET}, 1.0: b}}\n", Refused("key", helm="random")),
    Case("infinity", f"{SECRET}: .inf\n", Refused("value")),
    Case("nan-in-list", f"a: [{SECRET}, .nan]\n", Refused("value")),
    Case("tag-mismatch", f"a: !!int {SECRET}\n", Refused("value")),
    Case("int-tag-on-float", "a: !!int 1.5\n", Refused("value")),
    Case("float-tag-on-uint64", "a: !!float 18446744073709551615\n", Refused("value")),
    Case("bad-timestamp", "a: !!timestamp 2024-02-30\n", Refused("value")),
    Case("bad-base64", f"{SECRET}: !!binary aGk\n", Refused("value")),
    Case("merge-of-scalar", f"a: {{<<: {SECRET}}}\n", Refused("value")),
    Case("merge-of-list-alias", f"l: &l [{{a: {SECRET}}}]\nm: {{<<: *l}}\n", Refused("value")),
    Case("top-level-list", f"- {SECRET}\n", Refused("document")),
    Case("top-level-scalar", f"{SECRET}\n", Refused("document")),
    Case("later-document-list", f"a: 1\n---\n- {SECRET}\n", Refused("document")),
    Case("bad-separator", f"a: 1\n--- {SECRET}: 2\n", Refused("syntax")),
    Case("anchor-across-documents", f"a: &{SECRET} 1\n---\nb: *{SECRET}\n", Refused("syntax")),
    Case("recursive-alias", f"a: &{SECRET} [*{SECRET}]\n", Refused("syntax")),
    Case("syntax", f"a: [1, {SECRET}\n", Refused("syntax")),
    Case("bad-indentation", f"a: 1\n  {SECRET}: indentation: here\n", Refused("syntax")),
    Case("unknown-escape", f'a: "{SECRET}\\q"\n', Refused("syntax")),
    Case("control-character", f"a: {SECRET}\x01\n", Refused("syntax")),
    Case("alias-bomb", _bomb(9), Refused("nodes")),
    Case("deep-flow", "x: " + "[" * 100_000 + "]" * 100_000 + "\n", Refused("depth")),
    Case("deep-150", "x: " + "[" * 150 + "]" * 150 + "\n", Refused("depth", helm="accepts")),
    Case(
        "huge",
        "a: " + "x" * goyaml.MAX_VALUES_CHARS + "\n",
        Refused("size", helm="accepts"),
    ),
]
ACCEPTED = [case for case in CASES if not isinstance(case.expected, Refused)]
REFUSED = [case for case in CASES if isinstance(case.expected, Refused)]


def _same(a: Any, b: Any) -> bool:
    """Equal, with types: 1 and 1.0 differ, and True is no 1."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


@pytest.fixture(params=["libyaml", "pure-python"])
def parser(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both PyYAML parsers must give the same trees (libyaml is used when PyYAML has it)."""
    if request.param == "libyaml":
        if not yaml.__with_libyaml__:
            pytest.skip("PyYAML without libyaml")
        monkeypatch.setattr(goyaml, "_Parser", yaml.CSafeLoader)
    else:
        monkeypatch.setattr(goyaml, "_Parser", yaml.SafeLoader)
    return str(request.param)


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda case: case.id)
def test_values_as_helm_reads_them(case: Case, parser: str) -> None:
    result = goyaml.load_values(case.text, WHERE)
    assert _same(result, case.expected), result
    json.dumps(result, allow_nan=False)  # JSON-compatible, always


@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.id)
def test_refused_documents(case: Case, parser: str) -> None:
    with pytest.raises(goyaml.GoYAMLError) as caught:
        goyaml.load_values(case.text, WHERE)
    error = caught.value
    assert isinstance(error, ValueError)
    assert error.reason == case.expected.reason, str(error)
    message = str(error)
    assert message.startswith(f"{WHERE} ")
    assert message == f"{WHERE} {error.detail}"
    assert SECRET not in message  # the content is never quoted: it may be a Secret
    if error.line is not None and (error.reason, error.line) != ("document", 1):
        assert f"line {error.line}" in message


def test_syntax_errors_name_line_and_column() -> None:
    with pytest.raises(goyaml.GoYAMLError) as caught:
        goyaml.load_values("a: 1\n---\nb: 1\n  c: [x\n", WHERE)
    assert caught.value.line == 4  # counted over the whole text, not per document
    assert "is not valid YAML at line 4, column " in str(caught.value)


def test_errors_carry_the_path_apart_from_the_message() -> None:
    with pytest.raises(goyaml.GoYAMLError) as caught:
        goyaml.load_values(f"a:\n  {SECRET}: [1, .nan]\n", WHERE)
    assert caught.value.path == f"a.{SECRET}[1]"
    assert caught.value.line == 2
    assert SECRET not in str(caught.value)


# --- bounds --------------------------------------------------------------------------------------


def test_deep_nesting_fails_fast_and_never_recurses() -> None:
    for text in [
        "x: " + "[" * 100_000 + "]" * 100_000,
        "x: " + "{a: " * 100_000 + "}" * 100_000,
        "".join(" " * i + "- \n" for i in range(200)),
        "x: &a " + "[" * 60 + "]" * 60 + "\ny: " + "[" * 60 + "*a" + "]" * 60,  # via an alias
    ]:
        started = time.monotonic()
        with pytest.raises(goyaml.GoYAMLError, match="nesting deeper than 100 levels"):
            goyaml.load_values(text, WHERE)
        assert time.monotonic() - started < 2
    assert goyaml.load_values("x: " + "[" * 99 + "]" * 99, WHERE)  # the bound itself is fine


def test_alias_expansion_is_bounded_before_it_happens() -> None:
    started = time.monotonic()
    with pytest.raises(goyaml.GoYAMLError, match=f"more than {goyaml.MAX_VALUE_NODES} nodes"):
        goyaml.load_values(_bomb(20), WHERE)  # 10**20 nodes if expanded
    assert time.monotonic() - started < 2
    # Within the bound aliases expand, into separate copies.
    result = goyaml.load_values(_bomb(4), WHERE)
    assert len(result["a3"]) == 10 and result["a3"][9][9][9] == result["a0"]
    result["a3"][0][0][0].append("changed")
    assert result["a3"][0][0][1] == result["a3"][1][0][0] == result["a0"] == [SECRET] + ["x"] * 9


def test_merged_values_are_copies() -> None:
    result = goyaml.load_values("base: &b {l: [1]}\nm: {<<: *b}\n", WHERE)
    result["m"]["l"].append(2)
    assert result["base"] == {"l": [1]}


def test_limits_can_be_chosen() -> None:
    small = goyaml.Limits(max_chars=100, max_nodes=5, max_depth=3)
    with pytest.raises(goyaml.GoYAMLError, match="larger than 100 characters"):
        goyaml.load_values("a: " + "x" * 100, WHERE, small)
    with pytest.raises(goyaml.GoYAMLError, match="more than 5 nodes"):
        goyaml.load_values("a: 1\nb: 2\nc: 3", WHERE, small)
    shallow = goyaml.Limits(max_chars=100, max_nodes=100, max_depth=3)
    with pytest.raises(goyaml.GoYAMLError, match="deeper than 3 levels"):
        goyaml.load_values("a: {b: {c: 1}}", WHERE, shallow)
    assert goyaml.load_values("a: {b: 1}", WHERE, shallow) == {"a": {"b": 1}}


def test_manifest_bounds_are_larger() -> None:
    deep = "x: " + "[" * 150 + "]" * 150
    assert goyaml.load_manifest(deep, "m")  # CRD schemas nest deeper than values
    big = "kind: ConfigMap\ndata:\n  a: " + "x" * goyaml.MAX_VALUES_CHARS + "\n"
    assert goyaml.load_manifest(big, "m")[0]["kind"] == "ConfigMap"
    assert goyaml.MAX_MANIFEST_CHARS > goyaml.MAX_VALUES_CHARS
    assert goyaml.MAX_MANIFEST_NODES > goyaml.MAX_VALUE_NODES
    with pytest.raises(goyaml.GoYAMLError, match="nesting deeper than 200 levels"):
        goyaml.load_manifest("x: " + "[" * 100_000 + "]" * 100_000, "m")


def test_a_manifest_of_several_mib_loads_in_reasonable_time() -> None:
    document = (
        "---\n# Source: app/templates/deployment.yaml\napiVersion: apps/v1\nkind: Deployment\n"
        "metadata:\n  name: app-{i}\n  labels: {{app: x, tier: web}}\nspec:\n  replicas: 3\n"
        "  template:\n    spec:\n      containers:\n        - name: app\n"
        "          image: registry.example.com/app:1.2.3\n          args: [--port=8080, -v]\n"
        "          ports: [{{containerPort: 8080, protocol: TCP}}]\n"
        "          resources: {{limits: {{cpu: 500m, memory: 512Mi}}}}\n"
    )
    text = "".join(document.format(i=i) for i in range(13_000))
    assert len(text) > 5 << 20
    started = time.monotonic()
    objects = goyaml.load_manifest(text, "m")
    elapsed = time.monotonic() - started
    assert len(objects) == 13_000
    assert objects[-1]["metadata"]["name"] == "app-12999"
    assert elapsed < 20  # about 1.5 s with libyaml on a laptop; generous for loaded CI machines


# --- manifests ----------------------------------------------------------------------------------

CRD = """\
---
# Source: monitoring/crds/alertmanagerconfigs.yaml
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: alertmanagerconfigs.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  names: {kind: AlertmanagerConfig, plural: alertmanagerconfigs}
  scope: Namespaced
  versions:
    - name: v1alpha1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            matchType:
              description: Match operation available with AlertManager >= v0.22.0.
              enum: ['!=', =, =~, '!~']
              type: string
---
# Source: monitoring/templates/empty.yaml
---
- not
- an object
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {enabled: on, at: 12:30}
---
kind: ConfigMap
metadata: {}
"""


def test_manifest_objects_reads_a_crd_with_a_bare_equals_sign() -> None:
    objects = manifest_objects(CRD)
    assert [obj["metadata"]["name"] for obj in objects] == [
        "alertmanagerconfigs.monitoring.coreos.com",
        "settings",
    ]
    schema = objects[0]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert schema["properties"]["matchType"]["enum"] == ["!=", "=", "=~", "!~"]
    assert objects[1]["data"] == {"enabled": True, "at": "12:30"}


def test_load_manifest_skips_empty_and_non_map_documents() -> None:
    documents = goyaml.load_manifest(CRD, "the manifest of release ns/web")
    kinds = [doc["kind"] for doc in documents]
    assert kinds == ["CustomResourceDefinition", "ConfigMap", "ConfigMap"]
    assert goyaml.load_manifest("", "m") == []
    assert goyaml.load_manifest("---\n---\n# only comments\n", "m") == []


def test_manifest_errors_name_where_and_line() -> None:
    text = CRD + f"---\nkind: Secret\nstringData:\n  password: {SECRET}\n  bad: [\n"
    with pytest.raises(goyaml.GoYAMLError) as caught:
        manifest_objects(text, where="the manifest of release ns/web")
    message = str(caught.value)
    line = CRD.count("\n") + 6  # the end of the text, where the flow list is still open
    assert message.startswith(f"the manifest of release ns/web is not valid YAML at line {line},")
    assert SECRET not in message


# --- writing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("y", "bool"),
        ("Off", "bool"),
        ("~", "null"),
        ("", "null"),
        ("0o17", "int"),
        ("-0x1F", "int"),
        ("18446744073709551615", "int"),
        ("1e3", "float"),
        (".5", "float"),
        (".inf", "float"),
        ("08", "float"),
        ("<<", "merge"),
        ("=", "str"),
        ("12:30", "str"),
        ("1e400", "str"),
        ("yEs", "str"),
        ("2024-01-01", "timestamp"),
    ],
)
def test_resolve_plain(text: str, tag: str) -> None:
    assert goyaml.resolve_plain(text) == f"tag:yaml.org,2002:{tag}"


@settings(max_examples=300, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.text(),
        lambda children: (
            st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
        ),
        max_leaves=20,
    )
)
def test_go_dumper_output_reads_back_unchanged(value: Any) -> None:
    text = yaml.dump({"v": value}, Dumper=goyaml.GoDumper, allow_unicode=True)
    assert _same(goyaml.load_values(text, WHERE), {"v": value})


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from("0123456789+-._eExXoObB:yYnN~<= ")))
def test_scalar_text_never_breaks_the_loader(text: str) -> None:
    # Anything that looks like a number: some value, or a GoYAMLError, nothing else.
    with contextlib.suppress(goyaml.GoYAMLError):
        goyaml.load_values(f"k: {text}\n", WHERE)


# --- values_digest on values no loader produces -------------------------------------------------


def _chart() -> ChartReference:
    return ChartReference(repository=ChartRepository(url="https://c.example.com"), name="app")


def _deep(levels: int) -> dict[str, Any]:
    root: dict[str, Any] = {}
    node = root
    for _ in range(levels):
        node["a"] = {}
        node = node["a"]
    return root


def _circular() -> dict[str, Any]:
    values: dict[str, Any] = {"a": {}}
    values["a"]["self"] = values
    return values


@pytest.mark.parametrize(
    ("values", "problem"),
    [
        ({"a": {1: "x", "1": "y"}}, "values at 'a' have a key of type 'int'"),
        ({"a": [1, math.nan]}, r"values at 'a\[1\]' hold a non-finite number"),
        ({"a": {"b": math.inf}}, "values at 'a.b' hold a non-finite number"),
        ({"s": {1, 2}}, "values at 's' hold a 'set'"),
        ({"b": b"bytes"}, "values at 'b' hold a 'bytes'"),
        (_deep(100_000), "nested too deeply"),
        (_circular(), "values at 'a.self' contain themselves"),
    ],
)
def test_values_digest_raises_only_invalid_values_error(values: Any, problem: str) -> None:
    with pytest.raises(InvalidValuesError, match=problem) as caught:
        values_digest(_chart(), values)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize("case", ACCEPTED, ids=lambda case: case.id)
def test_every_loaded_document_has_a_digest(case: Case) -> None:
    assert values_digest(_chart(), goyaml.load_values(case.text, WHERE)).startswith("sha256:")


# --- valuesFrom ---------------------------------------------------------------------------------


async def _read(kind: str, text: str) -> dict[str, Any] | None:
    kube = FakeKube()
    if kind == "Secret":
        kube.add_secret("ns", "creds", {"values.yaml": base64.b64encode(text.encode()).decode()})
    else:
        kube.add_config_map("ns", "creds", {"values.yaml": text})
    reference = ValuesReference(kind=kind, name="creds")
    return await read_reference(kube, "ns", reference, "spec.valuesFrom[0]")


@pytest.mark.parametrize("kind", ["ConfigMap", "Secret"])
async def test_values_from_is_read_as_helm_reads_it(kind: str) -> None:
    text = f"day: 2024-01-01\nt: 12:30\nenabled: on\ndb: {{password: {SECRET}}}\n"
    assert await _read(kind, text) == {
        "day": "2024-01-01",
        "t": "12:30",
        "enabled": True,
        "db": {"password": SECRET},
    }


@pytest.mark.parametrize("case", REFUSED, ids=lambda case: case.id)
async def test_values_from_errors_name_the_field_never_the_content(case: Case) -> None:
    with pytest.raises(ValuesSourceError) as caught:
        await _read("Secret", case.text)
    message = str(caught.value)
    assert message.startswith(WHERE + " ")
    assert SECRET not in message


async def test_values_from_that_is_not_utf8() -> None:
    kube = FakeKube()
    kube.add_secret("ns", "creds", {"values.yaml": base64.b64encode(b"a: \xff").decode()})
    reference = ValuesReference(kind="Secret", name="creds")
    with pytest.raises(ValuesSourceError, match=r"key 'values\.yaml' is not UTF-8 text"):
        await read_reference(kube, "ns", reference, "spec.valuesFrom[0]")
