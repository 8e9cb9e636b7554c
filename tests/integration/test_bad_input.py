"""Bad input gets a clear error naming the field and the fix, and loses nothing installed."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from testbed_fixtures import (
    ChartRepo,
    Cluster,
    OperatorProcess,
    apply,
    condition,
    helm_releases,
    state_ready_at_generation,
    wait_for_condition,
    wait_until,
)


def _state(namespace: str, repo_url: str, releases: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": "guarded", "namespace": namespace},
        "spec": {
            "environments": {"default": {"values": [{"replicas": 1}]}},
            "repositories": [{"name": "test", "url": repo_url}],
            "helmDefaults": {"timeout": "30s", "retries": 0},
            "releases": releases,
        },
    }


def _good_releases() -> list[dict[str, Any]]:
    return [
        {"name": "a", "chart": "test/demo-app", "version": "0.1.0"},
        {
            "name": "b",
            "chart": "test/demo-app",
            "version": "0.1.0",
            "needs": ["a"],
            "valuesTemplate": ["replicaCount: {{ environment.values.replicas }}"],
        },
    ]


def _break(field: str, value: Any) -> list[dict[str, Any]]:
    releases = _good_releases()
    releases[1][field] = value
    return releases


RENDER_ERRORS = {
    "undefined-variable": (
        _break("valuesTemplate", ["replicaCount: {{ environment.values.replica }}"]),
        ["spec.releases[1].valuesTemplate[0]", "replica"],
    ),
    "template-syntax": (
        _break("valuesTemplate", ["replicaCount: {{ environment.values.replicas"]),
        ["spec.releases[1].valuesTemplate[0]"],
    ),
    "needs-cycle": (
        [{**_good_releases()[0], "needs": ["b"]}, _good_releases()[1]],
        ["cycle", "spec.releases"],
    ),
    "unknown-needs": (_break("needs", ["ghost"]), ["spec.releases[1].needs[0]", "ghost"]),
    "unknown-repository": (
        _break("chart", "nowhere/demo-app"),
        ["spec.releases[1].chart", "nowhere", "test"],
    ),
}


@pytest.fixture
def guarded(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> dict[str, Any]:
    """A Ready state with two installed releases, to be broken by the test."""
    state = _state(namespace, chart_repo.url, _good_releases())
    apply(cluster, state)
    wait_for_condition(cluster, "hfs/guarded", namespace, "Ready")
    return state


def _snapshot(cluster: Cluster, namespace: str) -> tuple[Any, Any]:
    revisions = {name: r["revision"] for name, r in helm_releases(cluster, namespace).items()}
    specs = {
        item["metadata"]["name"]: item["spec"]
        for item in cluster.kubectl_json("get", "hfr", "-n", namespace)["items"]
    }
    return revisions, specs


@pytest.mark.parametrize("case", sorted(RENDER_ERRORS))
def test_render_error_stalls_the_state_and_touches_nothing(
    cluster: Cluster, guarded: dict[str, Any], namespace: str, case: str
) -> None:
    before = _snapshot(cluster, namespace)
    releases, expected = RENDER_ERRORS[case]
    broken = copy.deepcopy(guarded)
    broken["spec"]["releases"] = releases
    apply(cluster, broken)

    def stalled() -> dict[str, Any] | None:
        body = cluster.kubectl_json("get", "hfs", "guarded", "-n", namespace)
        found = condition(body, "Stalled")
        generation_seen = body["status"].get("observedGeneration") == body["metadata"]["generation"]
        return found if found and generation_seen else None

    found = wait_until(stalled, timeout=60, message="the state to stall")
    for text in expected:
        assert text in found["message"]
    assert "nothing was changed" in found["message"]
    assert _snapshot(cluster, namespace) == before

    # The fix recovers by itself, and the operator kept serving (it converges the change).
    apply(cluster, guarded)
    wait_until(
        lambda: state_ready_at_generation(cluster, namespace, "guarded"),
        timeout=60,
        message="the state to recover",
    )
    assert _snapshot(cluster, namespace)[0] == before[0]


API_REJECTIONS = {
    "duplicate-release-names": (
        lambda releases: releases.append(dict(releases[0])),
        "Duplicate value",
    ),
    "values-not-a-map": (
        lambda releases: releases[0].update(values=["replicaCount=2"]),
        "spec.releases[0].values[0]",
    ),
    "release-name-too-long": (
        lambda releases: releases[0].update(name="r" * 54),
        "spec.releases[0].name",
    ),
}


@pytest.mark.parametrize("case", sorted(API_REJECTIONS))
def test_invalid_release_is_rejected_by_the_api_server(
    cluster: Cluster, chart_repo: ChartRepo, namespace: str, crds: None, case: str
) -> None:
    change, expected = API_REJECTIONS[case]
    releases = _good_releases()
    change(releases)
    result = cluster.run(
        "kubectl", "apply", "-f", "-",
        input=json.dumps(_state(namespace, chart_repo.url, releases)), check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert expected in result.stderr


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("interval",), "10 minutes", "spec.interval"),
        (("helmDefaults", "timeout"), "soon", "spec.helmDefaults.timeout"),
        (("environment",), "prdo", "spec.environment must name an entry of spec.environments"),
    ],
)
def test_invalid_field_is_rejected_by_the_api_server(
    cluster: Cluster,
    chart_repo: ChartRepo,
    namespace: str,
    crds: None,
    path: tuple[str, ...],
    value: str,
    expected: str,
) -> None:
    state = _state(namespace, chart_repo.url, _good_releases())
    target = state["spec"]
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    result = cluster.run("kubectl", "apply", "-f", "-", input=json.dumps(state), check=False)
    assert result.returncode != 0
    assert expected in result.stderr


RELEASE_ERRORS = {
    "chart-not-found": (
        {"chart": "test/no-such-chart"},
        "Stalled",
        ["no-such-chart", "not found"],
    ),
    "chart-version-not-found": ({"version": "9.9.9"}, "Stalled", ["9.9.9"]),
    "values-from-secret-missing": (
        {"valuesFrom": [{"kind": "Secret", "name": "missing"}]},
        "Ready",
        ["spec.valuesFrom[0]", "Secret", "missing", "optional: true"],
    ),
}


@pytest.mark.parametrize("case", sorted(RELEASE_ERRORS))
def test_release_error_names_the_cause_and_spares_the_others(
    cluster: Cluster, guarded: dict[str, Any], namespace: str, case: str
) -> None:
    before = _snapshot(cluster, namespace)[0]
    change, condition_type, expected = RELEASE_ERRORS[case]
    broken = copy.deepcopy(guarded)
    broken["spec"]["releases"].append({"name": "c", "chart": "test/demo-app", **change})
    apply(cluster, broken)

    def reported() -> dict[str, Any] | None:
        got = cluster.run("kubectl", "get", "hfr", "guarded-c", "-n", namespace, "-o", "json",
                          check=False)  # fmt: skip
        if got.returncode != 0:
            return None  # the state has not created it yet
        body = json.loads(got.stdout)
        found = condition(body, condition_type)
        wanted = "True" if condition_type == "Stalled" else "False"
        return found if found and found["status"] == wanted else None

    found = wait_until(reported, timeout=90, message=f"guarded-c {condition_type}")
    for text in expected:
        assert text in found["message"]
    assert "c" not in helm_releases(cluster, namespace)
    assert _snapshot(cluster, namespace)[0] == before
    state = cluster.kubectl_json("get", "hfs", "guarded", "-n", namespace)
    assert condition(state, "Ready")["status"] != "True"  # type: ignore[index]


def test_optional_values_from_is_skipped_when_missing(
    cluster: Cluster, guarded: dict[str, Any], namespace: str
) -> None:
    state = copy.deepcopy(guarded)
    state["spec"]["releases"].append(
        {
            "name": "c",
            "chart": "test/demo-app",
            "valuesFrom": [{"kind": "Secret", "name": "missing", "optional": True}],
        }
    )
    apply(cluster, state)
    wait_until(
        lambda: helm_releases(cluster, namespace).get("c", {}).get("status") == "deployed",
        timeout=90,
        message="release c to install without the optional Secret",
    )
