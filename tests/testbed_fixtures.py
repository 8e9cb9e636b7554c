"""Session fixtures for integration tests: the control plane, a namespace per test, a chart repo,
an OCI registry holding the same charts.

Kept out of conftest.py so that unit tests never import (or build) anything of the test bed.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "hack"))

import testbed as testbed_module  # noqa: E402

CHART_DIRS = [REPO_ROOT / "tests" / "charts", *sorted(REPO_ROOT.glob("examples/*/charts"))]


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

    @property
    def pki(self) -> Path:
        """The test bed's CA (ca.crt, ca.key) and certificates: private or reused, it is beside
        the kubeconfig."""
        return self.kubeconfig.parent / "pki"


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


@dataclass
class WorkloadCluster(Cluster):
    """A second, independent control plane (a remote cluster of `spec.kubeConfig`)."""

    bed: testbed_module.Testbed

    def stop_api_server(self) -> None:
        """Kill the API server (the rest of the control plane stays up, unanswered)."""
        pid = self.bed.running_pid("kube-apiserver")
        assert pid is not None, "the workload cluster's API server is not running"
        os.kill(pid, signal.SIGKILL)  # an outage, not a drain
        wait_until(lambda: self.bed.running_pid("kube-apiserver") is None, 30, "API server stop")

    def restart(self) -> None:
        """Start what was stopped, on the same ports (kubeconfigs naming it stay valid)."""
        server = self.server
        self.bed.up()
        assert self.server == server, "the restarted API server moved to another port"

    @property
    def server(self) -> str:
        config = json.loads(self.kubeconfig.read_text())
        return str(config["clusters"][0]["cluster"]["server"])

    def service_account_kubeconfig(self, name: str = "workload") -> dict[str, Any]:
        """A kubeconfig of a ServiceAccount of this cluster (cluster-admin here), with a token
        from the TokenRequest API and the CA inline: what docs/clusters.md tells users to make."""
        self.run("kubectl", "create", "namespace", "hfo-remote", check=False)
        self.run("kubectl", "create", "serviceaccount", "deployer", "-n", "hfo-remote", check=False)
        self.run(
            "kubectl", "create", "clusterrolebinding", "hfo-remote-deployer",
            "--clusterrole=cluster-admin", "--serviceaccount=hfo-remote:deployer", check=False,
        )  # fmt: skip
        token = self.run(
            "kubectl", "create", "token", "deployer", "-n", "hfo-remote", "--duration=24h"
        ).stdout.strip()
        ca = json.loads(self.kubeconfig.read_text())["clusters"][0]["cluster"][
            "certificate-authority-data"
        ]
        return {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": name, "cluster": {"server": self.server, "certificate-authority-data": ca}}
            ],
            "users": [{"name": "deployer", "user": {"token": token}}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": "deployer"}}],
            "current-context": name,
        }


@pytest.fixture(scope="module")
def workload_cluster(cluster: Cluster) -> Iterator[WorkloadCluster]:
    """A second control plane for the tests of one module, destroyed after them."""
    bed = testbed_module.Testbed(Path(tempfile.mkdtemp(prefix="hfo-workload-")))
    try:
        bed.up()
        env = {**cluster.env, "KUBECONFIG": str(bed.kubeconfig)}
        yield WorkloadCluster(bed.kubeconfig, cluster.bin_dir, env, bed)
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
    """tests/charts/* and the examples' charts, packaged and served with an index on 127.0.0.1."""
    directory = tmp_path_factory.mktemp("chart-repo")
    charts = sorted(
        path for root in CHART_DIRS for path in root.iterdir() if (path / "Chart.yaml").is_file()
    )
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


def demo_app_as(name: str, version: str, directory: Path) -> Path:
    """tests/charts/demo-app copied under `directory` as chart `name` at `version`, for tests
    that publish versions while they run."""
    source = directory / f"{name}-{version}"
    shutil.copytree(REPO_ROOT / "tests" / "charts" / "demo-app", source)
    chart_yaml = source / "Chart.yaml"
    text = chart_yaml.read_text().replace("name: demo-app", f"name: {name}")
    chart_yaml.write_text(text.replace("version: 0.1.0", f"version: {version}"))
    return source


@dataclass
class OciRegistry:
    """A running distribution registry with basic auth and TLS from the test bed's CA.

    `registry_config` is a helm registry config logged in to it (private to this registry), so
    `helm_args` is all a raw helm command needs; `stop()` and `start()` take it away and bring it
    back on the same port with the same data.
    """

    url: str  # oci://127.0.0.1:PORT/charts
    host: str  # 127.0.0.1:PORT
    username: str
    password: str
    ca_pem: str
    ca_file: Path
    registry_config: Path
    cluster: Cluster
    process: testbed_module.OciRegistry

    @property
    def helm_args(self) -> list[str]:
        return ["--registry-config", str(self.registry_config), "--ca-file", str(self.ca_file)]

    def start(self) -> None:
        self.process.start()

    def stop(self) -> None:
        self.process.stop()

    def push(self, chart: Path) -> str:
        """Push a chart directory (packaged first) or .tgz under `url`; returns its oci:// ref."""
        with tempfile.TemporaryDirectory() as scratch:
            if chart.is_dir():
                self.cluster.run("helm", "package", str(chart), "--destination", scratch)
                (chart,) = Path(scratch).glob("*.tgz")
            result = self.cluster.run("helm", "push", str(chart), self.url, *self.helm_args)
        # helm prints "Pushed: 127.0.0.1:PORT/charts/NAME:VERSION" (the stream varies by version).
        pushed = next(
            line.split(":", 1)[1].strip()
            for line in (result.stdout + result.stderr).splitlines()
            if line.startswith("Pushed:")
        )
        return f"oci://{pushed}"


@contextlib.contextmanager
def _oci_registry(cluster: Cluster, root: Path) -> Iterator[OciRegistry]:
    """Start a registry under `root`, log helm in to it (password on stdin, never on argv)."""
    binary = cluster.bin_dir / "registry"
    process = testbed_module.OciRegistry(root / "registry", cluster.pki, binary=binary)
    process.start()
    try:
        registry = OciRegistry(
            url=f"oci://{process.host}/charts",
            host=process.host,
            username=process.username,
            password=process.password,
            ca_pem=process.ca_file.read_text(),
            ca_file=process.ca_file,
            registry_config=root / "helm-registry.json",
            cluster=cluster,
            process=process,
        )
        cluster.run(
            "helm", "registry", "login", registry.host, "--username", registry.username,
            "--password-stdin", *registry.helm_args, input=registry.password,
        )  # fmt: skip
        yield registry
    finally:
        process.stop()


@pytest.fixture(scope="session")
def oci_registry(
    cluster: Cluster, chart_repo: ChartRepo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OciRegistry]:
    """The charts of `chart_repo`, pushed to a session-wide registry. Tests that stop it must
    start it again; one that wants to break a registry takes `private_oci_registry`."""
    with _oci_registry(cluster, tmp_path_factory.mktemp("oci-registry")) as registry:
        for chart in sorted(chart_repo.directory.glob("*.tgz")):
            registry.push(chart)
        yield registry


@pytest.fixture
def private_oci_registry(cluster: Cluster, tmp_path: Path) -> Iterator[OciRegistry]:
    """An empty registry of this test's own (push what it needs), stopped after it."""
    with _oci_registry(cluster, tmp_path) as registry:
        yield registry


class OperatorProcess:
    """`helmfile-operator run` as a subprocess (a real process: it can be SIGKILLed)."""

    def __init__(
        self,
        cluster: Cluster,
        log_path: Path,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
    ) -> None:
        """`args` are added to `helmfile-operator run`; `env` overrides the cluster's env."""
        self.cluster = cluster
        self.log_path = log_path
        self.args = list(args)
        self.env_overrides = dict(env or {})
        self.process: subprocess.Popen[bytes] | None = None
        self.health_port = 0
        self.metrics_port = 0

    def start(self) -> None:
        self.health_port = _free_port()
        self.metrics_port = _free_port()
        env = {
            **self.cluster.env,
            "HELMFILE_OPERATOR_HEALTH_PORT": str(self.health_port),
            "HELMFILE_OPERATOR_METRICS_PORT": str(self.metrics_port),
            # Short retry delays keep failure tests quick; production defaults are longer.
            "HELMFILE_OPERATOR_RETRY_BASE_SECONDS": "1",
            "HELMFILE_OPERATOR_RETRY_MAX_SECONDS": "10",
            # The shared operator runs single-tenant (its own, admin identity) unless a test asks
            # for the tenant model (the default ServiceAccount of each namespace).
            "HELMFILE_OPERATOR_DEFAULT_SERVICE_ACCOUNT": "",
            # Drift tests follow each check through status.lastDriftCheck (by default it is
            # rewritten hourly when nothing else changes; unit tests cover that).
            "HELMFILE_OPERATOR_DRIFT_CHECK_RECORD_SECONDS": "0",
            **self.env_overrides,
        }
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(REPO_ROOT / ".venv" / "bin" / "helmfile-operator"),
                    *("run", "--verbose", *self.args),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.healthy():
                return
            time.sleep(0.2)
        raise AssertionError(f"operator not healthy within 60s; see {self.log_path}")

    def healthy(self) -> bool:
        """/healthz answers 200 (asserting, with its log, that the process did not exit)."""
        assert self.process is not None
        assert self.process.poll() is None, f"operator exited:\n{self.log()[-4000:]}"
        try:
            url = f"http://127.0.0.1:{self.health_port}/healthz"
            with urllib.request.urlopen(url, timeout=2) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """SIGKILL the operator and every process under it (helm runs in sessions of its own),
        as the end of its container would."""
        assert self.process is not None
        victims = [self.process.pid, *_descendants(self.process.pid)]
        for pid in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.process.wait()
        self.process = None

    def scrape(self) -> str:
        """The text of /metrics."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _free_port() -> int:
    return testbed_module.free_port()


@pytest.fixture(scope="session")
def crds(cluster: Cluster) -> None:
    cluster.run("kubectl", "apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    cluster.run("kubectl", "wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")


@pytest.fixture(scope="session")
def operator(
    cluster: Cluster, crds: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    process = OperatorProcess(cluster, tmp_path_factory.mktemp("operator") / "operator.log")
    process.start()
    try:
        yield process
    finally:
        process.stop()


# --- helpers for tests that drive the operator --------------------------------------------------


def apply(cluster: Cluster, manifest: dict[str, Any]) -> None:
    cluster.run("kubectl", "apply", "-f", "-", input=json.dumps(manifest))


def wait_for_condition(
    cluster: Cluster, resource: str, namespace: str, condition: str, timeout: int = 180
) -> None:
    cluster.run(
        "kubectl", "wait", "-n", namespace, resource,
        f"--for=condition={condition}", f"--timeout={timeout}s",
        timeout=timeout + 30,
    )  # fmt: skip


CLI = str(REPO_ROOT / ".venv" / "bin" / "helmfile-operator")


def hfo(cluster: Cluster, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """The `helmfile-operator` command against `cluster`, with the user's (admin) credentials."""
    result = subprocess.run(
        [CLI, *args], env=cluster.env, capture_output=True, text=True, timeout=600, check=False
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{args} exited {result.returncode}:\n{result.stdout}{result.stderr}")
    return result


def wait_until(predicate: Any, timeout: float = 120, message: str = "condition") -> Any:
    """Poll a test-side predicate (the operator itself never polls)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {message}")


def helm_releases(cluster: Cluster, namespace: str) -> dict[str, dict[str, Any]]:
    """`helm list` of a namespace (every status) by release name."""
    listing = json.loads(cluster.run("helm", "list", "-n", namespace, "-o", "json").stdout)
    return {release["name"]: release for release in listing}


def helm_history(cluster: Cluster, namespace: str, release: str) -> list[dict[str, Any]]:
    result = cluster.run("helm", "history", release, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else []


def example_state(
    name: str, namespace: str, repo_url: str, example: str = "ml-serving-stack"
) -> dict[str, Any]:
    import yaml

    state: dict[str, Any] = yaml.safe_load(
        (REPO_ROOT / "examples" / example / "state.yaml").read_text()
    )
    state["metadata"].update(name=name, namespace=namespace)
    for repository in state["spec"].get("repositories", []):
        repository["url"] = repo_url
    return state


def condition(body: dict[str, Any], type_: str) -> dict[str, Any] | None:
    return next(
        (c for c in (body.get("status") or {}).get("conditions", []) if c["type"] == type_), None
    )


def state_ready_at_generation(cluster: Cluster, namespace: str, name: str) -> bool:
    """Ready=True for the state's current spec (not a Ready left over from the previous one)."""
    body = cluster.kubectl_json("get", "hfs", name, "-n", namespace)
    ready = condition(body, "Ready")
    return bool(
        ready
        and ready["status"] == "True"
        and body["status"].get("observedGeneration") == body["metadata"]["generation"]
    )


@pytest.fixture(scope="session")
def helmfile_binary() -> Path:
    """helmfile itself, built from its Go module by bench/testbin (`make testbin`), to compare
    what it would install with what `convert` makes of the same file."""
    result = subprocess.run(
        [str(REPO_ROOT / "bench" / "testbin"), "--path"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    path = Path(result.stdout.splitlines()[0]) if result.stdout else None
    if result.returncode != 0 or path is None or not path.is_file():
        raise AssertionError("helmfile is not built: run `make testbin` (bench/testbin)")
    return path
