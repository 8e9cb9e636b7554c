"""The command line against the real control plane, run as users run it (a process, their
kubeconfig): status, reconcile --wait, suspend/resume, plan/diff/approve."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from testbed_fixtures import (
    CLI,
    ChartRepo,
    Cluster,
    OperatorProcess,
    apply,
    condition,
    helm_releases,
    hfo,
    wait_until,
)


def _state(namespace: str, repo_url: str, replicas: int = 1, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": "shop", "namespace": namespace},
        "spec": {
            "environment": "dev",
            "environments": {"dev": {"values": [{"replicas": replicas}]}},
            "repositories": [{"name": "test", "url": repo_url}],
            "helmDefaults": {"wait": False},
            "releases": [
                {"name": "db", "chart": "test/demo-app", "version": "0.1.0"},
                {
                    "name": "web",
                    "chart": "test/demo-app",
                    "version": "0.1.0",
                    "needs": ["db"],
                    "valuesTemplate": ["replicaCount: {{ environment.values.replicas }}"],
                },
            ],
            **spec,
        },
    }


def _ready(cluster: Cluster, namespace: str) -> bool:
    body = cluster.kubectl_json("get", "hfs", "shop", "-n", namespace)
    ready = condition(body, "Ready")
    return bool(
        ready
        and ready["status"] == "True"
        and body["status"].get("observedGeneration") == body["metadata"]["generation"]
    )


def test_status_reconcile_suspend_and_resume(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    apply(cluster, _state(namespace, chart_repo.url))
    wait_until(lambda: _ready(cluster, namespace), timeout=180, message="the state to be Ready")

    tree = hfo(cluster, "status", "hfs/shop", "-n", namespace)
    lines = tree.stdout.splitlines()
    assert "hfs/shop" in lines[0] and "Ready" in lines[0], tree.stdout
    db = next(i for i, line in enumerate(lines) if "shop-db" in line)
    web = next(i for i, line in enumerate(lines) if "shop-web" in line)
    assert db < web, "releases in needs order"
    assert "rev 1" in lines[web] and "demo-app 0.1.0" in lines[web]

    data = json.loads(hfo(cluster, "status", "-n", namespace, "-o", "json").stdout)
    assert [r["release"] for r in data[0]["releases"]] == ["db", "web"]
    assert all(r["ready"] for r in data[0]["releases"])
    everywhere = yaml.safe_load(hfo(cluster, "status", "-A", "-o", "yaml", check=False).stdout)
    assert any(s["namespace"] == namespace for s in everywhere)

    waited = hfo(cluster, "reconcile", "hfs/shop", "-n", namespace, "--wait", "--timeout", "120")
    assert "hfs/shop: Ready" in waited.stdout
    body = cluster.kubectl_json("get", "hfs", "shop", "-n", namespace)
    requested = body["metadata"]["annotations"]["helmfile.dev/reconcile-requested-at"]
    assert body["status"]["lastHandledReconcileAt"] == requested

    hfo(cluster, "suspend", "hfs/shop", "-n", namespace)
    wait_until(
        lambda: cluster.kubectl_json("get", "hfr", "shop-web", "-n", namespace)["spec"].get(
            "suspend"
        ),
        message="the releases to be suspended",
    )
    hfo(cluster, "resume", "hfs/shop", "-n", namespace)
    wait_until(
        lambda: (
            not cluster.kubectl_json("get", "hfr", "shop-web", "-n", namespace)["spec"].get(
                "suspend"
            )
        ),
        message="the releases to be resumed",
    )

    missing = hfo(cluster, "status", "hfs/nope", "-n", namespace, check=False)
    assert missing.returncode == 1
    assert "HelmfileState" in missing.stderr and "not found" in missing.stderr


def test_plan_diff_and_approve(
    cluster: Cluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    namespace: str,
    tmp_path: Path,
) -> None:
    manual = {"approval": {"mode": "manual"}}
    apply(cluster, _state(namespace, chart_repo.url, **manual))
    wait_until(
        lambda: (
            (cluster.kubectl_json("get", "hfs", "shop", "-n", namespace).get("status") or {})
            .get("plan", {})
            .get("install")
            == 2
        ),
        message="a plan of two installs",
    )
    shown = hfo(cluster, "plan", "hfs/shop", "-n", namespace)
    assert "2 to install" in shown.stdout
    assert shown.stdout.index("shop-db") < shown.stdout.index("shop-web")
    assert "create  Deployment" in shown.stdout

    approved = hfo(cluster, "approve", "hfs/shop", "-n", namespace)
    assert "approved plan" in approved.stdout
    wait_until(lambda: _ready(cluster, namespace), timeout=180, message="the approved install")
    assert sorted(helm_releases(cluster, namespace)) == ["db", "web"]
    nothing = hfo(cluster, "approve", "hfs/shop", "-n", namespace, check=False)
    assert nothing.returncode == 1 and "no plan awaits approval" in nothing.stderr

    # The file of a change, planned against the cluster with the user's credentials: one
    # Deployment field, shown as a diff; nothing is written.
    state_file = tmp_path / "state.yaml"
    state_file.write_text(yaml.safe_dump(_state(namespace, chart_repo.url, replicas=3, **manual)))
    planned = hfo(cluster, "diff", "-f", str(state_file), check=False)
    assert planned.returncode == 2, planned.stdout + planned.stderr
    assert "shop-db  unchanged" in planned.stdout
    assert "update  Deployment" in planned.stdout and "/spec/replicas" in planned.stdout
    assert "+  replicas: 3" in planned.stdout and "-  replicas: 1" in planned.stdout
    assert helm_releases(cluster, namespace)["web"]["revision"] == "1"
    unchanged = tmp_path / "same.yaml"
    unchanged.write_text(yaml.safe_dump(_state(namespace, chart_repo.url, **manual)))
    assert hfo(cluster, "plan", "-f", str(unchanged)).returncode == 0

    # Applied, the operator plans the same change; approving it with a stale id is refused.
    apply(cluster, _state(namespace, chart_repo.url, replicas=3, **manual))
    wait_until(
        lambda: (
            (cluster.kubectl_json("get", "hfs", "shop", "-n", namespace).get("status") or {})
            .get("plan", {})
            .get("upgrade")
            == 1
        ),
        message="a plan of one upgrade",
    )
    stale = hfo(
        cluster, "approve", "hfs/shop", "-n", namespace, "--id", "0123456789ab", check=False
    )
    assert stale.returncode == 1 and "review it first" in stale.stderr
    hfo(cluster, "approve", "hfs/shop", "-n", namespace)
    wait_until(
        lambda: helm_releases(cluster, namespace)["web"]["revision"] == "2",
        message="the approved upgrade",
    )


def test_kubectl_finds_it_as_a_plugin(cluster: Cluster, operator: OperatorProcess) -> None:
    """`kubectl hfo …` runs `kubectl-hfo` from the PATH (installed with the package)."""
    env = {**cluster.env, "PATH": f"{Path(CLI).parent}:{cluster.env['PATH']}"}
    kubectl = str(cluster.bin_dir / "kubectl")
    result = subprocess.run(
        [kubectl, "hfo", "status", "-A", "-o", "json"],
        env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode in (0, 1), result.stderr  # 1: some state elsewhere is not Ready
    assert isinstance(json.loads(result.stdout), list)
    usage = subprocess.run(
        [kubectl, "hfo", "--help"], env=env, capture_output=True, text=True, check=False
    )
    assert "Usage: kubectl hfo" in usage.stdout
