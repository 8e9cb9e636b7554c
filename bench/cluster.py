"""The benchmark's own control plane (hack/testbed.py, a private --dir), its API, the chart repo.

Everything here talks to the API server directly (http.client, the admin token of the test bed):
the harness polls often, and a kubectl process per poll would cost more CPU than what it measures.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import http.client
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = REPO_ROOT / "bench"
# The resources (plurals) of the objects the benchmark's charts render: ConfigMaps only.
CHART_RESOURCES = ("configmaps",)
GROUP_PATH = "/apis/helmfile.dev/v1alpha1"


@dataclass(frozen=True)
class Chart:
    """A chart of bench/charts/, packaged into the harness's chart repository."""

    name: str
    version: str
    objects: int  # objects (ConfigMaps) one release renders

    @property
    def directory(self) -> Path:
        return BENCH_DIR / "charts" / self.name


# One ConfigMap per release: the overhead around helm.
TRIVIAL = Chart("trivial", "0.1.0", objects=1)
# 200 ConfigMaps, a manifest of ≈ 1.6 MiB (a storage Secret of ≈ 0.1 MiB): the cost of a release's
# size (bench/charts/large/values.yaml).
LARGE = Chart("large", "0.1.0", objects=200)
CHARTS = (TRIVIAL, LARGE)


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says what failed."""


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "helmfile-operator"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def testbin_dir() -> Path:
    """The test-bed binaries (kubectl, helm, the control plane), built by hack/testbin."""
    out = subprocess.run(
        [str(REPO_ROOT / "hack" / "testbin")], stdout=subprocess.PIPE, text=True, check=False
    )
    if out.returncode != 0:
        raise BenchError("hack/testbin failed (see above)")
    return Path(out.stdout.strip().splitlines()[-1])


@dataclass(frozen=True)
class Baselines:
    helmfile: Path
    helm_plugins: Path  # a HELM_PLUGINS directory holding helm-diff


def baseline_binaries() -> Baselines:
    """helmfile and helm-diff, built from their Go modules by bench/testbin."""
    out = subprocess.run(
        [str(BENCH_DIR / "testbin")], stdout=subprocess.PIPE, text=True, check=False
    )
    lines = out.stdout.strip().splitlines()
    if out.returncode != 0 or len(lines) < 2:
        raise BenchError("bench/testbin failed to build helmfile / helm-diff (see above)")
    return Baselines(helmfile=Path(lines[-2]), helm_plugins=Path(lines[-1]))


def version_of(argv: list[str], env: Mapping[str, str] | None = None) -> str:
    out = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "?"


# --- the API ------------------------------------------------------------------------------------


class Api:
    """A minimal client of one API server: JSON in and out, one kept-alive TLS connection."""

    def __init__(self, kubeconfig: Path) -> None:
        config = json.loads(kubeconfig.read_text())
        cluster = config["clusters"][0]["cluster"]
        self.token: str = config["users"][0]["user"]["token"]
        url = urllib.parse.urlsplit(cluster["server"])
        self.host = url.hostname or "127.0.0.1"
        self.port = url.port or 443
        self.context = ssl.create_default_context(
            cadata=base64.b64decode(cluster["certificate-authority-data"]).decode()
        )
        self._connection: http.client.HTTPSConnection | None = None
        self.requests = 0  # what the harness itself sent (to tell it apart in apiserver metrics)

    def _conn(self) -> http.client.HTTPSConnection:
        if self._connection is None:
            self._connection = http.client.HTTPSConnection(
                self.host, self.port, context=self.context, timeout=60
            )
        return self._connection

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
    ) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json"}
        payload = None
        if body is not None:
            payload = body if isinstance(body, bytes) else json.dumps(body).encode()
            headers["Content-Type"] = content_type
        for attempt in range(3):
            try:
                conn = self._conn()
                conn.request(method, path, body=payload, headers=headers)
                response = conn.getresponse()
                data = response.read()
                self.requests += 1
                return response.status, data
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    raise
                time.sleep(0.2)
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(OSError):
                self._connection.close()
            self._connection = None

    def json(self, method: str, path: str, body: Any = None, content_type: str = "") -> Any:
        status, data = self.request(
            method, path, body, content_type or "application/merge-patch+json"
        )
        if status >= 400:
            raise BenchError(f"{method} {path}: HTTP {status}: {data[:300]!r}")
        return json.loads(data) if data else None

    def get(self, path: str) -> Any:
        return self.json("GET", path)

    def exists(self, path: str) -> bool:
        return self.request("GET", path)[0] == 200

    def merge_patch(self, path: str, body: Any) -> Any:
        return self.json("PATCH", path, body, "application/merge-patch+json")

    def items(self, plural: str, namespace: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get(f"{GROUP_PATH}/namespaces/{namespace}/{plural}")[
            "items"
        ]
        return items

    def metrics(self) -> str:
        status, data = self.request("GET", "/metrics")
        if status != 200:
            raise BenchError(f"GET /metrics of the API server: HTTP {status}")
        return data.decode()

    def create_namespace(self, name: str) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}
        status, data = self.request("POST", "/api/v1/namespaces", body)
        if status not in (201, 409):
            raise BenchError(f"create namespace {name}: HTTP {status}: {data[:200]!r}")

    def grant_tenant(self, namespace: str, service_account: str = "default") -> None:
        """What a tenant namespace needs (docs/security.md, hack/demo.py): the operator
        impersonates the namespace's `default` ServiceAccount for helm, drift checks, plans and
        reads of Helm's storage; bind it to the built-in `admin` ClusterRole there."""
        body = {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "helmfile-deployer", "namespace": namespace},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "admin",
            },
            "subjects": [
                {"kind": "ServiceAccount", "name": service_account, "namespace": namespace}
            ],
        }
        path = f"/apis/rbac.authorization.k8s.io/v1/namespaces/{namespace}/rolebindings"
        status, data = self.request("POST", path, body)
        if status not in (201, 409):
            raise BenchError(f"RoleBinding in {namespace}: HTTP {status}: {data[:200]!r}")

    def delete_namespaces(self, names: list[str], timeout: float = 600) -> None:
        """Delete the namespaces (finalizers of our CRs dropped first) and wait until gone."""
        for name in names:
            for plural in ("helmfilereleases", "helmfilestates"):
                status, data = self.request("GET", f"{GROUP_PATH}/namespaces/{name}/{plural}")
                if status != 200:
                    continue
                for item in json.loads(data)["items"]:
                    if item["metadata"].get("finalizers"):
                        self.request(
                            "PATCH",
                            f"{GROUP_PATH}/namespaces/{name}/{plural}/{item['metadata']['name']}",
                            {"metadata": {"finalizers": None}},
                            "application/merge-patch+json",
                        )
            self.request("DELETE", f"/api/v1/namespaces/{name}")
        deadline = time.monotonic() + timeout
        for name in names:
            while self.exists(f"/api/v1/namespaces/{name}"):
                if time.monotonic() > deadline:
                    raise BenchError(f"namespace {name} still exists after {timeout:.0f}s")
                time.sleep(0.5)


# --- the control plane ----------------------------------------------------------------------------


@dataclass
class Bed:
    """A private test bed (`hack/testbed.py up --dir <root>`), destroyed by `destroy()`."""

    root: Path
    bins: Path
    keep: bool = False

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    def _testbed(self, command: str) -> None:
        subprocess.run(
            [
                sys.executable,
                str(REPO_ROOT / "hack" / "testbed.py"),
                command,
                "--dir",
                str(self.root),
            ],
            check=True,
        )

    def up(self) -> None:
        if self.root.resolve() == (REPO_ROOT / ".testbed").resolve():
            raise BenchError(
                "the benchmark never uses the shared .testbed/: pick another --testbed-dir"
            )
        self._testbed("up")

    def destroy(self) -> None:
        if self.keep:
            self._testbed("down")
        else:
            self._testbed("destroy")

    def pids(self) -> list[int]:
        """The control plane's processes (from `hack/testbed.py`'s pid files)."""
        pids = []
        for pid_file in (self.root / "run").glob("*.pid"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                pids.append(int(json.loads(pid_file.read_text())["pid"]))
        return pids

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{self.bins}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def kubectl(self, *argv: str, input: str | None = None) -> str:
        out = subprocess.run(
            [str(self.bins / "kubectl"), *argv],
            env=self.env(),
            input=input,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise BenchError(f"kubectl {' '.join(argv)}: {out.stderr.strip()[:500]}")
        return out.stdout


# --- the chart repository ------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(http.server.ThreadingHTTPServer):
    request_queue_size = 128  # 8+ helm processes connect at once; the default backlog is 5
    daemon_threads = True


@dataclass
class ChartRepo:
    """bench/charts/trivial and bench/charts/large packaged, indexed and served on 127.0.0.1 from
    a thread of the harness (a separate server process could be stopped by someone else's
    cleanup mid-run)."""

    directory: Path
    url: str


@contextlib.contextmanager
def chart_repo(helm: Path, parent: Path) -> Iterator[ChartRepo]:
    directory = Path(tempfile.mkdtemp(prefix="chart-repo-", dir=parent))
    env = {**os.environ, "HELM_CACHE_HOME": str(directory / ".cache")}
    for chart in CHARTS:
        subprocess.run(
            [str(helm), "package", str(chart.directory), "--destination", str(directory)],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
    shutil.rmtree(directory / ".cache", ignore_errors=True)
    handler = functools.partial(_QuietHandler, directory=str(directory))
    server = _Server(("127.0.0.1", 0), handler)
    url = f"http://127.0.0.1:{server.server_address[1]}"
    subprocess.run([str(helm), "repo", "index", str(directory), "--url", url], check=True)
    thread = threading.Thread(target=server.serve_forever, name="chart-repo", daemon=True)
    thread.start()
    try:
        yield ChartRepo(directory, url)
    finally:
        server.shutdown()
        server.server_close()
        shutil.rmtree(directory, ignore_errors=True)
