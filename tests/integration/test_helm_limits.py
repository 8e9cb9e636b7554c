"""The API server itself enforces the bounds that keep helm on its rails (no operator involved):
helm timeouts of at most 24h (a CEL rule with `duration()`, wherever helm options appear), chart
names that cannot name a path, service account names that are names."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from helmfile_operator.api.models import MAX_HELM_TIMEOUT_MESSAGE
from testbed_fixtures import Cluster


def _release(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileRelease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "releaseName": "demo",
            "targetNamespace": namespace,
            "chart": {"repository": {"url": "oci://registry.invalid/charts"}, "name": "demo-app"},
            "suspend": True,  # never acted on, should an operator watch this control plane
            **spec,
        },
    }


def _state(namespace: str, name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "suspend": True,
            "releases": [{"name": "a", "chart": "oci://registry.invalid/charts/demo-app"}],
            **spec,
        },
    }


def _apply(cluster: Cluster, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cluster.run("kubectl", "apply", "-f", "-", input=json.dumps(manifest), check=False)


def _names(cluster: Cluster, resource: str, namespace: str) -> list[str]:
    items = cluster.kubectl_json("get", resource, "-n", namespace)["items"]
    return sorted(item["metadata"]["name"] for item in items)


@pytest.mark.parametrize("timeout", ["25h", "24h0m1s", "90000s"])
def test_release_timeout_over_a_day_is_rejected(
    cluster: Cluster, namespace: str, crds: None, timeout: str
) -> None:
    result = _apply(cluster, _release(namespace, "slow", helm={"timeout": timeout}))
    assert result.returncode != 0
    assert "spec.helm.timeout: Invalid value" in result.stderr
    assert MAX_HELM_TIMEOUT_MESSAGE in result.stderr
    assert _names(cluster, "hfr", namespace) == []


@pytest.mark.parametrize("timeout", ["24h", "1440m", "5m30s", "1.5h"])
def test_release_timeout_up_to_a_day_is_accepted(
    cluster: Cluster, namespace: str, crds: None, timeout: str
) -> None:
    result = _apply(cluster, _release(namespace, "ok", helm={"timeout": timeout}))
    assert result.returncode == 0, result.stderr
    assert _names(cluster, "hfr", namespace) == ["ok"]


def test_state_timeouts_are_bounded_in_defaults_and_in_releases(
    cluster: Cluster, namespace: str, crds: None
) -> None:
    result = _apply(cluster, _state(namespace, "defaults", helmDefaults={"timeout": "48h"}))
    assert result.returncode != 0
    assert "spec.helmDefaults.timeout: Invalid value" in result.stderr
    assert MAX_HELM_TIMEOUT_MESSAGE in result.stderr

    release = {"name": "a", "chart": "oci://r.invalid/c/a", "helm": {"timeout": "30h"}}
    result = _apply(cluster, _state(namespace, "per-release", releases=[release]))
    assert result.returncode != 0
    assert "spec.releases[0].helm.timeout: Invalid value" in result.stderr
    assert MAX_HELM_TIMEOUT_MESSAGE in result.stderr
    assert _names(cluster, "hfs", namespace) == []

    release["helm"] = {"timeout": "24h"}
    result = _apply(
        cluster, _state(namespace, "ok", helmDefaults={"timeout": "10m"}, releases=[release])
    )
    assert result.returncode == 0, result.stderr
    # Unset (and null) timeouts are not evaluated.
    result = _apply(cluster, _state(namespace, "unset", helmDefaults={"wait": True}))
    assert result.returncode == 0, result.stderr
    assert _names(cluster, "hfs", namespace) == ["ok", "unset"]


@pytest.mark.parametrize("name", ["../etc", "/etc/passwd", "file://x", "a/b", ".hidden"])
def test_chart_names_that_could_be_paths_are_rejected(
    cluster: Cluster, namespace: str, crds: None, name: str
) -> None:
    chart = {"repository": {"url": "https://charts.example.com"}, "name": name}
    result = _apply(cluster, _release(namespace, "path", chart=chart))
    assert result.returncode != 0
    assert "spec.chart.name" in result.stderr
    assert _names(cluster, "hfr", namespace) == []


@pytest.mark.parametrize("name", ["Deployer", "de_ployer", "x" * 254])
def test_service_account_names_must_be_names(
    cluster: Cluster, namespace: str, crds: None, name: str
) -> None:
    result = _apply(cluster, _release(namespace, "sa", serviceAccountName=name))
    assert result.returncode != 0
    assert "spec.serviceAccountName" in result.stderr
    result = _apply(cluster, _state(namespace, "sa", serviceAccountName=name))
    assert result.returncode != 0
    assert "spec.serviceAccountName" in result.stderr
    assert _names(cluster, "hfr", namespace) == _names(cluster, "hfs", namespace) == []


def test_a_dotted_service_account_name_is_accepted(
    cluster: Cluster, namespace: str, crds: None
) -> None:
    result = _apply(cluster, _release(namespace, "sa", serviceAccountName="ci.deployer"))
    assert result.returncode == 0, result.stderr
