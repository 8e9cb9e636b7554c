"""The argv of helm runs: built by pure functions, checked here."""

from __future__ import annotations

from pathlib import Path

import pytest

from helmfile_operator.api.models import ChartReference, ChartRepository, HelmOptions
from helmfile_operator.helm import RepositoryCredentials
from helmfile_operator.helm.argv import (
    chart_ref,
    clamp_timeout,
    go_duration,
    history_argv,
    registry_host,
    repo_alias,
    repo_update_argv,
    rollback_argv,
    uninstall_argv,
    upgrade_argv,
    wait_flags,
)

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
    # The model refuses such a name; the builder must not depend on it.
    chart = ChartReference.model_construct(
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


def test_history() -> None:
    assert history_argv(release="demo", namespace="apps", max=5) == [
        "history",
        "--namespace=apps",
        "--max=5",
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


def test_repo_update_names_only_the_alias() -> None:
    credentials = RepositoryCredentials("alice", SECRET)
    alias = repo_alias("https://charts.example.com")
    assert repo_update_argv(alias=alias, helm_major=4, timeout_seconds=20) == [
        "repo",
        "update",
        "--timeout=20s",
        "--",
        alias,
    ]
    # Helm 3 has no --timeout there, and exits 0 on a failed download unless told otherwise.
    assert repo_update_argv(alias=alias, helm_major=3) == [
        "repo",
        "update",
        "--fail-on-repo-update-fail",
        "--",
        alias,
    ]
    assert SECRET not in repr(credentials)


def test_registry_host() -> None:
    assert registry_host("oci://ghcr.io/org/charts") == "ghcr.io"
    assert registry_host("oci://registry.local:5000/charts") == "registry.local:5000"


def test_repo_alias_is_stable_and_tells_nothing_of_the_username() -> None:
    assert repo_alias("https://a") == repo_alias("https://a")
    assert repo_alias("https://a") != repo_alias("https://b")
    assert repo_alias("https://a").startswith("hfo-")


# --- the maximum timeout --------------------------------------------------------------------------


def test_clamp_timeout() -> None:
    assert clamp_timeout(300, None) == 300
    assert clamp_timeout(300, 120) == 120
    assert clamp_timeout(60, 120) == 60


def test_upgrade_timeout_is_clamped() -> None:
    def timeout(max_timeout_seconds: float | None, **options: object) -> list[str]:
        argv = upgrade_argv(
            release="demo",
            namespace="apps",
            chart=HTTP_CHART,
            values_file=VALUES_FILE,
            options=HelmOptions.model_validate(options),
            helm_major=4,
            max_timeout_seconds=max_timeout_seconds,
        )
        return [a for a in argv if a.startswith("--timeout=")]

    assert timeout(None, timeout="2h") == ["--timeout=7200s"]
    assert timeout(600, timeout="2h") == ["--timeout=600s"]
    assert timeout(600) == ["--timeout=300s"]  # the default is below the bound
    assert timeout(1.5, timeout="10s") == ["--timeout=1.5s"]
