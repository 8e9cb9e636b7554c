"""Tenants' RBAC decides what a state can reach, and Secret values stay secret — on the real
control plane. (The chart's RBAC and the default ServiceAccount: tests/integration/test_rbac.py.)
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from testbed_fixtures import (
    ChartRepo,
    Cluster,
    OperatorProcess,
    apply,
    condition,
    helm_releases,
    wait_until,
)

# Quotes, backslashes and newlines: how helm and the API server quote it differs from the raw text.
AWKWARD_SECRET = 'p"a\\ss\nw0rd-\t' + "7f3a9c1e5b"


def _encodings(value: str) -> list[str]:
    """The forms a value takes in messages: raw, Go/JSON-quoted, base64."""
    quoted = json.dumps(value)[1:-1]
    return [
        value,
        quoted,
        quoted.replace('\\"', '"'),
        base64.b64encode(value.encode()).decode(),
        *[line for line in value.splitlines() if len(line) >= 6],
    ]


def _visible_text(cluster: Cluster, namespace: str, operator: OperatorProcess) -> str:
    """Everything a user or another tenant could read: statuses, Events, the operator's log."""
    objects = cluster.kubectl_json("get", "hfs,hfr", "-n", namespace)
    events = cluster.kubectl_json("get", "events", "-n", namespace)
    return json.dumps(objects) + json.dumps(events) + operator.log()


def _state(namespace: str, repo_url: str, **release: Any) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": "tenant", "namespace": namespace},
        "spec": {
            "repositories": [{"name": "test", "url": repo_url}],
            "helmDefaults": {"wait": False, "retries": 0},
            "releases": [{"name": "app", "chart": "test/demo-app", "version": "0.1.0", **release}],
        },
    }


def test_a_values_secret_the_tenant_may_not_read_is_refused(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    """The operator here is an admin and could read the Secret; the state's ServiceAccount may
    list Secrets (Helm's storage) but not get one by name, and that is what decides."""
    cluster.run("kubectl", "create", "serviceaccount", "viewer", "-n", namespace)
    cluster.run(
        "kubectl", "create", "role", "list-secrets", "-n", namespace,
        "--verb=list", "--resource=secrets",
    )  # fmt: skip
    for role in ("--clusterrole=view", "--role=list-secrets"):
        cluster.run(
            "kubectl", "create", "rolebinding", f"viewer{role.split('=')[1]}", "-n", namespace,
            role, f"--serviceaccount={namespace}:viewer",
        )  # fmt: skip
    cluster.run(
        "kubectl", "create", "secret", "generic", "app-values", "-n", namespace,
        "--from-literal=values.yaml=message: from-a-secret",
    )  # fmt: skip
    state = _state(
        namespace,
        chart_repo.url,
        valuesFrom=[{"kind": "Secret", "name": "app-values"}],
    )
    state["spec"]["serviceAccountName"] = "viewer"
    apply(cluster, state)

    def refused() -> dict[str, Any] | None:
        got = cluster.run(
            "kubectl", "get", "hfr", "tenant-app", "-n", namespace, "-o", "json", check=False
        )
        if got.returncode != 0:
            return None
        ready = condition(json.loads(got.stdout), "Ready")
        return ready if ready and ready["reason"] == "ValuesUnavailable" else None

    ready = wait_until(refused, timeout=90, message="the refused valuesFrom read")
    message = ready["message"]
    assert "spec.valuesFrom[0]" in message and f"Secret {namespace}/app-values" in message
    assert "forbidden" in message and f"system:serviceaccount:{namespace}:viewer" in message
    assert "`get` on secrets" in message
    assert "app" not in helm_releases(cluster, namespace)


def test_a_secret_value_quoted_by_a_schema_error_appears_nowhere(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    values = "password: " + json.dumps(AWKWARD_SECRET) + "\n"
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "db", "namespace": namespace},
            "stringData": {"values.yaml": values},
        },
    )
    apply(
        cluster,
        _state(
            namespace,
            chart_repo.url,
            chart="test/strict-values",
            valuesFrom=[{"kind": "Secret", "name": "db"}],
        ),
    )

    def failed() -> dict[str, Any] | None:
        got = cluster.run(
            "kubectl", "get", "hfr", "tenant-app", "-n", namespace, "-o", "json", check=False
        )
        if got.returncode != 0:
            return None
        stalled = condition(json.loads(got.stdout), "Stalled")
        return stalled if stalled and stalled["status"] == "True" else None

    stalled = wait_until(failed, timeout=90, message="the schema error")
    assert "InvalidValues" in stalled["message"] or "schema" in stalled["message"]
    visible = _visible_text(cluster, namespace, operator)
    for form in _encodings(AWKWARD_SECRET):
        assert form not in visible, f"the Secret value leaked as {form!r}"


def test_one_namespace_stuck_on_long_timeouts_does_not_slow_another(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    """Eight releases that can never become ready (a nodeSelector no node has) wait out their
    helm timeout in one namespace; a state in another namespace converges about as fast as
    alone, because one namespace gets only its share of helm slots and workers."""

    def converge(ns: str, name: str) -> float:
        started = time.monotonic()
        state = _state(ns, chart_repo.url)
        state["metadata"]["name"] = name
        state["spec"]["releases"][0]["name"] = name  # its own Helm release
        apply(cluster, state)
        wait_until(
            lambda: (
                (condition(cluster.kubectl_json("get", "hfs", name, "-n", ns), "Ready") or {}).get(
                    "status"
                )
                == "True"
            ),
            timeout=120,
            message=f"{ns}/{name} to converge",
        )
        return time.monotonic() - started

    alone = converge(namespace, "alone")

    stuck_ns = f"t-stuck-{uuid.uuid4().hex[:6]}"
    cluster.run("kubectl", "create", "namespace", stuck_ns)
    try:
        stuck = _state(stuck_ns, chart_repo.url)
        stuck["spec"]["helmDefaults"] = {"wait": True, "timeout": "90s", "retries": 0}
        stuck["spec"]["releases"] = [
            {
                "name": f"stuck-{index}",
                "chart": "test/demo-app",
                "version": "0.1.0",
                "values": [{"nodeSelector": {"no-such-node": "anywhere"}}],
            }
            for index in range(8)
        ]
        apply(cluster, stuck)

        def helm_busy() -> bool:
            scrape = operator.scrape()
            line = next(
                (
                    x
                    for x in scrape.splitlines()
                    if x.startswith("helmfile_operator_helm_in_flight ")
                ),
                "",
            )
            return bool(line) and float(line.split()[1]) >= 2

        wait_until(helm_busy, timeout=60, message="the stuck namespace's helm processes to run")
        beside = converge(namespace, "beside")
        assert beside < alone + 30, f"alone {alone:.1f}s, beside a stuck namespace {beside:.1f}s"
    finally:
        cluster.run("kubectl", "delete", "namespace", stuck_ns, "--wait=false", check=False)
