"""The chart's aggregated `view` ClusterRole: whoever may view a namespace may read its
HelmfileStates and HelmfileReleases, and nobody gets to write them through `view`, `edit` or
`admin`. Proven with `kubectl auth can-i --as` on the test bed, whose controller manager does the
aggregation. Also the dashboard's `namespace` and `state` variables."""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from prometheus_client.metrics import MetricWrapperBase

from helmfile_operator import metrics
from testbed_fixtures import REPO_ROOT, Cluster, wait_until

CHART = REPO_ROOT / "charts" / "helmfile-operator"
TEMPLATE = "templates/clusterrole-aggregate-view.yaml"
AGGREGATE_TO_VIEW = "rbac.authorization.k8s.io/aggregate-to-view"
RESOURCES = ("helmfilestates", "helmfilereleases", "hfs", "hfr")
WRITES = ("create", "update", "patch", "delete", "deletecollection")


def render(cluster: Cluster, release: str, *flags: str) -> list[dict[str, Any]]:
    text = cluster.run(
        "helm", "template", release, str(CHART), "--namespace", "hfo-system", *flags
    ).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def view_role(cluster: Cluster, release: str) -> dict[str, Any]:
    """Only the aggregated ClusterRole (`helm template --show-only`, as test_rbac.py does)."""
    (role,) = render(cluster, release, f"--show-only={TEMPLATE}")
    return role


def test_view_role_is_rendered_by_default_and_reads_only(cluster: Cluster) -> None:
    role = view_role(cluster, "hfo")
    assert role["kind"] == "ClusterRole"
    assert role["metadata"]["name"] == "hfo-helmfile-operator-view"
    labels = role["metadata"]["labels"]
    assert labels[AGGREGATE_TO_VIEW] == "true"
    assert not {"aggregate-to-edit", "aggregate-to-admin"} & {k.rsplit("/")[-1] for k in labels}
    assert "aggregationRule" not in role
    assert role["rules"] == [
        {
            "apiGroups": ["helmfile.dev"],
            "resources": ["helmfilestates", "helmfilereleases"],
            "verbs": ["get", "list", "watch"],
        }
    ]


@pytest.mark.parametrize("flag", ["--set=rbac.aggregateToView=false", "--set=rbac.create=false"])
def test_view_role_can_be_turned_off(cluster: Cluster, flag: str) -> None:
    names = [o["metadata"]["name"] for o in render(cluster, "hfo", flag)]
    assert "hfo-helmfile-operator-view" not in names


def test_values_schema_refuses_a_non_boolean(cluster: Cluster) -> None:
    result = cluster.run("helm", "lint", str(CHART), "--set=rbac.aggregateToView=yes", check=False)
    assert result.returncode != 0 and "aggregateToView" in result.stdout, result.stdout


# --- on the test bed ----------------------------------------------------------------------------


def can_i(cluster: Cluster, user: str, namespace: str, verb: str, resource: str) -> bool:
    result = cluster.run(
        "kubectl", "auth", "can-i", verb, resource, "-n", namespace, f"--as={user}", check=False
    )
    answer = result.stdout.strip()
    assert answer in ("yes", "no"), result.stderr
    return answer == "yes"


def foreign_view_grants(cluster: Cluster, ours: str) -> list[str]:
    """Other ClusterRoles that already give `view` read access to helmfile.dev (another chart
    install on a shared test bed): with one of them, `view` reads these kinds without ours."""
    roles = cluster.kubectl_json("get", "clusterroles", "-l", f"{AGGREGATE_TO_VIEW}=true")["items"]
    return [
        role["metadata"]["name"]
        for role in roles
        if role["metadata"]["name"] != ours
        and any("helmfile.dev" in rule.get("apiGroups", []) for rule in role.get("rules") or [])
    ]


@pytest.fixture
def view_release(cluster: Cluster) -> Iterator[str]:
    """A unique release name; its cluster-scoped ClusterRole is deleted afterwards."""
    release = f"hfo-view-{uuid.uuid4().hex[:6]}"
    name = f"{release}-helmfile-operator-view"
    try:
        yield release
    finally:
        cluster.run("kubectl", "delete", "clusterrole", name, "--ignore-not-found", check=False)


def test_view_reads_but_never_writes_helmfile_objects(
    cluster: Cluster, crds: None, namespace: str, view_release: str
) -> None:
    role = view_role(cluster, view_release)
    ours = role["metadata"]["name"]
    accounts = {"view": "viewer", "edit": "editor", "admin": "owner"}
    for cluster_role, account in accounts.items():
        cluster.run("kubectl", "create", "serviceaccount", account, "-n", namespace)
        cluster.run(
            "kubectl", "create", "rolebinding", f"{account}-{cluster_role}", "-n", namespace,
            f"--clusterrole={cluster_role}", f"--serviceaccount={namespace}:{account}",
        )  # fmt: skip
    viewer = f"system:serviceaccount:{namespace}:viewer"

    def reads(user: str) -> bool:
        return all(can_i(cluster, user, namespace, "get", r) for r in ("hfs", "hfr"))

    # Without the aggregated role, `view` does not cover the custom resources.
    alone = not foreign_view_grants(cluster, ours)
    if alone:
        assert not can_i(cluster, viewer, namespace, "get", "hfs")
        assert not can_i(cluster, viewer, namespace, "list", "hfr")

    cluster.run("kubectl", "apply", "-f", "-", input=json.dumps(role))
    wait_until(lambda: reads(viewer), timeout=60, message="`view` to aggregate the new role")

    for account in accounts.values():
        user = f"system:serviceaccount:{namespace}:{account}"
        for resource in RESOURCES:
            for verb in ("get", "list", "watch"):
                assert can_i(cluster, user, namespace, verb, resource), (account, verb, resource)
        # Writing a state is acting as the namespace's ServiceAccounts: not part of any of them.
        for resource in ("helmfilestates", "helmfilereleases"):
            for verb in WRITES:
                assert not can_i(cluster, user, namespace, verb, resource), (account, verb)
            assert not can_i(cluster, user, namespace, "patch", f"{resource}/status"), account

    # The real API agrees: a list works (a refusal would raise), a create is refused.
    cluster.run("kubectl", "get", "hfs,hfr", "-n", namespace, f"--as={viewer}")
    state = {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": "not-allowed", "namespace": namespace},
        "spec": {},
    }
    created = cluster.run(
        "kubectl", "create", "-f", "-", f"--as={viewer}", input=json.dumps(state), check=False
    )
    assert created.returncode != 0 and "forbidden" in created.stderr.lower(), created.stderr

    # The access comes from this role: gone with it (unless another install grants the same).
    cluster.run("kubectl", "delete", "clusterrole", ours)
    if alone:
        wait_until(lambda: not reads(viewer), timeout=60, message="`view` to drop the role")


# --- the dashboard's template variables ---------------------------------------------------------

DASHBOARD = CHART / "dashboards" / "helmfile-operator.json"
CONDITION_METRICS = ("helmfile_operator_state_condition", "helmfile_operator_release_condition")
SELECTOR = re.compile(r"helmfile_operator_(?:state|release)_condition\{[^}]*\}")


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_dashboard_has_namespace_and_state_variables() -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert list(variables) == ["datasource", "namespace", "state"]
    namespace, state = variables["namespace"], variables["state"]
    for variable in (namespace, state):
        assert variable["type"] == "query"
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        assert variable["multi"] is True and variable["includeAll"] is True
        assert variable["allValue"] == ".*"
        assert variable["refresh"] == 2  # on time range change: objects come and go
        assert variable["definition"] == variable["query"]["query"]
    assert namespace["query"]["query"] == (
        'label_values({__name__=~"helmfile_operator_(state|release)_condition"}, namespace)'
    )
    defined = {
        family.name
        for collector in vars(metrics.Metrics()).values()
        if isinstance(collector, MetricWrapperBase)
        for family in collector.describe()
    }
    assert set(CONDITION_METRICS) <= defined
    # States of the chosen namespaces only.
    assert state["query"]["query"] == (
        'label_values(helmfile_operator_state_condition{namespace=~"$namespace"}, name)'
    )


def per_object_expressions() -> dict[str, list[str]]:
    return {
        panel["title"] + f" #{panel['id']}": [t["expr"] for t in panel["targets"]]
        for panel in dashboard()["panels"]
        if any(m in t["expr"] for t in panel.get("targets", []) for m in CONDITION_METRICS)
    }


def test_per_object_panels_are_filtered_by_namespace_and_state() -> None:
    panels = per_object_expressions()
    assert len(panels) >= 3, panels
    for title, expressions in panels.items():
        for expression in expressions:
            for selector in SELECTOR.findall(expression):
                assert 'namespace=~"$namespace"' in selector, (title, selector)
                if selector.startswith("helmfile_operator_state_condition"):
                    assert 'name=~"$state"' in selector, (title, selector)
                else:  # HelmfileReleases of a state are named `<state>-<release>`
                    assert 'name=~"$state(-.+)?"' in selector, (title, selector)
