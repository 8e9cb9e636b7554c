#!/usr/bin/env python3
"""A real Kubernetes control plane on loopback, built from Go modules (see hack/testbin).

    hack/testbed up       start etcd, apiserver, controller-manager, scheduler, kwok + fake nodes
    hack/testbed down     stop exactly the processes `up` started (from their pid files)
    hack/testbed status   say what runs
    hack/testbed env      print `export KUBECONFIG=... PATH=...` for a shell

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
from dataclasses import dataclass
from pathlib import Path

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
        try:
            record = json.loads(self.pid_file(component).read_text())
        except (OSError, ValueError):
            return None
        pid = int(record["pid"])
        if not _pid_alive(pid) or _pid_start_time(pid) != record.get("started"):
            return None  # gone, or the pid was reused by an unrelated process
        return pid

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
        ports = {"etcd": free_port(), "etcd_peer": free_port(), "apiserver": free_port()}
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

    # -- down -----------------------------------------------------------------------------------

    def down(self, timeout: float = 20.0) -> list[str]:
        """Stop the processes recorded in the pid files, newest first. Returns what was stopped."""
        stopped = []
        for component in reversed(COMPONENTS + EXTRAS):
            pid = self.running_pid(component)
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
                deadline = time.monotonic() + timeout
                while _pid_alive(pid) and time.monotonic() < deadline:
                    time.sleep(0.05)
                if _pid_alive(pid):
                    os.kill(pid, signal.SIGKILL)
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
        log = (self.logs / f"{component}.log").open("ab")
        # A new session: the process outlives `hack/testbed up` and ignores the terminal's ^C.
        process = subprocess.Popen(
            [str(binary), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=self.root,
            env=env,
            start_new_session=True,
        )
        log.close()
        record = {
            "pid": process.pid,
            "binary": str(binary),
            "started": _pid_start_time(process.pid),
        }
        self.pid_file(component).write_text(json.dumps(record))

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
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        def write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
            path.write_bytes(
                key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
            path.chmod(0o600)

        now = datetime.datetime.now(datetime.UTC)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name(
            [x509.NameAttribute(NameOID.COMMON_NAME, "helmfile-operator-testbed-ca")]
        )
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
        server_key = ec.generate_private_key(ec.SECP256R1())
        sans = [
            x509.DNSName("localhost"),
            x509.DNSName("kubernetes"),
            x509.DNSName("kubernetes.default.svc"),
            x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
            x509.IPAddress(ipaddress.ip_address("10.96.0.1")),
        ]
        server_cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
            .issuer_name(ca_name)
            .public_key(server_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=3650))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(
                x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
            )
            .sign(ca_key, hashes.SHA256())
        )
        sa_key = ec.generate_private_key(ec.SECP256R1())

        write_key(self.pki / "ca.key", ca_key)
        (self.pki / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        write_key(self.pki / "apiserver.key", server_key)
        (self.pki / "apiserver.crt").write_bytes(
            server_cert.public_bytes(serialization.Encoding.PEM)
        )
        write_key(self.pki / "sa.key", sa_key)
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
