"""Proof that the test bed is a real cluster: helm installs, waits and fails as on any other."""

from __future__ import annotations

import json

from testbed_fixtures import ChartRepo, Cluster


def test_nodes_are_ready(cluster: Cluster) -> None:
    nodes = cluster.kubectl_json("get", "nodes")["items"]
    ready = [
        node["metadata"]["name"]
        for node in nodes
        if any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])
    ]
    assert len(ready) >= 2


def test_server_reports_its_real_version(cluster: Cluster) -> None:
    version = cluster.kubectl_json("version")
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    assert version["serverVersion"]["gitVersion"] != "v0.0.0-master+$Format:%H$"
    assert int(version["serverVersion"]["minor"]) >= 35


def test_chart_repo_serves_an_index(cluster: Cluster, chart_repo: ChartRepo) -> None:
    result = cluster.run("helm", "show", "chart", "demo-app", "--repo", chart_repo.url)
    assert "name: demo-app" in result.stdout


def test_helm_install_waits_until_the_deployment_is_available(
    cluster: Cluster, chart_repo: ChartRepo, namespace: str
) -> None:
    cluster.run(
        "helm", "upgrade", "--install", "web", "demo-app",
        "--repo", chart_repo.url, "--namespace", namespace,
        "--set", "replicaCount=2", "--wait", "--timeout", "120s",
    )  # fmt: skip

    deployment = cluster.kubectl_json("get", "deployment", "web", "-n", namespace)
    available = {c["type"]: c["status"] for c in deployment["status"]["conditions"]}
    assert available["Available"] == "True"
    assert deployment["status"]["readyReplicas"] == 2
    assert cluster.kubectl_json("get", "service", "web", "-n", namespace)["spec"]["clusterIP"]
    assert cluster.kubectl_json("get", "configmap", "web", "-n", namespace)["data"] == {
        "message": "hello"
    }
    releases = json.loads(cluster.run("helm", "list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("web", "deployed")]


def test_helm_wait_fails_when_the_pod_cannot_schedule(
    cluster: Cluster, chart_repo: ChartRepo, namespace: str
) -> None:
    result = cluster.run(
        "helm", "upgrade", "--install", "stuck", "demo-app",
        "--repo", chart_repo.url, "--namespace", namespace,
        "--set", "nodeSelector.no-such-label=anywhere", "--wait", "--timeout", "15s",
        check=False,
    )  # fmt: skip

    assert result.returncode != 0
    assert "context deadline exceeded" in result.stderr or "timed out" in result.stderr.lower()
    pods = cluster.kubectl_json("get", "pods", "-n", namespace)["items"]
    assert pods and all(pod["status"]["phase"] == "Pending" for pod in pods)
    releases = json.loads(cluster.run("helm", "list", "-n", namespace, "-o", "json").stdout)
    assert [(r["name"], r["status"]) for r in releases] == [("stuck", "failed")]
