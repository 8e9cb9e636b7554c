"""render/values.py: merging, set paths, get_path, digests."""

from __future__ import annotations

import copy
import datetime
import hashlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helmfile_operator.api.models import ChartReference, ChartRepository, SetValue
from helmfile_operator.render.values import (
    MAX_LIST_INDEX,
    MAX_PATH_DEPTH,
    MAX_SET_LIST_ITEMS,
    PathLimitError,
    apply_set,
    check_set_growth,
    deep_merge,
    format_path,
    get_path,
    merge_all,
    parse_path,
    values_digest,
)

# --- deep_merge / merge_all ---------------------------------------------------------------------


def test_deep_merge_merges_maps_recursively() -> None:
    base = {"a": {"b": 1, "c": {"d": 2}}, "x": 1}
    override = {"a": {"c": {"e": 3}}, "y": 2}
    assert deep_merge(base, override) == {"a": {"b": 1, "c": {"d": 2, "e": 3}}, "x": 1, "y": 2}


def test_deep_merge_replaces_lists_and_scalars() -> None:
    base = {"list": [1, 2, 3], "scalar": "a", "map": {"k": 1}, "to_map": 5}
    override = {"list": [9], "scalar": {"now": "map"}, "map": "now scalar", "to_map": {"k": 2}}
    assert deep_merge(base, override) == override


def test_deep_merge_null_overrides() -> None:
    # Helm removes null keys when coalescing with chart defaults: the layer must keep the null.
    assert deep_merge({"a": {"b": 1}}, {"a": None}) == {"a": None}
    assert deep_merge({"a": {"b": 1}}, {"a": {"b": None}}) == {"a": {"b": None}}


def test_deep_merge_does_not_mutate_or_share() -> None:
    base = {"a": {"b": [1, {"c": 2}]}, "keep": {"x": 1}}
    override = {"a": {"d": {"e": [3]}}, "new": {"y": [1]}}
    base_before, override_before = copy.deepcopy(base), copy.deepcopy(override)
    result = deep_merge(base, override)
    assert base == base_before
    assert override == override_before
    result["a"]["b"][1]["c"] = "changed"
    result["a"]["d"]["e"].append(4)
    result["keep"]["x"] = 2
    result["new"]["y"].append(2)
    assert base == base_before
    assert override == override_before


def test_merge_all_applies_layers_in_order() -> None:
    layers: list[dict[str, Any]] = [
        {"a": 1, "m": {"x": 1}},
        {"a": 2, "m": {"y": 2}},
        {"m": {"x": 3}},
    ]
    assert merge_all(layers) == {"a": 2, "m": {"x": 3, "y": 2}}
    assert merge_all([]) == {}
    assert merge_all(iter(layers)) == merge_all(layers)


def test_merge_all_does_not_share_with_first_layer() -> None:
    first = {"m": {"x": [1]}}
    result = merge_all([first])
    result["m"]["x"].append(2)
    assert first == {"m": {"x": [1]}}


def test_deep_merge_is_not_associative_when_shapes_disagree() -> None:
    # Documented Helm semantics: a scalar in the middle layer cuts the map of the first.
    a, b, c = {"x": {"y": 1}}, {"x": 2}, {"x": {"z": 3}}
    assert deep_merge(deep_merge(a, b), c) == {"x": {"z": 3}}
    assert deep_merge(a, deep_merge(b, c)) == {"x": {"y": 1, "z": 3}}


_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.text(max_size=3),
    st.lists(st.integers(0, 3), max_size=3),
)


def _trees(depth: int) -> st.SearchStrategy[dict[str, Any]]:
    """Nested dicts where a key is always a map ("m", "n") or never one ("a", "b", "c")."""
    optional: dict[str, st.SearchStrategy[Any]] = {key: _LEAVES for key in "abc"}
    if depth > 0:
        optional.update({key: _trees(depth - 1) for key in "mn"})
    return st.fixed_dictionaries({}, optional=optional)


TREES = _trees(3)


@settings(max_examples=80, deadline=None)
@given(TREES, TREES, TREES)
def test_deep_merge_is_associative(a: dict[str, Any], b: dict[str, Any], c: dict[str, Any]) -> None:
    assert deep_merge(deep_merge(a, b), c) == deep_merge(a, deep_merge(b, c))
    assert merge_all([a, b, c]) == deep_merge(deep_merge(a, b), c)


@settings(max_examples=50, deadline=None)
@given(TREES)
def test_deep_merge_identity_and_idempotence(a: dict[str, Any]) -> None:
    assert deep_merge({}, a) == a
    assert deep_merge(a, {}) == a
    assert deep_merge(a, a) == a


# --- parse_path / format_path -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("a", ["a"]),
        ("a.b.c", ["a", "b", "c"]),
        ("a\\.b.c", ["a.b", "c"]),
        (
            "annotations.kubernetes\\.io/ingress\\.class",
            ["annotations", "kubernetes.io/ingress.class"],
        ),
        ("list[0]", ["list", 0]),
        ("list[10].name", ["list", 10, "name"]),
        ("matrix[1][2]", ["matrix", 1, 2]),
        ("a\\\\b", ["a\\b"]),
        ("a\\[0\\]", ["a[0]"]),
        ("with space.x-y_z", ["with space", "x-y_z"]),
    ],
)
def test_parse_path(path: str, parts: list[str | int]) -> None:
    assert parse_path(path) == parts


@pytest.mark.parametrize(
    ("path", "problem"),
    [
        ("", "empty"),
        (".a", "key is empty"),
        ("a.", "ends with a dot"),
        ("a..b", "key is empty"),
        ("a\\", "trailing backslash"),
        ("a[", "not closed"),
        ("a[x]", "non-negative integer"),
        ("a[-1]", "non-negative integer"),
        ("a[]", "non-negative integer"),
        ("[0]", "key is empty"),
        ("a]", "unexpected"),
        ("a[0]b", "unexpected"),
    ],
)
def test_parse_path_rejects(path: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem) as error:
        parse_path(path)
    assert repr(path) in str(error.value)
    assert "`a.b.c`" in str(error.value)  # says how to write a path


_KEYS = st.text(alphabet="ab.[]\\ 0", min_size=1, max_size=4)
_PARTS = st.lists(st.one_of(_KEYS, st.integers(0, 20)), min_size=1, max_size=5).filter(
    lambda parts: isinstance(parts[0], str)
)


@settings(max_examples=80, deadline=None)
@given(_PARTS)
def test_format_path_round_trips(parts: list[str | int]) -> None:
    assert parse_path(format_path(parts)) == parts


# --- apply_set ----------------------------------------------------------------------------------


def _sets(**pairs: Any) -> list[SetValue]:
    return [SetValue(name=name.replace("__", "."), value=value) for name, value in pairs.items()]


def test_apply_set_creates_maps_and_keeps_siblings() -> None:
    values = {"a": {"keep": 1}}
    result = apply_set(values, [SetValue(name="a.b.c", value=3), SetValue(name="x", value="s")])
    assert result == {"a": {"keep": 1, "b": {"c": 3}}, "x": "s"}


def test_apply_set_escaped_dot_is_part_of_the_key() -> None:
    result = apply_set({}, [SetValue(name="annotations.example\\.com/x", value="v")])
    assert result == {"annotations": {"example.com/x": "v"}}


def test_apply_set_list_indexes_extend_with_none() -> None:
    result = apply_set({"list": ["a"]}, [SetValue(name="list[2]", value="c")])
    assert result == {"list": ["a", None, "c"]}
    result = apply_set({}, [SetValue(name="items[1].name", value="n")])
    assert result == {"items": [None, {"name": "n"}]}
    result = apply_set({}, [SetValue(name="m[1][0]", value=1)])
    assert result == {"m": [None, [1]]}
    result = apply_set({"items": [{"a": 1}]}, [SetValue(name="items[0].b", value=2)])
    assert result == {"items": [{"a": 1, "b": 2}]}


def test_apply_set_replaces_scalars_on_the_path() -> None:
    result = apply_set(
        {"a": 5, "l": "text"}, [SetValue(name="a.b", value=1), SetValue(name="l[0]", value=1)]
    )
    assert result == {"a": {"b": 1}, "l": [1]}


def test_apply_set_later_entries_win_and_values_stay_typed() -> None:
    sets = [
        SetValue(name="a", value=1),
        SetValue(name="a", value={"m": [1, 2]}),
        SetValue(name="s", value="true"),
    ]
    assert apply_set({}, sets) == {"a": {"m": [1, 2]}, "s": "true"}


def test_apply_set_does_not_mutate_or_share() -> None:
    values = {"a": {"b": [1]}}
    entry = SetValue(name="c", value={"d": [1]})
    result = apply_set(values, [entry, SetValue(name="a.b[1]", value=2)])
    assert values == {"a": {"b": [1]}}
    result["c"]["d"].append(2)
    assert entry.value == {"d": [1]}


def test_apply_set_invalid_path_names_the_entry() -> None:
    with pytest.raises(ValueError, match=r"set\[1\]: invalid path 'a\.\.b'"):
        apply_set({}, [SetValue(name="ok", value=1), SetValue(name="a..b", value=2)])


@pytest.mark.parametrize(
    ("path", "limit"),
    [
        (f"a[{MAX_LIST_INDEX + 1}]", str(MAX_LIST_INDEX)),
        ("k[99999999]", str(MAX_LIST_INDEX)),
        ("k[" + "9" * 100_000 + "]", str(MAX_LIST_INDEX)),  # not int() of 100,000 digits
        (".".join(["k"] * (MAX_PATH_DEPTH + 1)), str(MAX_PATH_DEPTH)),
        ("k" + "[0]" * MAX_PATH_DEPTH, str(MAX_PATH_DEPTH)),
    ],
)
def test_parse_path_limits(path: str, limit: str) -> None:
    with pytest.raises(PathLimitError) as error:
        parse_path(path)
    assert isinstance(error.value, ValueError)  # what callers of parse_path already catch
    assert limit in str(error.value)
    assert len(str(error.value)) < 600  # a long path is not quoted in full


def test_parse_path_at_the_limits() -> None:
    assert parse_path(f"a[{MAX_LIST_INDEX}]") == ["a", MAX_LIST_INDEX]
    assert parse_path(".".join(["k"] * MAX_PATH_DEPTH)) == ["k"] * MAX_PATH_DEPTH


def test_set_entries_add_a_bounded_number_of_list_items() -> None:
    # Each entry alone is within the limits; together they would add 11 x 10,001 nulls.
    sets = [SetValue(name=f"k{i}[{MAX_LIST_INDEX}]", value=1) for i in range(11)]
    assert MAX_LIST_INDEX * 11 > MAX_SET_LIST_ITEMS
    with pytest.raises(PathLimitError, match=rf"set\[9\]: .*{MAX_SET_LIST_ITEMS}") as error:
        apply_set({}, sets)
    assert error.value.entry == 9
    with pytest.raises(PathLimitError) as checked:
        check_set_growth(sets)
    assert checked.value.entry == 9
    check_set_growth(sets[:9])  # within the limit
    # Growth is what the paths add: an existing list needs none.
    assert apply_set({"k0": [0] * (MAX_LIST_INDEX + 1)}, sets[:1])["k0"][-1] == 1


# --- get_path -----------------------------------------------------------------------------------


def test_get_path() -> None:
    values = {"a": {"b": {"c": True}}, "l": [{"x": 1}], "dotted.key": {"v": 0}, "n": None}
    assert get_path(values, "a.b.c") is True
    assert get_path(values, "a.b") == {"c": True}
    assert get_path(values, "l[0].x") == 1
    assert get_path(values, "dotted\\.key.v") == 0
    assert get_path(values, "n") is None


@pytest.mark.parametrize("path", ["missing", "a.missing", "a.b.c.d", "l[1]", "l.x", "a[0]", "n.x"])
def test_get_path_missing_raises_key_error(path: str) -> None:
    values = {"a": {"b": {"c": True}}, "l": [{"x": 1}], "n": None}
    with pytest.raises(KeyError):
        get_path(values, path)


def test_get_path_invalid_raises_value_error() -> None:
    with pytest.raises(ValueError, match="invalid path"):
        get_path({}, "a..b")


# --- values_digest ------------------------------------------------------------------------------


def _chart(
    url: str = "https://charts.example.com", name: str = "app", version: str | None = "1.0.0"
) -> ChartReference:
    return ChartReference(repository=ChartRepository(url=url), name=name, version=version)


def test_values_digest_is_sha256_of_canonical_json() -> None:
    values = {"b": [1, {"y": 2, "x": 1}], "a": "é"}
    digest = values_digest(_chart(), values)
    canonical = json.dumps(
        {
            "repository": "https://charts.example.com",
            "chart": "app",
            "version": "1.0.0",
            "values": values,
        },
        sort_keys=True,
        separators=(",", ":"),
    )
    assert digest == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert len(digest) == len("sha256:") + 64


def test_values_digest_ignores_key_order_but_not_content() -> None:
    base = values_digest(_chart(), {"a": 1, "b": {"c": 2, "d": 3}})
    assert values_digest(_chart(), {"b": {"d": 3, "c": 2}, "a": 1}) == base
    assert values_digest(_chart(), {"a": 1, "b": {"c": 2, "d": 4}}) != base
    assert values_digest(_chart(version="1.0.1"), {"a": 1, "b": {"c": 2, "d": 3}}) != base
    assert values_digest(_chart(version=None), {"a": 1, "b": {"c": 2, "d": 3}}) != base
    assert values_digest(_chart(name="other"), {"a": 1, "b": {"c": 2, "d": 3}}) != base
    assert (
        values_digest(_chart(url="oci://r.example.com/c"), {"a": 1, "b": {"c": 2, "d": 3}}) != base
    )


def test_values_digest_accepts_yaml_dates() -> None:
    digest = values_digest(_chart(), {"d": datetime.date(2024, 1, 1)})
    assert digest == values_digest(_chart(), {"d": "2024-01-01"})
    with pytest.raises(TypeError):
        values_digest(_chart(), {"s": {1, 2}})
