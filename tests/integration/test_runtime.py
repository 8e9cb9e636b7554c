"""The runtime's defects found in review, on the real control plane: each test failed before."""

from __future__ import annotations

import asyncio
import json
import re
import time
from typing import Any

import pytest
from kubernetes import client, config

from helmfile_operator.kube import RELEASES, FinalizerConflict, Kube
from testbed_fixtures import (
    ChartRepo,
    Cluster,
    OperatorProcess,
    apply,
    condition,
    helm_history,
    wait_for_condition,
    wait_until,
)


def hand_written(
    name: str, namespace: str, repo_url: str, chart: str = "demo-app", **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileRelease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "releaseName": spec.pop("releaseName", name),
            "targetNamespace": namespace,
            "chart": {
                "repository": {"url": repo_url},
                "name": chart,
                "version": spec.pop("version", "0.1.0"),
            },
            "helm": {"wait": False},
            **spec,
        },
    }


def hfr(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = cluster.kubectl_json("get", "hfr", name, "-n", namespace)
    return body


def ready_at_generation(cluster: Cluster, namespace: str, name: str) -> bool:
    body = hfr(cluster, namespace, name)
    ready = condition(body, "Ready")
    return bool(
        ready
        and ready["status"] == "True"
        and body["status"].get("observedGeneration") == body["metadata"]["generation"]
    )


def test_a_version_typo_leaves_the_healthy_release_alone(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    release = hand_written("typo", namespace, chart_repo.url, values={"replicaCount": 1})
    apply(cluster, release)
    wait_for_condition(cluster, "hfr/typo", namespace, "Ready")
    release["spec"]["values"] = {"replicaCount": 2}
    apply(cluster, release)
    wait_until(lambda: ready_at_generation(cluster, namespace, "typo"), message="revision 2")
    assert [r["revision"] for r in helm_history(cluster, namespace, "typo")] == [1, 2]
    live = cluster.kubectl_json("get", "deployment", "-n", namespace)["items"]
    before = {d["metadata"]["name"]: d["metadata"]["resourceVersion"] for d in live}

    release["spec"]["chart"]["version"] = "9.9.9"
    apply(cluster, release)

    def failed() -> dict[str, Any] | None:
        ready = condition(hfr(cluster, namespace, "typo"), "Ready")
        return ready if ready and ready["status"] == "False" else None

    ready = wait_until(failed, timeout=60, message="Ready=False")
    assert "9.9.9" in ready["message"]
    assert "revision 2 is still deployed" in ready["message"]
    time.sleep(3)  # a rollback, if any, would have started by now
    history = helm_history(cluster, namespace, "typo")
    assert [(r["revision"], r["status"]) for r in history] == [(1, "superseded"), (2, "deployed")]
    live = cluster.kubectl_json("get", "deployment", "-n", namespace)["items"]
    assert {d["metadata"]["name"]: d["metadata"]["resourceVersion"] for d in live} == before


def test_a_chart_whose_crds_carry_a_bare_equals_installs_once(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    release = hand_written("edgy", namespace, chart_repo.url, chart="crd-operators")
    release["spec"]["interval"] = "2s"  # many passes in a few seconds: none may run helm
    apply(cluster, release)
    wait_for_condition(cluster, "hfr/edgy", namespace, "Ready")
    time.sleep(8)

    assert [r["revision"] for r in helm_history(cluster, namespace, "edgy")] == [1]
    status = hfr(cluster, namespace, "edgy")["status"]
    inventory = {(o["kind"], o["name"]) for o in status["inventory"]}
    assert ("CustomResourceDefinition", "routes.edge.example.com") in inventory
    assert ("ConfigMap", "edgy-settings") in inventory
    crd = cluster.kubectl_json("get", "crd", "routes.edge.example.com")
    match = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert match["properties"]["matchType"]["enum"] == ["!=", "=", "=~", "!~"]
    cluster.run("kubectl", "delete", "crd", "routes.edge.example.com", "matchers.edge.example.com")


def test_the_first_object_naming_a_helm_release_keeps_it(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    apply(cluster, hand_written("first", namespace, chart_repo.url, releaseName="shared"))
    wait_for_condition(cluster, "hfr/first", namespace, "Ready")
    apply(cluster, hand_written("second", namespace, chart_repo.url, releaseName="shared"))
    wait_for_condition(cluster, "hfr/second", namespace, "Stalled")

    stalled = condition(hfr(cluster, namespace, "second"), "Stalled")
    assert stalled is not None
    assert stalled["reason"] == "ReleaseOwnedByAnother"
    assert f"{namespace}/first" in stalled["message"]
    assert [r["revision"] for r in helm_history(cluster, namespace, "shared")] == [1]

    cluster.run("kubectl", "delete", "hfr", "second", "-n", namespace, "--timeout=60s")
    assert [r["status"] for r in helm_history(cluster, namespace, "shared")] == ["deployed"]


def test_one_worker_pool_however_many_objects(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    items = [
        hand_written(f"many-{index}", namespace, chart_repo.url, suspend=True)
        for index in range(300)
    ]
    apply(cluster, {"apiVersion": "v1", "kind": "List", "items": items})

    def all_seen() -> bool:
        found = cluster.kubectl_json("get", "hfr", "-n", namespace)["items"]
        with_finalizer = [o for o in found if o["metadata"].get("finalizers")]
        return len(with_finalizer) == 300

    wait_until(all_seen, timeout=180, message="300 releases picked up")
    metrics = operator.scrape()
    workers = re.search(r"^helmfile_operator_workers (\S+)$", metrics, re.MULTILINE)
    assert workers is not None
    assert float(workers.group(1)) == 32  # max_concurrent_reconciles' default
    assert operator.healthy()


def test_a_finalizer_write_from_a_stale_read_is_refused(cluster: Cluster, namespace: str) -> None:
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(cluster.kubeconfig), client_configuration=configuration)
    kube = Kube(client.ApiClient(configuration))
    body = hand_written("stale", namespace, "https://charts.example.com", suspend=True)
    cluster.run("kubectl", "apply", "-f", "-", input=json.dumps(body))
    read = hfr(cluster, namespace, "stale")
    cluster.run(
        "kubectl", "patch", "hfr", "stale", "-n", namespace, "--type=merge",
        "-p", json.dumps({"metadata": {"finalizers": ["example.com/other"]}}),
    )  # fmt: skip

    with pytest.raises(FinalizerConflict):
        asyncio.run(
            kube.set_finalizers(
                RELEASES, namespace, "stale", read["metadata"]["resourceVersion"], ["x.dev/f"]
            )
        )
    finalizers = hfr(cluster, namespace, "stale")["metadata"]["finalizers"]
    assert "example.com/other" in finalizers  # not dropped by the write from the stale read
    assert "x.dev/f" not in finalizers
    cluster.run(
        "kubectl", "patch", "hfr", "stale", "-n", namespace, "--type=merge",
        "-p", json.dumps({"metadata": {"finalizers": None}}),
    )  # fmt: skip
