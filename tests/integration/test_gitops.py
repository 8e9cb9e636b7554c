"""GitOps health on the real control plane: the objects the operator produces in each condition
are what the Argo CD testdata holds, the Lua health checks and actions work on them, and kstatus
(what Flux and `kubectl wait` rely on) reads them as intended.

The testdata under gitops/argocd/resource_customizations/*/*/testdata/ is captured here. With
HFO_CAPTURE_GITOPS_TESTDATA=1 these tests rewrite it from the cluster; otherwise they fail when
the operator's output no longer has the shape of the committed files.
"""

from __future__ import annotations

import copy
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed_fixtures import (
    REPO_ROOT,
    ChartRepo,
    Cluster,
    OperatorProcess,
    apply,
    condition,
    wait_for_condition,
    wait_until,
)

sys.path.insert(0, str(REPO_ROOT / "gitops"))

import argocd_cm
import argocd_lua

CAPTURE = os.environ.get("HFO_CAPTURE_GITOPS_TESTDATA") == "1"
API_VERSION = "helmfile.dev/v1alpha1"
LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"
RECONCILE_REQUEST = "helmfile.dev/reconcile-requested-at"
# What the captured objects say instead of this run's namespace, chart repository and times.
NAMESPACE = "demo"
REPOSITORY = "https://charts.example.com"
TIME = "2026-01-01T00:00:00Z"
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")
# Pods that no node can take: `helm --wait` waits until its timeout (kwok runs no containers).
UNSCHEDULABLE = {"nodeSelector": {"helmfile.dev/test": "no-such-node"}}


# --- kstatus, as sigs.k8s.io/cli-utils computes it --------------------------------------------


def kstatus(obj: dict[str, Any]) -> str:
    """sigs.k8s.io/cli-utils pkg/kstatus/status `Compute` for a custom resource (no built-in
    rules apply): `checkGenericProperties` (generic.go: deletion, then `checkGeneration`, then
    the first Reconciling=True or Stalled=True condition), then `checkReadyCondition`
    (status.go), else Current."""
    metadata = obj.get("metadata") or {}
    status = obj.get("status") or {}
    if metadata.get("deletionTimestamp"):
        return "Terminating"
    generation, observed = metadata.get("generation"), status.get("observedGeneration")
    if generation is not None and observed is not None and observed != generation:
        return "InProgress"  # LatestGenerationNotObserved
    conditions = status.get("conditions") or []
    for item in conditions:
        if item["type"] == "Reconciling" and item["status"] == "True":
            return "InProgress"
        if item["type"] == "Stalled" and item["status"] == "True":
            return "Failed"
    for item in conditions:
        if item["type"] == "Ready":
            if item["status"] == "True":
                return "Current"
            if item["status"] in ("False", "Unknown"):
                return "InProgress"
    return "Current"


# --- capturing ------------------------------------------------------------------------------


def kind_dir(kind: str) -> Path:
    return argocd_cm.kind_dir(kind)


def normalize(body: dict[str, Any], namespace: str, repo_url: str) -> dict[str, Any]:
    """The object as committed: no uid, resourceVersion, managedFields or creation time; this
    run's namespace, repository URL and times replaced by fixed ones."""
    body = copy.deepcopy(body)
    metadata = body["metadata"]
    for key in ("uid", "resourceVersion", "managedFields", "creationTimestamp", "selfLink"):
        metadata.pop(key, None)
    annotations = metadata.get("annotations") or {}
    annotations.pop(LAST_APPLIED, None)
    if not annotations:
        metadata.pop("annotations", None)
    for owner in metadata.get("ownerReferences") or []:
        owner.pop("uid", None)
    text = json.dumps(body).replace(repo_url, REPOSITORY).replace(namespace, NAMESPACE)
    normalized: dict[str, Any] = json.loads(TIMESTAMP.sub(TIME, text))
    return normalized


def shape(obj: dict[str, Any]) -> dict[str, Any]:
    """What must match between a capture and the committed file: which status fields exist, the
    conditions (type, status, reason), whether the generation was observed, suspend."""
    status = obj.get("status") or {}
    return {
        "status fields": sorted(status),
        "conditions": sorted(
            (c["type"], c["status"], c["reason"]) for c in status.get("conditions") or []
        ),
        "generation observed": status.get("observedGeneration") == obj["metadata"]["generation"],
        "suspend": bool((obj.get("spec") or {}).get("suspend")),
    }


def dump(obj: dict[str, Any], comment: str = "") -> str:
    text = yaml.safe_dump(obj, sort_keys=False, width=100, allow_unicode=True)
    return "".join(f"# {line}\n" for line in comment.splitlines()) + text


def record(kind: str, name: str, obj: dict[str, Any], comment: str = "") -> None:
    """Write the capture (HFO_CAPTURE_GITOPS_TESTDATA=1), or compare it with the committed file."""
    path = kind_dir(kind) / "testdata" / f"{name}.yaml"
    if CAPTURE:
        path.write_text(dump(obj, comment))
        return
    committed = argocd_lua.load_object(path)
    assert shape(obj) == shape(committed), (
        f"{path} no longer has the shape of what the operator writes; recapture with "
        f"HFO_CAPTURE_GITOPS_TESTDATA=1 .venv/bin/pytest {Path(__file__).relative_to(REPO_ROOT)}"
    )


def record_actions(kind: str, initial: dict[str, Any]) -> None:
    """The action testdata, from a Ready capture: what each action must return for it."""
    stem = kind.lower()
    directory = kind_dir(kind) / "actions" / "testdata"
    reconciled = copy.deepcopy(initial)
    # A time that is replaced on both sides before comparing (as Argo CD's tests do for Flux).
    reconciled["metadata"].setdefault("annotations", {})[RECONCILE_REQUEST] = "0001-01-01T00:00:00Z"
    suspended = copy.deepcopy(initial)
    suspended["spec"]["suspend"] = True
    resumed = copy.deepcopy(initial)
    resumed["spec"]["suspend"] = False
    outputs = {
        "initial": initial, "reconciled": reconciled, "suspended": suspended, "resumed": resumed,
    }  # fmt: skip
    for name, obj in outputs.items():
        path = directory / f"{name}_{stem}.yaml"
        if CAPTURE:
            path.write_text(dump(obj))
        else:
            assert shape(argocd_lua.load_object(path)) == shape(obj), f"{path}: recapture"


def health(kind: str, obj: dict[str, Any]) -> dict[str, str]:
    return argocd_lua.health((kind_dir(kind) / "health.lua").read_text(), obj)


def get(cluster: Cluster, resource: str, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = cluster.kubectl_json("get", resource, name, "-n", namespace)
    return body


def observed(body: dict[str, Any]) -> bool:
    generation: int = body["metadata"]["generation"]
    return bool((body.get("status") or {}).get("observedGeneration") == generation)


def wait_for(
    cluster: Cluster, resource: str, namespace: str, name: str, type_: str, **fields: str
) -> dict[str, Any]:
    """The object once its current generation has a condition with these fields."""

    def matches() -> dict[str, Any] | None:
        body = get(cluster, resource, namespace, name)
        found = condition(body, type_)
        if observed(body) and found and all(found.get(k) == v for k, v in fields.items()):
            return body
        return None

    result: dict[str, Any] = wait_until(
        matches, timeout=120, message=f"{resource}/{name} {type_} {fields}"
    )
    return result


def check(kind: str, obj: dict[str, Any], argocd: str, flux: str) -> None:
    assert health(kind, obj)["status"] == argocd, health(kind, obj)
    assert kstatus(obj) == flux


# --- the objects ------------------------------------------------------------------------------


def release(name: str, namespace: str, repo_url: str, **spec: Any) -> dict[str, Any]:
    chart = {"repository": {"url": repo_url}, "name": "demo-app", "version": "0.1.0"}
    chart.update(spec.pop("chart", {}))
    return {
        "apiVersion": API_VERSION,
        "kind": "HelmfileRelease",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "releaseName": name,
            "targetNamespace": namespace,
            "chart": chart,
            "helm": spec.pop("helm", {"wait": False}),
            **spec,
        },
    }


def state(name: str, namespace: str, repo_url: str, *releases: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "HelmfileState",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "repositories": [{"name": "demo", "url": repo_url}],
            "helmDefaults": {"wait": False},
            "releases": list(releases),
        },
    }


def stale(obj: dict[str, Any]) -> dict[str, Any]:
    """A spec change the operator has not seen yet: the API server bumped the generation. (The
    operator reacts within milliseconds, so this one moment is made, not caught.)"""
    stale = copy.deepcopy(obj)
    stale["metadata"]["generation"] += 1
    return stale


def fresh(obj: dict[str, Any]) -> dict[str, Any]:
    """As created, before the operator's first pass wrote a status."""
    fresh = copy.deepcopy(obj)
    fresh.pop("status", None)
    fresh["metadata"].pop("finalizers", None)
    return fresh


FRESH_COMMENT = (
    "The Ready capture without its status: as created, before the operator's first pass."
)
STALE_COMMENT = (
    "The Ready capture with metadata.generation + 1, as the API server sets it on a spec change\n"
    "the operator has not observed yet."
)


# --- the tests --------------------------------------------------------------------------------


def test_release_health_in_each_condition(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    url = chart_repo.url
    kind = "HelmfileRelease"
    apply(cluster, {"apiVersion": "v1", "kind": "List", "items": [
        release("web", namespace, url, values={"replicaCount": 1}),
        release("worker", namespace, url, needs=["queue"]),
        release(
            "slow", namespace, url,
            helm={"wait": True, "timeout": "60s", "retries": 0}, values=UNSCHEDULABLE,
        ),
        release("typo", namespace, url, chart={"version": "9.9.9"}),
        release(
            "configured", namespace, url,
            valuesFrom=[{"kind": "Secret", "name": "configured-values"}],
        ),
        release(
            "watched", namespace, url,
            interval="3s", driftDetection={"mode": "warn"},
        ),
        release("gated", namespace, url, approval={"mode": "manual"}),
    ]})  # fmt: skip

    def capture(name: str) -> dict[str, Any]:
        return normalize(get(cluster, "hfr", namespace, name), namespace, url)

    # kubectl wait reads the conditions as written.
    wait_for_condition(cluster, "hfr/web", namespace, "Ready")
    healthy = capture("web")
    check(kind, healthy, "Healthy", "Current")
    record(kind, "healthy", healthy)
    record_actions(kind, healthy)
    check(kind, stale(healthy), "Progressing", "InProgress")
    record(kind, "progressing-generation", stale(healthy), STALE_COMMENT)
    # kstatus takes an object without conditions for Current (docs/gitops.md says when it matters).
    check(kind, fresh(healthy), "Progressing", "Current")
    record(kind, "progressing-new", fresh(healthy), FRESH_COMMENT)

    wait_for(cluster, "hfr", namespace, "worker", "Reconciling", reason="NeedsNotReady")
    needs = capture("worker")
    check(kind, needs, "Progressing", "InProgress")
    record(kind, "progressing-needs", needs)

    wait_for(cluster, "hfr", namespace, "slow", "Reconciling", reason="Installing")
    installing = capture("slow")
    check(kind, installing, "Progressing", "InProgress")
    record(kind, "progressing-installing", installing)

    wait_for_condition(cluster, "hfr/typo", namespace, "Stalled")
    stalled = capture("typo")
    check(kind, stalled, "Degraded", "Failed")
    record(kind, "degraded-stalled", stalled)

    wait_for(cluster, "hfr", namespace, "configured", "Ready", status="False")
    retrying = capture("configured")
    # kstatus keeps waiting (Flux times out); Argo CD, which never times out, shows the failure.
    check(kind, retrying, "Degraded", "InProgress")
    record(kind, "degraded-retrying", retrying)

    wait_for_condition(cluster, "hfr/watched", namespace, "Ready")
    cluster.run("kubectl", "scale", "deployment", "watched", "-n", namespace, "--replicas=3")
    wait_for(cluster, "hfr", namespace, "watched", "Drifted", status="True")
    drifted = capture("watched")
    check(kind, drifted, "Healthy", "Current")
    assert "drifted: " in health(kind, drifted)["message"]
    record(kind, "healthy-drifted", drifted)

    # A plan waiting for its approval is paused, not failed (kstatus: Ready=False is InProgress).
    wait_for(cluster, "hfr", namespace, "gated", "Ready", status="False", reason="AwaitingApproval")
    gated = capture("gated")
    check(kind, gated, "Suspended", "InProgress")
    record(kind, "suspended-awaiting-approval", gated)

    # Suspended through the Argo CD action, as Argo CD sends it: a merge patch of the result.
    run_action(cluster, kind, namespace, "web", "suspend")
    suspended = capture_when(cluster, namespace, "hfr", "web", observed)
    suspended = normalize(suspended, namespace, url)
    check(kind, suspended, "Suspended", "Current")  # kstatus knows no suspend
    record(kind, "suspended", suspended)
    # kubectl wait compares the condition's observedGeneration with the object's generation: the
    # Ready kept from before the suspend is for generation 1, so it does not count for 2.
    waited = cluster.run(
        "kubectl", "wait", "-n", namespace, "hfr/web", "--for=condition=Ready", "--timeout=3s",
        check=False,
    )  # fmt: skip
    assert waited.returncode != 0, waited.stdout

    cluster.run("kubectl", "delete", "hfr", "--all", "-n", namespace, "--timeout=180s")


def test_state_health_in_each_condition(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    url = chart_repo.url
    kind = "HelmfileState"
    healthy_state = state("stack", namespace, url, {"name": "web", "chart": "demo/demo-app"})
    healthy_state["metadata"]["annotations"] = {"example.com/team": "serving"}
    slow = {
        "name": "slow", "chart": "demo/demo-app", "values": [UNSCHEDULABLE],
        "helm": {"wait": True, "timeout": "20s", "retries": 0},
    }  # fmt: skip
    apply(cluster, {"apiVersion": "v1", "kind": "List", "items": [
        healthy_state,
        state("rollout", namespace, url, slow),
        state("broken", namespace, url, {"name": "web", "chart": "demo/demo-app", "needs": ["db"]}),
        {**(gated := state("gated", namespace, url, {"name": "gate", "chart": "demo/demo-app"})),
         "spec": {**gated["spec"], "approval": {"mode": "manual"}}},
    ]})  # fmt: skip

    def capture(name: str) -> dict[str, Any]:
        return normalize(get(cluster, "hfs", namespace, name), namespace, url)

    wait_for_condition(cluster, "hfs/stack", namespace, "Ready")
    healthy = capture("stack")
    check(kind, healthy, "Healthy", "Current")
    record(kind, "healthy", healthy)
    record_actions(kind, healthy)
    check(kind, stale(healthy), "Progressing", "InProgress")
    record(kind, "progressing-generation", stale(healthy), STALE_COMMENT)
    # kstatus takes an object without conditions for Current (docs/gitops.md says when it matters).
    check(kind, fresh(healthy), "Progressing", "Current")
    record(kind, "progressing-new", fresh(healthy), FRESH_COMMENT)

    wait_for(cluster, "hfs", namespace, "rollout", "Reconciling", reason="Progressing")
    progressing = capture("rollout")
    check(kind, progressing, "Progressing", "InProgress")
    record(kind, "progressing", progressing)

    wait_for_condition(cluster, "hfs/broken", namespace, "Stalled")
    render_error = capture("broken")
    check(kind, render_error, "Degraded", "Failed")
    record(kind, "degraded-render-error", render_error)

    # The slow release times out, is uninstalled (atomic) and, with no retries, Stalled.
    wait_for_condition(cluster, "hfs/rollout", namespace, "Stalled", timeout=120)
    failed = capture("rollout")
    check(kind, failed, "Degraded", "Failed")
    record(kind, "degraded-release-failed", failed)

    wait_for(cluster, "hfs", namespace, "gated", "Ready", status="False", reason="AwaitingApproval")
    awaiting = capture("gated")
    check(kind, awaiting, "Suspended", "InProgress")
    record(kind, "suspended-awaiting-approval", awaiting)

    # Suspending pauses the releases (they keep their Ready): the state settles Ready again.
    run_action(cluster, kind, namespace, "stack", "suspend")
    child = capture_when(cluster, namespace, "hfr", "stack-web", observed)
    assert child["spec"]["suspend"] is True
    suspended = wait_for(cluster, "hfs", namespace, "stack", "Ready", status="True")
    suspended = normalize(suspended, namespace, url)
    check(kind, suspended, "Suspended", "Current")  # kstatus knows no suspend
    record(kind, "suspended", suspended)

    cluster.run("kubectl", "delete", "hfs", "--all", "-n", namespace, "--timeout=180s")


# --- actions, run as Argo CD runs them ------------------------------------------------------------


def run_action(cluster: Cluster, kind: str, namespace: str, name: str, action: str) -> None:
    """Argo CD's `RunResourceAction`: the action's Lua on the live object, then a JSON merge
    patch from the live object to the result."""
    resource = "hfs" if kind == "HelmfileState" else "hfr"
    live = get(cluster, resource, namespace, name)
    actions = kind_dir(kind) / "actions"
    available = argocd_lua.discovery((actions / "discovery.lua").read_text(), live)
    assert available.get(action) is False, f"{action} is not offered: {available}"
    changed = argocd_lua.action((actions / action / "action.lua").read_text(), live)
    patch = argocd_lua.merge_patch(live, changed)
    cluster.run(
        "kubectl", "patch", resource, name, "-n", namespace, "--type", "merge",
        "-p", json.dumps(patch),
    )  # fmt: skip


def capture_when(
    cluster: Cluster, namespace: str, resource: str, name: str, predicate: Any
) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        body = get(cluster, resource, namespace, name)
        return body if predicate(body) else None

    body: dict[str, Any] = wait_until(ready, timeout=60, message=f"{resource}/{name}")
    return body


@pytest.mark.parametrize("kind", ["HelmfileRelease", "HelmfileState"])
def test_actions_reach_the_operator(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str, kind: str
) -> None:
    url = chart_repo.url
    if kind == "HelmfileRelease":
        resource, name = "hfr", "typo"
        apply(cluster, release(name, namespace, url, chart={"version": "9.9.9"}))
    else:
        resource, name = "hfs", "stack"
        apply(cluster, state(name, namespace, url, {"name": "web", "chart": "demo/demo-app"}))
        wait_for_condition(cluster, f"hfs/{name}", namespace, "Ready")

    def handled(body: dict[str, Any]) -> bool:
        requested = (body["metadata"].get("annotations") or {}).get(RECONCILE_REQUEST)
        return bool(requested and body["status"].get("lastHandledReconcileAt") == requested)

    if kind == "HelmfileRelease":
        wait_for_condition(cluster, f"hfr/{name}", namespace, "Stalled")
    run_action(cluster, kind, namespace, name, "reconcile")
    body = capture_when(cluster, namespace, resource, name, handled)
    requested = body["metadata"]["annotations"][RECONCILE_REQUEST]
    assert argocd_lua.RFC3339_UTC.match(requested), requested
    if kind == "HelmfileState":
        # The state recorded it once its release ran a pass for it; nothing was written to the
        # release (the request reaches it in the operator's memory).
        child = get(cluster, "hfr", namespace, f"{name}-web")
        assert RECONCILE_REQUEST not in (child["metadata"].get("annotations") or {})

    time.sleep(1)  # a second request must differ from the first (the time has whole seconds)
    run_action(cluster, kind, namespace, name, "reconcile")
    again = capture_when(cluster, namespace, resource, name, handled)
    assert again["metadata"]["annotations"][RECONCILE_REQUEST] != requested

    run_action(cluster, kind, namespace, name, "suspend")
    suspended = capture_when(cluster, namespace, resource, name, observed)
    assert suspended["spec"]["suspend"] is True
    assert health(kind, suspended)["status"] == "Suspended"

    run_action(cluster, kind, namespace, name, "resume")
    resumed = capture_when(cluster, namespace, resource, name, observed)
    assert resumed["spec"]["suspend"] is False
    assert health(kind, resumed)["status"] != "Suspended"
    if kind == "HelmfileState":
        wait_until(
            lambda: health(kind, get(cluster, resource, namespace, name))["status"] == "Healthy",
            message="the state Healthy again",
        )
    cluster.run("kubectl", "delete", resource, "--all", "-n", namespace, "--timeout=180s")


def test_argocd_cm_merges_into_an_existing_configmap(cluster: Cluster, namespace: str) -> None:
    """The documented install: a merge patch keeps argocd-cm's other keys."""
    cluster.run(
        "kubectl", "create", "configmap", "argocd-cm", "-n", namespace,
        "--from-literal=url=https://argocd.example.com",
    )  # fmt: skip
    cluster.run(
        "kubectl", "-n", namespace, "patch", "configmap", "argocd-cm", "--type", "merge",
        "--patch-file", str(argocd_cm.CONFIGMAP),
    )  # fmt: skip
    data = get(cluster, "configmap", namespace, "argocd-cm")["data"]
    assert data["url"] == "https://argocd.example.com"
    wanted = yaml.safe_load(argocd_cm.CONFIGMAP.read_text())["data"]
    assert {k: v for k, v in data.items() if k != "url"} == wanted
