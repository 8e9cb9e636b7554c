"""clusters.py: a tenant's kubeconfig checked and reduced, the connection cache, and how a release
finds its cluster (spec.kubeConfig, rendered from the state)."""

from __future__ import annotations

import base64
import copy
import json
import stat
from pathlib import Path
from typing import Any

import pytest
from fakes import NAMESPACE, World, condition, release_body

from helmfile_operator.api.models import (
    HelmfileReleaseSpec,
    HelmfileReleaseStatus,
    HelmfileStateSpec,
)
from helmfile_operator.clusters import ClusterPool, KubeconfigError, parse_kubeconfig
from helmfile_operator.helm import HelmError, HelmErrorKind
from helmfile_operator.kube import RELEASES
from helmfile_operator.metrics import Metrics
from helmfile_operator.reconcile.context import (
    FINALIZER,
    KEEP_RELEASE,
    ObjectKey,
    release_target,
)
from helmfile_operator.reconcile.failures import failure_reason
from helmfile_operator.reconcile.release import reconcile_release
from helmfile_operator.reconcile.release_context import ReleaseContext
from helmfile_operator.render.state import StateMeta, render_state

TOKEN = "eyJhbGciOi.s3cr3t-token-value"
WHERE = "spec.kubeConfig: Secret apps/prod"
KEY = ObjectKey("HelmfileRelease", NAMESPACE, "web")


def kubeconfig(user: dict[str, Any] | None = None, **cluster: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "prod",
        "contexts": [
            {"name": "prod", "context": {"cluster": "prod-eu", "user": "deployer"}},
            {"name": "other", "context": {"cluster": "other", "user": "other"}},
        ],
        "clusters": [
            {
                "name": "prod-eu",
                "cluster": {"server": "https://prod.example.com:6443", **cluster},
            },
            {"name": "other", "cluster": {"server": "https://other.example.com"}},
        ],
        "users": [
            {"name": "deployer", "user": user if user is not None else {"token": TOKEN}},
            {"name": "other", "user": {"tokenFile": "/var/run/secrets/token"}},
        ],
    }


def parse(config: dict[str, Any], **kwargs: Any) -> Any:
    return parse_kubeconfig(json.dumps(config), WHERE, **kwargs)


def test_the_current_context_is_kept_and_the_rest_is_dropped() -> None:
    found = parse(kubeconfig(**{"certificate-authority-data": "Q0E="}))
    assert (found.name, found.server) == ("prod-eu", "https://prod.example.com:6443")
    assert [c["name"] for c in found.config["clusters"]] == ["prod-eu"]
    assert found.config["users"] == [{"name": "user", "user": {"token": TOKEN}}]
    assert found.config["contexts"][0]["context"] == {"cluster": "prod-eu", "user": "user"}
    # The other context's file path is never looked at: it is not in the reduced kubeconfig.
    assert "tokenFile" not in json.dumps(found.config)


def test_the_digest_changes_with_the_credentials_only() -> None:
    first = parse(kubeconfig())
    assert parse(kubeconfig()).digest == first.digest
    unrelated = kubeconfig()
    unrelated["users"][1]["user"] = {"token": "x"}  # another context's user
    assert parse(unrelated).digest == first.digest
    assert parse(kubeconfig({"token": "rotated"})).digest != first.digest


def test_yaml_is_read_as_kubectl_reads_it() -> None:
    text = f"""
current-context: prod
contexts:
- name: prod
  context: {{cluster: prod-eu, user: deployer}}
clusters:
- name: prod-eu
  cluster: {{server: "https://prod.example.com:6443"}}
users:
- name: deployer
  user: {{token: {TOKEN}}}
"""
    found = parse_kubeconfig(text, WHERE)
    assert found.config["users"][0]["user"]["token"] == TOKEN


def _without_current(config: dict[str, Any]) -> dict[str, Any]:
    config.pop("current-context")
    return config


def _context(name: str) -> Any:
    def change(config: dict[str, Any]) -> dict[str, Any]:
        config["current-context"] = name
        return config

    return change


def _no_server(config: dict[str, Any]) -> dict[str, Any]:
    config["clusters"][0]["cluster"] = {"server": "prod.example.com"}
    return config


def _user(user: dict[str, Any]) -> Any:
    def change(config: dict[str, Any]) -> dict[str, Any]:
        config["users"][0]["user"] = {"token": TOKEN, **user}
        return config

    return change


def _cluster(**fields: Any) -> Any:
    def change(config: dict[str, Any]) -> dict[str, Any]:
        config["clusters"][0]["cluster"].update(fields)
        return config

    return change


REFUSED = [
    ("no current context", _without_current, "InvalidKubeconfig", "has no current-context"),
    ("unknown context", _context("staging"), "InvalidKubeconfig", "no entry 'staging'"),
    ("no https server", _no_server, "InvalidKubeconfig", "needs `server: https://HOST"),
    (
        "credentials in the server URL (shown in status and metrics)",
        _cluster(server=f"https://deployer:{TOKEN}@prod.example.com"),
        "InvalidKubeconfig",
        "no user, password, query or fragment",
    ),
    (
        "a query in the server URL",
        _cluster(server=f"https://prod.example.com/?token={TOKEN}"),
        "InvalidKubeconfig",
        "no user, password, query or fragment",
    ),
    (
        "a pasted token with a trailing newline (the HTTP library would quote it)",
        _user({"token": TOKEN + "\n"}),
        "InvalidKubeconfig",
        "not one line of plain text",
    ),
    (
        "impersonation in the kubeconfig (helm would honour it, the API client not)",
        _user({"as": "system:admin"}),
        "InvalidKubeconfig",
        "`serviceAccountName`",
    ),
    (
        "a proxy of another scheme",
        _cluster(**{"proxy-url": "socks5://proxy:1080"}),
        "InvalidKubeconfig",
        "`proxy-url` must be http(s)",
    ),
    (
        "certificate data that is not base64",
        _cluster(**{"certificate-authority-data": "not base64!"}),
        "InvalidKubeconfig",
        "not base64 of a PEM text",
    ),
    (
        "a client certificate without its key",
        _user({"client-certificate-data": "Q0VSVA=="}),
        "InvalidKubeconfig",
        "needs both",
    ),
    (
        "token from a file of the operator's pod",
        _user({"tokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token"}),
        "InvalidKubeconfig",
        "`tokenFile`, a file path",
    ),
    (
        "client key from a file",
        _user({"client-key": "/etc/key.pem"}),
        "InvalidKubeconfig",
        "inline in `client-key-data`",
    ),
    (
        "client certificate from a file",
        _user({"client-certificate": "/etc/cert.pem"}),
        "InvalidKubeconfig",
        "`client-certificate`",
    ),
    (
        "CA from a file",
        _cluster(**{"certificate-authority": "/etc/ca.crt"}),
        "InvalidKubeconfig",
        "`certificate-authority-data`",
    ),
    (
        "exec plugin",
        _user({"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}}),
        "KubeconfigExecRefused",
        "`exec` plugin",
    ),
    (
        "auth-provider plugin",
        _user({"auth-provider": {"name": "gcp"}}),
        "KubeconfigExecRefused",
        "`auth-provider` plugin",
    ),
]


@pytest.mark.parametrize(("case", "change", "reason", "says"), REFUSED, ids=[r[0] for r in REFUSED])
def test_an_unsafe_or_broken_kubeconfig_is_refused_naming_the_field(
    case: str, change: Any, reason: str, says: str
) -> None:
    with pytest.raises(KubeconfigError) as caught:
        parse(change(kubeconfig()))
    assert caught.value.reason == reason
    assert says in caught.value.message
    assert caught.value.message.startswith(WHERE)
    assert TOKEN not in caught.value.message
    assert not caught.value.retryable


def test_plugins_are_allowed_when_the_operator_allows_them() -> None:
    config = _user({"exec": {"command": "aws", "apiVersion": "client.authentication.k8s.io/v1"}})
    found = parse(config(kubeconfig()), allow_exec=True)
    assert found.config["users"][0]["user"]["exec"]["command"] == "aws"
    # Files stay refused: the opt-in is for plugins, not for reading the operator's files.
    with pytest.raises(KubeconfigError):
        parse(_user({"tokenFile": "/t"})(kubeconfig()), allow_exec=True)


def test_unreadable_yaml_is_refused_without_quoting_it() -> None:
    with pytest.raises(KubeconfigError) as caught:
        parse_kubeconfig(f"users: [{{token: {TOKEN}", WHERE)
    assert caught.value.reason == "InvalidKubeconfig"
    assert TOKEN not in caught.value.message
    with pytest.raises(KubeconfigError):
        parse_kubeconfig(f"- {TOKEN}", WHERE)  # a list, not a kubeconfig


# --- the connection cache ------------------------------------------------------------------------


def test_connections_are_shared_per_kubeconfig_and_replaced_when_the_secret_rotates(
    tmp_path: Path,
) -> None:
    metrics = Metrics()
    pool = ClusterPool(tmp_path / "clusters", metrics=metrics)
    first = parse(kubeconfig())
    a = pool.connect("apps/prod/", first)
    assert pool.connect("apps/prod/", first) is a
    assert pool.connect("team-b/prod/", first) is a, "one cluster, one connection"
    assert json.loads(a.kubeconfig) == first.config
    assert stat.S_IMODE(a.directory.stat().st_mode) == 0o700
    assert a.kube.api_client.configuration.host == "https://prod.example.com:6443"
    pool.mark(a, False)
    assert b'helmfile_operator_cluster_reachable{cluster="prod-eu"' in metrics.exposition()

    rotated = parse(kubeconfig({"token": "rotated"}))
    b = pool.connect("apps/prod/", rotated)
    assert b is not a
    assert len(pool) == 2, "team-b's Secret still holds the first kubeconfig"
    pool.connect("team-b/prod/", rotated)
    assert len(pool) == 1, "no Secret holds it any more"
    assert a.directory.exists(), "a pass that took it may still use it: closed later"
    pool.mark(a, True)  # such a pass reports on it: ignored, b's series is the one kept
    assert b'server="https://prod.example.com:6443"} 0.0' in metrics.exposition()

    pool.close()
    assert not a.directory.exists() and not b.directory.exists()
    assert len(pool) == 0
    assert b"helmfile_operator_cluster_reachable{" not in metrics.exposition()


def test_the_cache_is_bounded(tmp_path: Path) -> None:
    pool = ClusterPool(tmp_path, max_clusters=2)
    opened = [pool.connect(f"apps/s{i}/", parse(kubeconfig({"token": f"t{i}"}))) for i in range(3)]
    assert len(pool) == 2
    assert pool.connect("apps/s0/", parse(kubeconfig({"token": "t0"}))) is not opened[0]
    pool.close()
    assert not any(c.directory.exists() for c in opened)


# --- rendering and the release's view of its cluster ----------------------------------------------


REF = {"secretRef": {"name": "state-cluster"}}
META = StateMeta(name="s", namespace="apps", labels={}, annotations={})


def test_the_most_specific_kube_config_wins() -> None:
    spec = HelmfileStateSpec.model_validate(
        {
            "kubeConfig": REF,
            "environment": "prod",
            "environments": {"prod": {"kubeConfig": {"secretRef": {"name": "env-cluster"}}}},
            "releases": [
                {"name": "a", "chart": "oci://r.example.com/c/a"},
                {
                    "name": "b",
                    "chart": "oci://r.example.com/c/b",
                    "kubeConfig": {"secretRef": {"name": "own", "key": "config"}},
                },
            ],
        }
    )
    rendered = render_state(META, spec)
    refs = {r.template_name: r.spec.kube_config for r in rendered.releases}
    assert refs["a"] is not None and refs["a"].secret_ref.name == "env-cluster"
    assert refs["b"] is not None and refs["b"].secret_ref.key == "config"
    spec.environment = "default"
    rendered = render_state(META, spec)
    assert [
        r.spec.kube_config.secret_ref.name for r in rendered.releases if r.spec.kube_config
    ] == [
        "state-cluster",
        "own",
    ]


def test_a_helm_release_is_identified_by_its_cluster_too() -> None:
    spec = {"targetNamespace": "ml", "releaseName": "api"}
    assert release_target("apps", spec) == ("", "ml", "api")
    remote = {**spec, "kubeConfig": {"secretRef": {"name": "prod", "key": "k"}}}
    assert release_target("apps", remote) == ("apps/prod/k", "ml", "api")
    assert release_target("team-b", remote) != release_target("apps", remote)


def release_ctx(world: World, tmp_path: Path, **spec: Any) -> ReleaseContext:
    world.reconciler.clusters = ClusterPool(tmp_path)
    wire = {
        "releaseName": "api",
        "targetNamespace": "ml",
        "chart": {"repository": {"url": "oci://r.example.com/c"}, "name": "api"},
        **spec,
    }
    body = {"metadata": {"name": "s-api", "namespace": "apps", "generation": 1}, "spec": wire}
    return ReleaseContext(
        world.reconciler,
        ObjectKey("HelmfileRelease", "apps", "s-api"),
        copy.deepcopy(body),
        HelmfileReleaseSpec.model_validate(wire),
        HelmfileReleaseStatus(),
    )


def _secret_data(config: dict[str, Any]) -> str:
    return base64.b64encode(json.dumps(config).encode()).decode()


async def test_a_release_connects_through_its_secret_read_as_the_tenant(
    world: World, tmp_path: Path
) -> None:
    ctx = release_ctx(world, tmp_path, kubeConfig={"secretRef": {"name": "prod"}})
    with pytest.raises(KubeconfigError) as caught:
        await ctx.connect()
    assert caught.value.reason == "KubeconfigUnavailable"
    assert caught.value.retryable
    assert "Secret apps/prod not found" in caught.value.message

    world.kube.add_secret("apps", "prod", {"config": _secret_data(kubeconfig())})
    with pytest.raises(KubeconfigError) as caught:
        await ctx.connect()
    assert "no key 'value' or 'value.yaml'" in caught.value.message

    world.kube.add_secret("apps", "prod", {"value.yaml": _secret_data(kubeconfig())})
    await ctx.connect()
    assert ctx.cluster is not None
    assert ctx.status.cluster is not None
    assert ctx.status.cluster.to_wire() == {
        "name": "prod-eu",
        "server": "https://prod.example.com:6443",
    }
    assert world.kube.identities[-1] == "system:serviceaccount:apps:default"
    assert ctx.kubeconfig == ctx.cluster.kubeconfig
    # In the remote cluster the kubeconfig's own identity acts, unless the spec names an account.
    assert ctx.target_identity is None
    assert ctx.impersonate == "system:serviceaccount:apps:default"
    assert ctx.options.create_namespace, "the target namespace may not exist over there"


async def test_a_named_service_account_is_impersonated_in_the_remote_cluster(
    world: World, tmp_path: Path
) -> None:
    ctx = release_ctx(
        world,
        tmp_path,
        kubeConfig={"secretRef": {"name": "prod"}},
        serviceAccountName="deployer",
    )
    world.kube.add_secret("apps", "prod", {"value": _secret_data(kubeconfig())})
    await ctx.connect()
    assert ctx.target_identity == "system:serviceaccount:apps:deployer"
    assert ctx.target_kube.identity == "system:serviceaccount:apps:deployer"


async def test_without_kube_config_the_release_stays_in_this_cluster(
    world: World, tmp_path: Path
) -> None:
    ctx = release_ctx(world, tmp_path)
    ctx.status.cluster = None
    await ctx.connect()
    assert ctx.cluster is None and ctx.kubeconfig is None
    assert ctx.target_identity == ctx.impersonate
    assert ctx.drift_checker is world.reconciler.drift


# --- the release pass ----------------------------------------------------------------------------


def remote_release(name: str = "web") -> dict[str, Any]:
    return release_body(name, kubeConfig={"secretRef": {"name": "prod"}})


async def test_a_missing_kubeconfig_secret_is_reported_and_retried_without_helm(
    world: World, tmp_path: Path
) -> None:
    world.reconciler.clusters = ClusterPool(tmp_path)
    world.kube.create(RELEASES, remote_release())
    await reconcile_release(world.reconciler, KEY)
    ready = condition(world.kube.obj(RELEASES, NAMESPACE, "web"), "Ready")
    assert ready is not None
    assert (ready["status"], ready["reason"]) == ("False", "KubeconfigUnavailable")
    assert "Secret apps/prod not found" in ready["message"]
    assert world.helm.verbs == []
    assert world.pending_delay(KEY) is not None


async def test_an_exec_kubeconfig_stalls_the_release_without_helm(
    world: World, tmp_path: Path
) -> None:
    world.reconciler.clusters = ClusterPool(tmp_path)
    plugin = _user({"exec": {"command": "sh", "apiVersion": "client.authentication.k8s.io/v1"}})
    world.kube.add_secret(NAMESPACE, "prod", {"value": _secret_data(plugin(kubeconfig()))})
    world.kube.create(RELEASES, remote_release())
    await reconcile_release(world.reconciler, KEY)
    body = world.kube.obj(RELEASES, NAMESPACE, "web")
    stalled = condition(body, "Stalled")
    assert stalled is not None and stalled["reason"] == "KubeconfigExecRefused"
    assert world.helm.verbs == []


async def test_a_deleted_release_whose_cluster_is_unknown_says_how_to_let_it_go(
    world: World, tmp_path: Path
) -> None:
    world.reconciler.clusters = ClusterPool(tmp_path)
    body = remote_release()
    body["metadata"].update(finalizers=[FINALIZER], deletionTimestamp="2026-01-01T00:00:00Z")
    world.kube.create(RELEASES, body)
    await reconcile_release(world.reconciler, KEY)
    stored = world.kube.obj(RELEASES, NAMESPACE, "web")
    assert stored is not None and FINALIZER in stored["metadata"]["finalizers"]
    ready = condition(stored, "Ready")
    assert ready is not None and ready["reason"] == "KubeconfigUnavailable"
    assert "cannot uninstall from the remote cluster" in ready["message"]
    assert KEEP_RELEASE in ready["message"]
    assert world.helm.verbs == []

    stored["metadata"]["annotations"] = {KEEP_RELEASE: "true"}
    await reconcile_release(world.reconciler, KEY)
    gone = world.kube.obj(RELEASES, NAMESPACE, "web")
    assert gone is None or FINALIZER not in (gone["metadata"].get("finalizers") or [])


async def test_helm_that_cannot_reach_the_remote_cluster_says_cluster_unreachable(
    world: World, tmp_path: Path
) -> None:
    ctx = release_ctx(world, tmp_path, kubeConfig={"secretRef": {"name": "prod"}})
    error = HelmError(HelmErrorKind.CONNECTION, "upgrade", "Kubernetes cluster unreachable")
    assert failure_reason(ctx, "UpgradeFailed", error) == "UpgradeFailed"  # not connected
    world.kube.add_secret("apps", "prod", {"value": _secret_data(kubeconfig())})
    await ctx.connect()
    assert failure_reason(ctx, "UpgradeFailed", error) == "ClusterUnreachable"
    other = HelmError(HelmErrorKind.RENDER_FAILED, "upgrade", "bad template")
    assert failure_reason(ctx, "UpgradeFailed", other) == "UpgradeFailed"


def test_the_api_client_is_configured_from_the_checked_fields_only(tmp_path: Path) -> None:
    pem = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n")
    config = kubeconfig(
        {"client-certificate-data": pem.decode(), "client-key-data": pem.decode()},
        **{
            "certificate-authority-data": pem.decode(),
            "tls-server-name": "api.internal",
            "proxy-url": "http://proxy.example.com:3128",
        },
    )
    pool = ClusterPool(tmp_path)
    cluster = pool.connect("apps/prod/", parse(config))
    configuration = cluster.kube.api_client.configuration
    assert configuration.host == "https://prod.example.com:6443"
    assert Path(configuration.ssl_ca_cert).read_bytes() == base64.b64decode(pem)
    assert Path(configuration.ssl_ca_cert).parent == cluster.directory
    assert stat.S_IMODE(Path(configuration.key_file).stat().st_mode) == 0o600
    assert configuration.tls_server_name == "api.internal"
    assert configuration.proxy == "http://proxy.example.com:3128"
    assert configuration.verify_ssl and configuration.retries == 1
    assert "authorization" not in configuration.api_key

    token = pool.connect("apps/t/", parse(kubeconfig({"token": TOKEN})))
    assert token.kube.api_client.configuration.api_key == {"authorization": f"Bearer {TOKEN}"}
    basic = pool.connect("apps/b/", parse(kubeconfig({"username": "u", "password": "p"})))
    expected = "Basic " + base64.b64encode(b"u:p").decode()
    assert basic.kube.api_client.configuration.api_key == {"authorization": expected}
    pool.close()
