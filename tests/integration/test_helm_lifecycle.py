"""Helm lifecycle parity: versions that follow their range, the CRD policy, helm test.

Charts are published into the session's chart repository while the tests run, as a chart
maintainer would publish them; the operator finds them on its next interval.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from helmfile_operator.sources.versions import select_version
from testbed_fixtures import (
    ChartRepo,
    Cluster,
    OperatorProcess,
    apply,
    condition,
    demo_app_as,
    helm_history,
    helm_releases,
    wait_for_condition,
    wait_until,
)

CRD_NAME = "widgets.lifecycle.test.helmfile.dev"


def publish(cluster: Cluster, repo: ChartRepo, name: str, version: str, tmp: Path) -> None:
    """Package demo-app as `name` `version` into the repository and index it again."""
    source = demo_app_as(name, version, tmp)
    cluster.run("helm", "package", str(source), "--destination", str(repo.directory))
    cluster.run("helm", "repo", "index", str(repo.directory), "--url", repo.url)


def state(namespace: str, url: str, releases: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": "lifecycle", "namespace": namespace},
        "spec": {
            "repositories": [{"name": "local", "url": url}],
            "helmDefaults": {"timeout": "60s"},
            "releases": releases,
            **spec,
        },
    }


def release_body(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = cluster.kubectl_json("get", "hfr", f"lifecycle-{name}", "-n", namespace)
    return body


def _exists(cluster: Cluster, namespace: str, name: str) -> bool:
    got = cluster.run("kubectl", "get", "hfr", name, "-n", namespace, check=False)
    return got.returncode == 0


def test_a_version_range_follows_what_the_repository_publishes(
    cluster: Cluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    namespace: str,
    tmp_path: Path,
) -> None:
    chart = f"range-{uuid.uuid4().hex[:8]}"
    publish(cluster, chart_repo, chart, "1.0.0", tmp_path)
    releases = [{"name": "app", "chart": f"local/{chart}", "version": "1.0.x"}]
    apply(cluster, state(namespace, chart_repo.url, releases, interval="5s"))
    wait_for_condition(cluster, "hfs/lifecycle", namespace, "Ready")
    status = release_body(cluster, namespace, "app")["status"]
    assert (status["chartVersion"], status["chartVersionRange"]) == ("1.0.0", "1.0.x")
    assert status["resolvedChartVersion"] == "1.0.0"

    # A patch inside the range: upgraded within an interval (and the cache's age).
    publish(cluster, chart_repo, chart, "1.0.1", tmp_path)
    wait_until(
        lambda: release_body(cluster, namespace, "app")["status"].get("chartVersion") == "1.0.1",
        timeout=60,
        message="the release to follow 1.0.x to 1.0.1",
    )
    assert helm_releases(cluster, namespace)["app"]["chart"] == f"{chart}-1.0.1"
    revisions = len(helm_history(cluster, namespace, "app"))

    # A minor outside it: never installed, however many intervals pass.
    publish(cluster, chart_repo, chart, "1.1.0", tmp_path)
    time.sleep(3 * 5 + 2)  # three intervals: three passes that resolve the range again
    status = release_body(cluster, namespace, "app")["status"]
    assert status["chartVersion"] == "1.0.1"
    assert status["resolvedChartVersion"] == "1.0.1"
    assert len(helm_history(cluster, namespace, "app")) == revisions


PARITY_VERSIONS = ["0.9.0", "1.0.0", "1.0.1", "1.0.10", "1.1.0", "1.2.0-rc.1", "2.0.0"]
PARITY_RANGES = [
    "1.0.x",
    "1.x",
    "^1.0.0",
    "~1.0.0",
    ">=1.0.0, <1.1.0",
    ">=1.0.0 <1.1.0",
    "1.0.0 - 1.0.5",
    "<1.0.0 || >=2.0.0",
    "*",
    ">0.9.0 <1.0.1",
    "~1",
    "1.0.1",
]


def test_ranges_resolve_to_the_version_helm_picks(
    cluster: Cluster, chart_repo: ChartRepo, tmp_path: Path
) -> None:
    """Parity with helm itself: for each range, the version `helm show chart --version RANGE`
    fetches is the one the operator resolves."""
    chart = f"parity-{uuid.uuid4().hex[:8]}"
    for version in PARITY_VERSIONS:
        publish(cluster, chart_repo, chart, version, tmp_path)
    mismatches = []
    for constraint in PARITY_RANGES:
        shown = cluster.run(
            "helm", "show", "chart", chart, "--repo", chart_repo.url, "--version", constraint
        ).stdout
        helm_picked = next(
            line.split(":", 1)[1].strip()
            for line in shown.splitlines()
            if line.startswith("version:")
        )
        ours = select_version(constraint, PARITY_VERSIONS)
        if ours != helm_picked:
            mismatches.append((constraint, helm_picked, ours))
    assert mismatches == []


@pytest.fixture
def no_lifecycle_crd(cluster: Cluster) -> Any:
    cluster.run("kubectl", "delete", "crd", CRD_NAME, "--ignore-not-found")
    yield
    cluster.run("kubectl", "delete", "crd", CRD_NAME, "--ignore-not-found")


def _crd_spec_properties(cluster: Cluster) -> set[str]:
    crd = cluster.kubectl_json("get", "crd", CRD_NAME)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return set(schema["properties"]["spec"]["properties"])


def test_crds_are_skipped_or_replaced_on_upgrade_as_the_policy_says(
    cluster: Cluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    namespace: str,
    no_lifecycle_crd: None,
) -> None:
    def releases(version: str) -> list[dict[str, Any]]:
        return [
            {"name": "skip", "chart": "local/crd-lifecycle", "version": version},
            {
                "name": "replace",
                "chart": "local/crd-lifecycle",
                "version": version,
                "needs": ["skip"],
                "helm": {"crds": {"upgrade": "CreateReplace"}},
            },
        ]

    apply(cluster, state(namespace, chart_repo.url, releases("1.0.0")))
    wait_for_condition(cluster, "hfs/lifecycle", namespace, "Ready")
    assert "color" not in _crd_spec_properties(cluster)

    # v2 for the Skip release only: helm's behaviour, the CRD keeps its v1 schema.
    upgraded = releases("1.0.0")
    upgraded[0]["version"] = "2.0.0"
    apply(cluster, state(namespace, chart_repo.url, upgraded))
    wait_until(
        lambda: release_body(cluster, namespace, "skip")["status"].get("chartVersion") == "2.0.0",
        message="the Skip release to be upgraded",
    )
    wait_for_condition(cluster, "hfs/lifecycle", namespace, "Ready")
    assert "color" not in _crd_spec_properties(cluster)

    # v2 for the CreateReplace release: the CRD gets the new field before helm upgrades.
    apply(cluster, state(namespace, chart_repo.url, releases("2.0.0")))
    wait_until(
        lambda: (
            release_body(cluster, namespace, "replace")["status"].get("chartVersion") == "2.0.0"
        ),
        message="the CreateReplace release to be upgraded",
    )
    assert "color" in _crd_spec_properties(cluster)
    events = cluster.kubectl_json("get", "events", "-n", namespace)["items"]
    assert any(e["reason"] == "CRDsApplied" and CRD_NAME in e["message"] for e in events)

    # Deleting the releases never deletes a CRD.
    cluster.run("kubectl", "delete", "hfs", "lifecycle", "-n", namespace, "--timeout=120s")
    assert helm_releases(cluster, namespace) == {}
    assert "color" in _crd_spec_properties(cluster)


def test_helm_test_runs_after_install_and_a_failure_fails_the_release(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    tested = {"test": {"enable": True, "timeout": "60s"}}
    releases = [
        {"name": "ok", "chart": "local/helm-test-app", "version": "1.0.0", "helm": tested},
        {
            "name": "bad",
            "chart": "local/helm-test-app",
            "version": "1.0.0",
            "values": [{"test": {"fail": True}}],
            "helm": {**tested, "retries": 0},
        },
        {
            "name": "tolerated",
            "chart": "local/helm-test-app",
            "version": "1.0.0",
            "values": [{"test": {"fail": True}}],
            "helm": {"test": {"enable": True, "ignoreFailures": True}},
        },
    ]
    apply(cluster, state(namespace, chart_repo.url, releases))
    wait_until(lambda: _exists(cluster, namespace, "lifecycle-bad"), message="the releases")

    wait_for_condition(cluster, "hfr/lifecycle-ok", namespace, "TestSuccess")
    wait_for_condition(cluster, "hfr/lifecycle-ok", namespace, "Ready")
    ok = release_body(cluster, namespace, "ok")
    assert "tests passed on revision 1" in condition(ok, "Ready")["message"]  # type: ignore[index]

    wait_for_condition(cluster, "hfr/lifecycle-tolerated", namespace, "Ready")
    tolerated = release_body(cluster, namespace, "tolerated")
    failed = condition(tolerated, "TestSuccess")
    assert failed is not None
    assert failed["status"] == "False"
    assert "test pod tolerated-smoke-test failed" in failed["message"]

    # The failed test fails the release: the failed install is uninstalled, then Stalled
    # (retries: 0), and the condition names the test.
    wait_for_condition(cluster, "hfr/lifecycle-bad", namespace, "Stalled")
    bad = release_body(cluster, namespace, "bad")
    assert "test pod bad-smoke-test failed" in condition(bad, "TestSuccess")["message"]  # type: ignore[index]
    assert condition(bad, "Ready")["status"] == "False"  # type: ignore[index]
    assert condition(bad, "Remediated")["reason"] == "Uninstalled"  # type: ignore[index]
    assert "bad" not in helm_releases(cluster, namespace)
    reasons = {e["reason"] for e in cluster.kubectl_json("get", "events", "-n", namespace)["items"]}
    assert {"TestSucceeded", "TestFailed"} <= reasons
    metrics = operator.scrape()
    assert 'helmfile_operator_release_tests_total{result="success"}' in metrics
    assert 'helmfile_operator_release_tests_total{result="failure"}' in metrics
    json.dumps(bad)  # the status is plain JSON (no secrets involved here)


def test_replacing_crds_needs_the_tenants_own_grant(
    cluster: Cluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    namespace: str,
    no_lifecycle_crd: None,
) -> None:
    """The operator may write CRDs; the release's ServiceAccount (admin of its namespace only)
    may not, and that is what decides: Stalled before helm runs, nothing installed."""
    cluster.run("kubectl", "create", "serviceaccount", "deployer", "-n", namespace)
    cluster.run(
        "kubectl", "create", "rolebinding", "deployer-admin", "-n", namespace,
        "--clusterrole=admin", f"--serviceaccount={namespace}:deployer",
    )  # fmt: skip
    releases = [
        {
            "name": "app",
            "chart": "local/crd-lifecycle",
            "version": "1.0.0",
            "helm": {"crds": {"install": "CreateReplace"}},
        }
    ]
    body = state(namespace, chart_repo.url, releases, serviceAccountName="deployer")
    apply(cluster, body)
    wait_for_condition(cluster, "hfs/lifecycle", namespace, "Stalled")
    stalled = condition(release_body(cluster, namespace, "app"), "Stalled")
    assert stalled is not None
    assert "Forbidden" in stalled["message"]
    assert "spec.helm.crds.install" in stalled["message"]
    assert f"system:serviceaccount:{namespace}:deployer" in stalled["message"]
    assert helm_releases(cluster, namespace) == {}
    crds = cluster.run("kubectl", "get", "crd", CRD_NAME, check=False)
    assert crds.returncode != 0  # never created
