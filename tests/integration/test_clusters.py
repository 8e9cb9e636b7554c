"""One state, many clusters: releases with `kubeConfig` deploy into a second, independent control
plane, while their HelmfileReleases and status stay in the operator's own cluster."""

from __future__ import annotations

import base64
import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from helmfile_operator.reconcile.context import RECONCILE_REQUEST
from testbed_fixtures import (
    ChartRepo,
    Cluster,
    OperatorProcess,
    WorkloadCluster,
    apply,
    condition,
    example_state,
    helm_releases,
    hfo,
    state_ready_at_generation,
    wait_until,
)

SECRET = "workload-kubeconfig"


def _kubeconfig_secret(
    cluster: Cluster, namespace: str, kubeconfig: dict[str, Any], name: str = SECRET
) -> None:
    text = json.dumps(kubeconfig)
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace},
            "data": {"value": base64.b64encode(text.encode()).decode()},
        },
    )


def _state(
    namespace: str, repo_url: str, releases: list[dict[str, Any]], **spec: Any
) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": "stack", "namespace": namespace},
        "spec": {
            "repositories": [{"name": "test", "url": repo_url}],
            "helmDefaults": {"wait": False, "retries": 0},
            "releases": releases,
            **spec,
        },
    }


def _release(name: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "chart": "test/demo-app", "version": "0.1.0", **fields}


KUBE_CONFIG = {"secretRef": {"name": SECRET}}


@pytest.fixture
def workload_kubeconfig(
    cluster: Cluster, workload_cluster: WorkloadCluster, namespace: str
) -> dict[str, Any]:
    """The workload cluster's ServiceAccount kubeconfig, stored as the Secret KUBE_CONFIG names."""
    kubeconfig = workload_cluster.service_account_kubeconfig()
    _kubeconfig_secret(cluster, namespace, kubeconfig)
    return kubeconfig


def _request_reconcile(cluster: Cluster, namespace: str, name: str) -> None:
    cluster.run(
        "kubectl", "annotate", "hfr", name, "-n", namespace,
        f"{RECONCILE_REQUEST}={time.time()}", "--overwrite",
    )  # fmt: skip


def _hfr(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The HelmfileRelease, or {} until the state's pass has created it."""
    result = cluster.run("kubectl", "get", "hfr", name, "-n", namespace, "-o", "json", check=False)
    if result.returncode != 0 and "NotFound" in result.stderr:
        return {}
    assert result.returncode == 0, result.stderr
    body: dict[str, Any] = json.loads(result.stdout)
    return body


def _ready_reason(cluster: Cluster, namespace: str, name: str) -> str:
    ready = condition(_hfr(cluster, namespace, name), "Ready") or {}
    return f"{ready.get('status')}/{ready.get('reason')}"


def test_an_environment_deploys_into_its_own_cluster_with_status_and_drift_here(
    cluster: Cluster,
    workload_cluster: WorkloadCluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    namespace: str,
    workload_kubeconfig: dict[str, Any],
) -> None:
    kubeconfig = workload_kubeconfig
    state = _state(
        namespace,
        chart_repo.url,
        [_release("db"), _release("api", needs=["db"], set=[{"name": "message", "value": "v1"}])],
        environment="prod",
        environments={"prod": {"kubeConfig": KUBE_CONFIG}},
        interval="5s",
        driftDetection={"mode": "warn"},
    )
    apply(cluster, state)
    wait_until(lambda: state_ready_at_generation(cluster, namespace, "stack"), 180, "state Ready")

    remote = helm_releases(workload_cluster, namespace)
    assert {name: r["status"] for name, r in remote.items()} == {
        "db": "deployed",
        "api": "deployed",
    }
    assert helm_releases(cluster, namespace) == {}, "nothing may be installed in the first cluster"
    api = _hfr(cluster, namespace, "stack-api")
    assert api["status"]["cluster"] == {"name": "workload", "server": workload_cluster.server}
    summaries = cluster.kubectl_json("get", "hfs", "stack", "-n", namespace)["status"]["releases"]
    assert {s["name"]: s.get("cluster") for s in summaries} == {"db": "workload", "api": "workload"}
    # `needs` in the remote cluster: db was deployed before api.
    db_time = _hfr(cluster, namespace, "stack-db")["status"]["lastAppliedTime"]
    assert db_time <= api["status"]["lastAppliedTime"]

    # Drift by hand in the workload cluster, reported on the HelmfileRelease here.
    workload_cluster.run(
        "kubectl", "-n", namespace, "patch", "configmap", "api",
        "--type=merge", "-p", '{"data":{"message":"changed by hand"}}',
    )  # fmt: skip
    wait_until(
        lambda: (
            (condition(_hfr(cluster, namespace, "stack-api"), "Drifted") or {}).get("status")
            == "True"
        ),
        90,
        "drift reported",
    )
    drift = _hfr(cluster, namespace, "stack-api")["status"]["drift"]
    assert [o["name"] for o in drift["objects"]] == ["api"]

    # The remote credentials are nowhere a user or another tenant could read them.
    token = kubeconfig["users"][0]["user"]["token"]
    visible = json.dumps(cluster.kubectl_json("get", "hfs,hfr,events", "-n", namespace))
    assert token not in visible + operator.log()

    # Deleting the state uninstalls in the remote cluster, api (which needs db) first.
    cluster.run("kubectl", "delete", "hfs", "stack", "-n", namespace, "--wait=false")
    wait_until(lambda: not helm_releases(workload_cluster, namespace), 120, "remote uninstall")
    wait_until(
        lambda: not cluster.kubectl_json("get", "hfr", "-n", namespace)["items"],
        60,
        "HelmfileReleases gone",
    )


def test_needs_across_clusters_wait_for_the_release_in_the_other_cluster(
    cluster: Cluster,
    workload_cluster: WorkloadCluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    namespace: str,
    workload_kubeconfig: dict[str, Any],
    tmp_path: Path,
) -> None:
    state = _state(
        namespace,
        chart_repo.url,
        [_release("db"), _release("api", needs=["db"], kubeConfig=KUBE_CONFIG)],
    )
    apply(cluster, state)
    wait_until(lambda: state_ready_at_generation(cluster, namespace, "stack"), 180, "state Ready")
    assert set(helm_releases(cluster, namespace)) == {"db"}
    assert set(helm_releases(workload_cluster, namespace)) == {"api"}
    db = _hfr(cluster, namespace, "stack-db")
    api = _hfr(cluster, namespace, "stack-api")
    assert "cluster" not in db["status"]
    assert api["status"]["cluster"]["name"] == "workload"
    assert db["status"]["lastAppliedTime"] <= api["status"]["lastAppliedTime"]

    # `plan -f`, with the user's credentials: the remote release is planned in its cluster.
    state_file = tmp_path / "state.yaml"
    state_file.write_text(json.dumps(state))
    unchanged = hfo(cluster, "plan", "-f", str(state_file), check=False)
    assert unchanged.returncode == 0, unchanged.stdout + unchanged.stderr
    assert "stack-api  unchanged" in unchanged.stdout
    state["spec"]["releases"][1]["set"] = [{"name": "message", "value": "planned"}]
    state_file.write_text(json.dumps(state))
    planned = hfo(cluster, "diff", "-f", str(state_file), check=False)
    assert planned.returncode == 2, planned.stdout + planned.stderr
    assert "stack-db  unchanged" in planned.stdout
    assert "update  ConfigMap" in planned.stdout and "/data/message" in planned.stdout
    assert helm_releases(workload_cluster, namespace)["api"]["revision"] == "1"

    cluster.run("kubectl", "delete", "hfs", "stack", "-n", namespace)
    assert not helm_releases(workload_cluster, namespace)


def test_an_unreachable_cluster_is_reported_retried_and_leaves_other_releases_alone(
    cluster: Cluster,
    workload_cluster: WorkloadCluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    namespace: str,
    workload_kubeconfig: dict[str, Any],
) -> None:
    remote = _state(namespace, chart_repo.url, [_release("app")], kubeConfig=KUBE_CONFIG)
    apply(cluster, remote)
    wait_until(lambda: state_ready_at_generation(cluster, namespace, "stack"), 180, "state Ready")

    local_namespace = f"{namespace[:50]}-local"
    cluster.run("kubectl", "create", "namespace", local_namespace)
    try:
        workload_cluster.stop_api_server()
        remote["spec"]["releases"][0]["set"] = [{"name": "message", "value": "v2"}]
        apply(cluster, remote)
        wait_until(
            lambda: _ready_reason(cluster, namespace, "stack-app") == "False/ClusterUnreachable",
            90,
            "ClusterUnreachable",
        )
        ready = condition(_hfr(cluster, namespace, "stack-app"), "Ready") or {}
        assert workload_cluster.server in ready["message"]
        assert "retrying in" in ready["message"]
        metrics = operator.scrape()
        assert f'cluster="workload",server="{workload_cluster.server}"}} 0.0' in metrics

        # Meanwhile a release of the operator's own cluster converges as usual.
        started = time.monotonic()
        apply(cluster, {**_state(local_namespace, chart_repo.url, [_release("web")])})
        wait_until(
            lambda: state_ready_at_generation(cluster, local_namespace, "stack"),
            120,
            "the local state Ready while the remote cluster is down",
        )
        assert time.monotonic() - started < 90
        assert "web" in helm_releases(cluster, local_namespace)
    finally:
        workload_cluster.restart()
        cluster.run("kubectl", "delete", "namespace", local_namespace, "--wait=false", check=False)

    # Back up: recovered by the retries alone, with the new values.
    wait_until(lambda: state_ready_at_generation(cluster, namespace, "stack"), 180, "recovered")
    assert helm_releases(workload_cluster, namespace)["app"]["revision"] == "2"
    assert f'cluster="workload",server="{workload_cluster.server}"}} 1.0' in operator.scrape()


def test_an_exec_plugin_kubeconfig_is_refused_and_a_rotated_secret_is_used(
    cluster: Cluster,
    workload_cluster: WorkloadCluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    namespace: str,
) -> None:
    good = workload_cluster.service_account_kubeconfig()
    marker = f"/tmp/hfo-exec-ran-{uuid.uuid4().hex}"
    plugin = {
        **good,
        "users": [
            {
                "name": "deployer",
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": "sh",
                        "args": ["-c", f"touch {marker}"],
                        "interactiveMode": "Never",
                    }
                },
            }
        ],
    }
    _kubeconfig_secret(cluster, namespace, plugin)
    apply(cluster, _state(namespace, chart_repo.url, [_release("app")], kubeConfig=KUBE_CONFIG))
    wait_until(
        lambda: (
            (condition(_hfr(cluster, namespace, "stack-app"), "Stalled") or {}).get("reason")
            == "KubeconfigExecRefused"
        ),
        90,
        "the exec plugin refused",
    )
    ready = condition(_hfr(cluster, namespace, "stack-app"), "Ready") or {}
    assert ready["status"] == "False"
    assert "`exec` plugin" in ready["message"]
    assert f"Secret {namespace}/{SECRET}" in ready["message"]
    assert not helm_releases(workload_cluster, namespace)
    assert not os.path.exists(marker), "the plugin's command ran"

    # The Secret is fixed (rotated): the next pass uses it, no restart.
    _kubeconfig_secret(cluster, namespace, good)
    _request_reconcile(cluster, namespace, "stack-app")
    wait_until(
        lambda: _ready_reason(cluster, namespace, "stack-app").startswith("True/"), 120, "Ready"
    )
    assert helm_releases(workload_cluster, namespace)["app"]["status"] == "deployed"
    cluster.run("kubectl", "delete", "hfs", "stack", "-n", namespace)


def test_the_multi_cluster_ml_example_deploys_prod_into_its_cluster(
    cluster: Cluster,
    workload_cluster: WorkloadCluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    namespace: str,
) -> None:
    state = example_state("ml-serving-prod", namespace, chart_repo.url, "ml-serving-multicluster")
    secret = state["spec"]["environments"]["prod"]["kubeConfig"]["secretRef"]["name"]
    _kubeconfig_secret(cluster, namespace, workload_cluster.service_account_kubeconfig(), secret)
    apply(cluster, state)
    wait_until(
        lambda: state_ready_at_generation(cluster, namespace, "ml-serving-prod"), 300, "Ready"
    )
    remote = helm_releases(workload_cluster, namespace)
    expected = {release["name"] for release in state["spec"]["releases"]}
    assert set(remote) == expected
    assert all(r["status"] == "deployed" for r in remote.values())
    assert helm_releases(cluster, namespace) == {}
    status = cluster.kubectl_json("get", "hfs", "ml-serving-prod", "-n", namespace)["status"]
    assert {s["cluster"] for s in status["releases"]} == {"workload"}
    cluster.run("kubectl", "delete", "hfs", "ml-serving-prod", "-n", namespace, "--timeout=180s")
    assert helm_releases(workload_cluster, namespace) == {}


def test_deleting_while_the_cluster_is_down_waits_for_it_unless_kept(
    cluster: Cluster,
    workload_cluster: WorkloadCluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    namespace: str,
    workload_kubeconfig: dict[str, Any],
) -> None:
    kept = _state(
        namespace, chart_repo.url, [_release("kept")], kubeConfig=KUBE_CONFIG, deletionPolicy="Keep"
    )
    kept["metadata"]["name"] = "kept"
    removed = _state(namespace, chart_repo.url, [_release("removed")], kubeConfig=KUBE_CONFIG)
    apply(cluster, kept)
    apply(cluster, removed)
    for name in ("kept", "stack"):
        wait_until(lambda n=name: state_ready_at_generation(cluster, namespace, n), 180, name)

    try:
        workload_cluster.stop_api_server()
        cluster.run("kubectl", "delete", "hfs", "kept", "stack", "-n", namespace, "--wait=false")
        # Keep: let go without contacting the cluster.
        wait_until(
            lambda: (
                not cluster.run(
                    "kubectl", "get", "hfr", "kept-kept", "-n", namespace, check=False
                ).stdout
            ),
            60,
            "the kept release let go",
        )
        # Uninstall: the HelmfileRelease stays and says why.
        wait_until(
            lambda: (
                _ready_reason(cluster, namespace, "stack-removed") == "False/ClusterUnreachable"
            ),
            90,
            "ClusterUnreachable while deleting",
        )
        ready = condition(_hfr(cluster, namespace, "stack-removed"), "Ready") or {}
        assert "uninstall failed" in ready["message"]
    finally:
        workload_cluster.restart()
    wait_until(
        lambda: not cluster.kubectl_json("get", "hfr", "-n", namespace)["items"],
        120,
        "uninstalled once the cluster is back",
    )
    assert set(helm_releases(workload_cluster, namespace)) == {"kept"}


def test_a_named_service_account_is_impersonated_in_the_workload_cluster(
    cluster: Cluster,
    workload_cluster: WorkloadCluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    namespace: str,
    workload_kubeconfig: dict[str, Any],
) -> None:
    # In this cluster, the account reads the kubeconfig Secret (tenant reads are its own).
    cluster.run("kubectl", "-n", namespace, "create", "serviceaccount", "deployer")
    cluster.run(
        "kubectl", "-n", namespace, "create", "rolebinding", "deployer-admin",
        "--clusterrole=admin", f"--serviceaccount={namespace}:deployer",
    )  # fmt: skip
    # In the workload cluster the account exists, in a namespace of the same name, with no rights.
    workload_cluster.run("kubectl", "create", "namespace", namespace)
    workload_cluster.run("kubectl", "-n", namespace, "create", "serviceaccount", "deployer")
    state = _state(
        namespace,
        chart_repo.url,
        [_release("app")],
        kubeConfig=KUBE_CONFIG,
        serviceAccountName="deployer",
        # The namespace exists; creating one is beyond a namespace admin.
        helmDefaults={"wait": False, "retries": 0, "createNamespace": False},
    )
    apply(cluster, state)
    account = f"system:serviceaccount:{namespace}:deployer"
    wait_until(
        lambda: account in ((condition(_hfr(cluster, namespace, "stack-app"), "Ready") or {})
                            .get("message") or ""),
        90,
        "forbidden for the impersonated account",
    )  # fmt: skip
    assert not helm_releases(workload_cluster, namespace)

    workload_cluster.run(
        "kubectl", "-n", namespace, "create", "rolebinding", "deployer-admin",
        "--clusterrole=admin", f"--serviceaccount={namespace}:deployer",
    )  # fmt: skip
    _request_reconcile(cluster, namespace, "stack-app")
    wait_until(lambda: state_ready_at_generation(cluster, namespace, "stack"), 120, "Ready")
    assert helm_releases(workload_cluster, namespace)["app"]["status"] == "deployed"
    cluster.run("kubectl", "delete", "hfs", "stack", "-n", namespace)
