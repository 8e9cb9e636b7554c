"""The private files and environment of helm runs."""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path

import pytest

from helmfile_operator.helm import HelmError
from helmfile_operator.helm.files import (
    ensure_private_dir,
    helm_env,
    private_workdir,
    registry_credential_keys,
    tenant_home,
    write_registry_config,
    write_repository_config,
    write_values_file,
)

SECRET = "s3cr3t-value-nobody-may-see"


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
    assert env["DOCKER_CONFIG"] == str(tmp_path / "h" / "docker")
    assert base == {"PATH": "/usr/bin", "HOME": "/home/op"}
    assert helm_env(base) == base


def test_a_home_overrides_the_operators_own_helm_paths(tmp_path: Path) -> None:
    base = {
        "HELM_REPOSITORY_CONFIG": "/shared/repositories.yaml",
        "HELM_REPOSITORY_CACHE": "/shared/cache",
        "HELM_REGISTRY_CONFIG": "/shared/registry.json",
        "HELM_CONTENT_CACHE": "/shared/content",
        "DOCKER_CONFIG": "/shared/docker",
        "HELM_PLUGINS": "/opt/helm/plugins",
    }
    env = helm_env(base, helm_home=tmp_path)
    assert not any(v.startswith("/shared/") for v in env.values())
    assert env["HELM_PLUGINS"] == "/opt/helm/plugins"  # the operator's, read-only for helm
    assert helm_env(base) == base  # no home: the operator's environment as it is


# --- private directories and tenant homes ---------------------------------------------------------


def test_ensure_private_dir(tmp_path: Path) -> None:
    path = ensure_private_dir(tmp_path / "a" / "b")
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    path.chmod(0o755)
    assert stat.S_IMODE(ensure_private_dir(path).stat().st_mode) == 0o700
    (tmp_path / "link").symlink_to(path)
    with pytest.raises(OSError, match="not a directory"):
        ensure_private_dir(tmp_path / "link")
    (tmp_path / "file").write_text("")
    with pytest.raises(OSError, match="not a directory"):
        ensure_private_dir(tmp_path / "file")


def test_tenant_homes(tmp_path: Path) -> None:
    a = tenant_home(tmp_path / "homes", "team-a")
    assert a == tmp_path / "homes" / "team-a"
    assert stat.S_IMODE((tmp_path / "homes").stat().st_mode) == 0o700
    assert stat.S_IMODE(a.stat().st_mode) == 0o700
    assert tenant_home(tmp_path / "homes", "team-a") == a
    for odd in ("../x", "/etc", "a/b", "", "UPPER", "x" * 64):
        home = tenant_home(tmp_path / "homes", odd)
        assert home.parent == tmp_path / "homes"
        assert home.name.startswith("_")
    assert tenant_home(tmp_path / "homes", "../x") != tenant_home(tmp_path / "homes", "../y")


# --- credentials in helm's own files --------------------------------------------------------------


def test_repository_config(tmp_path: Path) -> None:
    path = write_repository_config(
        tmp_path / "repositories.yaml",
        name="hfo-1",
        url="https://charts.example.com",
        username="alice",
        password=SECRET,
        ca_file=tmp_path / "ca.crt",
        insecure_skip_tls_verify=True,
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert set(document) == {"apiVersion", "generated", "repositories"}
    [entry] = document["repositories"]
    assert entry == {
        "name": "hfo-1",
        "url": "https://charts.example.com",
        "username": "alice",
        "password": SECRET,
        "certFile": "",
        "keyFile": "",
        "caFile": str(tmp_path / "ca.crt"),
        "insecure_skip_tls_verify": True,
        "pass_credentials_all": False,
    }
    with pytest.raises(FileExistsError):  # never over a file someone else put there
        write_repository_config(path, name="x", url="https://x", username="u", password="p")


def test_registry_config(tmp_path: Path) -> None:
    path = write_registry_config(
        tmp_path / "registry" / "config.json", host="ghcr.io", username="bob", password=SECRET
    )
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    auth = base64.b64encode(f"bob:{SECRET}".encode()).decode()
    assert json.loads(path.read_text()) == {"auths": {"ghcr.io": {"auth": auth}}}
    assert os.listdir(path.parent) == ["config.json"]


def test_registry_credential_keys() -> None:
    assert registry_credential_keys("registry.local:5000") == ["registry.local:5000"]
    assert "https://index.docker.io/v1/" in registry_credential_keys("registry-1.docker.io")


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


def test_files_a_killed_operator_left_are_removed_at_start(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from helmfile_operator.helm.files import run_work_dir

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    runs = tmp_path / "runs"
    for pid in (dead, str(os.getpid()), "1"):
        (runs / pid / "helm-x").mkdir(parents=True)
        (runs / pid / "helm-x" / "values.yaml").write_text("password: hunter2\n")

    mine = run_work_dir(tmp_path)

    assert mine == runs / str(os.getpid())
    assert list(mine.iterdir()) == []  # a previous incarnation's files are gone
    assert not (runs / dead).exists()  # a process that no longer exists
    assert (runs / "1" / "helm-x" / "values.yaml").exists()  # a live process's files stay
    assert oct(mine.stat().st_mode & 0o777) == "0o700"


def test_a_remote_clusters_run_cannot_fall_back_to_the_pods_credentials() -> None:
    base = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "443", "PATH": "/b"}
    env = helm_env(base, kubeconfig="/run/x/kubeconfig", remote=True)
    assert env == {"KUBECONFIG": "/run/x/kubeconfig", "PATH": "/b"}
    assert helm_env(base, kubeconfig="/k") == {**base, "KUBECONFIG": "/k"}  # our own cluster
