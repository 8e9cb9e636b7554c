"""Charts from a real OCI registry (distribution, TLS from the test bed's CA, basic auth): install,
upgrade and version ranges over its tags; refused credentials and an unreachable registry."""

from __future__ import annotations

import functools
import json
import time
import uuid
from pathlib import Path
from typing import Any

from testbed_fixtures import (
    REPO_ROOT,
    Cluster,
    OciRegistry,
    OperatorProcess,
    apply,
    condition,
    demo_app_as,
    helm_releases,
    wait_for_condition,
    wait_until,
)

DEMO_APP = REPO_ROOT / "tests" / "charts" / "demo-app"


def push_version(registry: OciRegistry, name: str, version: str, tmp: Path) -> None:
    registry.push(demo_app_as(name, version, tmp))


def secrets(namespace: str, registry: OciRegistry, password: str) -> list[dict[str, Any]]:
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "registry-credentials", "namespace": namespace},
            "stringData": {"username": registry.username, "password": password},
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "registry-ca", "namespace": namespace},
            "stringData": {"ca.crt": registry.ca_pem},
        },
    ]


def state(namespace: str, registry: OciRegistry, releases: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": "oci", "namespace": namespace},
        "spec": {
            "interval": "5s",
            "repositories": [
                {
                    "name": "registry",
                    "url": registry.url,
                    "secretRef": "registry-credentials",
                    "caSecretRef": "registry-ca",
                }
            ],
            "helmDefaults": {"timeout": "60s", "retries": 0},
            "releases": releases,
        },
    }


def release(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = cluster.kubectl_json("get", "hfr", f"oci-{name}", "-n", namespace)
    return body


def assert_never_shown(
    cluster: Cluster, operator: OperatorProcess, namespace: str, *passwords: str
) -> None:
    for text in (
        cluster.run("kubectl", "get", "hfs,hfr", "-n", namespace, "-o", "json").stdout,
        cluster.run("kubectl", "get", "events", "-n", namespace, "-o", "json").stdout,
        operator.log(),  # includes every helm command line the operator ran
    ):
        for password in passwords:
            assert password not in text


def test_install_upgrade_and_a_range_over_oci_tags(
    cluster: Cluster,
    oci_registry: OciRegistry,
    operator: OperatorProcess,
    namespace: str,
    tmp_path: Path,
) -> None:
    chart = f"oci-app-{uuid.uuid4().hex[:8]}"
    push_version(oci_registry, chart, "0.1.0", tmp_path)
    for body in secrets(namespace, oci_registry, oci_registry.password):
        apply(cluster, body)
    releases = [{"name": "app", "chart": f"registry/{chart}", "version": "0.1.x"}]
    apply(cluster, state(namespace, oci_registry, releases))
    wait_for_condition(cluster, "hfs/oci", namespace, "Ready")
    assert release(cluster, namespace, "app")["status"]["chartVersion"] == "0.1.0"

    # A new tag inside the range: followed within an interval.
    push_version(oci_registry, chart, "0.1.1", tmp_path)
    wait_until(
        lambda: release(cluster, namespace, "app")["status"].get("chartVersion") == "0.1.1",
        timeout=60,
        message="the release to follow 0.1.x to the tag 0.1.1",
    )
    # An exact version: an upgrade like any spec change.
    push_version(oci_registry, chart, "0.2.0", tmp_path)
    releases[0]["version"] = "0.2.0"
    apply(cluster, state(namespace, oci_registry, releases))
    wait_until(
        lambda: release(cluster, namespace, "app")["status"].get("chartVersion") == "0.2.0",
        message="the upgrade to 0.2.0",
    )
    wait_for_condition(cluster, "hfs/oci", namespace, "Ready")
    deployed = helm_releases(cluster, namespace)["app"]
    assert (deployed["chart"], deployed["revision"]) == (f"{chart}-0.2.0", "3")
    assert_never_shown(cluster, operator, namespace, oci_registry.password)


def test_a_wrong_registry_password_names_the_registry_and_shows_nothing(
    cluster: Cluster,
    oci_registry: OciRegistry,
    operator: OperatorProcess,
    namespace: str,
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    for body in secrets(namespace, oci_registry, wrong):
        apply(cluster, body)
    releases = [
        {"name": "exact", "chart": "registry/demo-app", "version": "0.1.0"},  # helm's error
        {"name": "ranged", "chart": "registry/demo-app", "version": "0.1.x"},  # the resolver's
    ]
    apply(cluster, state(namespace, oci_registry, releases))
    wait_for_condition(cluster, "hfs/oci", namespace, "Stalled")
    for name in ("exact", "ranged"):
        wait_until(
            lambda n=name: condition(release(cluster, namespace, n), "Stalled"),  # type: ignore[misc]
            message=f"{name} to be Stalled",
        )
        stalled = condition(release(cluster, namespace, name), "Stalled")
        assert stalled is not None
        assert "RepositoryAuthFailed" in stalled["message"], stalled
        assert oci_registry.host in stalled["message"], stalled
    assert helm_releases(cluster, namespace) == {}
    assert_never_shown(cluster, operator, namespace, wrong, oci_registry.password)


def test_an_unreachable_registry_is_retried_not_stalled(
    cluster: Cluster,
    private_oci_registry: OciRegistry,
    operator: OperatorProcess,
    namespace: str,
) -> None:
    registry = private_oci_registry
    registry.push(DEMO_APP)
    for body in secrets(namespace, registry, registry.password):
        apply(cluster, body)
    registry.stop()
    releases = [
        {"name": "exact", "chart": "registry/demo-app", "version": "0.1.0"},
        {"name": "ranged", "chart": "registry/demo-app", "version": "0.1.x"},
    ]
    apply(cluster, state(namespace, registry, releases))

    def unreachable(name: str) -> dict[str, Any] | None:
        got = cluster.run("kubectl", "get", "hfr", f"oci-{name}", "-n", namespace, "-o", "json",
                          check=False)  # fmt: skip
        if got.returncode != 0:
            return None
        ready = condition(json.loads(got.stdout), "Ready")
        return ready if ready and "RepositoryUnreachable" in ready["message"] else None

    for name in ("exact", "ranged"):
        found = wait_until(functools.partial(unreachable, name), message=f"{name}: unreachable")
        assert "retrying in" in found["message"], found
    time.sleep(12)  # several retries (the test operator's backoff is capped at 10s)
    for name in ("exact", "ranged"):
        assert condition(release(cluster, namespace, name), "Stalled") is None
        assert release(cluster, namespace, name)["status"]["failures"] >= 2

    registry.start()
    wait_for_condition(cluster, "hfs/oci", namespace, "Ready", timeout=120)
    assert set(helm_releases(cluster, namespace)) == {"exact", "ranged"}
