"""`kubectl explain` answers for the fields of both kinds: the API server publishes the CRDs'
descriptions in its OpenAPI, spec and status, nested fields included."""

from __future__ import annotations

from typing import Any

import pytest

from helmfile_operator.api.crd import custom_resource_definitions
from testbed_fixtures import Cluster, wait_until

SCHEMAS = {
    crd["spec"]["names"]["shortNames"][0]: crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for crd in custom_resource_definitions()
}

FIELDS = [
    "hfs.spec",
    "hfs.spec.interval",
    "hfs.spec.deletionPolicy",
    "hfs.spec.releases.helm.timeout",
    "hfs.spec.releases.valuesFrom.key",
    "hfs.spec.releases.driftDetection.ignore.target.name",
    "hfs.spec.repositories.caSecretRef",
    "hfs.status",
    "hfs.status.counts.pending",
    "hfs.status.releases.message",
    "hfs.status.conditions.lastTransitionTime",
    "hfr.spec.chart.repository.url",
    "hfr.spec.set.value",
    "hfr.spec.helm.retries",
    "hfr.status.inProgress.revisionBefore",
    "hfr.status.history.digest",
    "hfr.status.drift.objects.missing",
    "hfr.status.lastAttempted.durationSeconds",
]


def words(text: str) -> str:
    """Whitespace-insensitive: kubectl wraps descriptions to its width."""
    return " ".join(text.split())


def description(path: str) -> str:
    """The description the generated CRD gives the field at `path`."""
    short, *parts = path.split(".")
    node: dict[str, Any] = SCHEMAS[short]
    for part in parts:
        while "properties" not in node and "items" in node:  # a list's items explain as the list
            node = node["items"]
        node = node["properties"][part]
    text: str = node["description"]
    return text


def explain(cluster: Cluster, path: str) -> str:
    return cluster.run("kubectl", "explain", path, check=False).stdout


@pytest.mark.parametrize("path", FIELDS)
def test_kubectl_explain_shows_the_description(cluster: Cluster, crds: None, path: str) -> None:
    expected = words(description(path))
    assert expected
    # The API server republishes a CRD's OpenAPI shortly after the CRD changes.
    shown = wait_until(
        lambda: (out := explain(cluster, path)) and expected in words(out) and out,
        timeout=60,
        message=f"`kubectl explain {path}` to show {expected!r}",
    )
    assert f"FIELD: {path.rsplit('.', 1)[1]} <" in shown, shown


def test_explain_states_defaults_and_units(cluster: Cluster, crds: None) -> None:
    """The sentences `kubectl explain` is read for: the default, the unit, the format."""
    for path, phrase in [
        ("hfs.spec.interval", "a Go duration (`30s`, `10m`, `1h`). Default: `10m`."),
        ("hfs.spec.releases.helm.timeout", "Default: `300s`."),
        ("hfr.status.lastAttempted.durationSeconds", "in seconds"),
        ("hfr.status.history.time", "RFC 3339 UTC timestamp"),
    ]:
        wait_until(
            lambda path=path, phrase=phrase: phrase in words(explain(cluster, path)),
            timeout=60,
            message=f"`kubectl explain {path}` to say {phrase!r}",
        )
