"""`needs` as a DAG: topological groups for install order, reversed for deletion. No I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from helmfile_operator.render.errors import CycleError, UnknownNeedError, format_names

__all__ = ["build_groups", "reverse_groups"]


def build_groups(
    nodes: Sequence[str], edges: Mapping[str, Sequence[str]], *, field: str = "needs"
) -> list[list[str]]:
    """Topological layers: layer 0 holds the nodes that need nothing, each later layer the nodes
    whose needs are all in earlier layers (as early as possible). Every layer keeps the order of
    `nodes`, so the result is deterministic.

    `edges[node]` lists the nodes `node` needs; a missing key means no needs. `field` is the
    spec path reported by errors. Raises UnknownNeedError for a need that is not a node,
    CycleError (message `a -> b -> a`) for a cycle, ValueError for duplicate nodes or an edge
    key that is not a node.
    """
    order: dict[str, int] = {}
    for position, node in enumerate(nodes):
        if node in order:
            raise ValueError(f"node {node!r} is listed twice")
        order[node] = position

    needs: dict[str, list[str]] = {node: [] for node in nodes}
    for node, wanted in edges.items():
        if node not in order:
            raise ValueError(f"edges name {node!r}, which is not a node")
        for need in wanted:
            if need not in order:
                raise UnknownNeedError(
                    field,
                    f"{node!r} needs {need!r}, which does not exist; known: {format_names(nodes)}",
                )
            if need not in needs[node]:
                needs[node].append(need)

    dependents: dict[str, list[str]] = {node: [] for node in nodes}
    waiting: dict[str, int] = {}
    for node in nodes:
        waiting[node] = len(needs[node])
        for need in needs[node]:
            dependents[need].append(node)

    groups: list[list[str]] = []
    layer = [node for node in nodes if waiting[node] == 0]
    placed = 0
    while layer:
        groups.append(layer)
        placed += len(layer)
        ready: list[str] = []
        for node in layer:
            for dependent in dependents[node]:
                waiting[dependent] -= 1
                if waiting[dependent] == 0:
                    ready.append(dependent)
        layer = sorted(ready, key=order.__getitem__)

    if placed < len(nodes):
        cycle = _find_cycle([node for node in nodes if waiting[node] > 0], needs)
        raise CycleError(
            field,
            f"dependency cycle {' -> '.join(cycle)}: remove one of these needs",
            cycle=tuple(cycle),
        )
    return groups


def _find_cycle(remaining: list[str], needs: Mapping[str, Sequence[str]]) -> list[str]:
    """A cycle among nodes that could not be placed. Each of them needs at least one other
    unplaced node, so following the first such need from any of them must loop."""
    unplaced = set(remaining)
    seen: dict[str, int] = {}
    path: list[str] = []
    node = remaining[0]
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = next(need for need in needs[node] if need in unplaced)
    return [*path[seen[node] :], node]


def reverse_groups(groups: Sequence[Sequence[str]]) -> list[list[str]]:
    """Deletion order: the last install group first (dependents before what they need)."""
    return [list(group) for group in reversed(groups)]
