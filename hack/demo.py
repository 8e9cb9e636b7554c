#!/usr/bin/env python3
"""`make demo`: the local control plane, a chart repository, the operator and the example state.

Leaves everything running so you can look around; `make testbed-down` stops it all.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from testbed import DEFAULT_DIR, REPO_ROOT, Testbed, TestbedError, free_port, testbin_dir

EXAMPLE = REPO_ROOT / "examples" / "ml-serving-stack"
NAMESPACE = "ml-serving"
STATE = "ml-serving-stack"
CONDITIONS = (
    "jsonpath={range .status.conditions[*]}{.type}={.status} ({.reason}): {.message}{'\\n'}{end}"
)
SUMMARY = (
    "jsonpath={.status.order}{'\\n'}{range .status.releases[*]}{.name}: ready={.ready} "
    "revision={.revision} chart={.chartVersion}{'\\n'}{end}"
)


def _reusable_port(port_file: Path) -> int:
    """The previous run's port when it is free: the example state's repository URL (and so every
    release's digest) stays the same from one demo to the next."""
    try:
        port = int(port_file.read_text())
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
        return port
    except (OSError, ValueError):
        return free_port()


TENANT_BINDING = """
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {name: helmfile-deployer, namespace: NAMESPACE}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: admin}
subjects: [{kind: ServiceAccount, name: default, namespace: NAMESPACE}]
"""


def step(message: str) -> None:
    print(f"\n==> {message}", flush=True)


def main() -> int:
    bed = Testbed(Path(os.environ.get("HELMFILE_OPERATOR_TESTBED_DIR", DEFAULT_DIR)).resolve())
    step("starting the local control plane (etcd, kube-apiserver, controllers, kwok)")
    try:
        bed.up()
    except TestbedError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    bins = testbin_dir()
    env = {**os.environ, **bed.env(bins)}
    env.setdefault("HELM_CACHE_HOME", str(bed.root / "helm" / "cache"))
    env.setdefault("HELM_CONFIG_HOME", str(bed.root / "helm" / "config"))
    env.setdefault("HELM_DATA_HOME", str(bed.root / "helm" / "data"))

    def run(*argv: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
        return subprocess.run(argv, env=env, check=True, text=True, **kwargs)  # type: ignore[call-overload,no-any-return]

    step("serving the example's charts from a local chart repository")
    repo = bed.root / "chart-repo"
    port_file = bed.run_dir / "chart-repo.port"
    if bed.running_pid("chart-repo") is None or not port_file.exists():
        shutil.rmtree(repo, ignore_errors=True)
        repo.mkdir(parents=True)
        charts = sorted(str(p) for p in (EXAMPLE / "charts").iterdir() if p.is_dir())
        run(
            str(bins / "helm"),
            "package",
            *charts,
            "--destination",
            str(repo),
            stdout=subprocess.DEVNULL,
        )
        port = _reusable_port(port_file)
        run(str(bins / "helm"), "repo", "index", str(repo), "--url", f"http://127.0.0.1:{port}")
        bed.start_process(
            "chart-repo",
            Path(sys.executable),
            ["-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(repo)],
        )
        port_file.write_text(str(port))
    url = f"http://127.0.0.1:{port_file.read_text().strip()}"
    print(f"    {url}")

    step("installing the CRDs")
    run(str(bins / "kubectl"), "apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
    run(
        str(bins / "kubectl"),
        "wait",
        "--for=condition=Established",
        "crd",
        "--all",
        "--timeout=60s",
    )

    step("starting the operator (log: " + str(bed.logs / "operator.log") + ")")
    bed.start_process(
        "operator",
        REPO_ROOT / ".venv" / "bin" / "helmfile-operator",
        ["run"],
        env={
            **env,
            "HELMFILE_OPERATOR_HEALTH_PORT": str(free_port()),
            "HELMFILE_OPERATOR_METRICS_PORT": str(free_port()),
        },
    )

    step(f"applying {EXAMPLE.relative_to(REPO_ROOT)}/state.yaml (repository → {url})")
    manifest = (EXAMPLE / "state.yaml").read_text().replace("http://127.0.0.1:8879", url)
    kubectl = str(bins / "kubectl")
    subprocess.run([kubectl, "create", "namespace", NAMESPACE], env=env, text=True,
                   stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=False)  # fmt: skip
    # The state names no serviceAccountName: helm runs as the namespace's `default` ServiceAccount,
    # which a tenant grants what its releases need (here: `admin` of its own namespace).
    run(kubectl, "apply", "-f", "-", input=TENANT_BINDING.replace("NAMESPACE", NAMESPACE))
    run(kubectl, "apply", "-f", "-", input=manifest)

    step("waiting until the state is Ready")
    started = time.monotonic()
    wait_for_ready = [kubectl, "wait", "-n", NAMESPACE, f"hfs/{STATE}", "--for=condition=Ready"]
    wait = subprocess.run([*wait_for_ready, "--timeout=300s"], env=env, text=True, check=False)
    print(f"    ({time.monotonic() - started:.1f}s)")

    step("kubectl get hfs,hfr -A")
    run(kubectl, "get", "hfs,hfr", "-A")
    step(f"conditions of hfs/{STATE}")
    run(kubectl, "get", "hfs", STATE, "-n", NAMESPACE, "-o", CONDITIONS)
    step("plan (needs order) and per-release summary")
    run(kubectl, "get", "hfs", STATE, "-n", NAMESPACE, "-o", SUMMARY)
    step("helm list -A")
    run(str(bins / "helm"), "list", "-A")
    print(f"""
Try it:
    eval "$(hack/testbed env)"
    kubectl get hfs,hfr -A
    kubectl edit hfs {STATE} -n {NAMESPACE}       # e.g. environment: prod
    make testbed-down                                # stop everything
""")
    return wait.returncode


if __name__ == "__main__":
    sys.exit(main())
