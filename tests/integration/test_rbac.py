"""RBAC proof: the operator works with exactly the chart's RBAC — and a missing permission becomes a
condition on the release, not a crash.

The operator runs here as a subprocess logged in with a token of the chart's ServiceAccount (not
the test bed's admin), watching only this test's namespace. The session's shared operator watches
every namespace with admin rights: it is paused for the duration of the test, so that only the
restricted operator acts on these objects, and restarted afterwards. (An operator of another pytest
session on the same test bed would still see them: the namespaces are named `hfo-rbac-*` so that
such operators can be told to leave them alone.)
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
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
    helm_releases,
    state_ready_at_generation,
    wait_until,
)

CHART = REPO_ROOT / "charts" / "helmfile-operator"
TENANT = "deployer"
STATE = "rbac"
CLUSTER_SCOPED = ("ClusterRole", "ClusterRoleBinding")


@dataclass
class Setup:
    release: str  # the chart's release name
    system: str  # where the operator's ServiceAccount lives
    namespace: str  # the watched namespace: state, tenant ServiceAccount, Helm release
    manifests: list[dict[str, Any]]  # the chart's RBAC objects, as applied

    @property
    def account(self) -> str:
        return f"{self.release}-helmfile-operator"


def restricted_operator(
    cluster: Cluster, kubeconfig: Path, namespace: str, home: Path
) -> OperatorProcess:
    """`helmfile-operator run --namespace NS` logged in as the chart's ServiceAccount."""
    return OperatorProcess(
        cluster,
        home / "operator.log",
        args=["--namespace", namespace],
        env={
            "KUBECONFIG": str(kubeconfig),
            "HELM_CACHE_HOME": str(home / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(home / "helm" / "config"),
            "HELM_DATA_HOME": str(home / "helm" / "data"),
        },
    )


def render_rbac(
    cluster: Cluster, setup: Setup, namespaced: bool, *values: str
) -> list[dict[str, Any]]:
    """Only the chart's ServiceAccount and RBAC objects (`helm template --show-only`)."""
    templates = ["serviceaccount", "clusterrole", "clusterrolebinding"]
    flags = list(values)
    if namespaced:
        templates += ["role", "rolebinding"]
        flags.append(f"--set=watchNamespaces={{{setup.namespace}}}")
    shown = [f"--show-only=templates/{name}.yaml" for name in templates]
    text = cluster.run(
        "helm", "template", setup.release, str(CHART), "--namespace", setup.system, *flags, *shown
    ).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def harness_rbac(setup: Setup) -> list[dict[str, Any]]:
    """What `--namespace` needs on top of the cluster-wide chart RBAC: kopf lists and watches
    namespaces when it watches only some (the namespaced chart grants it). The chart's operator
    watches all namespaces; this test restricts it to one, so the test grants this itself —
    otherwise kopf retries for a minute before it falls back to the named namespace."""
    name = f"{setup.release}-test-namespaces"
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name},
            "rules": [{"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list", "watch"]}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": name,
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": setup.account, "namespace": setup.system}
            ],
        },
    ]


def token_kubeconfig(cluster: Cluster, setup: Setup, path: Path) -> Path:
    """A kubeconfig for the test bed's API server that logs in as the chart's ServiceAccount."""
    token = cluster.run(
        "kubectl", "create", "token", setup.account, "-n", setup.system, "--duration=1h"
    ).stdout.strip()
    admin = json.loads(cluster.kubeconfig.read_text())
    server = admin["clusters"][0]["cluster"]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "testbed",
                "cluster": {
                    "server": server["server"],
                    "certificate-authority-data": server["certificate-authority-data"],
                },
            }
        ],
        "users": [{"name": setup.account, "user": {"token": token}}],
        "contexts": [
            {"name": "operator", "context": {"cluster": "testbed", "user": setup.account}}
        ],
        "current-context": "operator",
    }
    path.write_text(json.dumps(config))
    path.chmod(0o600)
    return path


def demo_state(setup: Setup, repo_url: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": STATE, "namespace": setup.namespace},
        "spec": {
            "serviceAccountName": TENANT,
            "repositories": [{"name": "test", "url": repo_url}],
            # The tenant may not create namespaces (a cluster-scoped object): none is created.
            "helmDefaults": {
                "wait": True,
                "timeout": "60s",
                "createNamespace": False,
                "retries": 0,
            },
            "releases": [
                {
                    "name": "app",
                    "chart": "test/demo-app",
                    "version": "0.1.0",
                    "values": [{"message": message}],
                }
            ],
        },
    }


def bind_tenant(cluster: Cluster, namespace: str) -> None:
    """The tenant ServiceAccount may do what the `admin` ClusterRole allows, in its namespace."""
    cluster.run(
        "kubectl", "create", "rolebinding", f"{TENANT}-admin", "-n", namespace,
        "--clusterrole=admin", f"--serviceaccount={namespace}:{TENANT}",
    )  # fmt: skip


def apply_objects(cluster: Cluster, objects: list[dict[str, Any]]) -> None:
    cluster.run(
        "kubectl",
        "apply",
        "-f",
        "-",
        input=json.dumps({"kind": "List", "apiVersion": "v1", "items": objects}),
    )


@pytest.fixture
def setup(cluster: Cluster, crds: None) -> Iterator[Setup]:
    """Two fresh namespaces (the operator's, the tenant's) and cleanup of everything created."""
    suffix = uuid.uuid4().hex[:6]
    made = Setup(
        release=f"hfo-rbac-{suffix}",
        system=f"hfo-rbac-system-{suffix}",
        namespace=f"hfo-rbac-{suffix}",
        manifests=[],
    )
    for name in (made.system, made.namespace):
        cluster.run("kubectl", "create", "namespace", name)
        cluster.run("kubectl", "label", "namespace", name, "helmfile-operator.dev/test=rbac")
    try:
        yield made
    finally:
        for obj in made.manifests:
            if obj["kind"] in CLUSTER_SCOPED:
                cluster.run(
                    "kubectl", "delete", obj["kind"].lower(), obj["metadata"]["name"],
                    "--ignore-not-found", check=False,
                )  # fmt: skip
        for name in (made.namespace, made.system):
            cluster.run(
                "kubectl", "delete", "namespace", name, "--ignore-not-found", "--wait=false",
                check=False,
            )  # fmt: skip


def remove_namespace(cluster: Cluster, namespace: str) -> None:
    """Delete a namespace of this test and wait until it is gone. Finalizers the restricted
    operator did not get to remove are stripped, so nothing is left for another operator."""
    cluster.run("kubectl", "delete", "namespace", namespace, "--wait=false", check=False)
    for kind in ("hfs", "hfr"):
        listing = cluster.run("kubectl", "get", kind, "-n", namespace, "-o", "name", check=False)
        for name in listing.stdout.split():
            cluster.run(
                "kubectl", "patch", name, "-n", namespace, "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False,
            )  # fmt: skip
    cluster.run(
        "kubectl", "wait", "--for=delete", f"namespace/{namespace}", "--timeout=120s",
        check=False, timeout=150,
    )  # fmt: skip


def release_object(cluster: Cluster, namespace: str) -> dict[str, Any]:
    """The state's HelmfileRelease; `{}` until the state's first pass has created it."""
    found = cluster.run(
        "kubectl", "get", "hfr", f"{STATE}-app", "-n", namespace, "-o", "json", check=False
    )
    if found.returncode != 0 and "NotFound" in found.stderr:
        return {}
    assert found.returncode == 0, found.stderr
    body: dict[str, Any] = json.loads(found.stdout)
    return body


def stalled_for_current_spec(cluster: Cluster, namespace: str) -> dict[str, Any] | None:
    """The release once it is Stalled for its current spec (the permission loss came after)."""
    body = release_object(cluster, namespace)
    stalled = condition(body, "Stalled")
    if (
        stalled
        and stalled["status"] == "True"
        and body["status"].get("observedGeneration") == body["metadata"]["generation"]
    ):
        return body
    return None


# How the permission is lost (after a first install that worked), who the message names, and
# chart values.
LOSSES: dict[str, tuple[bool, str, list[str]]] = {
    # Cluster-wide chart RBAC; the tenant's RoleBinding is deleted: helm, impersonating the
    # tenant, may no longer read Helm's storage.
    "cluster-role-tenant-binding-deleted": (False, "tenant", []),
    # Namespaced chart RBAC (Role in the watched namespace), impersonation limited to the
    # tenant's name (resourceNames); the tenant is downgraded to `view`.
    "namespaced-tenant-downgraded-to-view": (
        True,
        "tenant",
        [f"--set=rbac.tenantServiceAccountNames={{{TENANT}}}"],
    ),
    # The operator's Role loses `impersonate`: helm cannot act as the tenant at all.
    "namespaced-operator-loses-impersonate": (True, "operator", []),
}


def lose_permission(cluster: Cluster, setup: Setup, case: str) -> None:
    ns = setup.namespace
    if case == "namespaced-operator-loses-impersonate":
        role = next(o for o in setup.manifests if o["kind"] == "Role")
        rules = [r for r in role["rules"] if "impersonate" not in r["verbs"]]
        assert len(rules) == len(role["rules"]) - 1
        apply_objects(cluster, [{**role, "rules": rules}])
        return
    cluster.run("kubectl", "delete", "rolebinding", f"{TENANT}-admin", "-n", ns)
    if case == "namespaced-tenant-downgraded-to-view":
        cluster.run(
            "kubectl", "create", "rolebinding", f"{TENANT}-view", "-n", ns,
            "--clusterrole=view", f"--serviceaccount={ns}:{TENANT}",
        )  # fmt: skip


def restore_permissions(cluster: Cluster, setup: Setup) -> None:
    apply_objects(cluster, setup.manifests)
    listing = cluster.run("kubectl", "get", "rolebinding", "-n", setup.namespace, "-o", "name")
    if f"rolebinding.rbac.authorization.k8s.io/{TENANT}-admin" not in listing.stdout.split():
        bind_tenant(cluster, setup.namespace)


@pytest.mark.parametrize("case", list(LOSSES))
def test_operator_works_with_the_chart_rbac_alone(
    cluster: Cluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    setup: Setup,
    case: str,
    tmp_path: Path,
) -> None:
    namespaced, who, values = LOSSES[case]
    ns = setup.namespace
    setup.manifests = render_rbac(cluster, setup, namespaced, *values)
    kinds = sorted(obj["kind"] for obj in setup.manifests)
    expected = ["ClusterRole", "ClusterRoleBinding", "ServiceAccount"]
    assert kinds == sorted(expected + (["Role", "RoleBinding"] if namespaced else []))
    if not namespaced:
        setup.manifests += harness_rbac(setup)
    apply_objects(cluster, setup.manifests)
    kubeconfig = token_kubeconfig(cluster, setup, tmp_path / "kubeconfig")
    cluster.run("kubectl", "create", "serviceaccount", TENANT, "-n", ns)
    bind_tenant(cluster, ns)

    restricted = restricted_operator(cluster, kubeconfig, ns, tmp_path)
    operator.stop()  # the shared, cluster-wide operator (admin rights) must not act here
    try:
        restricted.start()
        apply(cluster, demo_state(setup, chart_repo.url, "one"))
        wait_until(
            lambda: state_ready_at_generation(cluster, ns, STATE),
            timeout=180,
            message=f"the state to be Ready with the chart's RBAC\n{restricted.log()[-4000:]}",
        )
        installed = helm_releases(cluster, ns)["app"]
        assert installed["status"] == "deployed"
        log = restricted.log()
        # Nothing the operator itself does was refused: no kopf fallbacks, every Event posted.
        assert "Failed to post an event" not in log
        assert "Not enough permissions" not in log
        # (A 403 as a status code, not as digits of a port or a pid.)
        assert not re.search(r"(?<!\d)403(?!\d)", log) and "orbidden" not in log, log[-4000:]

        # Take a permission away, then change the spec: a condition, not a crash.
        lose_permission(cluster, setup, case)
        apply(cluster, demo_state(setup, chart_repo.url, "two"))
        body = wait_until(
            lambda: stalled_for_current_spec(cluster, ns),
            timeout=120,
            message=f"the release to stall\n{restricted.log()[-4000:]}",
        )
        ready = condition(body, "Ready")
        stalled = condition(body, "Stalled")
        assert ready is not None and ready["status"] == "False", body["status"]
        assert stalled is not None
        assert helm_releases(cluster, ns)["app"]["revision"] == installed["revision"]
        assert restricted.healthy(), "the operator must survive a refused helm run"
        for found in (ready, stalled):
            assert "forbidden" in found["message"].lower(), found
        if who == "tenant":
            assert f"system:serviceaccount:{ns}:{TENANT}" in ready["message"]
        else:
            assert "impersonate" in ready["message"]

        # Give the permissions back and delete the state while the restricted operator runs:
        # it uninstalls the release and removes its finalizers.
        restore_permissions(cluster, setup)
        cluster.run("kubectl", "delete", "hfs", STATE, "-n", ns, "--timeout=120s", timeout=150)
        assert helm_releases(cluster, ns) == {}
    finally:
        restricted.stop()
        # Gone before the shared operator is back, so that it never sees these objects.
        remove_namespace(cluster, ns)
        operator.start()


def test_a_state_without_service_account_runs_as_the_namespace_default(
    cluster: Cluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    setup: Setup,
    tmp_path: Path,
) -> None:
    """No `serviceAccountName`: helm runs as the namespace's `default` ServiceAccount, with the
    chart's RBAC for the operator. A chart that `lookup`s another namespace's Secret finds
    nothing it may not read, and the Secret's value appears nowhere."""
    ns = setup.namespace
    victim = f"hfo-victim-{uuid.uuid4().hex[:6]}"
    token = f"stolen-{uuid.uuid4().hex}"
    setup.manifests = render_rbac(cluster, setup, False) + harness_rbac(setup)
    apply_objects(cluster, setup.manifests)
    kubeconfig = token_kubeconfig(cluster, setup, tmp_path / "kubeconfig")
    cluster.run("kubectl", "create", "namespace", victim)
    cluster.run(
        "kubectl", "create", "secret", "generic", "victim", "-n", victim,
        f"--from-literal=token={token}",
    )  # fmt: skip
    # The tenant grants its default ServiceAccount `admin` of its own namespace only.
    cluster.run(
        "kubectl", "create", "rolebinding", "default-admin", "-n", ns,
        "--clusterrole=admin", f"--serviceaccount={ns}:default",
    )  # fmt: skip
    restricted = restricted_operator(cluster, kubeconfig, ns, tmp_path)
    restricted.env_overrides["HELMFILE_OPERATOR_DEFAULT_SERVICE_ACCOUNT"] = "default"
    state = demo_state(setup, chart_repo.url, "one")
    del state["spec"]["serviceAccountName"]
    state["spec"]["releases"].append(
        {
            "name": "nosy",
            "chart": "test/lookup-secret",
            "version": "0.1.0",
            "values": [{"lookupNamespace": victim, "lookupName": "victim"}],
        }
    )
    operator.stop()
    try:
        restricted.start()
        apply(cluster, state)
        wait_until(
            lambda: (condition(release_object(cluster, ns), "Ready") or {}).get("status") == "True",
            timeout=180,
            message="the release to install as the default ServiceAccount",
        )
        history = cluster.run("helm", "history", "app", "-n", ns, "-o", "json").stdout
        assert json.loads(history)[0]["status"] == "deployed"

        def nosy() -> dict[str, Any] | None:
            got = cluster.run(
                "kubectl", "get", "hfr", f"{STATE}-nosy", "-n", ns, "-o", "json", check=False
            )
            if got.returncode != 0:
                return None
            ready = condition(json.loads(got.stdout), "Ready")
            return ready if ready and ready["status"] != "Unknown" else None

        ready = wait_until(nosy, timeout=120, message="the nosy release to finish")
        if ready["status"] == "True":  # the lookup found nothing and rendered "found: no"
            found = cluster.kubectl_json("get", "configmap", "nosy-lookup", "-n", ns)
            assert found["data"]["found"] == "no"
        else:
            assert "forbidden" in ready["message"].lower()
        objects = cluster.kubectl_json("get", "hfs,hfr", "-n", ns)
        events = cluster.kubectl_json("get", "events", "-n", ns)
        visible = json.dumps(objects) + json.dumps(events) + restricted.log()
        assert token not in visible
    finally:
        restricted.stop()
        remove_namespace(cluster, ns)
        cluster.run("kubectl", "delete", "namespace", victim, "--wait=false", check=False)
        operator.start()
