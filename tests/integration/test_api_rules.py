"""CEL rules of the CRDs on the whole object: the API server itself refuses a HelmfileState name
too long for a label value and a HelmfileRelease that needs itself (no operator involved)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from testbed_fixtures import Cluster

STATE_NAME_MESSAGE = (
    "metadata.name: at most 63 characters, because it is used as the value of the label "
    "helmfile.dev/state on every HelmfileRelease; choose a shorter name"
)
SELF_NEEDS_MESSAGE = (
    "spec.needs must not contain the HelmfileRelease's own name (metadata.name): a release "
    "cannot wait for itself; remove that entry"
)


def _state(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"releases": [{"name": "a", "chart": "oci://registry.invalid/charts/demo-app"}]},
    }


def _release(namespace: str, name: str, needs: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileRelease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "releaseName": "demo",
            "targetNamespace": namespace,
            "chart": {"repository": {"url": "oci://registry.invalid/charts"}, "name": "demo-app"},
            "needs": needs,
            "suspend": True,  # never acted on, should an operator watch this control plane
        },
    }


def _apply(cluster: Cluster, manifest: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    return cluster.run("kubectl", "apply", "-f", "-", input=json.dumps(manifest), check=False)


def _names(cluster: Cluster, resource: str, namespace: str) -> list[str]:
    items = cluster.kubectl_json("get", resource, "-n", namespace)["items"]
    return [item["metadata"]["name"] for item in items]


def test_state_name_longer_than_a_label_value_is_rejected(
    cluster: Cluster, namespace: str, crds: None
) -> None:
    result = _apply(cluster, _state(namespace, "s" * 64))
    assert result.returncode != 0
    assert f"metadata.name: Invalid value: {STATE_NAME_MESSAGE}" in result.stderr
    assert _names(cluster, "hfs", namespace) == []


def test_state_name_of_63_characters_is_accepted(
    cluster: Cluster, namespace: str, crds: None
) -> None:
    name = "s" * 63
    result = _apply(cluster, _state(namespace, name))
    assert result.returncode == 0, result.stderr
    assert _names(cluster, "hfs", namespace) == [name]


@pytest.mark.parametrize("needs", [["loop"], ["other", "loop"]], ids=["alone", "among-others"])
def test_release_that_needs_itself_is_rejected(
    cluster: Cluster, namespace: str, crds: None, needs: list[str]
) -> None:
    result = _apply(cluster, _release(namespace, "loop", needs))
    assert result.returncode != 0
    assert f"spec.needs: Invalid value: {SELF_NEEDS_MESSAGE}" in result.stderr
    assert _names(cluster, "hfr", namespace) == []


def test_release_cannot_be_changed_to_need_itself(
    cluster: Cluster, namespace: str, crds: None
) -> None:
    """The rule holds on updates too; needing another release stays allowed."""
    accepted = _apply(cluster, _release(namespace, "loop", ["other"]))
    assert accepted.returncode == 0, accepted.stderr
    result = _apply(cluster, _release(namespace, "loop", ["other", "loop"]))
    assert result.returncode != 0
    assert SELF_NEEDS_MESSAGE in result.stderr
    stored = cluster.kubectl_json("get", "hfr", "loop", "-n", namespace)
    assert stored["spec"]["needs"] == ["other"]
