"""The private files and environment of helm runs."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from helmfile_operator.helm import HelmError
from helmfile_operator.helm.files import helm_env, private_workdir, write_values_file

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
