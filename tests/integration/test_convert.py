"""`convert` end to end: a helmfile.yaml converted and applied installs what `helmfile sync` of
the same file installs (helmfile built from its Go module)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from testbed_fixtures import (
    REPO_ROOT,
    ChartRepo,
    Cluster,
    OperatorProcess,
    condition,
    helm_releases,
    wait_until,
)

CLI = str(REPO_ROOT / ".venv" / "bin" / "helmfile-operator")

HELMFILE = """\
environments:
  default:
    values:
      - replicas: 2
---
repositories:
  - name: test
    url: {repo}
helmDefaults:
  wait: false
  timeout: 120
releases:
  - name: db
    namespace: {namespace}
    chart: test/demo-app
    version: 0.1.0
    labels: {{tier: data}}
  - name: web
    namespace: {namespace}
    chart: test/demo-app
    version: 0.1.0
    needs: [{namespace}/db]
    values:
      - message: converted
    set:
      - name: replicaCount
        value: 2
  - name: off
    namespace: {namespace}
    chart: test/demo-app
    version: 0.1.0
    installed: false
"""


@pytest.fixture
def second_namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-helmfile-{uuid.uuid4().hex[:6]}"
    cluster.run("kubectl", "create", "namespace", name)
    yield name
    cluster.run("kubectl", "delete", "namespace", name, "--wait=false", check=False)


def _installed(cluster: Cluster, namespace: str) -> dict[str, Any]:
    """What helm says is deployed: name → (chart, status) and the values helm was given."""
    found = {}
    for name, release in helm_releases(cluster, namespace).items():
        values = json.loads(
            cluster.run("helm", "get", "values", name, "-n", namespace, "-o", "json").stdout
        )
        found[name] = (release["chart"], release["status"], values)
    return found


def test_a_converted_helmfile_installs_what_helmfile_sync_installs(
    cluster: Cluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    namespace: str,
    second_namespace: str,
    helmfile_binary: Path,
    tmp_path: Path,
) -> None:
    converted_file = tmp_path / "converted" / "helmfile.yaml"
    converted_file.parent.mkdir()
    converted_file.write_text(HELMFILE.format(repo=chart_repo.url, namespace=namespace))
    result = subprocess.run(
        [CLI, "convert", str(converted_file), "--name", "stack", "--namespace", namespace],
        env=cluster.env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    documents = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert documents[0]["kind"] == "HelmfileState"
    cluster.run("kubectl", "apply", "-f", "-", input=result.stdout)

    def ready() -> bool:
        body = cluster.kubectl_json("get", "hfs", "stack", "-n", namespace)
        found = condition(body, "Ready")
        return bool(found and found["status"] == "True")

    wait_until(ready, timeout=180, message="the converted state to be Ready")

    synced_file = tmp_path / "synced" / "helmfile.yaml"
    synced_file.parent.mkdir()
    synced_file.write_text(HELMFILE.format(repo=chart_repo.url, namespace=second_namespace))
    sync = subprocess.run(
        [str(helmfile_binary), "--file", str(synced_file), "sync"],
        env=cluster.env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert sync.returncode == 0, sync.stdout + sync.stderr

    by_operator = _installed(cluster, namespace)
    by_helmfile = _installed(cluster, second_namespace)
    assert sorted(by_operator) == sorted(by_helmfile) == ["db", "web"]
    assert by_operator == by_helmfile
