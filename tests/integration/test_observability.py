"""Metrics, probes and logs as an on-call engineer meets them, on the real control plane."""

from __future__ import annotations

import json
import re
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from testbed_fixtures import (
    ChartRepo,
    Cluster,
    OperatorProcess,
    apply,
    condition,
    wait_for_condition,
    wait_until,
)


def samples(operator: OperatorProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of a live scrape, keyed by name and label set."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(operator.scrape())
        for sample in family.samples
    }


def value(found: dict[Any, float], metric: str, /, **labels: str) -> float:
    """Sum of the samples of `metric` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == metric and wanted <= ls)


def _state(namespace: str, url: str, releases: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": "observed", "namespace": namespace},
        "spec": {
            "repositories": [{"name": "test", "url": url}],
            "helmDefaults": {"timeout": "10s", "retries": 0},
            "releases": releases,
        },
    }


def test_metrics_follow_convergence_failure_and_deletion(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, namespace: str
) -> None:
    before = samples(operator)
    good = {"name": "good", "chart": "test/demo-app", "version": "0.1.0"}
    apply(cluster, _state(namespace, chart_repo.url, [good]))
    wait_for_condition(cluster, "hfs/observed", namespace, "Ready")

    # The Ready status is written as soon as helm returns; the pass (and its counters) ends a
    # moment later.
    wait_until(
        lambda: value(samples(operator), "helmfile_operator_reconcile_total",
                      kind="HelmfileRelease", result="success")
        > value(before, "helmfile_operator_reconcile_total", kind="HelmfileRelease",
                result="success"),
        timeout=30,
        message="the release's pass to be counted",
    )  # fmt: skip
    after = samples(operator)
    for name, labels in [
        ("helmfile_operator_reconcile_total", {"kind": "HelmfileRelease", "result": "success"}),
        ("helmfile_operator_reconcile_total", {"kind": "HelmfileState", "result": "success"}),
        ("helmfile_operator_reconcile_duration_seconds_count", {"kind": "HelmfileRelease"}),
        ("helmfile_operator_helm_commands_total", {"command": "upgrade", "result": "success"}),
        ("helmfile_operator_helm_command_duration_seconds_count", {"command": "upgrade"}),
        ("helmfile_operator_release_actions_total", {"action": "install", "result": "success"}),
    ]:
        assert value(after, name, **labels) > value(before, name, **labels), (name, labels)
    assert value(after, "helmfile_operator_build_info") == 1
    ready_series = {"namespace": namespace, "name": "observed-good", "condition": "Ready"}
    wait_until(
        lambda: value(samples(operator), "helmfile_operator_release_condition", status="True",
                      **ready_series) == 1,
        message="the Ready series of the release",
    )  # fmt: skip

    # A release that cannot become ready: failure and remediation counters move.
    broken = {**good, "values": [{"nodeSelector": {"no-such-label": "anywhere"}}]}
    apply(cluster, _state(namespace, chart_repo.url, [broken]))
    wait_until(
        lambda: condition(
            cluster.kubectl_json("get", "hfr", "observed-good", "-n", namespace), "Stalled"
        ),
        message="the broken release to stall",
    )
    failed = samples(operator)
    assert value(failed, "helmfile_operator_helm_commands_total", command="upgrade",
                 result="error") > value(after, "helmfile_operator_helm_commands_total",
                                         command="upgrade", result="error")  # fmt: skip
    assert value(failed, "helmfile_operator_remediations_total", action="rollback") > value(
        after, "helmfile_operator_remediations_total", action="rollback"
    )
    assert value(failed, "helmfile_operator_release_actions_total", action="upgrade",
                 result="failure") >= 1  # fmt: skip
    wait_until(
        lambda: value(samples(operator), "helmfile_operator_release_condition",
                      condition="Stalled", status="True", namespace=namespace) == 1,
        message="the Stalled series",
    )  # fmt: skip

    # Deleting the state removes its per-object series.
    cluster.run("kubectl", "delete", "hfs", "observed", "-n", namespace, "--timeout=120s")
    wait_until(
        lambda: (
            not any(dict(labels).get("namespace") == namespace for (_, labels) in samples(operator))
        ),
        message="the per-object series of the deleted state to disappear",
    )


def test_probes_answer_while_the_operator_runs(operator: OperatorProcess) -> None:
    for url in (
        f"http://127.0.0.1:{operator.health_port}/healthz",
        f"http://127.0.0.1:{operator.metrics_port}/readyz",
    ):
        with urllib.request.urlopen(url, timeout=5) as response:
            assert response.status == 200


METRIC = re.compile(r"helmfile_operator_[a-z_]+")
CHART = Path(__file__).resolve().parents[2] / "charts" / "helmfile-operator"


def _family(name: str) -> str:
    for suffix in ("_bucket", "_count", "_sum", "_total"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def test_alerts_and_dashboard_use_only_exposed_metrics(
    cluster: Cluster, operator: OperatorProcess
) -> None:
    exposed = {family.name for family in text_string_to_metric_families(operator.scrape())}
    rendered = cluster.run(
        "helm", "template", "hfo", str(CHART),
        "--set", "prometheusRule.enabled=true", "--set", "grafanaDashboard.enabled=true",
    ).stdout  # fmt: skip
    documents = [doc for doc in yaml.safe_load_all(rendered) if doc]
    rules = [doc for doc in documents if doc["kind"] == "PrometheusRule"]
    dashboards = [
        json.loads(text)
        for doc in documents
        if doc["kind"] == "ConfigMap"
        for name, text in (doc.get("data") or {}).items()
        if name.endswith(".json")
    ]
    assert rules
    assert dashboards  # and each one parsed as JSON

    expressions = [
        rule["expr"] for doc in rules for group in doc["spec"]["groups"] for rule in group["rules"]
    ]
    expressions += re.findall(r'"expr":\s*"((?:[^"\\]|\\.)*)"', json.dumps(dashboards))
    assert expressions
    used = {_family(name) for expr in expressions for name in METRIC.findall(expr)}
    assert used
    assert used <= exposed, f"not exposed by the operator: {sorted(used - exposed)}"
