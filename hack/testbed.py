#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback, built from Go modules (see hack/testbin).

    hack/testbed up       start etcd, apiserver, controller-manager, scheduler, kwok + fake nodes
    hack/testbed down     stop exactly the processes `up` started (from their pid files)
    hack/testbed status   say what runs
    hack/testbed env      print `export KUBECONFIG=... PATH=...` for a shell

`OciRegistry` runs the distribution registry (TLS from the test bed's CA, htpasswd basic auth) for
the tests; `up` does not start one.

State (certificates, etcd data, logs, pid files, kubeconfig) lives in `.testbed/` at the repository
root unless `--dir` or HELMFILE_OPERATOR_TESTBED_DIR says otherwise. The pytest fixtures import this
module and run a private test bed in a temporary directory when none is running.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric import ec

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DIR = REPO_ROOT / ".testbed"
CONTEXT_NAME = "helmfile-operator-testbed"
FAKE_NODES = ("kwok-node-0", "kwok-node-1")
# Processes in start order; `down` stops them in reverse.
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
# Started on top by `make demo` (hack/demo.py); `down` stops them first.
EXTRAS = ("chart-repo", "operator")
SERVICE_CIDR = "10.96.0.0/16"


class TestbedError(RuntimeError):
    """The test bed could not come up; the message names the component and its log file."""


def testbin_dir() -> Path:
    """Build (or find) the binaries; hack/testbin prints their directory."""
    result = subprocess.run(
        [str(REPO_ROOT / "hack" / "testbin")], stdout=subprocess.PIPE, text=True, check=False
    )
    if result.returncode != 0:
        raise TestbedError("hack/testbin failed to provide the test-bed binaries (see above)")
    return Path(result.stdout.strip().splitlines()[-1])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def port_free(port: int) -> bool:
    """Nothing listens on `port` (connections in TIME_WAIT do not count: servers rebind)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _pid_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot: with the pid, a unique identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _recorded_pid(pid_file: Path) -> int | None:
    """The pid from a pid file, if that process still runs the binary we started."""
    try:
        record = json.loads(pid_file.read_text())
    except (OSError, ValueError):
        return None
    pid = int(record["pid"])
    if not _pid_alive(pid) or _pid_start_time(pid) != record.get("started"):
        return None  # gone, or the pid was reused by an unrelated process
    return pid


def _spawn(
    binary: Path,
    args: list[str],
    log_file: Path,
    pid_file: Path,
    cwd: Path,
    env: dict[str, str] | None,
) -> subprocess.Popen[bytes]:
    """Start a process, output appended to `log_file`, recorded (pid, start time) in `pid_file`."""
    with log_file.open("ab") as log:
        # A new session: the process outlives `hack/testbed up` and ignores the terminal's ^C.
        process = subprocess.Popen(
            [str(binary), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )
    record = {"pid": process.pid, "binary": str(binary), "started": _pid_start_time(process.pid)}
    pid_file.write_text(json.dumps(record))
    return process


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM one process (never its group), SIGKILL it after `timeout`, return once it is gone."""
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if _pid_alive(pid):
        os.kill(pid, signal.SIGKILL)
        while _pid_alive(pid):
            time.sleep(0.05)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    path.chmod(0o600)


def _write_ca(pki: Path) -> None:
    """A self-signed CA (`ca.crt`, `ca.key`) that signs every certificate of the test bed."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "helmfile-operator-testbed-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(pki / "ca.key", ca_key)
    (pki / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))


def issue_serving_cert(pki: Path, common_name: str, sans: Sequence[str], out: Path) -> None:
    """`out`.crt and `out`.key: a serving certificate for `sans` (IP addresses or DNS names),
    signed by the CA in `pki` (`ca.crt`, `ca.key`), so clients that trust the test bed trust it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_cert = x509.load_pem_x509_certificate((pki / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((pki / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    names: list[x509.GeneralName] = []
    for san in sans:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(san)))
        except ValueError:
            names.append(x509.DNSName(san))
    now = datetime.datetime.now(datetime.UTC)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write_key(out.parent / f"{out.name}.key", key)
    (out.parent / f"{out.name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@dataclass
class Testbed:
    """One control plane whose files all live under `root`."""

    root: Path

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def pid_file(self, component: str) -> Path:
        return self.run_dir / f"{component}.pid"

    def ports_file(self) -> Path:
        return self.run_dir / "ports.json"

    # -- status ---------------------------------------------------------------------------------

    def running_pid(self, component: str) -> int | None:
        """The pid from the pid file, if that process still runs the binary we started."""
        return _recorded_pid(self.pid_file(component))

    def status(self) -> dict[str, int | None]:
        return {component: self.running_pid(component) for component in COMPONENTS + EXTRAS}

    def is_up(self) -> bool:
        running = all(self.running_pid(component) for component in COMPONENTS)
        return running and self.kubeconfig.exists() and self._ready()

    # -- up -------------------------------------------------------------------------------------

    def up(self, timeout: float = 120.0) -> None:
        """Start whatever is not running. Idempotent: a healthy test bed is left as it is."""
        if self.is_up():
            return
        if any(self.running_pid(component) for component in COMPONENTS):
            self.down()  # half up (e.g. a crashed component): restart cleanly, keep etcd data
        bins = testbin_dir()
        for directory in (self.pki, self.logs, self.run_dir, self.root / "etcd"):
            directory.mkdir(parents=True, exist_ok=True)
        self._write_pki()
        ports = self._ports()
        self.ports_file().write_text(json.dumps(ports))
        self._write_kubeconfig(ports["apiserver"])

        self._start(
            "etcd",
            bins / "etcd",
            [
                "--name=testbed",
                f"--data-dir={self.root / 'etcd'}",
                f"--listen-client-urls=http://127.0.0.1:{ports['etcd']}",
                f"--advertise-client-urls=http://127.0.0.1:{ports['etcd']}",
                f"--listen-peer-urls=http://127.0.0.1:{ports['etcd_peer']}",
                f"--initial-advertise-peer-urls=http://127.0.0.1:{ports['etcd_peer']}",
                f"--initial-cluster=testbed=http://127.0.0.1:{ports['etcd_peer']}",
                "--unsafe-no-fsync",  # throwaway data: durability buys nothing, fsync costs seconds
                "--quota-backend-bytes=4294967296",
                "--log-level=warn",
            ],
        )
        self._start(
            "kube-apiserver",
            bins / "kube-apiserver",
            [
                f"--etcd-servers=http://127.0.0.1:{ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={ports['apiserver']}",
                f"--tls-cert-file={self.pki / 'apiserver.crt'}",
                f"--tls-private-key-file={self.pki / 'apiserver.key'}",
                f"--client-ca-file={self.pki / 'ca.crt'}",
                f"--token-auth-file={self.pki / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                f"--service-account-key-file={self.pki / 'sa.pub'}",
                f"--service-account-signing-key-file={self.pki / 'sa.key'}",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--allow-privileged=true",
                "--enable-priority-and-fairness=false",
                "--endpoint-reconciler-type=none",
                "--v=0",
            ],
        )
        self._wait(self._ready, timeout, "kube-apiserver did not become ready", "kube-apiserver")

        self._start(
            "kube-controller-manager",
            bins / "kube-controller-manager",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                f"--service-account-private-key-file={self.pki / 'sa.key'}",
                f"--root-ca-file={self.pki / 'ca.crt'}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--use-service-account-credentials=false",
                # Nothing here runs real kubelets or clouds; these controllers would only add noise.
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-route,-service",
                "--concurrent-deployment-syncs=10",
                "--concurrent-replicaset-syncs=10",
                "--v=0",
            ],
        )
        self._start(
            "kube-scheduler",
            bins / "kube-scheduler",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--authentication-kubeconfig={self.kubeconfig}",
                f"--authorization-kubeconfig={self.kubeconfig}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                "--v=0",
            ],
        )
        self._start(
            "kwok",
            bins / "kwok",
            [
                f"--kubeconfig={self.kubeconfig}",
                f"--config={bins / 'kwok-stages.yaml'}",
                # Ours on top of kwok's stock stages: with no container runtime, a pod's
                # testbed.helmfile.dev/exit-code annotation stands for its container's exit code,
                # so pods outside Jobs (`helm test` hooks) can end Succeeded or Failed.
                f"--config={REPO_ROOT / 'hack' / 'testbed-stages.yaml'}",
                "--manage-all-nodes=false",
                "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                "--node-ip=127.0.0.1",
                "--server-address=",
                "--v=WARN",
            ],
        )
        self._create_nodes(bins)
        self._wait(self._nodes_ready, timeout, "fake nodes did not become Ready", "kwok")
        self._wait(
            self._default_service_account,
            timeout,
            "default ServiceAccount missing",
            "kube-controller-manager",
        )

    def _ports(self) -> dict[str, int]:
        """The ports of the last start when they are free again (a restarted API server keeps
        its URL: kubeconfigs that name it stay valid), else new ones."""
        try:
            recorded = json.loads(self.ports_file().read_text())
        except (OSError, ValueError):
            recorded = {}
        names = ("etcd", "etcd_peer", "apiserver")
        if all(isinstance(recorded.get(n), int) and port_free(recorded[n]) for n in names):
            return {n: int(recorded[n]) for n in names}
        return {n: free_port() for n in names}

    # -- down -----------------------------------------------------------------------------------

    def down(self, timeout: float = 20.0) -> list[str]:
        """Stop the processes recorded in the pid files, newest first. Returns what was stopped."""
        stopped = []
        for component in reversed(COMPONENTS + EXTRAS):
            pid = self.running_pid(component)
            if pid is not None:
                _terminate(pid, timeout)
                stopped.append(component)
            self.pid_file(component).unlink(missing_ok=True)
        return stopped

    def destroy(self) -> None:
        self.down()
        shutil.rmtree(self.root, ignore_errors=True)

    # -- helpers --------------------------------------------------------------------------------

    def env(self, bins: Path | None = None) -> dict[str, str]:
        """Variables that point kubectl, helm and the operator at this test bed."""
        bins = bins or testbin_dir()
        return {
            "KUBECONFIG": str(self.kubeconfig),
            "PATH": f"{bins}{os.pathsep}{os.environ.get('PATH', '')}",
        }

    def start_process(
        self, component: str, binary: Path, args: list[str], env: dict[str, str] | None = None
    ) -> None:
        """Start a process that `down` will stop (used for the demo's chart repo and operator)."""
        if self.running_pid(component) is None:
            self._start(component, binary, args, env)

    def _start(
        self, component: str, binary: Path, args: list[str], env: dict[str, str] | None = None
    ) -> None:
        log_file = self.logs / f"{component}.log"
        _spawn(binary, args, log_file, self.pid_file(component), self.root, env)

    def _wait(self, check: object, timeout: float, message: str, component: str) -> None:
        assert callable(check)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name in COMPONENTS + EXTRAS:
                if self.pid_file(name).exists() and self.running_pid(name) is None:
                    raise TestbedError(f"{name} exited; see {self.logs / (name + '.log')}")
            if check():
                return
            time.sleep(0.2)
        raise TestbedError(
            f"{message} within {timeout:.0f}s; see {self.logs / (component + '.log')}"
        )

    def _token(self) -> str:
        return (self.pki / "admin.token").read_text().strip()

    def _api_get(self, path: str) -> tuple[int, bytes]:
        port = json.loads(self.ports_file().read_text())["apiserver"]
        context = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        request = urllib.request.Request(
            f"https://127.0.0.1:{port}{path}",
            headers={"Authorization": f"Bearer {self._token()}"},
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as response:  # noqa: S310
                return int(response.status), response.read()
        except urllib.error.HTTPError as error:
            return int(error.code), error.read()
        except (OSError, urllib.error.URLError):
            return 0, b""

    def _ready(self) -> bool:
        try:
            return self._api_get("/readyz")[0] == 200
        except (OSError, ValueError, KeyError):
            return False

    def _nodes_ready(self) -> bool:
        code, body = self._api_get("/api/v1/nodes")
        if code != 200:
            return False
        ready = {
            node["metadata"]["name"]
            for node in json.loads(body)["items"]
            for condition in node.get("status", {}).get("conditions", [])
            if condition["type"] == "Ready"
            and condition["status"] == "True"
            # The node lifecycle controller lifts the not-ready taint only after Ready.
            and not node.get("spec", {}).get("taints")
        }
        return set(FAKE_NODES) <= ready

    def _default_service_account(self) -> bool:
        return self._api_get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200

    def _create_nodes(self, bins: Path) -> None:
        nodes = [
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {
                    "name": name,
                    "annotations": {"kwok.x-k8s.io/node": "fake"},
                    "labels": {
                        "type": "kwok",
                        "kubernetes.io/hostname": name,
                        "kubernetes.io/os": "linux",
                        "kubernetes.io/arch": "amd64",
                    },
                },
                "status": {
                    "allocatable": {"cpu": "32", "memory": "256Gi", "pods": "500"},
                    "capacity": {"cpu": "32", "memory": "256Gi", "pods": "500"},
                },
            }
            for name in FAKE_NODES
        ]
        manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes})
        subprocess.run(
            [str(bins / "kubectl"), "apply", "-f", "-"],
            input=manifest,
            text=True,
            check=True,
            stdout=subprocess.DEVNULL,
            env={**os.environ, "KUBECONFIG": str(self.kubeconfig)},
        )

    def _write_kubeconfig(self, port: int) -> None:
        import base64

        ca = base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": CONTEXT_NAME,
                    "cluster": {
                        "server": f"https://127.0.0.1:{port}",
                        "certificate-authority-data": ca,
                    },
                }
            ],
            "users": [{"name": "admin", "user": {"token": self._token()}}],
            "contexts": [
                {"name": CONTEXT_NAME, "context": {"cluster": CONTEXT_NAME, "user": "admin"}}
            ],
            "current-context": CONTEXT_NAME,
        }
        self.kubeconfig.write_text(json.dumps(config, indent=2))
        self.kubeconfig.chmod(0o600)

    def _write_pki(self) -> None:
        """A CA, a serving certificate for 127.0.0.1, the ServiceAccount keys, an admin token."""
        if (self.pki / "apiserver.crt").exists():
            return
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ec

        _write_ca(self.pki)
        sans = ["localhost", "kubernetes", "kubernetes.default.svc", "127.0.0.1", "10.96.0.1"]
        issue_serving_cert(self.pki, "kube-apiserver", sans, self.pki / "apiserver")
        sa_key = ec.generate_private_key(ec.SECP256R1())
        _write_key(self.pki / "sa.key", sa_key)
        (self.pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        token = secrets.token_hex(24)
        (self.pki / "admin.token").write_text(token)
        (self.pki / "tokens.csv").write_text(f'{token},admin,admin,"system:masters"\n')
        for path in (self.pki / "admin.token", self.pki / "tokens.csv"):
            path.chmod(0o600)


class OciRegistry:
    """The distribution registry (built by hack/testbin) on 127.0.0.1, serving TLS signed by the
    CA in `ca_dir` (a test bed's pki) and requiring basic auth; its files all live under `root`.

    `start()` after `stop()` serves the same data on the same port, so tests can take it away and
    bring it back. `up` never starts one: the tests do.
    """

    def __init__(
        self,
        root: Path,
        ca_dir: Path,
        *,
        port: int = 0,
        username: str = "testbed",
        password: str | None = None,
        binary: Path | None = None,
    ) -> None:
        self.root = root
        self.ca_dir = ca_dir
        self.port = port  # 0: a free one, chosen by the first start() and kept
        self.username = username
        self.password = password or secrets.token_urlsafe(18)
        self.binary = binary
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def log_file(self) -> Path:
        return self.root / "registry.log"

    @property
    def pid_file(self) -> Path:
        return self.root / "registry.pid"

    def running_pid(self) -> int | None:
        return _recorded_pid(self.pid_file)

    def start(self, timeout: float = 30.0) -> None:
        """Start the registry unless it runs; return once it answers on its port."""
        if self.running_pid() is not None:
            return
        import bcrypt
        import yaml

        self.root.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port()
        if not (self.root / "tls.crt").exists():
            issue_serving_cert(self.ca_dir, "oci-registry", ["127.0.0.1"], self.root / "tls")
        # The registry checks bcrypt on every request: the lowest cost keeps pushes quick, and a
        # random per-run password on loopback needs no stretching.
        digest = bcrypt.hashpw(self.password.encode(), bcrypt.gensalt(rounds=4)).decode()
        htpasswd = self.root / "htpasswd"
        htpasswd.write_text(f"{self.username}:{digest}\n")
        htpasswd.chmod(0o600)
        config = {
            "version": 0.1,
            "log": {"level": "info", "formatter": "text"},
            "storage": {
                "filesystem": {"rootdirectory": str(self.root / "data")},
                "delete": {"enabled": True},
                "maintenance": {"uploadpurging": {"enabled": False}},
            },
            "http": {
                "addr": self.host,
                "secret": secrets.token_hex(16),
                "tls": {
                    "certificate": str(self.root / "tls.crt"),
                    "key": str(self.root / "tls.key"),
                },
            },
            "auth": {"htpasswd": {"realm": "helmfile-operator-testbed", "path": str(htpasswd)}},
        }
        config_file = self.root / "config.yaml"
        config_file.write_text(yaml.safe_dump(config))
        # REGISTRY_* variables would override the config; tracing would export to localhost:4318.
        env = {k: v for k, v in os.environ.items() if not k.startswith(("REGISTRY_", "OTEL_"))}
        env["OTEL_TRACES_EXPORTER"] = "none"
        binary = self.binary or testbin_dir() / "registry"
        self._process = _spawn(
            binary, ["serve", str(config_file)], self.log_file, self.pid_file, self.root, env
        )
        deadline = time.monotonic() + timeout
        while not self._answers():
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise TestbedError(f"the OCI registry did not start; see {self.log_file}")
            time.sleep(0.1)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop exactly the process `start` started (from its pid file) and wait for it."""
        pid = self.running_pid()
        if pid is not None:
            _terminate(pid, timeout)
        if self._process is not None:
            self._process.wait()  # reap it: the pid is ours until then
            self._process = None
        self.pid_file.unlink(missing_ok=True)

    def _answers(self) -> bool:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        try:
            with urllib.request.urlopen(f"https://{self.host}/v2/", context=context, timeout=2):
                return True
        except urllib.error.HTTPError:
            return True  # 401: up, and asking for credentials
        except OSError:
            return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/testbed", description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["up", "down", "status", "env", "destroy"])
    parser.add_argument(
        "--dir",
        type=Path,
        default=Path(os.environ.get("HELMFILE_OPERATOR_TESTBED_DIR", DEFAULT_DIR)),
        help="state directory (default: .testbed/ in the repository)",
    )
    args = parser.parse_args(argv)
    testbed = Testbed(args.dir.resolve())
    try:
        if args.command == "up":
            testbed.up()
            print('test bed is up; run: eval "$(hack/testbed env)"', file=sys.stderr)
        elif args.command == "down":
            stopped = testbed.down()
            print("stopped: " + (", ".join(stopped) or "nothing was running"), file=sys.stderr)
        elif args.command == "destroy":
            testbed.destroy()
        elif args.command == "status":
            for component, pid in testbed.status().items():
                print(f"{component:<24} {'running, pid ' + str(pid) if pid else 'stopped'}")
            print(f"{'kubeconfig':<24} {testbed.kubeconfig}")
            return 0 if testbed.is_up() else 3
        elif args.command == "env":
            for key, value in testbed.env().items():
                print(f"export {key}={shlex.quote(value)}")
    except TestbedError as error:
        print(f"testbed: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
