"""The core loop on the real control plane: state in, ordered helm releases and status out."""

from __future__ import annotations

import base64
import datetime
import json
import uuid
from typing import Any

from testbed_fixtures import (
    ChartRepo,
    Cluster,
    OperatorProcess,
    apply,
    condition,
    example_state,
    helm_history,
    helm_releases,
    state_ready_at_generation,
    wait_for_condition,
    wait_until,
)

STACK = "stack"


def helm_time(value: str) -> datetime.datetime:
    """helm's `updated` ("2026-01-02 03:04:05.123456789 +0000 UTC") as an aware datetime."""
    date, clock = value.split()[:2]
    whole, _, fraction = clock.partition(".")
    parsed = datetime.datetime.fromisoformat(f"{date}T{whole}+00:00")
    return parsed + datetime.timedelta(microseconds=int((fraction or "0")[:6].ljust(6, "0")))


def release_objects(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    items = cluster.kubectl_json("get", "hfr", "-n", namespace)["items"]
    return {item["spec"]["releaseName"]: item for item in items}


def install_stack(cluster: Cluster, chart_repo: ChartRepo, namespace: str) -> None:
    apply(cluster, example_state(STACK, namespace, chart_repo.url))
    wait_for_condition(cluster, f"hfs/{STACK}", namespace, "Ready", timeout=240)


def test_example_converges_in_needs_order(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    install_stack(cluster, chart_repo, namespace)

    state = cluster.kubectl_json("get", "hfs", STACK, "-n", namespace)
    assert state["status"]["environment"] == "dev"
    assert state["status"]["counts"]["total"] == 6
    assert state["status"]["counts"]["ready"] == 6
    assert state["status"]["counts"]["disabled"] == 1  # metrics-exporter: exporter.enabled false
    assert state["status"]["order"][0] == [f"{namespace}/redis", f"{namespace}/preprocessing"]
    releases = helm_releases(cluster, namespace)
    assert sorted(releases) == [
        "feature-store-proxy", "model-server", "preprocessing", "redis", "result-queue",
    ]  # fmt: skip
    assert all(r["status"] == "deployed" and r["revision"] == "1" for r in releases.values())

    # A release starts only after each of its needs finished (Ready): compare helm's start time
    # of the dependent with the time the operator recorded the need as applied.
    objects = release_objects(cluster, namespace)
    for dependent, needs in {
        "feature-store-proxy": ["redis"],
        "model-server": ["redis", "feature-store-proxy"],
        "result-queue": ["model-server"],
    }.items():
        started = helm_time(releases[dependent]["updated"])
        for need in needs:
            need_started = helm_time(releases[need]["updated"])
            applied = datetime.datetime.fromisoformat(
                objects[need]["status"]["lastAppliedTime"].replace("Z", "+00:00")
            )
            assert started > need_started, f"{dependent} started before {need}"
            assert started >= applied, f"{dependent} started before {need} was Ready"

    inventory = {(o["kind"], o["name"]) for o in objects["model-server"]["status"]["inventory"]}
    assert inventory == {
        ("ConfigMap", "model-server"), ("Service", "model-server"), ("Deployment", "model-server"),
    }  # fmt: skip

    # The model server got its values from the environment and the state's labels.
    values = json.loads(
        cluster.run("helm", "get", "values", "model-server", "-n", namespace, "-o", "json").stdout
    )
    assert values["replicaCount"] == 1
    assert values["image"]["tag"] == "v2.1.0"
    assert values["model"]["decisionThreshold"] == "0.5"


def test_changing_an_environment_value_upgrades_only_its_users(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    install_stack(cluster, chart_repo, namespace)
    state = example_state(STACK, namespace, chart_repo.url)
    state["spec"]["environments"]["dev"]["values"][0]["threshold"] = "0.9"
    apply(cluster, state)

    wait_until(
        lambda: (
            helm_releases(cluster, namespace)["model-server"]["revision"] == "2"
            and state_ready_at_generation(cluster, namespace, STACK)
        ),
        message="model-server upgraded and the state Ready again",
    )
    revisions = {name: r["revision"] for name, r in helm_releases(cluster, namespace).items()}
    assert revisions == {
        "feature-store-proxy": "1", "model-server": "2", "preprocessing": "1",
        "redis": "1", "result-queue": "1",
    }  # fmt: skip
    values = json.loads(
        cluster.run("helm", "get", "values", "model-server", "-n", namespace, "-o", "json").stdout
    )
    assert values["model"]["decisionThreshold"] == "0.9"


def test_forced_resync_of_an_unchanged_state_runs_no_upgrade(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    install_stack(cluster, chart_repo, namespace)
    before = {name: r["revision"] for name, r in helm_releases(cluster, namespace).items()}
    versions = {
        name: obj["metadata"]["resourceVersion"]
        for name, obj in release_objects(cluster, namespace).items()
    }
    requested = datetime.datetime.now(datetime.UTC).isoformat()
    cluster.run(
        "kubectl", "annotate", "--overwrite", "-n", namespace, f"hfs/{STACK}",
        f"helmfile.dev/reconcile-requested-at={requested}",
    )  # fmt: skip

    # The state records the request once every release ran a pass for it ...
    wait_until(
        lambda: (
            cluster.kubectl_json("get", "hfs", STACK, "-n", namespace)["status"].get(
                "lastHandledReconcileAt"
            )
            == requested
        ),
        message="the state to record the reconcile request as handled by every release",
    )
    # ... and none of them ran helm upgrade, or wrote anything to its HelmfileRelease.
    after = {name: r["revision"] for name, r in helm_releases(cluster, namespace).items()}
    assert after == before
    assert all(len(helm_history(cluster, namespace, name)) == 1 for name in after)
    assert {
        name: obj["metadata"]["resourceVersion"]
        for name, obj in release_objects(cluster, namespace).items()
    } == versions


def _release(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "chart": "test/demo-app", "version": "0.1.0", **extra}


def _demo_state(namespace: str, repo_url: str, releases: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": "demo", "namespace": namespace},
        "spec": {
            "repositories": [{"name": "test", "url": repo_url}],
            "helmDefaults": {"wait": True, "atomic": True, "timeout": "10s", "retries": 0},
            "releases": releases,
        },
    }


def test_failed_atomic_upgrade_rolls_back_and_blocks_only_its_dependents(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    apply(cluster, _demo_state(namespace, chart_repo.url, [_release("base")]))
    wait_for_condition(cluster, "hfs/demo", namespace, "Ready")

    broken = _release("base", values=[{"nodeSelector": {"no-such-label": "anywhere"}}])
    apply(
        cluster,
        _demo_state(
            namespace,
            chart_repo.url,
            [broken, _release("dependent", needs=["base"]), _release("independent")],
        ),
    )
    wait_until(
        lambda: condition(
            cluster.kubectl_json("get", "hfr", "demo-base", "-n", namespace), "Stalled"
        ),
        timeout=120,
        message="the broken release to stall",
    )
    base = cluster.kubectl_json("get", "hfr", "demo-base", "-n", namespace)
    assert condition(base, "Remediated")["reason"] == "RolledBack"  # type: ignore[index]
    assert condition(base, "Ready")["status"] == "False"  # type: ignore[index]
    history = helm_history(cluster, namespace, "base")
    assert [h["status"] for h in history] == ["superseded", "failed", "deployed"]
    assert "Rollback to 1" in history[-1]["description"]
    wait_until(
        lambda: (
            helm_releases(cluster, namespace).get("independent", {}).get("status") == "deployed"
        ),
        message="the independent release to install",
    )
    assert "dependent" not in helm_releases(cluster, namespace)
    dependent = cluster.kubectl_json("get", "hfr", "demo-dependent", "-n", namespace)
    assert condition(dependent, "Ready")["reason"] == "NeedsNotReady"  # type: ignore[index]
    state = cluster.kubectl_json("get", "hfs", "demo", "-n", namespace)
    assert condition(state, "Ready")["status"] == "False"  # type: ignore[index]

    # Fixing the spec recovers without manual steps.
    apply(
        cluster,
        _demo_state(
            namespace,
            chart_repo.url,
            [_release("base"), _release("dependent", needs=["base"]), _release("independent")],
        ),
    )
    wait_until(
        lambda: state_ready_at_generation(cluster, namespace, "demo"),
        timeout=120,
        message="the state to recover",
    )
    assert helm_releases(cluster, namespace)["dependent"]["status"] == "deployed"


def test_deleting_the_state_uninstalls_in_reverse_needs_order(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    install_stack(cluster, chart_repo, namespace)
    log_offset = len(operator.log())
    cluster.run("kubectl", "delete", "hfs", STACK, "-n", namespace, "--timeout=180s")

    assert helm_releases(cluster, namespace) == {}
    assert cluster.kubectl_json("get", "hfr", "-n", namespace)["items"] == []
    log = operator.log()[log_offset:]
    position = {
        name: log.index(f"HelmfileRelease/{namespace}/{STACK}-{name}: Uninstalled")
        for name in ["redis", "feature-store-proxy", "model-server", "result-queue"]
    }
    assert position["result-queue"] < position["model-server"]
    assert position["model-server"] < position["feature-store-proxy"] < position["redis"]


def test_operator_killed_during_install_recovers_after_restart(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    label = f"hfo-test-{uuid.uuid4().hex[:6]}"
    slow = _release(
        "slow", values=[{"nodeSelector": {label: "yes"}}], helm={"timeout": "300s", "retries": 3}
    )
    apply(cluster, _demo_state(namespace, chart_repo.url, [slow]))
    wait_until(
        lambda: (
            helm_releases(cluster, namespace).get("slow", {}).get("status") == "pending-install"
        ),
        message="helm to be mid-install",
    )
    operator.kill()  # the operator and its helm process die; the release stays pending-install
    assert helm_releases(cluster, namespace)["slow"]["status"] == "pending-install"
    cluster.run("kubectl", "label", "node", "kwok-node-0", f"{label}=yes")
    try:
        operator.start()
        wait_until(
            lambda: state_ready_at_generation(cluster, namespace, "demo"),
            timeout=180,
            message="the state to recover after the restart",
        )
    finally:
        cluster.run("kubectl", "label", "node", "kwok-node-0", f"{label}-")
    assert helm_releases(cluster, namespace)["slow"]["status"] == "deployed"
    assert "Recovered: release was left pending-install" in operator.log()


def test_values_from_a_secret_reach_helm_and_nothing_else(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    token = f"tok-{uuid.uuid4().hex}"
    secret_values = f"message: {token}\n"
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "app-secrets", "namespace": namespace},
            "data": {"values.yaml": base64.b64encode(secret_values.encode()).decode()},
        },
    )
    release = _release("secretive", valuesFrom=[{"kind": "Secret", "name": "app-secrets"}])
    apply(cluster, _demo_state(namespace, chart_repo.url, [release]))
    wait_for_condition(cluster, "hfs/demo", namespace, "Ready")

    values = cluster.run("helm", "get", "values", "secretive", "-n", namespace, "-o", "json")
    assert json.loads(values.stdout)["message"] == token
    configmap = cluster.kubectl_json("get", "configmap", "secretive", "-n", namespace)
    assert configmap["data"]["message"] == token  # it reached the chart

    for text in (
        cluster.run("kubectl", "get", "hfs,hfr", "-n", namespace, "-o", "json").stdout,
        cluster.run("kubectl", "get", "events", "-n", namespace, "-o", "json").stdout,
        operator.log(),
    ):
        assert token not in text


def test_progress_is_visible_while_helm_waits(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    """During a slow `--wait` (the pod can only start once a node gets a label), the release
    says what helm is doing, the state says which release is in progress, and an Event tells."""
    label = f"hfo-progress-{uuid.uuid4().hex[:6]}"
    slow = _release("slow", values=[{"nodeSelector": {label: "yes"}}], helm={"timeout": "120s"})
    apply(cluster, _demo_state(namespace, chart_repo.url, [slow]))

    def installing() -> dict[str, Any] | None:
        got = cluster.run(
            "kubectl", "get", "hfr", "demo-slow", "-n", namespace, "-o", "json", check=False
        )
        if got.returncode != 0:
            return None
        body = json.loads(got.stdout)
        reconciling = condition(body, "Reconciling")
        return body if reconciling and reconciling["reason"] == "Installing" else None

    body = wait_until(installing, timeout=60, message="the release to say it is installing")
    try:
        # Written before helm starts; helm then records the pending install.
        wait_until(
            lambda: (
                helm_releases(cluster, namespace).get("slow", {}).get("status") == "pending-install"
            ),
            timeout=30,
            message="helm to be mid-install",
        )
        assert condition(body, "Ready")["status"] == "Unknown"  # type: ignore[index]
        progress = body["status"]["inProgress"]
        assert progress["action"] == "install" and progress["chartVersion"] == "0.1.0"
        assert progress["startedAt"]
        wait_until(
            lambda: "demo-slow (Installing)"
            in (condition(cluster.kubectl_json("get", "hfs", "demo", "-n", namespace),
                          "Reconciling") or {}).get("message", ""),
            timeout=30,
            message="the state's summary to name the release in progress",
        )  # fmt: skip
    finally:
        cluster.run("kubectl", "label", "node", "kwok-node-0", f"{label}=yes")
    try:
        wait_for_condition(cluster, "hfr/demo-slow", namespace, "Ready", timeout=150)
        done = cluster.kubectl_json("get", "hfr", "demo-slow", "-n", namespace)
        assert "inProgress" not in done["status"]
        assert condition(done, "Reconciling") is None
        # One Event for the install: its outcome (the start was on the status).
        reasons = [
            e["reason"]
            for e in cluster.kubectl_json("get", "events", "-n", namespace)["items"]
            if e["involvedObject"]["name"] == "demo-slow"
        ]
        assert "Installed" in reasons and "Installing" not in reasons
    finally:
        cluster.run("kubectl", "label", "node", "kwok-node-0", f"{label}-")
