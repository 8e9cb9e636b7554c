"""The private files and environment of one helm run.

Values, CA certificates and repository or registry credentials reach helm only through files in a
fresh 0700 directory (files 0600) that is removed when the command ends, whatever its outcome; the
environment points helm's repository and registry configuration into that directory, so that no
credential lands in a shared place.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from helmfile_operator.helm.errors import HelmError, HelmErrorKind


def helm_env(
    base_env: Mapping[str, str],
    *,
    kubeconfig: str | None = None,
    helm_home: Path | None = None,
    private_dir: Path | None = None,
) -> dict[str, str]:
    """The environment of one helm run.

    `helm_home` isolates helm's cache/config/data (per state). `private_dir` (the per-call
    directory that also holds the values file) takes the repository and registry configuration,
    so credentials never land in a shared place.
    """
    env = dict(base_env)
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    if helm_home is not None:
        env["HELM_CACHE_HOME"] = str(helm_home / "cache")
        env["HELM_CONFIG_HOME"] = str(helm_home / "config")
        env["HELM_DATA_HOME"] = str(helm_home / "data")
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


def write_private_file(path: Path, content: str) -> Path:
    """Create `path` with mode 0600 (failing if it exists) and write `content`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    return path


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
