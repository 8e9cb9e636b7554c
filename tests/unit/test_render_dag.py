"""render/dag.py: topological groups, cycles, unknown needs."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helmfile_operator.render.dag import build_groups, reverse_groups
from helmfile_operator.render.errors import CycleError, RenderError, UnknownNeedError


def test_empty() -> None:
    assert build_groups([], {}) == []


def test_independent_nodes_form_one_group_in_node_order() -> None:
    assert build_groups(["c", "a", "b"], {}) == [["c", "a", "b"]]


def test_chain() -> None:
    assert build_groups(["c", "b", "a"], {"c": ["b"], "b": ["a"]}) == [["a"], ["b"], ["c"]]


def test_diamond_and_longest_path_layering() -> None:
    edges = {"b": ["a"], "c": ["a"], "d": ["b", "c"], "e": ["a", "d"]}
    assert build_groups(["e", "d", "c", "b", "a"], edges) == [["a"], ["c", "b"], ["d"], ["e"]]


def test_groups_follow_node_order_not_edge_order() -> None:
    edges = {"x": ["root"], "y": ["root"], "z": ["root"]}
    assert build_groups(["root", "z", "x", "y"], edges) == [["root"], ["z", "x", "y"]]


def test_missing_edge_key_and_repeated_needs() -> None:
    assert build_groups(["a", "b"], {"b": ["a", "a"]}) == [["a"], ["b"]]


def test_unknown_need() -> None:
    with pytest.raises(UnknownNeedError) as error:
        build_groups(["ns/a", "ns/b"], {"ns/a": ["ns/zz"]}, field="spec.releases")
    assert isinstance(error.value, RenderError)
    assert error.value.field == "spec.releases"
    message = str(error.value)
    assert message.startswith("spec.releases: ")
    assert "'ns/a' needs 'ns/zz'" in message
    assert "known: ns/a, ns/b" in message


def test_self_cycle() -> None:
    with pytest.raises(CycleError) as error:
        build_groups(["a"], {"a": ["a"]})
    assert error.value.cycle == ("a", "a")
    assert "a -> a" in str(error.value)


def test_cycle_names_the_path() -> None:
    edges = {"a": ["b"], "b": ["c"], "c": ["a"]}
    with pytest.raises(CycleError) as error:
        build_groups(["a", "b", "c"], edges, field="spec.releases")
    assert error.value.field == "spec.releases"
    assert error.value.cycle == ("a", "b", "c", "a")
    assert str(error.value) == (
        "spec.releases: dependency cycle a -> b -> c -> a: remove one of these needs"
    )


def test_cycle_behind_other_nodes_reports_only_the_cycle() -> None:
    edges = {"entry": ["x"], "x": ["y"], "y": ["z"], "z": ["x"], "free": []}
    with pytest.raises(CycleError) as error:
        build_groups(["free", "entry", "x", "y", "z"], edges)
    assert error.value.cycle == ("x", "y", "z", "x")


def test_programming_errors() -> None:
    with pytest.raises(ValueError, match="listed twice"):
        build_groups(["a", "a"], {})
    with pytest.raises(ValueError, match="not a node"):
        build_groups(["a"], {"b": []})


def test_reverse_groups() -> None:
    groups = [["a"], ["b", "c"], ["d"]]
    reversed_groups = reverse_groups(groups)
    assert reversed_groups == [["d"], ["b", "c"], ["a"]]
    reversed_groups[1].append("x")
    assert groups == [["a"], ["b", "c"], ["d"]]
    assert reverse_groups([]) == []


@st.composite
def dags(draw: st.DrawFn) -> tuple[list[str], dict[str, list[str]]]:
    """A random DAG: a node may only need nodes that come before it in a hidden rank, and the
    node list handed to build_groups is shuffled."""
    count = draw(st.integers(0, 12))
    ranked = [f"n{i}" for i in range(count)]
    edges = {
        node: draw(st.lists(st.sampled_from(ranked[:i]), max_size=4)) if i else []
        for i, node in enumerate(ranked)
    }
    nodes = draw(st.permutations(ranked))
    return list(nodes), edges


@settings(max_examples=100, deadline=None)
@given(dags())
def test_random_dags(dag: tuple[list[str], dict[str, list[str]]]) -> None:
    nodes, edges = dag
    groups = build_groups(nodes, edges)
    flat = [node for group in groups for node in group]
    assert sorted(flat) == sorted(nodes)  # every node exactly once
    assert len(flat) == len(set(flat))
    group_of = {node: k for k, group in enumerate(groups) for node in group}
    for node, needs in edges.items():
        for need in needs:
            assert group_of[node] > group_of[need]  # edges go from later to earlier groups
    for k, group in enumerate(groups):
        assert group, "no empty groups"
        assert group == sorted(group, key=nodes.index)  # deterministic order within a group
        for node in group:
            if k:  # as early as possible: something in the previous group is needed
                assert any(group_of[need] == k - 1 for need in edges[node])
            else:
                assert not edges[node]
    assert build_groups(nodes, edges) == groups
    assert reverse_groups(groups) == groups[::-1]


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 8).flatmap(
        lambda n: st.dictionaries(
            st.sampled_from([f"n{i}" for i in range(n)]),
            st.lists(st.sampled_from([f"n{i}" for i in range(n)]), max_size=3),
        ).map(lambda edges: ([f"n{i}" for i in range(n)], edges))
    )
)
def test_random_graphs_are_layered_or_report_a_real_cycle(
    graph: tuple[list[str], dict[str, list[str]]],
) -> None:
    nodes, edges = graph
    try:
        groups = build_groups(nodes, edges)
    except CycleError as error:
        cycle, message = error.cycle, str(error)
    else:
        cycle, message = (), ""
    if cycle:
        assert cycle[0] == cycle[-1]
        assert len(set(cycle[:-1])) == len(cycle) - 1
        for node, need in itertools.pairwise(cycle):
            assert need in edges.get(node, [])
        assert " -> ".join(cycle) in message
    else:
        group_of = {node: k for k, group in enumerate(groups) for node in group}
        assert sorted(group_of) == sorted(nodes)
        for node, needs in edges.items():
            for need in needs:
                assert group_of[node] > group_of[need]
