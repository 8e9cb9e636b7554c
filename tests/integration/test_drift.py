"""Drift of released objects, detected (and corrected) on the real control plane."""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

from testbed_fixtures import (
    ChartRepo,
    Cluster,
    OperatorProcess,
    apply,
    condition,
    wait_for_condition,
    wait_until,
)

RELEASE = "drifty-web"


def _state(
    namespace: str,
    repo_url: str,
    mode: str,
    ignore: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": "drifty", "namespace": namespace},
        "spec": {
            "interval": "2s",  # short, so that "within one interval" is quick to observe
            "driftDetection": {"mode": mode, "ignore": ignore or []},
            "repositories": [{"name": "test", "url": repo_url}],
            "releases": [{"name": "web", "chart": "test/demo-app", "version": "0.1.0"}],
            **spec,
        },
    }


def release(cluster: Cluster, namespace: str) -> dict[str, Any]:
    body: dict[str, Any] = cluster.kubectl_json("get", "hfr", RELEASE, "-n", namespace)
    return body


def drifted(cluster: Cluster, namespace: str) -> dict[str, Any] | None:
    found = condition(release(cluster, namespace), "Drifted")
    return found if found and found["status"] == "True" else None


def next_drift_check(cluster: Cluster, namespace: str, after: str) -> str:
    """Wait for a drift check later than `after`; returns its time."""

    def later() -> str | None:
        checked: str = release(cluster, namespace)["status"]["lastDriftCheck"]
        return checked if checked > after else None

    found: str = wait_until(later, timeout=30, message="the next drift check")
    return found


def install(cluster: Cluster, namespace: str, state: dict[str, Any]) -> None:
    apply(cluster, state)
    wait_for_condition(cluster, "hfs/drifty", namespace, "Ready")
    wait_until(
        lambda: release(cluster, namespace)["status"].get("lastDriftCheck"),
        message="the first drift check",
    )


def test_scaled_deployment_is_reported_with_an_event(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    install(cluster, namespace, _state(namespace, chart_repo.url, "warn"))
    cluster.run("kubectl", "scale", "deployment", "web", "-n", namespace, "--replicas=3")

    wait_until(lambda: drifted(cluster, namespace), timeout=30, message="drift to be reported")
    drift = release(cluster, namespace)["status"]["drift"]
    assert drift["detectedAt"]
    assert drift["objects"] == [
        {
            "apiVersion": "apps/v1", "kind": "Deployment", "name": "web",
            "namespace": namespace, "missing": False, "paths": ["/spec/replicas"],
        }
    ]  # fmt: skip
    events = cluster.kubectl_json(
        "get", "events", "-n", namespace, "--field-selector", "reason=DriftDetected"
    )["items"]
    assert any("/spec/replicas" in event["message"] for event in events)
    state = cluster.kubectl_json("get", "hfs", "drifty", "-n", namespace)
    assert [r["drifted"] for r in state["status"]["releases"]] == [True]
    # warn only records: the deployment stays scaled.
    deployment = cluster.kubectl_json("get", "deployment", "web", "-n", namespace)
    assert deployment["spec"]["replicas"] == 3


def test_correct_mode_restores_deleted_and_changed_objects(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    # warn first, to see the missing Service reported ...
    install(cluster, namespace, _state(namespace, chart_repo.url, "warn"))
    cluster.run("kubectl", "delete", "service", "web", "-n", namespace)
    cluster.run("kubectl", "scale", "deployment", "web", "-n", namespace, "--replicas=4")
    wait_until(
        lambda: any(o["missing"] for o in release(cluster, namespace)["status"].get("drift", {})
                    .get("objects", [])),
        timeout=30, message="the missing Service to be reported",
    )  # fmt: skip
    objects = {o["kind"]: o for o in release(cluster, namespace)["status"]["drift"]["objects"]}
    assert objects["Service"]["missing"] is True
    assert objects["Deployment"]["paths"] == ["/spec/replicas"]

    # ... then correct: both are restored and the condition clears.
    apply(cluster, _state(namespace, chart_repo.url, "correct"))
    wait_until(
        lambda: (
            (condition(release(cluster, namespace), "Drifted") or {}).get("reason")
            == "DriftCorrected"
        ),
        timeout=30,
        message="the drift to be corrected",
    )
    assert cluster.kubectl_json("get", "service", "web", "-n", namespace)["spec"]["ports"]
    assert (
        cluster.kubectl_json("get", "deployment", "web", "-n", namespace)["spec"]["replicas"] == 1
    )
    assert "drift" not in release(cluster, namespace)["status"]


def test_untouched_release_never_drifts(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    install(cluster, namespace, _state(namespace, chart_repo.url, "warn"))
    # Another manager's annotation on a released object is not the chart's business.
    cluster.run("kubectl", "annotate", "deployment", "web", "-n", namespace, "team/owner=fraud")
    seen = release(cluster, namespace)["status"]["lastDriftCheck"]
    for _ in range(3):  # several intervals: defaulting never reads as drift
        seen = next_drift_check(cluster, namespace, seen)
        assert drifted(cluster, namespace) is None
    assert (condition(release(cluster, namespace), "Drifted") or {})["reason"] == "NoDrift"


def test_ignore_rule_silences_the_scale(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    ignore = [{"paths": ["/spec/replicas"], "target": {"kind": "Deployment"}}]
    install(cluster, namespace, _state(namespace, chart_repo.url, "warn", ignore))
    cluster.run("kubectl", "scale", "deployment", "web", "-n", namespace, "--replicas=3")
    seen = release(cluster, namespace)["status"]["lastDriftCheck"]
    for _ in range(2):
        seen = next_drift_check(cluster, namespace, seen)
    assert drifted(cluster, namespace) is None


def test_changed_secret_is_reported_by_path_only(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    install(cluster, namespace, _state(namespace, chart_repo.url, "warn"))
    leaked = f"leak-{uuid.uuid4().hex}"
    patch = {"data": {"token": base64.b64encode(leaked.encode()).decode()}}
    cluster.run("kubectl", "patch", "secret", "web", "-n", namespace, "-p", json.dumps(patch))

    wait_until(lambda: drifted(cluster, namespace), timeout=30, message="the Secret drift")
    objects = release(cluster, namespace)["status"]["drift"]["objects"]
    assert {"kind": "Secret", "paths": ["/data/token"]}.items() <= next(
        o for o in objects if o["kind"] == "Secret"
    ).items()
    encoded = patch["data"]["token"]
    for text in (
        cluster.run("kubectl", "get", "hfs,hfr", "-n", namespace, "-o", "json").stdout,
        cluster.run("kubectl", "get", "events", "-n", namespace, "-o", "json").stdout,
        operator.log(),
    ):
        assert leaked not in text
        assert encoded not in text


def test_drift_check_without_permission_is_a_condition(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    """helm and the drift check run as the state's ServiceAccount; once it may no longer read
    Deployments, the drift check reports a clear condition instead of crashing."""
    cluster.run("kubectl", "create", "serviceaccount", "deployer", "-n", namespace)
    cluster.run(
        "kubectl", "create", "rolebinding", "deployer-admin", "-n", namespace,
        "--clusterrole=admin", f"--serviceaccount={namespace}:deployer",
    )  # fmt: skip
    state = _state(namespace, chart_repo.url, "warn", serviceAccountName="deployer")
    state["spec"]["helmDefaults"] = {"createNamespace": False}
    install(cluster, namespace, state)
    assert drifted(cluster, namespace) is None

    # Everything in the namespace but Deployments: the next check reports it.
    apply(
        cluster,
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "no-deployments", "namespace": namespace},
            "rules": [
                {"apiGroups": [""], "resources": ["*"], "verbs": ["*"]},
                {"apiGroups": ["apps"], "resources": ["replicasets"], "verbs": ["*"]},
            ],
        },
    )
    cluster.run(
        "kubectl", "create", "rolebinding", "deployer-limited", "-n", namespace,
        "--role=no-deployments", f"--serviceaccount={namespace}:deployer",
    )  # fmt: skip
    cluster.run("kubectl", "delete", "rolebinding", "deployer-admin", "-n", namespace)
    found = wait_until(
        lambda: (lambda c: c if c and c["status"] == "Unknown" else None)(
            condition(release(cluster, namespace), "Drifted")
        ),
        timeout=30,
        message="the failed drift check",
    )
    assert found["reason"] == "DriftCheckFailed"
    assert "forbidden" in found["message"]
    assert "Deployment" in found["message"]
    assert operator.process is not None and operator.process.poll() is None
