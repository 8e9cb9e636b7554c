"""The Helm chart (charts/helmfile-operator): lint, render, install on the real control plane, and
monitoring that only uses metrics the operator defines."""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from helmfile_operator import metrics
from testbed_fixtures import REPO_ROOT, Cluster

CHART = REPO_ROOT / "charts" / "helmfile-operator"
DASHBOARD = CHART / "dashboards" / "helmfile-operator.json"
MONITORING = [
    "--set=serviceMonitor.enabled=true",
    "--set=prometheusRule.enabled=true",
    "--set=grafanaDashboard.enabled=true",
]
# kwok runs no containers: any image name will do, and none is pulled.
FAKE_IMAGE = ["--set=image.repository=registry.invalid/helmfile-operator", "--set=image.tag=test"]

VARIANTS = {
    "defaults": [],
    "monitoring": MONITORING,
    "watch-namespaces": ["--set=watchNamespaces={team-a,team-b}"],
    "helm-admin-json-logs": ["--set=rbac.helmAdmin=true", "--set=logFormat=json"],
    "hardened": ["--set=tmp.medium=Memory", "--set=rbac.tenantServiceAccountNames={deployer}"],
    "two-shards": ["--set=shards={a,b}"],
    "one-replica-no-election": ["--set=replicaCount=1", "--set=leaderElection.enabled=false"],
}


def render(cluster: Cluster, *flags: str, release: str = "hfo") -> list[dict[str, Any]]:
    """`helm template` of the chart, as parsed objects."""
    text = cluster.run(
        "helm", "template", release, str(CHART), "--namespace", "hfo-system", *flags
    ).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def only(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (found,) = find(objects, kind)
    return found


def operator_cluster_role(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator's own ClusterRole (the chart also renders the aggregated `view` one)."""
    (role,) = [
        o for o in find(objects, "ClusterRole") if o["metadata"]["name"] == "hfo-helmfile-operator"
    ]
    return role


def rules_of(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    """(apiGroup, resource, verb) triples a Role or ClusterRole grants."""
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


OPERATOR_RULES = {
    *{
        ("helmfile.dev", resource, verb)
        for resource in ("helmfilestates", "helmfilereleases")
        for verb in ("get", "list", "watch", "create", "update", "patch", "delete")
    },
    *{
        ("helmfile.dev", f"{resource}/status", verb)
        for resource in ("helmfilestates", "helmfilereleases")
        for verb in ("get", "update", "patch")
    },
    ("", "events", "create"),
    ("", "events", "patch"),
    # No ConfigMaps, no Secrets: tenant data is read as the tenant.
    ("", "serviceaccounts", "impersonate"),
}
CRD_RULES = {
    ("apiextensions.k8s.io", "customresourcedefinitions", verb) for verb in ("get", "list", "watch")
}


# --- lint and render ----------------------------------------------------------------------------


@pytest.mark.parametrize("flags", VARIANTS.values(), ids=VARIANTS.keys())
def test_lint_is_clean(cluster: Cluster, flags: list[str]) -> None:
    result = cluster.run("helm", "lint", "--strict", str(CHART), *flags)
    assert "[WARNING]" not in result.stdout and "[ERROR]" not in result.stdout, result.stdout
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    "flag",
    [
        "--set=replicaCount=0",
        "--set=shards={Not_A_Key}",
        "--set=shards={a,a}",
        "--set=podAntiAffinity=sometimes",
        "--set=leaderElection.leaseDurationSeconds=0",
        "--set=logFormat=xml",
        "--set=watchNamespaces={Not_A_Namespace}",
        "--set=image.pullPolicy=Sometimes",
        "--set=helmConcurrency=0",
        "--set=unknownKey=1",
    ],
)
def test_schema_rejects_bad_values(cluster: Cluster, flag: str) -> None:
    result = cluster.run("helm", "lint", str(CHART), flag, check=False)
    assert result.returncode != 0 and "[ERROR]" in result.stdout, result.stdout


@pytest.mark.parametrize(
    "flags",
    [
        ["--set=replicaCount=2", "--set=leaderElection.enabled=false"],
        ["--set=leaderElection.renewDeadlineSeconds=15"],
        ["--set=leaderElection.retryPeriodSeconds=10"],
    ],
    ids=["replicas-without-election", "deadline-not-below-duration", "retry-not-below-deadline"],
)
def test_unsafe_leader_election_values_fail_to_render(cluster: Cluster, flags: list[str]) -> None:
    result = cluster.run("helm", "template", "hfo", str(CHART), *flags, check=False)
    assert result.returncode != 0 and "leaderElection" in result.stderr, result.stderr


def test_cluster_wide_rendering(cluster: Cluster) -> None:
    objects = render(cluster)
    assert sorted(o["kind"] for o in objects) == [
        "ClusterRole", "ClusterRole", "ClusterRoleBinding", "Deployment", "PodDisruptionBudget",
        "Role", "RoleBinding", "Service", "ServiceAccount",
    ]  # fmt: skip
    deployment = only(objects, "Deployment")
    spec = deployment["spec"]
    # Two replicas, one acting: a new pod starts as a standby, so a rolling update is safe.
    assert spec["replicas"] == 2
    assert spec["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }  # fmt: skip
    selector = spec["selector"]["matchLabels"]
    anti = spec["template"]["spec"]["affinity"]["podAntiAffinity"]
    (preferred,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["podAffinityTerm"] == {
        "labelSelector": {"matchLabels": selector}, "topologyKey": "kubernetes.io/hostname",
    }  # fmt: skip
    budget = only(objects, "PodDisruptionBudget")["spec"]
    assert budget == {"maxUnavailable": 1, "selector": {"matchLabels": selector}}
    lease_role = only(objects, "Role")
    assert lease_role["metadata"]["namespace"] == "hfo-system"
    assert rules_of(lease_role) == {
        ("coordination.k8s.io", "leases", verb) for verb in ("get", "create", "update")
    }
    assert only(objects, "RoleBinding")["roleRef"]["name"] == lease_role["metadata"]["name"]
    pod = spec["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/helmfile-operator/helmfile-operator:0.1.0"
    assert container["args"] == ["run", "--log-format=text"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["HELMFILE_OPERATOR_MAX_CONCURRENT_HELM"] == "8"
    assert env["HELMFILE_OPERATOR_LEADER_ELECTION"] == "true"
    assert env["HELMFILE_OPERATOR_LEASE_DURATION_SECONDS"] == "15"
    assert env["HELMFILE_OPERATOR_RENEW_DEADLINE_SECONDS"] == "10"
    assert env["HELMFILE_OPERATOR_RETRY_PERIOD_SECONDS"] == "2"
    (namespace_env,) = [
        e for e in container["env"] if e["name"] == "HELMFILE_OPERATOR_LEADER_ELECTION_NAMESPACE"
    ]
    assert namespace_env["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": 8080, "health": 8081}
    assert container["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"},
    }  # fmt: skip
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["runAsNonRoot"] is True and security["runAsUser"] == 65532
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}]
    assert pod["volumes"][0]["name"] == "tmp" and "emptyDir" in pod["volumes"][0]
    service = only(objects, "Service")
    assert service["spec"]["ports"] == [
        {"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}
    ]
    account = only(objects, "ServiceAccount")["metadata"]["name"]
    assert pod["serviceAccountName"] == account
    assert service["spec"]["selector"] == {
        "app.kubernetes.io/instance": "hfo", "app.kubernetes.io/component": "operator",
    }  # fmt: skip
    role = operator_cluster_role(objects)
    assert rules_of(role) == OPERATOR_RULES | CRD_RULES
    binding = only(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": account, "namespace": "hfo-system"}
    ]


def test_one_replica_without_leader_election_is_recreated(cluster: Cluster) -> None:
    objects = render(cluster, *VARIANTS["one-replica-no-election"])
    spec = only(objects, "Deployment")["spec"]
    assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}
    assert "affinity" not in spec["template"]["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    assert not any("LEADER_ELECTION" in e["name"] for e in container["env"])
    assert not find(objects, "PodDisruptionBudget") and not find(objects, "Role")


def test_each_shard_gets_a_deployment_of_its_own(cluster: Cluster) -> None:
    objects = render(cluster, *VARIANTS["two-shards"])
    deployments = {d["metadata"]["name"]: d for d in find(objects, "Deployment")}
    assert set(deployments) == {
        "hfo-helmfile-operator", "hfo-helmfile-operator-shard-a", "hfo-helmfile-operator-shard-b",
    }  # fmt: skip
    selectors = {}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]
        (container,) = pod["spec"]["containers"]
        shard = name.rpartition("-shard-")[2] if "-shard-" in name else None
        assert container["args"] == ["run", "--log-format=text"] + (
            [f"--shard={shard}"] if shard else []
        )
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert pod["metadata"]["labels"].items() >= selector.items()
        selectors[name] = selector
    # No Deployment's selector matches another's pods (the main one keeps its old selector).
    for name, selector in selectors.items():
        for other, deployment in deployments.items():
            labels = deployment["spec"]["template"]["metadata"]["labels"]
            assert (labels.items() >= selector.items()) == (name == other), (name, other)
    assert selectors["hfo-helmfile-operator"] == {
        "app.kubernetes.io/name": "helmfile-operator", "app.kubernetes.io/instance": "hfo",
    }  # fmt: skip
    budgets = {b["metadata"]["name"]: b["spec"]["selector"]["matchLabels"] for b in
               find(objects, "PodDisruptionBudget")}  # fmt: skip
    assert budgets == selectors
    # One Service over all of them: each pod's metrics (standbys' too) are scraped.
    service = only(objects, "Service")["spec"]["selector"]
    for deployment in deployments.values():
        assert deployment["spec"]["template"]["metadata"]["labels"].items() >= service.items()


def test_namespaced_rendering(cluster: Cluster) -> None:
    objects = render(cluster, *VARIANTS["watch-namespaces"])
    (container,) = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["args"] == [
        "run", "--log-format=text", "--namespace=team-a", "--namespace=team-b",
    ]  # fmt: skip
    roles = {(r["metadata"]["namespace"], r["metadata"]["name"]): r for r in find(objects, "Role")}
    assert set(roles) == {
        ("team-a", "hfo-helmfile-operator"),
        ("team-b", "hfo-helmfile-operator"),
        ("hfo-system", "hfo-helmfile-operator-leader-election"),
    }
    assert rules_of(roles["team-a", "hfo-helmfile-operator"]) == OPERATOR_RULES
    bindings = {
        (b["metadata"]["namespace"], b["roleRef"]["name"]) for b in find(objects, "RoleBinding")
    }
    assert bindings == set(roles)
    # Cluster-wide, only kopf's reads: CRDs (re-discovery) and namespaces (which exist).
    cluster_role = operator_cluster_role(objects)
    assert rules_of(cluster_role) == CRD_RULES | {
        ("", "namespaces", verb) for verb in ("get", "list", "watch")
    }


def test_helm_admin_binds_cluster_admin_only_when_asked(cluster: Cluster) -> None:
    assert len(find(render(cluster), "ClusterRoleBinding")) == 1
    bindings = find(render(cluster, "--set=rbac.helmAdmin=true"), "ClusterRoleBinding")
    admin = [b for b in bindings if b["roleRef"]["name"] == "cluster-admin"]
    assert len(admin) == 1 and admin[0]["subjects"][0]["kind"] == "ServiceAccount"


def _default_account(objects: list[dict[str, Any]]) -> str:
    return str(_env(objects)["HELMFILE_OPERATOR_DEFAULT_SERVICE_ACCOUNT"])


def test_states_without_a_service_account_run_as_the_default_one(cluster: Cluster) -> None:
    assert _default_account(render(cluster)) == "default"
    assert _default_account(render(cluster, "--set=defaultServiceAccount=deployer")) == "deployer"
    # helmAdmin is the explicit single-tenant opt-in: the operator's own identity.
    assert _default_account(render(cluster, "--set=rbac.helmAdmin=true")) == ""


def _env(objects: list[dict[str, Any]]) -> dict[str, str | None]:
    (container,) = only(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value") for e in container["env"]}


def test_kubeconfig_exec_plugins_stay_refused_unless_asked(cluster: Cluster) -> None:
    assert _env(render(cluster))["HELMFILE_OPERATOR_ALLOW_KUBECONFIG_EXEC"] == "false"
    allowed = _env(render(cluster, "--set=allowKubeconfigExec=true"))
    assert allowed["HELMFILE_OPERATOR_ALLOW_KUBECONFIG_EXEC"] == "true"


def test_image_tag_defaults_to_app_version_and_digest_wins(cluster: Cluster) -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["version"] == chart["appVersion"] == "0.1.0"
    digest = "sha256:" + "a" * 64
    (container,) = only(render(cluster, f"--set=image.digest={digest}"), "Deployment")["spec"][
        "template"
    ]["spec"]["containers"]
    assert container["image"] == f"ghcr.io/helmfile-operator/helmfile-operator@{digest}"


# --- monitoring uses only metrics the operator defines ------------------------------------------

METRIC_NAME = re.compile(r"helmfile_operator_[a-z_]+")
SUFFIXES = ("_bucket", "_count", "_sum")


def defined_metrics() -> set[str]:
    """Names of the series the operator exposes (counters with their `_total`)."""
    names = set()
    for collector in vars(metrics.Metrics()).values():
        if isinstance(collector, MetricWrapperBase):
            for family in collector.describe():
                names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def used_metrics(expressions: list[str]) -> set[str]:
    used = set()
    for expression in expressions:
        for name in METRIC_NAME.findall(expression):
            for suffix in SUFFIXES:
                name = name.removesuffix(suffix)
            used.add(name)
    return used


def test_defined_metrics_are_read_from_the_module() -> None:
    names = defined_metrics()
    assert "helmfile_operator_helm_commands_total" in names
    assert "helmfile_operator_reconcile_duration_seconds" in names
    assert "helmfile_operator_release_condition" in names


def test_prometheus_rule_alerts_on_defined_metrics(cluster: Cluster) -> None:
    rule = only(render(cluster, *MONITORING), "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {
        "HelmfileStateStalled",
        "HelmfileReleaseNotReady",
        "HelmfileReleaseDrifted",
        "HelmfileOperatorHelmFailureRate",
    }
    assert alerts["HelmfileStateStalled"]["for"] == "5m"
    assert alerts["HelmfileReleaseNotReady"]["for"] == "15m"
    assert alerts["HelmfileOperatorHelmFailureRate"]["for"] == "15m"
    assert 'condition="Stalled",status="True"' in alerts["HelmfileStateStalled"]["expr"]
    assert 'condition="Drifted",status="True"' in alerts["HelmfileReleaseDrifted"]["expr"]
    assert "> 0.2" in alerts["HelmfileOperatorHelmFailureRate"]["expr"]
    # Prometheus's own templates survive Helm's: {{ $labels.name }} reaches the rule verbatim.
    assert "{{ $labels.name }}" in alerts["HelmfileStateStalled"]["annotations"]["summary"]
    expressions = [a["expr"] for a in alerts.values()]
    undefined = used_metrics(expressions) - defined_metrics()
    assert not undefined, f"alerts use metrics the operator does not define: {undefined}"


def dashboard_expressions(dashboard: dict[str, Any]) -> list[str]:
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def test_dashboard_is_valid_and_uses_defined_metrics(cluster: Cluster) -> None:
    config_map = only(render(cluster, *MONITORING), "ConfigMap")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    text = config_map["data"]["helmfile-operator.json"]
    dashboard = json.loads(text)
    assert dashboard == json.loads(DASHBOARD.read_text())
    assert dashboard["schemaVersion"] >= 36
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    expressions = dashboard_expressions(dashboard)
    undefined = used_metrics(expressions) - defined_metrics()
    assert not undefined, f"the dashboard uses metrics the operator does not define: {undefined}"
    joined = "\n".join(expressions)
    for needed in (
        "helmfile_operator_release_actions_total",  # deploy success rate
        "histogram_quantile(0.95, sum by (le, kind) "
        "(rate(helmfile_operator_reconcile_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (le, command) "
        "(rate(helmfile_operator_helm_command_duration_seconds_bucket",
        "helmfile_operator_drifted_releases",
        "helmfile_operator_helm_in_flight",
        "helmfile_operator_queue_depth",
        "helmfile_operator_remediations_total",
    ):
        assert needed in joined, needed


# --- install on the test bed --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("watch_own_namespace", "shards"),
    [(False, []), (True, []), (False, ["a", "b"])],
    ids=["cluster-wide", "namespaced", "two-shards"],
)
def test_chart_installs_and_becomes_available(
    cluster: Cluster,
    crds: None,
    namespace: str,
    watch_own_namespace: bool,
    shards: list[str],
    tmp_path: Path,
) -> None:
    release = f"hfo-chart-{uuid.uuid4().hex[:6]}"  # its ClusterRole is cluster-scoped: unique
    flags = [*FAKE_IMAGE, *MONITORING[2:]]  # the dashboard ConfigMap needs no extra CRDs
    flags.append("--set=replicaCount=2")
    if watch_own_namespace:
        flags.append(f"--set=watchNamespaces={{{namespace}}}")
    if shards:
        flags.append(f"--set=shards={{{','.join(shards)}}}")
    try:
        cluster.run(
            "helm", "install", release, str(CHART), "--namespace", namespace, "--skip-crds",
            *flags, "--wait", "--timeout=120s",
            timeout=180,
        )  # fmt: skip
        deployment = f"{release}-helmfile-operator"
        deployments = [deployment, *(f"{deployment}-shard-{key}" for key in shards)]
        for name in deployments:
            cluster.run(
                "kubectl", "wait", "-n", namespace, f"deployment/{name}",
                "--for=condition=Available", "--timeout=60s",
            )  # fmt: skip
        selector = f"app.kubernetes.io/instance={release}"
        cluster.run(
            "kubectl", "wait", "-n", namespace, "pod", "-l", selector,
            "--for=condition=Ready", "--timeout=60s",
        )  # fmt: skip
        pods = cluster.kubectl_json("get", "pods", "-n", namespace, "-l", selector)["items"]
        assert len(pods) == 2 * len(deployments)
        assert {pod["spec"]["serviceAccountName"] for pod in pods} == {deployment}
        kinds = {
            (item["kind"], item["metadata"]["name"])
            for item in cluster.kubectl_json(
                "get", "serviceaccount,service,configmap,role,rolebinding,poddisruptionbudget",
                "-n", namespace,
            )["items"]
        }  # fmt: skip
        assert ("ServiceAccount", deployment) in kinds
        assert ("Service", f"{deployment}-metrics") in kinds
        assert ("ConfigMap", f"{deployment}-dashboard") in kinds
        assert (("Role", deployment) in kinds) == watch_own_namespace
        assert ("Role", f"{deployment}-leader-election") in kinds
        assert ("RoleBinding", f"{deployment}-leader-election") in kinds
        for name in deployments:
            assert ("PodDisruptionBudget", name) in kinds
        endpoints = cluster.kubectl_json(
            "get", "endpoints", f"{deployment}-metrics", "-n", namespace
        )
        addresses = [a for subset in endpoints.get("subsets") or [] for a in subset["addresses"]]
        assert len(addresses) == len(pods)  # standbys and shards are scraped too
        cluster.run("kubectl", "get", "clusterrole", deployment)
        notes = cluster.run("helm", "get", "notes", release, "-n", namespace).stdout
        assert "serviceAccountName" in notes
    finally:
        cluster.run("helm", "uninstall", release, "-n", namespace, "--wait", check=False)
    # The cluster-scoped objects go with the release.
    leftover = cluster.run(
        "kubectl", "get", "clusterrole", f"{release}-helmfile-operator", check=False
    )
    assert leftover.returncode != 0
