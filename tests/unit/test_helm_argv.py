"""argv, environment and private files of helm runs: built by pure functions, checked here."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from helmfile_operator.api.models import ChartReference, ChartRepository, HelmOptions
from helmfile_operator.helm.client import (
    HelmVersion,
    ReleaseResult,
    RepositoryCredentials,
    chart_ref,
    go_duration,
    helm_env,
    history_argv,
    parse_history,
    parse_metadata,
    parse_release,
    private_workdir,
    registry_host,
    registry_login_argv,
    repo_add_argv,
    repo_alias,
    rollback_argv,
    status_argv,
    uninstall_argv,
    upgrade_argv,
    wait_flags,
    write_values_file,
)
from helmfile_operator.helm.errors import HelmError

SECRET = "s3cr3t-value-nobody-may-see"
HTTP_CHART = ChartReference(
    repository=ChartRepository(url="https://charts.example.com/stable"),
    name="demo-app",
    version="1.2.3",
)
OCI_CHART = ChartReference(
    repository=ChartRepository(url="oci://ghcr.io/org/charts/"), name="demo-app", version="^1.0"
)
VALUES_FILE = Path("/tmp/helm-x/values.yaml")


def upgrade(helm_major: int, chart: ChartReference = HTTP_CHART, **options: object) -> list[str]:
    return upgrade_argv(
        release="demo",
        namespace="apps",
        chart=chart,
        values_file=VALUES_FILE,
        options=HelmOptions.model_validate(options),
        helm_major=helm_major,
    )


def test_upgrade_helm4_defaults() -> None:
    assert upgrade(4) == [
        "upgrade",
        "--install",
        "--namespace=apps",
        "--version=1.2.3",
        "--repo=https://charts.example.com/stable",
        "--values=/tmp/helm-x/values.yaml",
        "--create-namespace",
        "--wait=watcher",
        "--timeout=300s",
        "--history-max=10",
        "--output=json",
        "--",
        "demo",
        "demo-app",
    ]


def test_upgrade_helm3_defaults() -> None:
    argv = upgrade(3)
    assert "--wait" in argv
    assert not any(a.startswith("--wait=") for a in argv)
    assert argv[-3:] == ["--", "demo", "demo-app"]


@pytest.mark.parametrize("helm_major", [3, 4])
def test_upgrade_never_asks_helm_to_remediate(helm_major: int) -> None:
    argv = upgrade(helm_major, atomic=True)
    assert not any(a.startswith(("--atomic", "--rollback-on-failure", "--cleanup")) for a in argv)


@pytest.mark.parametrize("helm_major", [3, 4])
def test_upgrade_options(helm_major: int) -> None:
    argv = upgrade(
        helm_major,
        wait=True,
        wait_for_jobs=True,
        timeout="10m",
        create_namespace=False,
        history_max=3,
    )
    assert "--wait-for-jobs" in argv
    assert "--timeout=600s" in argv
    assert "--history-max=3" in argv
    assert "--create-namespace" not in argv


@pytest.mark.parametrize("helm_major", [3, 4])
def test_upgrade_without_wait(helm_major: int) -> None:
    argv = upgrade(helm_major, wait=False, wait_for_jobs=True)
    assert not any(a.startswith("--wait") for a in argv)


def test_upgrade_oci() -> None:
    argv = upgrade(4, OCI_CHART)
    assert argv[-1] == "oci://ghcr.io/org/charts/demo-app"
    assert "--version=^1.0" in argv
    assert not any(a.startswith("--repo") for a in argv)


def test_upgrade_with_alias_tls_and_impersonation() -> None:
    chart = ChartReference(
        repository=ChartRepository(url="https://charts.example.com", insecure_skip_tls_verify=True),
        name="demo-app",
    )
    argv = upgrade_argv(
        release="demo",
        namespace="apps",
        chart=chart,
        values_file=VALUES_FILE,
        options=HelmOptions(),
        helm_major=4,
        impersonate="system:serviceaccount:team:deployer",
        alias="hfo-abc",
        ca_file=Path("/tmp/helm-x/ca.crt"),
        wait_strategy="legacy",
    )
    assert "--kube-as-user=system:serviceaccount:team:deployer" in argv
    assert "--insecure-skip-tls-verify" in argv
    assert "--ca-file=/tmp/helm-x/ca.crt" in argv
    assert "--wait=legacy" in argv
    assert not any(a.startswith(("--repo", "--version")) for a in argv)
    assert argv[-1] == "hfo-abc/demo-app"


def test_user_strings_cannot_become_flags() -> None:
    chart = ChartReference(
        repository=ChartRepository(url="https://charts.example.com"),
        name="--post-renderer=/bin/sh",
        version="--devel",
    )
    argv = upgrade_argv(
        release="demo",
        namespace="apps",
        chart=chart,
        values_file=VALUES_FILE,
        options=HelmOptions(),
        helm_major=4,
    )
    separator = argv.index("--")
    assert "--post-renderer=/bin/sh" not in argv[:separator]
    assert "--version=--devel" in argv
    assert argv[separator + 1 :] == ["demo", "--post-renderer=/bin/sh"]


def test_no_value_flags_at_all() -> None:
    for argv in (upgrade(3), upgrade(4), upgrade(4, OCI_CHART)):
        assert not any(a.startswith(("--set", "-f", "--password=", "-p")) for a in argv)


@pytest.mark.parametrize(
    ("helm_major", "wait", "expected"),
    [
        (4, True, ["--wait=watcher", "--timeout=120s"]),
        (3, True, ["--wait", "--timeout=120s"]),
        (4, False, ["--timeout=120s"]),
    ],
)
def test_uninstall(helm_major: int, wait: bool, expected: list[str]) -> None:
    argv = uninstall_argv(
        release="demo",
        namespace="apps",
        timeout_seconds=120,
        wait=wait,
        helm_major=helm_major,
        impersonate="system:serviceaccount:a:b",
    )
    assert argv == [
        "uninstall",
        "--namespace=apps",
        "--kube-as-user=system:serviceaccount:a:b",
        *expected,
        "--",
        "demo",
    ]


def test_rollback() -> None:
    assert rollback_argv(
        release="demo",
        namespace="apps",
        revision=None,
        timeout_seconds=60,
        wait=False,
        helm_major=4,
    ) == ["rollback", "--namespace=apps", "--timeout=60s", "--", "demo"]
    assert rollback_argv(
        release="demo",
        namespace="apps",
        revision=4,
        timeout_seconds=90.5,
        wait=True,
        wait_for_jobs=True,
        history_max=5,
        helm_major=3,
    ) == [
        "rollback",
        "--namespace=apps",
        "--wait",
        "--wait-for-jobs",
        "--timeout=90.5s",
        "--history-max=5",
        "--",
        "demo",
        "4",
    ]
    with pytest.raises(ValueError, match="positive"):
        rollback_argv(
            release="d", namespace="n", revision=0, timeout_seconds=1, wait=False, helm_major=4
        )


def test_history_and_status() -> None:
    assert history_argv(release="demo", namespace="apps", max=5) == [
        "history",
        "--namespace=apps",
        "--max=5",
        "--output=json",
        "--",
        "demo",
    ]
    assert status_argv(release="demo", namespace="apps", impersonate="u") == [
        "get",
        "metadata",
        "--namespace=apps",
        "--kube-as-user=u",
        "--output=json",
        "--",
        "demo",
    ]


def test_wait_flags_reject_unknown_strategies() -> None:
    with pytest.raises(ValueError, match="strategy"):
        wait_flags(4, True, strategy="sometimes")


def test_go_duration() -> None:
    assert go_duration(300) == "300s"
    assert go_duration(0.25) == "0.25s"
    assert go_duration(1e6) == "1000000s"
    with pytest.raises(ValueError, match="negative"):
        go_duration(-1)


def test_chart_ref() -> None:
    assert chart_ref(HTTP_CHART) == "demo-app"
    assert chart_ref(HTTP_CHART, alias="hfo-1") == "hfo-1/demo-app"
    assert chart_ref(OCI_CHART, alias="ignored") == "oci://ghcr.io/org/charts/demo-app"


# --- credentials ----------------------------------------------------------------------------------


def test_repo_add_takes_the_password_on_stdin() -> None:
    credentials = RepositoryCredentials("alice", SECRET)
    alias = repo_alias("https://charts.example.com", credentials.username)
    argv = repo_add_argv(
        alias=alias,
        url="https://charts.example.com",
        username=credentials.username,
        insecure_skip_tls_verify=True,
        ca_file=Path("/tmp/x/ca.crt"),
    )
    assert argv == [
        "repo",
        "add",
        "--force-update",
        "--username=alice",
        "--password-stdin",
        "--insecure-skip-tls-verify",
        "--ca-file=/tmp/x/ca.crt",
        "--timeout=60s",
        "--",
        alias,
        "https://charts.example.com",
    ]
    assert SECRET not in " ".join(argv)
    assert SECRET not in repr(credentials)


def test_registry_login_takes_the_password_on_stdin() -> None:
    argv = registry_login_argv(
        host=registry_host("oci://ghcr.io/org/charts"), username="alice", insecure=True
    )
    assert argv == [
        "registry",
        "login",
        "--username=alice",
        "--password-stdin",
        "--insecure",
        "--",
        "ghcr.io",
    ]


def test_repo_alias_is_stable_and_distinct() -> None:
    assert repo_alias("https://a", "u") == repo_alias("https://a", "u")
    assert repo_alias("https://a", "u") != repo_alias("https://a", "v")
    assert repo_alias("https://a", "u").startswith("hfo-")


def test_env(tmp_path: Path) -> None:
    base = {"PATH": "/usr/bin", "HOME": "/home/op"}
    env = helm_env(base, kubeconfig="/k/config", helm_home=tmp_path / "h", private_dir=tmp_path)
    assert env["PATH"] == "/usr/bin"
    assert env["KUBECONFIG"] == "/k/config"
    assert env["HELM_CACHE_HOME"] == str(tmp_path / "h" / "cache")
    assert env["HELM_CONFIG_HOME"] == str(tmp_path / "h" / "config")
    assert env["HELM_DATA_HOME"] == str(tmp_path / "h" / "data")
    assert env["HELM_REPOSITORY_CONFIG"] == str(tmp_path / "repositories.yaml")
    assert env["HELM_REGISTRY_CONFIG"] == str(tmp_path / "registry" / "config.json")
    assert base == {"PATH": "/usr/bin", "HOME": "/home/op"}
    assert helm_env(base) == base


# --- the values file ------------------------------------------------------------------------------


def test_values_file_content_mode_and_removal(tmp_path: Path) -> None:
    values = {"auth": {"password": SECRET}, "yes": "yes", "n": None, "list": [1, 2.5, True]}
    with private_workdir(tmp_path) as workdir:
        assert stat.S_IMODE(workdir.stat().st_mode) == 0o700
        path = write_values_file(workdir, values)
        assert path.parent == workdir
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert json.loads(path.read_text()) == values
    assert not workdir.exists()
    assert list(tmp_path.iterdir()) == []


def test_private_workdir_is_removed_on_error(tmp_path: Path) -> None:
    def fail() -> None:
        with private_workdir(tmp_path) as workdir:
            write_values_file(workdir, {"a": 1})
            raise RuntimeError

    with pytest.raises(RuntimeError):
        fail()
    assert list(tmp_path.iterdir()) == []


def test_values_that_are_not_json(tmp_path: Path) -> None:
    with pytest.raises(HelmError) as caught:
        write_values_file(tmp_path, {"a": {SECRET}})
    assert caught.value.kind == "InvalidValues"
    assert SECRET not in str(caught.value)
    with pytest.raises(HelmError):
        write_values_file(tmp_path, {"a": float("nan")})


# --- parsing --------------------------------------------------------------------------------------

# `helm install --dry-run=client -o json` of the test chart, helm 4.3.1 (chart files trimmed).
HELM4_RELEASE_JSON = json.dumps(
    {
        "name": "x",
        "info": {
            "first_deployed": "2026-11-21T12:04:06.497599981Z",
            "last_deployed": "2026-11-21T12:04:06.497599981Z",
            "description": "Install complete",
            "status": "deployed",
        },
        "chart": {
            "metadata": {
                "name": "demo-app",
                "version": "0.1.0",
                "apiVersion": "v2",
                "appVersion": "1.0.0",
                "type": "application",
            },
            "templates": [],
        },
        "config": {"secretv": SECRET},
        "manifest": "---\n",
        "version": 1,
        "namespace": "ns1",
        "apply_method": "ssa",
    }
)


def test_parse_release() -> None:
    result = parse_release(HELM4_RELEASE_JSON)
    assert (result.name, result.namespace, result.revision, result.status) == (
        "x",
        "ns1",
        1,
        "deployed",
    )
    assert (result.chart_name, result.chart_version, result.app_version) == (
        "demo-app",
        "0.1.0",
        "1.0.0",
    )
    assert result.last_deployed == "2026-11-21T12:04:06.497599981Z"
    assert SECRET not in repr(result)


def test_parse_release_after_noise() -> None:
    assert parse_release("some warning\n" + HELM4_RELEASE_JSON).revision == 1
    with pytest.raises(ValueError, match="JSON"):
        parse_release("no json here")


def test_parse_metadata() -> None:
    # `helm get metadata -o json`, helm 4.3.1
    stdout = (
        '{"name":"slow","chart":"demo-app","version":"0.1.0","appVersion":"1.0.0","labels":'
        '{"modifiedAt":"1795263170","name":"slow","owner":"helm","status":"deployed","version":'
        '"4"},"namespace":"apps","revision":4,"status":"deployed","deployedAt":'
        '"2026-11-21T12:12:57Z","applyMethod":"ssa"}\n'
    )
    assert parse_metadata(stdout) == ReleaseResult(
        name="slow",
        namespace="apps",
        revision=4,
        status="deployed",
        chart_name="demo-app",
        chart_version="0.1.0",
        app_version="1.0.0",
        last_deployed="2026-11-21T12:12:57Z",
    )


def test_parse_history() -> None:
    stdout = json.dumps(
        [
            {
                "revision": 1,
                "updated": "2026-01-01T00:00:00Z",
                "status": "superseded",
                "chart": "demo-app-0.1.0",
                "app_version": "1.0.0",
                "description": "Install complete",
            },
            {
                "revision": 2,
                "status": "deployed",
                "chart": "demo-app-0.2.0",
                "app_version": "1.0.0",
                "rollback_revision": 1,
                "description": "Rollback to 1",
            },
        ]
    )
    records = parse_history(stdout)
    assert [(r.revision, r.status, r.chart) for r in records] == [
        (1, "superseded", "demo-app-0.1.0"),
        (2, "deployed", "demo-app-0.2.0"),
    ]
    assert records[0].updated == "2026-01-01T00:00:00Z"
    assert records[1].updated is None
    assert parse_history("") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v4.3.1", (4, 3, 1)),
        ("v3.16.2+g13654a5\n", (3, 16, 2)),
        ("v3.17.0-rc.1", (3, 17, 0)),
        ('version.BuildInfo{Version:"v3.9.0", GitCommit:""}', (3, 9, 0)),
    ],
)
def test_helm_version_parse(text: str, expected: tuple[int, int, int]) -> None:
    version = HelmVersion.parse(text)
    assert (version.major, version.minor, version.patch) == expected


def test_helm_version_parse_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a helm version"):
        HelmVersion.parse("hello")
