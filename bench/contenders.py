"""The contenders, each run from absent: the raw floor, helmfile sync / apply, and the operator
(all releases in one HelmfileState, or spread across several)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import measure
import yaml
from cluster import (
    BENCH_DIR,
    CHART_NAME,
    CHART_RESOURCES,
    CHART_VERSION,
    GROUP_PATH,
    REPO_ROOT,
    Api,
    Baselines,
    Bed,
    BenchError,
    ChartRepo,
    free_port,
)
from watch import Seen, Watch

RECONCILE_REQUEST = "helmfile.dev/reconcile-requested-at"
# What the operator reads and writes (other clients of the test bed touch leases, nodes, pods).
OPERATOR_RESOURCES = ("helmfilestates", "helmfilereleases", "secrets", "configmaps", "events")
# ... and, in drift checks and plans, the objects of the releases' manifests (GET, dry-run apply).
COUNTED_RESOURCES = tuple(dict.fromkeys((*OPERATOR_RESOURCES, *CHART_RESOURCES)))


@dataclass
class Phase:
    """One measured phase of one run."""

    wall: float  # seconds
    cpu: float  # seconds: the process and the helm processes it ran
    cpu_own: float | None = None  # seconds: the process alone (the operator's Python)
    helm: dict[str, int] = field(default_factory=dict)  # helm processes by command
    helm_errors: int = 0
    peak_rss_mib: float | None = None
    api: dict[str, float] = field(default_factory=dict)  # API requests by "VERB resource"
    objects: int = 0  # what the phase is about (releases, or drift checks)
    # plan phase: the objects of the planned manifests (those a plan GETs and dry-run applies),
    # and those the plans update
    manifest_objects: int | None = None
    updated_objects: int | None = None
    # CPU the rest of the machine used meanwhile (not the contender, the control plane or the
    # harness), in cores: other work on a shared machine, which slows every wall time.
    others_cores: float | None = None
    # CPU seconds of the control plane (etcd, API server, controllers, kwok) meanwhile: the
    # API work the contender causes shares the same cores.
    control_plane_cpu: float | None = None


class Others:
    """Measures `Phase.others_cores` over a window."""

    def __init__(self, ctx: Context, pid: int | None = None) -> None:
        self.ctx = ctx
        self.pid = pid
        self.started = time.monotonic()
        self.machine = measure.machine_busy()
        self.ours = self._ours()
        self.bed = measure.pids_cpu(ctx.bed.pids())
        self.contender = measure.pids_cpu([pid]) if pid is not None else 0.0

    def _ours(self) -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        # The harness (its chart repository and watch threads included) and the control plane.
        return usage.ru_utime + usage.ru_stime + measure.pids_cpu(self.ctx.bed.pids())

    def cores(self, contender_cpu: float | None = None) -> float:
        """`contender_cpu`: the contender's CPU in the window (default: the pid's)."""
        wall = max(time.monotonic() - self.started, 1e-3)
        if contender_cpu is None:
            contender_cpu = (measure.pids_cpu([self.pid]) if self.pid else 0.0) - self.contender
        others = measure.machine_busy() - self.machine - (self._ours() - self.ours)
        return max(others - contender_cpu, 0.0) / wall

    def control_plane(self) -> float:
        return measure.pids_cpu(self.ctx.bed.pids()) - self.bed


@dataclass
class Context:
    bed: Bed
    api: Api
    watch: Watch
    repo: ChartRepo
    baselines: Baselines | None
    workdir: Path
    concurrency: int
    wait: bool
    py_spy: Path | None = None
    operator_pythonpath: Path | None = None  # a patched copy of the package, to try a change
    timeout: float = 1800.0

    @property
    def helm(self) -> Path:
        return self.bed.bins / "helm"

    def quiet(self, pid: int) -> measure.Cpu:
        """Wait until the operator is idle; its CPU then. (py-spy's sampling itself costs the
        sampled process a few percent of a core: the idle threshold allows for it.)"""
        return measure.wait_quiet(pid, idle_seconds=0.02 if self.py_spy is None else 0.1)

    def helm_homes(self, directory: Path) -> dict[str, str]:
        """A fresh helm cache/config/data per run: every contender starts without a repo cache."""
        return {
            "HELM_CACHE_HOME": str(directory / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(directory / "helm" / "config"),
            "HELM_DATA_HOME": str(directory / "helm" / "data"),
        }


def release_name(index: int) -> str:
    return f"r-{index:04d}"


def split(size: int, parts: int) -> list[list[int]]:
    """Release indices of each state: `size` releases over `parts` states, as even as can be."""
    parts = max(1, min(parts, size))
    base, extra = divmod(size, parts)
    out, start = [], 0
    for part in range(parts):
        count = base + (1 if part < extra else 0)
        out.append(list(range(start, start + count)))
        start += count
    return out


def _wait4(process: subprocess.Popen[bytes]) -> tuple[int, float, float]:
    """Reap the process: exit code, CPU seconds (it and the children it waited for), peak RSS MiB
    (the largest of those processes)."""
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024


def _api_delta(api: Api, before: dict[tuple[str, ...], float]) -> dict[str, float]:
    after = measure.apiserver_requests(api.metrics())
    changed = measure.delta(after, before)
    out: dict[str, float] = {}
    for (verb, kind, subresource, dry_run), count in sorted(changed.items()):
        if kind not in COUNTED_RESOURCES or verb == "WATCH":
            continue  # (the operator's watches are long-lived; new ones are other clients')
        what = f"{verb} {kind}" + (f"/{subresource}" if subresource else "")
        out[what + (" (dry run)" if dry_run else "")] = count
    return out


# --- the raw floor ------------------------------------------------------------------------------


def upgrade_argv(ctx: Context, name: str, namespace: str, values: Path) -> list[str]:
    """What the operator runs for a release (helm/client.py: upgrade_argv), flag for flag."""
    wait = ["--wait=watcher"] if ctx.wait else []
    return [
        "upgrade", "--install", f"--namespace={namespace}", f"--version={CHART_VERSION}",
        f"--repo={ctx.repo.url}", f"--values={values}", "--create-namespace", *wait,
        "--timeout=300s", "--history-max=10", "--output=json", "--", name, CHART_NAME,
    ]  # fmt: skip


def run_raw(ctx: Context, size: int, label: str) -> dict[str, Phase]:
    namespace = "bench-raw"
    directory = ctx.workdir / label
    (directory / "values").mkdir(parents=True)
    commands = []
    for index in range(size):
        values = directory / "values" / f"{index}.json"
        values.write_text(json.dumps({"index": index}))
        commands.append(upgrade_argv(ctx, release_name(index), namespace, values))
    plan = directory / "plan.json"
    plan.write_text(
        json.dumps({"helm": str(ctx.helm), "concurrency": ctx.concurrency, "commands": commands})
    )
    ctx.api.create_namespace(namespace)
    env = {**ctx.bed.env(), **ctx.helm_homes(directory)}
    try:
        started = time.monotonic()
        others = Others(ctx)
        process = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "raw_floor.py"), str(plan)], env=env
        )
        code, cpu, rss = _wait4(process)
        wall = time.monotonic() - started
        busy = others.cores(cpu)
        if code != 0:
            raise BenchError(f"the raw floor failed (exit {code})")
    finally:
        ctx.api.delete_namespaces([namespace])
    return {
        "converge": Phase(
            wall=wall,
            cpu=cpu,
            helm={"upgrade": size},
            peak_rss_mib=rss,
            objects=size,
            others_cores=busy,
            control_plane_cpu=others.control_plane(),
        )
    }


# --- helmfile -----------------------------------------------------------------------------------


def helmfile_yaml(ctx: Context, size: int, namespace: str) -> str:
    """The same releases as a helmfile.yaml."""
    state = {
        "repositories": [{"name": "bench", "url": ctx.repo.url}],
        "helmDefaults": {
            "wait": ctx.wait,
            "createNamespace": True,
            "historyMax": 10,
            "timeout": 300,
            # helm-diff 3.9.14 (the newest the Go module proxy serves) validates with
            # `helm template --validate --dry-run=client`, which Helm 4 rejects; this makes it
            # skip `--validate`. It changes nothing for `helmfile sync`.
            "disableValidation": True,
        },
        "releases": [
            {
                "name": release_name(index),
                "namespace": namespace,
                "chart": f"bench/{CHART_NAME}",
                "version": CHART_VERSION,
                "values": [{"index": index}],
            }
            for index in range(size)
        ],
    }
    return str(yaml.safe_dump(state, sort_keys=False))


def _counting_helm(ctx: Context, directory: Path) -> tuple[Path, Path]:
    """A /bin/sh wrapper that logs helm's first argument, then execs helm (cost: one sh exec)."""
    log = directory / "helm-commands.log"
    shim = directory / "bin" / "helm"
    shim.parent.mkdir(exist_ok=True)
    shim.write_text(f'#!/bin/sh\necho "$1" >>"{log}"\nexec "{ctx.helm}" "$@"\n')
    shim.chmod(0o755)
    return shim, log


def _helmfile(ctx: Context, directory: Path, command: str, size: int, phase: str) -> Phase:
    assert ctx.baselines is not None
    shim, log = _counting_helm(ctx, directory)
    log.unlink(missing_ok=True)
    env = {
        **ctx.bed.env(),
        **ctx.helm_homes(directory),
        "HELM_PLUGINS": str(ctx.baselines.helm_plugins),
    }
    argv = [
        str(ctx.baselines.helmfile), "--file", str(directory / "helmfile.yaml"),
        "--helm-binary", str(shim), "--no-color", command, "--concurrency", str(ctx.concurrency),
    ]  # fmt: skip
    with (directory / f"{phase}.log").open("wb") as output:
        started = time.monotonic()
        others = Others(ctx)
        process = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT)
        code, cpu, rss = _wait4(process)
        wall = time.monotonic() - started
        busy = others.cores(cpu)
    if code != 0:
        tail = (directory / f"{phase}.log").read_text(errors="replace")[-1500:]
        raise BenchError(f"helmfile {command} failed (exit {code}):\n{tail}")
    commands = Counter(log.read_text().split()) if log.exists() else Counter()
    return Phase(
        wall=wall, cpu=cpu, helm=dict(commands), peak_rss_mib=rss, objects=size,
        others_cores=busy, control_plane_cpu=others.control_plane(),
    )  # fmt: skip


def run_helmfile(ctx: Context, size: int, command: str, label: str) -> dict[str, Phase]:
    """`helmfile sync` (or `apply`) from absent; after an apply, a second apply of the same state
    (the no-op pass: diffs only)."""
    namespace = "bench-hf"
    directory = ctx.workdir / label
    directory.mkdir(parents=True)
    (directory / "helmfile.yaml").write_text(helmfile_yaml(ctx, size, namespace))
    ctx.api.create_namespace(namespace)
    phases = {}
    try:
        phases["converge"] = _helmfile(ctx, directory, command, size, "converge")
        if command == "apply":
            phases["noop"] = _helmfile(ctx, directory, command, size, "noop")
    finally:
        ctx.api.delete_namespaces([namespace])
    return phases


# --- the operator -------------------------------------------------------------------------------


class Operator:
    """`helmfile-operator run` as a child process of the harness, so that /proc/<pid>/stat's
    cutime/cstime (helm processes it has reaped) belong to it alone."""

    def __init__(self, ctx: Context, directory: Path, args: tuple[str, ...] = ()) -> None:
        self.ctx = ctx
        self.directory = directory
        self.args = args  # added to `helmfile-operator run` (e.g. `--shard KEY`)
        self.health_port = free_port()
        self.metrics_port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> None:
        env = {
            **self.ctx.bed.env(),
            **self.ctx.helm_homes(self.directory),
            "HELMFILE_OPERATOR_MAX_CONCURRENT_HELM": str(self.ctx.concurrency),
            "HELMFILE_OPERATOR_HEALTH_PORT": str(self.health_port),
            "HELMFILE_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "HELMFILE_OPERATOR_HELM_BINARY": str(self.ctx.helm),
        }
        if self.ctx.operator_pythonpath is not None:
            env["PYTHONPATH"] = str(self.ctx.operator_pythonpath)
        with (self.directory / "operator.log").open("ab") as log:
            self.process = subprocess.Popen(
                [str(REPO_ROOT / ".venv" / "bin" / "helmfile-operator"), "run", *self.args],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise BenchError(f"the operator exited; see {self.directory / 'operator.log'}")
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self._get(self.metrics_port, "/readyz")[0] == 200:
                    return
            time.sleep(0.2)
        raise BenchError(f"the operator was not ready in 120s; see {self.directory}/operator.log")

    @staticmethod
    def _get(port: int, path: str) -> tuple[int, str]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("GET", path)
            response = connection.getresponse()
            return response.status, response.read().decode()
        finally:
            connection.close()

    def scrape(self) -> str:
        status, text = self._get(self.metrics_port, "/metrics")
        if status != 200:
            raise BenchError(f"operator /metrics: HTTP {status}")
        return text

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    @contextlib.contextmanager
    def profiled(self, name: str) -> Iterator[None]:
        """py-spy (when given) samples the operator during the block: collapsed stacks in
        <workdir>/profiles/. Sampling perturbs the numbers of that run."""
        if self.ctx.py_spy is None:
            yield
            return
        out = self.ctx.workdir / "profiles" / f"{self.directory.name}-{name}.txt"
        out.parent.mkdir(parents=True, exist_ok=True)
        spy = subprocess.Popen(
            [str(self.ctx.py_spy), "record", "--pid", str(self.pid), "--format", "raw",
             "--rate", "200", "--gil", "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)  # attached
        try:
            yield
        finally:
            spy.send_signal(signal.SIGINT)
            try:
                spy.wait(timeout=60)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()


def release_values(index: int) -> list[dict[str, Any]]:
    return [{"index": index}]


def planned_values(index: int) -> list[dict[str, Any]]:
    """The plan phase's change of a release: the one value the chart renders, so that one field
    of its one object (the ConfigMap's `data.index`) changes."""
    return [{"index": f"{index}-planned"}]


def state_manifest(
    ctx: Context,
    namespace: str,
    indices: list[int],
    extra_spec: dict[str, Any] | None = None,
    values: Callable[[int], list[dict[str, Any]]] = release_values,
    shard: str | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "bench", "namespace": namespace}
    if shard is not None:
        metadata["labels"] = {"helmfile.dev/shard": shard}
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": metadata,
        "spec": {
            "repositories": [{"name": "bench", "url": ctx.repo.url}],
            "helmDefaults": {
                "wait": ctx.wait,
                "createNamespace": True,
                "historyMax": 10,
                "timeout": "300s",
            },
            "releases": [
                {
                    "name": release_name(index),
                    "chart": f"bench/{CHART_NAME}",
                    "version": CHART_VERSION,
                    "values": values(index),
                }
                for index in indices
            ],
            **(extra_spec or {}),
        },
    }


def _helm_phase(before: str, after: str) -> tuple[dict[str, int], int]:
    changed = measure.delta(measure.helm_commands(after), measure.helm_commands(before))
    commands: Counter[str] = Counter()
    errors = 0
    for (command, result), count in changed.items():
        commands[command] += int(count)
        if result == "error":
            errors += int(count)
    return dict(commands), errors


def drift_interval(size: int) -> int:
    """Seconds between drift checks in the drift phase: short, but longer than one pass over
    all releases takes, so that the measured window holds one check per release."""
    return max(20, size // 10)


def run_operator(
    ctx: Context, size: int, states: int, label: str, *, drift: bool
) -> dict[str, Phase]:
    groups = split(size, states)
    namespaces = [f"bench-op{len(groups)}-{k}" for k in range(len(groups))]
    nsset = set(namespaces)
    directory = ctx.workdir / label
    directory.mkdir(parents=True)
    for namespace in namespaces:
        ctx.api.create_namespace(namespace)
        ctx.api.grant_tenant(namespace)
    manifest = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [state_manifest(ctx, ns, idx) for ns, idx in zip(namespaces, groups, strict=True)],
    }
    (directory / "states.json").write_text(json.dumps(manifest))
    expected = {ns: len(idx) for ns, idx in zip(namespaces, groups, strict=True)}
    operator = Operator(ctx, directory)
    phases: dict[str, Phase] = {}
    watch = ctx.watch
    try:
        operator.start()
        metrics_before = operator.scrape()
        cpu_before = ctx.quiet(operator.pid)

        # 1. convergence: kubectl apply → every state Ready with all its releases.
        def converged() -> bool:
            for ns, count in expected.items():
                seen = watch.states.get((ns, "bench"))
                if seen is None or not (seen.current and seen.ready and seen.ready_count == count):
                    return False
            return True

        with operator.profiled("converge"):
            started = time.monotonic()
            others = Others(ctx, operator.pid)
            ctx.bed.kubectl("apply", "--server-side", "-f", str(directory / "states.json"))
            done = watch.wait(converged, ctx.timeout, f"{label}: states Ready")
            busy = others.cores()
            control_plane = others.control_plane()
            cpu_after = ctx.quiet(operator.pid)
        memory = measure.proc_memory(operator.pid)
        metrics_after = operator.scrape()
        helm, errors = _helm_phase(metrics_before, metrics_after)
        used = cpu_after - cpu_before
        phases["converge"] = Phase(
            wall=done - started, cpu=used.total, cpu_own=used.own, helm=helm, helm_errors=errors,
            peak_rss_mib=memory.get("VmHWM"), objects=size, others_cores=busy,
            control_plane_cpu=control_plane,
        )  # fmt: skip

        # 2. a forced resync of the unchanged states: no helm upgrade expected.
        requested = f"bench-{time.time_ns()}"

        def releases() -> list[Seen]:
            return watch.in_namespaces(watch.releases, nsset)

        def handled() -> bool:
            seen = releases()
            return len(seen) == size and all(s.reconcile_handled == requested for s in seen)

        cpu_before = ctx.quiet(operator.pid)
        api_before = measure.apiserver_requests(ctx.api.metrics())
        with operator.profiled("resync"):
            started = time.monotonic()
            for ns in namespaces:
                ctx.api.merge_patch(
                    f"{GROUP_PATH}/namespaces/{ns}/helmfilestates/bench",
                    {"metadata": {"annotations": {RECONCILE_REQUEST: requested}}},
                )
            done = watch.wait(handled, ctx.timeout, f"{label}: reconcile request handled")
            cpu_after = ctx.quiet(operator.pid)
        api = _api_delta(ctx.api, api_before)
        metrics_resync = operator.scrape()
        helm, errors = _helm_phase(metrics_after, metrics_resync)
        used = cpu_after - cpu_before
        phases["resync"] = Phase(
            wall=done - started, cpu=used.total, cpu_own=used.own, helm=helm, helm_errors=errors,
            peak_rss_mib=measure.proc_memory(operator.pid).get("VmHWM"), api=api, objects=size,
        )  # fmt: skip

        # 3. drift detection (warn) on a short interval: one periodic pass of checks.
        if drift:
            phases.update(_drift(ctx, operator, namespaces, size, metrics_resync))

        # 4. a change of every release under manual approval: a plan each, no upgrade.
        phases["plan"] = _plan(ctx, operator, namespaces, groups, label, drift=drift)
    finally:
        operator.stop()
        ctx.api.delete_namespaces(namespaces)
    return phases


def _drift(
    ctx: Context, operator: Operator, namespaces: list[str], size: int, metrics_before: str
) -> dict[str, Phase]:
    watch = ctx.watch
    nsset = set(namespaces)
    interval = drift_interval(size)

    def releases() -> list[Seen]:
        return watch.in_namespaces(watch.releases, nsset)

    def first_checked() -> bool:
        seen = releases()
        return len(seen) == size and all(
            s.current and s.drift_checked and s.drifted == "False" for s in seen
        )

    cpu_before = ctx.quiet(operator.pid)
    api_before = measure.apiserver_requests(ctx.api.metrics())
    started = time.monotonic()
    for ns in namespaces:
        ctx.api.merge_patch(
            f"{GROUP_PATH}/namespaces/{ns}/helmfilestates/bench",
            {"spec": {"driftDetection": {"mode": "warn"}, "interval": f"{interval}s"}},
        )
    done = watch.wait(first_checked, ctx.timeout, "drift detection enabled and checked")
    cpu_after = ctx.quiet(operator.pid)
    api = _api_delta(ctx.api, api_before)
    used = cpu_after - cpu_before
    enable = Phase(wall=done - started, cpu=used.total, cpu_own=used.own, api=api, objects=size)

    # The periodic pass: from now until every release was checked once more.
    with watch.changed:
        checked = {(s.namespace, s.name): s.drift_checked for s in releases()}
    cpu_before = ctx.quiet(operator.pid)
    api_before = measure.apiserver_requests(ctx.api.metrics())

    def rechecked() -> bool:
        seen = releases()
        return len(seen) == size and all(
            s.drift_checked != checked.get((s.namespace, s.name)) for s in seen
        )

    with operator.profiled("drift"):
        started = time.monotonic()
        done = watch.wait(rechecked, interval * 3 + ctx.timeout / 10, "a periodic drift pass")
        cpu_after = ctx.quiet(operator.pid)
    api = _api_delta(ctx.api, api_before)
    helm, errors = _helm_phase(metrics_before, operator.scrape())
    used = cpu_after - cpu_before
    checks = int(api.get("APPLY configmaps (dry run)", 0)) or size
    periodic = Phase(
        wall=done - started, cpu=used.total, cpu_own=used.own, helm=helm, helm_errors=errors,
        api=api, objects=checks,
    )  # fmt: skip
    return {"drift-enable": enable, "drift": periodic}


def _plan(
    ctx: Context,
    operator: Operator,
    namespaces: list[str],
    groups: list[list[int]],
    label: str,
    *,
    drift: bool,
) -> Phase:
    """`approval: {mode: manual}` and a changed value of every release, in one merge patch per
    state, until every HelmfileRelease shows a new plan `AwaitingApproval` at its new generation:
    one `helm upgrade --dry-run=server` per release, a GET and a dry-run apply per object, and no
    upgrade."""
    watch = ctx.watch
    nsset = set(namespaces)
    size = sum(len(indices) for indices in groups)

    def releases() -> list[Seen]:
        return watch.in_namespaces(watch.releases, nsset)

    with watch.changed:
        before = {(s.namespace, s.name): (s.generation, s.plan_id) for s in releases()}

    def planned() -> bool:
        seen = releases()
        return len(seen) == size and all(
            s.current
            and s.plan_phase == "AwaitingApproval"
            and (s.namespace, s.name) in before
            and s.generation > before[(s.namespace, s.name)][0]
            and s.plan_id != before[(s.namespace, s.name)][1]
            for s in seen
        )

    metrics_before = operator.scrape()
    cpu_before = ctx.quiet(operator.pid)
    api_before = measure.apiserver_requests(ctx.api.metrics())
    with operator.profiled("plan"):
        started = time.monotonic()
        others = Others(ctx, operator.pid)
        for ns, indices in zip(namespaces, groups, strict=True):
            spec: dict[str, Any] = {
                "approval": {"mode": "manual"},
                # (a merge patch replaces the list: every release, with its changed values)
                "releases": state_manifest(ctx, ns, indices, values=planned_values)["spec"][
                    "releases"
                ],
            }
            if drift:  # no periodic drift checks in the window
                spec.update(driftDetection=None, interval=None)
            ctx.api.merge_patch(
                f"{GROUP_PATH}/namespaces/{ns}/helmfilestates/bench", {"spec": spec}
            )
        done = watch.wait(planned, ctx.timeout, f"{label}: plans awaiting approval")
        busy = others.cores()
        control_plane = others.control_plane()
        cpu_after = ctx.quiet(operator.pid)
    api = _api_delta(ctx.api, api_before)
    helm, errors = _helm_phase(metrics_before, operator.scrape())
    with watch.changed:
        seen = releases()
        manifest_objects = sum(s.plan_objects for s in seen)
        updated = sum(s.plan_updates for s in seen)
    used = cpu_after - cpu_before
    return Phase(
        wall=done - started, cpu=used.total, cpu_own=used.own, helm=helm, helm_errors=errors,
        peak_rss_mib=measure.proc_memory(operator.pid).get("VmHWM"), api=api, objects=size,
        manifest_objects=manifest_objects, updated_objects=updated, others_cores=busy,
        control_plane_cpu=control_plane,
    )  # fmt: skip


def run_sharded(ctx: Context, size: int, states: int, shards: int, label: str) -> dict[str, Phase]:
    """Convergence only: the releases over `states` states in as many namespaces, the states
    labelled with `shards` shard keys in turn, one operator process per shard (`--shard KEY`).
    CPU is both processes' (with their helm); `helm` counts each shard's processes apart, so
    the table shows the split of the work."""
    groups = split(size, states)
    namespaces = [f"bench-shard{len(groups)}-{k}" for k in range(len(groups))]
    keys = [f"s{k}" for k in range(shards)]
    directory = ctx.workdir / label
    directory.mkdir(parents=True)
    for namespace in namespaces:
        ctx.api.create_namespace(namespace)
        ctx.api.grant_tenant(namespace)
    manifest = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            state_manifest(ctx, ns, idx, shard=keys[k % shards])
            for k, (ns, idx) in enumerate(zip(namespaces, groups, strict=True))
        ],
    }
    (directory / "states.json").write_text(json.dumps(manifest))
    expected = {ns: len(idx) for ns, idx in zip(namespaces, groups, strict=True)}
    operators = {key: Operator(ctx, directory / key, ("--shard", key)) for key in keys}
    watch = ctx.watch
    try:
        for key, operator in operators.items():
            (directory / key).mkdir()
            operator.start()
        before = {key: operator.scrape() for key, operator in operators.items()}
        cpu_before = [ctx.quiet(operator.pid) for operator in operators.values()]

        def converged() -> bool:
            for ns, count in expected.items():
                seen = watch.states.get((ns, "bench"))
                if seen is None or not (seen.current and seen.ready and seen.ready_count == count):
                    return False
            return True

        started = time.monotonic()
        others = Others(ctx)
        ctx.bed.kubectl("apply", "--server-side", "-f", str(directory / "states.json"))
        done = watch.wait(converged, ctx.timeout, f"{label}: states Ready")
        control_plane = others.control_plane()
        cpu_after = [ctx.quiet(operator.pid) for operator in operators.values()]
        used = [after - before_ for after, before_ in zip(cpu_after, cpu_before, strict=True)]
        cpu = sum(u.total for u in used)
        busy = others.cores(contender_cpu=cpu)
        helm: dict[str, int] = {}
        errors = 0
        for key, operator in operators.items():
            counts, failed = _helm_phase(before[key], operator.scrape())
            helm.update({f"{command} ({key})": n for command, n in counts.items()})
            errors += failed
        memory = [measure.proc_memory(operator.pid).get("VmHWM") for operator in operators.values()]
        return {
            "converge": Phase(
                wall=done - started,
                cpu=cpu,
                cpu_own=sum(u.own for u in used),
                helm=helm,
                helm_errors=errors,
                peak_rss_mib=max((m for m in memory if m), default=None),
                objects=size,
                others_cores=busy,
                control_plane_cpu=control_plane,
            )
        }
    finally:
        for operator in operators.values():
            operator.stop()
        ctx.api.delete_namespaces(namespaces)
