"""The private files and environment of one helm run.

Values, CA certificates and repository or registry credentials reach helm only through files in a
fresh 0700 directory (files 0600) that is removed when the command ends, whatever its outcome; the
environment points helm's repository and registry configuration into that directory, so that no
credential lands in a shared place. Credentials are written in helm's own formats
(`repositories.yaml`, the registry's Docker-style `config.json`), so that no login command, and
no username on a command line, is needed.

helm's cache, configuration and data live in a home per tenant (`tenant_home`), so that no
tenant's chart index or archive is ever read for another.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from helmfile_operator.helm.errors import HelmError, HelmErrorKind

# Paths helm would otherwise take from the operator's environment instead of the home.
_HOME_PATHS = (
    "HELM_REPOSITORY_CONFIG",
    "HELM_REPOSITORY_CACHE",
    "HELM_REGISTRY_CONFIG",
    "HELM_CONTENT_CACHE",
)
_TENANT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")


def helm_env(
    base_env: Mapping[str, str],
    *,
    kubeconfig: str | None = None,
    helm_home: Path | None = None,
    private_dir: Path | None = None,
    remote: bool = False,
) -> dict[str, str]:
    """The environment of one helm run.

    `helm_home` isolates helm's cache/config/data (per tenant). The operator's own settings of
    paths inside them are dropped, so that helm derives every one from the home, and Docker's
    configuration (the registry client's fallback for credentials) moves there too, so that
    registry credentials of the operator's environment are never lent to a tenant.
    `private_dir` (the per-call directory that also holds the values file) takes the repository
    and registry configuration, so credentials never land in a shared place. `remote`: the
    kubeconfig is a remote cluster's (never the pod's in-cluster credentials).
    """
    env = dict(base_env)
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    if remote:
        # A remote cluster's kubeconfig, and nothing to fall back to: without these, a missing
        # or empty kubeconfig can never turn into the pod's own in-cluster credentials.
        env.pop("KUBERNETES_SERVICE_HOST", None)
        env.pop("KUBERNETES_SERVICE_PORT", None)
    if helm_home is not None:
        for name in _HOME_PATHS:
            env.pop(name, None)
        env["HELM_CACHE_HOME"] = str(helm_home / "cache")
        env["HELM_CONFIG_HOME"] = str(helm_home / "config")
        env["HELM_DATA_HOME"] = str(helm_home / "data")
        env["DOCKER_CONFIG"] = str(helm_home / "docker")
    if private_dir is not None:
        env["HELM_REPOSITORY_CONFIG"] = str(private_dir / "repositories.yaml")
        env["HELM_REPOSITORY_CACHE"] = str(private_dir / "repository-cache")
        env["HELM_REGISTRY_CONFIG"] = str(private_dir / "registry" / "config.json")
    return env


@contextlib.contextmanager
def private_workdir(parent: Path | None = None) -> Iterator[Path]:
    """A 0700 directory for one command's files (values, CA, credentials), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="helm-", dir=parent))
    try:
        path.chmod(0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def ensure_private_dir(path: Path) -> Path:
    """`path` as a directory of ours, mode 0700, created if missing. A symlink, a file or a
    directory owned by someone else in its place is refused (OSError): it could redirect what
    helm reads and writes."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700, parents=True)
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise OSError(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise OSError(f"{path} belongs to another user")
    if stat.S_IMODE(info.st_mode) != 0o700:
        path.chmod(0o700)
    return path


def run_work_dir(base: Path) -> Path:
    """This process's directory for helm's private per-command files, under `base`, after
    removing what earlier processes left there: a SIGKILL or an OOM kill skips the `finally`
    that removes values and credential files, and they would stay in the pod's emptyDir.

    Each process works in `base/runs/<pid>`; at start it removes its own pid's directory (a
    previous incarnation: in a container the operator is always pid 1) and those of processes
    that no longer exist (several operators may share `base` on one machine)."""
    runs = ensure_private_dir(ensure_private_dir(base) / "runs")
    mine = str(os.getpid())
    for entry in runs.iterdir():
        if entry.name == mine or not (entry.name.isdigit() and _alive(int(entry.name))):
            shutil.rmtree(entry, ignore_errors=True)
    return ensure_private_dir(runs / mine)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: not ours to judge
    return True


def tenant_home(base: Path, tenant: str) -> Path:
    """helm's home (cache, config, data) for `tenant` under `base`, 0700. A namespace name is
    used as it is; anything else by a hash, so that no tenant string can name a path."""
    name = tenant if _TENANT_NAME.fullmatch(tenant) else "_" + _digest(tenant)
    return ensure_private_dir(ensure_private_dir(base) / name)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def write_private_file(path: Path, content: str) -> Path:
    """Create `path` with mode 0600 (failing if it exists) and write `content`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    return path


def write_kubeconfig(directory: Path, kubeconfig: str | None) -> Path | None:
    """A remote cluster's kubeconfig (its text) as a 0600 file of a run's private directory;
    None (no file: the operator's own cluster) without one."""
    return write_private_file(directory / "kubeconfig", kubeconfig) if kubeconfig else None


def write_values_file(directory: Path, values: Mapping[str, Any]) -> Path:
    """The values as JSON (valid YAML, exact for every JSON type) in a 0600 file."""
    try:
        text = json.dumps(dict(values), ensure_ascii=False, allow_nan=False, indent=1)
    except (TypeError, ValueError) as error:
        # The error names a type or says "out of range"; it never echoes the value itself.
        reason = str(error).split(":")[0]
        raise HelmError(
            HelmErrorKind.INVALID_VALUES,
            "upgrade",
            f"the values cannot be written as JSON ({reason})",
        ) from None
    return write_private_file(directory / "values.yaml", text)


def write_repository_config(
    path: Path,
    *,
    name: str,
    url: str,
    username: str,
    password: str,
    ca_file: Path | None = None,
    insecure_skip_tls_verify: bool = False,
) -> Path:
    """helm's repositories.yaml (`repo.File`, written as JSON, which helm reads as YAML) with one
    repository: what `helm repo add` would write, without its command line. Credentials are sent
    only to the repository's own host (`pass_credentials_all: false`)."""
    entry = {
        "name": name,
        "url": url,
        "username": username,
        "password": password,
        "certFile": "",
        "keyFile": "",
        "caFile": str(ca_file) if ca_file is not None else "",
        "insecure_skip_tls_verify": insecure_skip_tls_verify,
        "pass_credentials_all": False,
    }
    generated = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    document = {"apiVersion": "v1", "generated": generated, "repositories": [entry]}
    ensure_private_dir(path.parent)
    return write_private_file(path, json.dumps(document, ensure_ascii=False, indent=1))


def registry_credential_keys(host: str) -> list[str]:
    """The keys helm's registry client (oras) looks credentials up by for `host[:port]`: the
    host itself, and Docker Hub's historical address for Docker Hub."""
    if host in ("docker.io", "registry-1.docker.io"):
        return ["https://index.docker.io/v1/", host]
    return [host]


def write_registry_config(path: Path, *, host: str, username: str, password: str) -> Path:
    """The registry credentials file (Docker's config.json format) that `helm registry login`
    would write: `{"auths": {"host[:port]": {"auth": base64("user:pass")}}}`."""
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    document = {"auths": {key: {"auth": auth} for key in registry_credential_keys(host)}}
    ensure_private_dir(path.parent)
    return write_private_file(path, json.dumps(document, indent=1))
