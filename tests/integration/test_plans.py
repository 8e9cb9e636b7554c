"""Plans, approval and atomic rollouts on the real control plane: what a change will do is on the
objects before it happens; manual approval applies exactly the approved plan; an atomic state
rolls out, or back, as one unit."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

from testbed_fixtures import (
    ChartRepo,
    Cluster,
    OperatorProcess,
    apply,
    condition,
    helm_history,
    helm_releases,
    wait_until,
)

APPROVE = "helmfile.dev/approve"


def _state(
    namespace: str,
    repo_url: str,
    releases: list[dict[str, Any]],
    *,
    name: str = "stack",
    replicas: int = 1,
    **spec: Any,
) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "environment": "dev",
            "environments": {"dev": {"values": [{"replicas": replicas}]}},
            "repositories": [{"name": "test", "url": repo_url}],
            "helmDefaults": {"wait": False, "timeout": "60s"},
            "releases": releases,
            **spec,
        },
    }


def _release(name: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "chart": "test/demo-app", "version": "0.1.0", **extra}


def _three(**extra: Any) -> list[dict[str, Any]]:
    """db ← api ← web: `web` takes its replicas from the environment."""
    return [
        _release("db"),
        _release("api", needs=["db"]),
        _release(
            "web",
            needs=["api"],
            valuesTemplate=["replicaCount: {{ environment.values.replicas }}"],
            **extra,
        ),
    ]


def _hfs(cluster: Cluster, namespace: str, name: str = "stack") -> dict[str, Any]:
    body: dict[str, Any] = cluster.kubectl_json("get", "hfs", name, "-n", namespace)
    return body


def _hfr(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    body: dict[str, Any] = cluster.kubectl_json("get", "hfr", name, "-n", namespace)
    return body


def _state_plan(cluster: Cluster, namespace: str, count: int) -> dict[str, Any]:
    """The state's plan once all `count` releases are in it."""

    def ready() -> dict[str, Any] | None:
        plan = (_hfs(cluster, namespace).get("status") or {}).get("plan")
        return plan if plan and len(plan["releases"]) == count else None

    plan: dict[str, Any] = wait_until(ready, timeout=120, message=f"a plan of {count} releases")
    return plan


def _dry_runs(operator: OperatorProcess) -> float:
    return _metric(operator, "helmfile_operator_helm_commands_total", command="upgrade --dry-run")


def _upgrades(operator: OperatorProcess) -> float:
    return _metric(operator, "helmfile_operator_helm_commands_total", command="upgrade")


def _metric(operator: OperatorProcess, name: str, **labels: str) -> float:
    total = 0.0
    for line in operator.scrape().splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _diff_text(cluster: Cluster, namespace: str, secret: str) -> str:
    body = cluster.kubectl_json("get", "secret", secret, "-n", namespace)
    return base64.b64decode(body["data"]["diff"]).decode()


def test_manual_approval_plans_a_stack_then_applies_exactly_the_approved_plan(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    manual = {"approval": {"mode": "manual"}}
    apply(cluster, _state(namespace, chart_repo.url, _three(), **manual))

    plan = _state_plan(cluster, namespace, 3)
    assert [(r["name"], r["action"]) for r in plan["releases"]] == [
        ("stack-db", "install"), ("stack-api", "install"), ("stack-web", "install"),
    ]  # fmt: skip
    assert (plan["install"], plan["upgrade"], plan["delete"]) == (3, 0, 0)
    assert helm_releases(cluster, namespace) == {}, "nothing is installed before the approval"
    state = _hfs(cluster, namespace)
    ready = condition(state, "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert ready["reason"] == "AwaitingApproval"
    assert f"{APPROVE}={plan['id']}" in ready["message"]
    web = _hfr(cluster, namespace, "stack-web")
    objects = {(o["kind"], o["name"], o["action"]) for o in web["status"]["plan"]["objects"]}
    assert objects == {
        ("Deployment", "web", "create"), ("Service", "web", "create"),
        ("ConfigMap", "web", "create"), ("Secret", "web", "create"),
    }  # fmt: skip
    assert _metric(operator, "helmfile_operator_plans_awaiting_approval") >= 3

    cluster.run("kubectl", "annotate", "hfs", "stack", "-n", namespace, f"{APPROVE}={plan['id']}")
    wait_until(
        lambda: (condition(_hfs(cluster, namespace), "Ready") or {}).get("status") == "True",
        timeout=240,
        message="the approved stack to be Ready",
    )
    assert sorted(helm_releases(cluster, namespace)) == ["api", "db", "web"]
    assert _hfr(cluster, namespace, "stack-web")["status"]["plan"]["phase"] == "Applied"

    # One environment value changes: one update of one field of one Deployment, not applied.
    upgrades = _upgrades(operator)
    apply(cluster, _state(namespace, chart_repo.url, _three(), replicas=3, **manual))
    plan = _state_plan(cluster, namespace, 1)
    assert plan["releases"][0]["name"] == "stack-web"
    assert plan["releases"][0]["action"] == "upgrade"
    web_plan = _hfr(cluster, namespace, "stack-web")["status"]["plan"]
    assert web_plan["objects"] == [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": "web",
            "namespace": namespace,
            "action": "update",
            "paths": ["/spec/replicas"],
        }
    ]
    assert web_plan["values"] == ["/replicaCount"]
    assert web_plan["chartVersionFrom"] == web_plan["chartVersionTo"] == "0.1.0"
    diff = _diff_text(cluster, namespace, web_plan["diffSecret"])
    assert re.search(r"^-\s+replicas: 1$", diff, re.MULTILINE), diff
    assert re.search(r"^\+\s+replicas: 3$", diff, re.MULTILINE), diff
    assert _upgrades(operator) == upgrades, "no helm upgrade before the approval"
    assert helm_releases(cluster, namespace)["web"]["revision"] == "1"

    # Meanwhile the value changes again: the approval of the older plan is refused.
    stale = plan["id"]
    apply(cluster, _state(namespace, chart_repo.url, _three(), replicas=4, **manual))
    newer = wait_until(
        lambda: (p := _state_plan(cluster, namespace, 1))["id"] != stale and p,
        message="a new plan",
    )
    cluster.run(
        "kubectl", "annotate", "--overwrite", "hfs", "stack", "-n", namespace, f"{APPROVE}={stale}"
    )
    wait_until(
        lambda: _hfs(cluster, namespace)["status"].get("refusedApproval") == stale,
        message="the stale approval to be refused",
    )
    ready = condition(_hfs(cluster, namespace), "Ready")
    assert ready is not None
    assert ready["reason"] == "AwaitingApproval"
    assert f"approval {stale} was refused" in ready["message"]
    assert newer["id"] in ready["message"]
    assert _upgrades(operator) == upgrades
    assert helm_releases(cluster, namespace)["web"]["revision"] == "1"

    cluster.run(
        "kubectl", "annotate", "--overwrite", "hfs", "stack", "-n", namespace,
        f"{APPROVE}={newer['id']}",
    )  # fmt: skip
    wait_until(
        lambda: helm_releases(cluster, namespace)["web"]["revision"] == "2",
        message="the approved upgrade",
    )
    deployment = cluster.kubectl_json("get", "deployment", "web", "-n", namespace)
    assert deployment["spec"]["replicas"] == 4


def test_automatic_changes_record_their_plan_first(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    apply(cluster, _state(namespace, chart_repo.url, [_three()[0]]))
    wait_until(
        lambda: (condition(_hfs(cluster, namespace), "Ready") or {}).get("status") == "True",
        message="the state to be Ready",
    )
    first = _hfr(cluster, namespace, "stack-db")["status"]["plan"]
    assert first["action"] == "install"
    assert first["phase"] == "Applied"
    assert first["counts"]["create"] == 4

    # Nothing changes: a pass plans nothing and runs no helm process.
    dry_runs = _dry_runs(operator)
    cluster.run(
        "kubectl", "annotate", "--overwrite", "hfr", "stack-db", "-n", namespace,
        "helmfile.dev/reconcile-requested-at=now-1",
    )  # fmt: skip
    wait_until(
        lambda: (
            _hfr(cluster, namespace, "stack-db")["status"].get("lastHandledReconcileAt") == "now-1"
        ),
        message="the reconcile request to be handled",
    )
    assert _dry_runs(operator) == dry_runs
    assert _hfr(cluster, namespace, "stack-db")["status"]["plan"]["id"] == first["id"]

    release = _release("db", values=[{"message": "changed"}])
    apply(cluster, _state(namespace, chart_repo.url, [release]))
    plan = wait_until(
        lambda: (
            (p := _hfr(cluster, namespace, "stack-db")["status"]["plan"])["id"] != first["id"]
            and p["phase"] == "Applied"
            and p
        ),
        message="the upgrade and its plan",
    )
    assert _dry_runs(operator) == dry_runs + 1, "one dry run for the change"
    assert plan["action"] == "upgrade"
    changed = {(o["kind"], o["action"]): o["paths"] for o in plan["objects"]}
    assert changed[("ConfigMap", "update")] == ["/data/message"]
    # The pod template's config checksum follows the ConfigMap.
    assert changed[("Deployment", "update")] == [
        "/spec/template/metadata/annotations/checksum~1config"
    ]
    assert plan["values"] == ["/message"]
    assert helm_releases(cluster, namespace)["db"]["revision"] == "2"


def test_secret_values_stay_out_of_plans_and_the_stored_diff_masks_them(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    secret_message = "plan-secret-message-4711"
    secret_token = "plan-secret-token-0815"
    values = f"message: {secret_message}\ntoken: {secret_token}\n"
    cluster.run(
        "kubectl", "create", "secret", "generic", "app-values", "-n", namespace,
        f"--from-literal=values.yaml={values}",
    )  # fmt: skip
    release = _release(
        "app",
        values=[{"message": "public", "token": "public-token-1"}],
        valuesFrom=[{"kind": "Secret", "name": "app-values"}],
    )
    apply(cluster, _state(namespace, chart_repo.url, [_release("app")]))
    wait_until(
        lambda: (condition(_hfs(cluster, namespace), "Ready") or {}).get("status") == "True",
        message="the state to be Ready",
    )
    apply(cluster, _state(namespace, chart_repo.url, [release], approval={"mode": "manual"}))
    _state_plan(cluster, namespace, 1)
    hfr = _hfr(cluster, namespace, "stack-app")
    plan = hfr["status"]["plan"]
    assert {(o["kind"], tuple(o["paths"])) for o in plan["objects"]} >= {
        ("ConfigMap", ("/data/message",)), ("Secret", ("/data/token",)),
    }  # fmt: skip
    diff = _diff_text(cluster, namespace, plan["diffSecret"])
    assert "token: '*** (changed)'" in diff, diff
    leaks = [
        form
        for secret in (secret_message, secret_token)
        for form in (secret, base64.b64encode(secret.encode()).decode())
    ]
    events = cluster.run("kubectl", "get", "events", "-n", namespace, "-o", "json").stdout
    shown = {
        "diff": diff,
        "hfr": json.dumps(hfr),
        "hfs": json.dumps(_hfs(cluster, namespace)),
        "events": events,
        "log": operator.log(),
    }
    for where, text in shown.items():
        for form in leaks:
            assert form not in text, f"{form!r} leaked into the {where}"
    secret = cluster.kubectl_json("get", "secret", plan["diffSecret"], "-n", namespace)
    assert secret["metadata"]["ownerReferences"][0]["name"] == "stack-app"

    # Approved and deployed, then the Secret is rotated: the next plan's diff shows neither the
    # new value nor the old one (which the deployed manifest holds).
    cluster.run(
        "kubectl", "annotate", "--overwrite", "hfs", "stack", "-n", namespace,
        f"{APPROVE}={_state_plan(cluster, namespace, 1)['id']}",
    )  # fmt: skip
    wait_until(
        lambda: helm_releases(cluster, namespace)["app"]["revision"] == "2",
        message="the approved upgrade",
    )
    rotated = "plan-rotated-message-2024"
    manifest = cluster.run(
        "kubectl", "create", "secret", "generic", "app-values", "-n", namespace,
        f"--from-literal=values.yaml=message: {rotated}\ntoken: {secret_token}\n",
        "--dry-run=client", "-o", "json",
    ).stdout  # fmt: skip
    cluster.run("kubectl", "apply", "-f", "-", input=manifest)
    cluster.run(
        "kubectl", "annotate", "--overwrite", "hfr", "stack-app", "-n", namespace,
        "helmfile.dev/reconcile-requested-at=rotated",
    )  # fmt: skip
    rotated_plan = wait_until(
        lambda: (
            (p := _hfr(cluster, namespace, "stack-app")["status"].get("plan") or {}).get("phase")
            == "AwaitingApproval"
            and p
        ),
        message="the plan of the rotated Secret",
    )
    assert ("ConfigMap", ("/data/message",)) in {
        (o["kind"], tuple(o["paths"])) for o in rotated_plan["objects"]
    }
    diff = _diff_text(cluster, namespace, rotated_plan["diffSecret"])
    for value in (secret_message, rotated):
        assert value not in diff, f"{value!r} is in the diff:\n{diff}"
        assert base64.b64encode(value.encode()).decode() not in diff


def test_atomic_rollout_rolls_back_the_releases_it_upgraded_when_one_fails(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    defaults = {"wait": True, "timeout": "15s", "retries": 0}
    atomic = {"rollout": {"atomic": True}, "helmDefaults": defaults}
    first = [
        _release("db", values=[{"message": "v1"}]),
        _release("api", needs=["db"], values=[{"message": "v1"}]),
        _release("web", needs=["api"], values=[{"message": "v1"}]),
    ]
    apply(cluster, _state(namespace, chart_repo.url, first, **atomic))
    wait_until(
        lambda: (condition(_hfs(cluster, namespace), "Ready") or {}).get("status") == "True",
        timeout=240,
        message="the first rollout to be Ready",
    )
    # One generation upgrades all three; the third cannot schedule its pod.
    second = [
        _release("db", values=[{"message": "v2"}]),
        _release("api", needs=["db"], values=[{"message": "v2"}]),
        _release(
            "web",
            needs=["api"],
            values=[{"message": "v2", "nodeSelector": {"helmfile.dev/test": "no-such-node"}}],
        ),
    ]
    apply(cluster, _state(namespace, chart_repo.url, second, **atomic))

    def rolled_back() -> dict[str, Any] | None:
        rollout = (_hfs(cluster, namespace).get("status") or {}).get("rollout") or {}
        return rollout if rollout.get("phase") == "RolledBack" else None

    rollout = wait_until(rolled_back, timeout=300, message="the rollout to be rolled back")
    assert rollout["failed"] == "stack-web"
    assert rollout["rolledBack"] == ["stack-api", "stack-db"], "reverse needs order"
    ready = condition(_hfs(cluster, namespace), "Ready")
    assert ready is not None
    assert ready["status"] == "False"
    assert ready["reason"] == "RolloutRolledBack"
    for name in ("stack-web", "stack-api", "stack-db"):
        assert name in ready["message"]
    for release in ("db", "api"):
        history = helm_history(cluster, namespace, release)
        assert [h["revision"] for h in history] == [1, 2, 3]
        assert "Rollback to 1" in history[-1]["description"]
        config = cluster.kubectl_json("get", "configmap", release, "-n", namespace)
        assert config["data"]["message"] == "v1"
    for name in ("stack-db", "stack-api", "stack-web"):
        hfr = _hfr(cluster, namespace, name)
        assert hfr["metadata"]["annotations"]["helmfile.dev/rollout-hold"] == rollout["id"]
        assert condition(hfr, "Ready")["reason"] == "RolloutRolledBack"  # type: ignore[index]

    # A new generation starts a new rollout: the holds are lifted and it converges.
    third = [*second[:2], _release("web", needs=["api"], values=[{"message": "v3"}])]
    apply(cluster, _state(namespace, chart_repo.url, third, **atomic))
    wait_until(
        lambda: (
            (_hfs(cluster, namespace)["status"].get("rollout") or {}).get("phase") == "Succeeded"
        ),
        timeout=240,
        message="the next rollout to succeed",
    )
    assert "helmfile.dev/rollout-hold" not in (
        _hfr(cluster, namespace, "stack-db")["metadata"].get("annotations") or {}
    )
    config = cluster.kubectl_json("get", "configmap", "web", "-n", namespace)
    assert config["data"]["message"] == "v3"
