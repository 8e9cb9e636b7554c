"""Session fixtures for integration tests: the control plane, a namespace per test, a chart repo.

Kept out of conftest.py so that unit tests never import (or build) anything of the test bed.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "hack"))

import testbed as testbed_module  # noqa: E402

CHARTS_DIR = REPO_ROOT / "tests" / "charts"


@dataclass
class Cluster:
    """A running control plane and the environment that points tools at it."""

    kubeconfig: Path
    bin_dir: Path
    env: dict[str, str]

    def run(
        self, *argv: str, check: bool = True, input: str | None = None, timeout: float = 300
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl/helm (resolved from the test-bed binaries) and capture its output."""
        binary = self.bin_dir / argv[0]
        result = subprocess.run(
            [str(binary), *argv[1:]],
            env=self.env,
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"{' '.join(argv)} exited {result.returncode}\n"
                f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
            )
        return result

    def kubectl_json(self, *argv: str) -> Any:
        return json.loads(self.run("kubectl", *argv, "-o", "json").stdout)


def _reusable_testbed() -> Path | None:
    """KUBECONFIG of a running test bed (`hack/testbed up`), or None: never a foreign cluster."""
    kubeconfig = os.environ.get("KUBECONFIG")
    if not kubeconfig or not Path(kubeconfig).is_file():
        return None
    try:
        config = json.loads(Path(kubeconfig).read_text())
    except ValueError:
        return None
    if config.get("current-context") != testbed_module.CONTEXT_NAME:
        return None
    bed = testbed_module.Testbed(Path(kubeconfig).parent)
    return bed.kubeconfig if bed.is_up() else None


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    bin_dir = testbed_module.testbin_dir()
    helm_home = tmp_path_factory.mktemp("helm-home")
    base_env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        # Helm state of the tests, isolated from the user's repositories and cache.
        "HELM_CACHE_HOME": str(helm_home / "cache"),
        "HELM_CONFIG_HOME": str(helm_home / "config"),
        "HELM_DATA_HOME": str(helm_home / "data"),
    }
    reused = _reusable_testbed()
    if reused is not None:
        yield Cluster(reused, bin_dir, {**base_env, "KUBECONFIG": str(reused)})
        return
    # A short path: etcd and the API server dislike deep socket/data paths less than people do.
    bed = testbed_module.Testbed(Path(tempfile.mkdtemp(prefix="hfo-testbed-")))
    try:
        bed.up()
        yield Cluster(bed.kubeconfig, bin_dir, {**base_env, "KUBECONFIG": str(bed.kubeconfig)})
    finally:
        bed.destroy()


@pytest.fixture
def namespace(cluster: Cluster, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (without waiting for finalization)."""
    stem = request.node.name.lower().replace("_", "-").replace("[", "-").replace("]", "")
    name = f"t-{stem[:40].strip('-')}-{uuid.uuid4().hex[:6]}"
    cluster.run("kubectl", "create", "namespace", name)
    yield name
    cluster.run("kubectl", "delete", "namespace", name, "--wait=false", check=False)


@dataclass
class ChartRepo:
    url: str
    directory: Path


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="session")
def chart_repo(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChartRepo]:
    """tests/charts/* packaged with helm and served with an index.yaml on 127.0.0.1."""
    directory = tmp_path_factory.mktemp("chart-repo")
    charts = sorted(path for path in CHARTS_DIR.iterdir() if (path / "Chart.yaml").is_file())
    cluster.run("helm", "package", *map(str, charts), "--destination", str(directory))
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    cluster.run("helm", "repo", "index", str(directory), "--url", url)
    thread = threading.Thread(target=server.serve_forever, name="chart-repo", daemon=True)
    thread.start()
    try:
        yield ChartRepo(url=url, directory=directory)
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(directory, ignore_errors=True)
