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
    CHART_RESOURCES,
    GROUP_PATH,
    REPO_ROOT,
    TRIVIAL,
    Api,
    Baselines,
    Bed,
    BenchError,
    Chart,
    ChartRepo,
    free_port,
)
from watch import RECONCILE_REQUEST, Seen, Watch, resync_handled

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
    # API writes (POST, PUT, PATCH, APPLY, DELETE; not dry runs) of every client and resource in
    # the window, by "VERB resource[/subresource]" (convergence).
    writes: dict[str, float] = field(default_factory=dict)
    # The API server's GET and LIST responses of Secrets in the window: "LIST bytes", "LIST
    # count", "GET bytes", "GET count" (apiserver_response_sizes).
    secret_reads: dict[str, float] = field(default_factory=dict)
    # Bytes of one full Helm storage Secret (the JSON of a GET by name), for comparison.
    storage_secret_bytes: float | None = None
    # VmRSS of the fresh operator once idle, before any state exists (convergence).
    idle_rss_mib: float | None = None
    # drift: helmfile_operator_drift_checks_total's growth by result, and the scrapes of the
    # operator's /metrics the harness made in the window to see it
    drift_results: dict[str, float] = field(default_factory=dict)
    scrapes: int = 0


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


class ApiWindow:
    """The API server's metrics over a window: the requests `_counted` keeps, every write, and
    the bytes of Secret reads."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.before = api.metrics()

    def close(self) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
        after = self.api.metrics()
        changed = measure.delta(
            measure.apiserver_requests(after), measure.apiserver_requests(self.before)
        )
        return _counted(changed), measure.writes(changed), measure.secret_reads(after, self.before)


def _counted(changed: dict[tuple[str, ...], float]) -> dict[str, float]:
    out: dict[str, float] = {}
    for (verb, kind, subresource, dry_run), count in sorted(changed.items()):
        if kind not in COUNTED_RESOURCES or verb == "WATCH":
            continue  # (the operator's watches are long-lived; new ones are other clients')
        what = f"{verb} {kind}" + (f"/{subresource}" if subresource else "")
        out[what + (" (dry run)" if dry_run else "")] = count
    return out


# --- the raw floor ------------------------------------------------------------------------------


def upgrade_argv(
    ctx: Context, name: str, namespace: str, values: Path, chart: Chart = TRIVIAL
) -> list[str]:
    """What the operator runs for a release (helm/client.py: upgrade_argv), flag for flag."""
    wait = ["--wait=watcher"] if ctx.wait else []
    return [
        "upgrade", "--install", f"--namespace={namespace}", f"--version={chart.version}",
        f"--repo={ctx.repo.url}", f"--values={values}", "--create-namespace", *wait,
        "--timeout=300s", "--history-max=10", "--output=json", "--", name, chart.name,
    ]  # fmt: skip


def run_raw(ctx: Context, size: int, label: str, chart: Chart = TRIVIAL) -> dict[str, Phase]:
    namespace = "bench-raw"
    directory = ctx.workdir / label
    (directory / "values").mkdir(parents=True)
    commands = []
    for index in range(size):
        values = directory / "values" / f"{index}.json"
        values.write_text(json.dumps({"index": index}))
        commands.append(upgrade_argv(ctx, release_name(index), namespace, values, chart))
    plan = directory / "plan.json"
    plan.write_text(
        json.dumps({"helm": str(ctx.helm), "concurrency": ctx.concurrency, "commands": commands})
    )
    ctx.api.create_namespace(namespace)
    env = {**ctx.bed.env(), **ctx.helm_homes(directory)}
    try:
        window = ApiWindow(ctx.api)
        started = time.monotonic()
        others = Others(ctx)
        process = subprocess.Popen(
            [sys.executable, str(BENCH_DIR / "raw_floor.py"), str(plan)], env=env
        )
        code, cpu, rss = _wait4(process)
        wall = time.monotonic() - started
        busy = others.cores(cpu)
        control_plane = others.control_plane()
        api, writes, _ = window.close()
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
            control_plane_cpu=control_plane,
            api=api,
            writes=writes,
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
                "chart": f"bench/{TRIVIAL.name}",
                "version": TRIVIAL.version,
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
        window = ApiWindow(ctx.api)
        started = time.monotonic()
        others = Others(ctx)
        process = subprocess.Popen(argv, env=env, stdout=output, stderr=subprocess.STDOUT)
        code, cpu, rss = _wait4(process)
        wall = time.monotonic() - started
        busy = others.cores(cpu)
        control_plane = others.control_plane()
        api, writes, reads = window.close()
    if code != 0:
        tail = (directory / f"{phase}.log").read_text(errors="replace")[-1500:]
        raise BenchError(f"helmfile {command} failed (exit {code}):\n{tail}")
    commands = Counter(log.read_text().split()) if log.exists() else Counter()
    return Phase(
        wall=wall, cpu=cpu, helm=dict(commands), peak_rss_mib=rss, objects=size,
        others_cores=busy, control_plane_cpu=control_plane, api=api, writes=writes,
        secret_reads=reads,
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
    chart: Chart = TRIVIAL,
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
                    "chart": f"bench/{chart.name}",
                    "version": chart.version,
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


def drift_interval(size: int, chart: Chart = TRIVIAL) -> int:
    """Seconds between drift checks in the drift phase: short, but longer than one pass over
    all releases takes (≈ 5 ms per object checked on 2 cores, with margin), so that the measured
    window holds one check per release and the operator is idle before and after it. (50
    releases of the large chart: 125 s; one round of their 10,000 objects took ≈ 1/3 of that.)"""
    return max(20, size // 10, size * chart.objects // 80)


def storage_secret_bytes(ctx: Context, namespace: str, release: str) -> float | None:
    """Bytes of the JSON of a GET of the release's first Helm storage Secret."""
    status, data = ctx.api.request(
        "GET", f"/api/v1/namespaces/{namespace}/secrets/sh.helm.release.v1.{release}.v1"
    )
    return float(len(data)) if status == 200 else None


def run_operator(
    ctx: Context,
    size: int,
    states: int,
    label: str,
    *,
    drift: bool,
    plan: bool = True,
    idle: float = 0.0,
    chart: Chart = TRIVIAL,
) -> dict[str, Phase]:
    """Convergence, a forced resync; with `idle`, that many seconds of the idle operator; with
    `drift`, drift checks enabled and one periodic pass; with `plan`, the plan phase."""
    groups = split(size, states)
    prefix = "bench-op" if chart == TRIVIAL else f"bench-{chart.name}"
    namespaces = [f"{prefix}{len(groups)}-{k}" for k in range(len(groups))]
    nsset = set(namespaces)
    directory = ctx.workdir / label
    directory.mkdir(parents=True)
    for namespace in namespaces:
        ctx.api.create_namespace(namespace)
        ctx.api.grant_tenant(namespace)
    manifest = {
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            state_manifest(ctx, ns, idx, chart=chart)
            for ns, idx in zip(namespaces, groups, strict=True)
        ],
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
        idle_rss = measure.proc_memory(operator.pid).get("VmRSS")

        # 1. convergence: kubectl apply → every state Ready with all its releases.
        def converged() -> bool:
            for ns, count in expected.items():
                seen = watch.states.get((ns, "bench"))
                if seen is None or not (seen.current and seen.ready and seen.ready_count == count):
                    return False
            return True

        with operator.profiled("converge"):
            window = ApiWindow(ctx.api)
            started = time.monotonic()
            others = Others(ctx, operator.pid)
            ctx.bed.kubectl("apply", "--server-side", "-f", str(directory / "states.json"))
            done = watch.wait(converged, ctx.timeout, f"{label}: states Ready")
            busy = others.cores()
            control_plane = others.control_plane()
            cpu_after = ctx.quiet(operator.pid)
            api, writes, _ = window.close()
        memory = measure.proc_memory(operator.pid)
        metrics_after = operator.scrape()
        helm, errors = _helm_phase(metrics_before, metrics_after)
        used = cpu_after - cpu_before
        phases["converge"] = Phase(
            wall=done - started, cpu=used.total, cpu_own=used.own, helm=helm, helm_errors=errors,
            peak_rss_mib=memory.get("VmHWM"), objects=size, others_cores=busy,
            control_plane_cpu=control_plane, api=api, writes=writes, idle_rss_mib=idle_rss,
        )  # fmt: skip

        # 2. a forced resync of the unchanged states: no helm upgrade expected. Complete when
        # every state's status.lastHandledReconcileAt is the request (watch.resync_handled).
        requested = f"bench-{time.time_ns()}"

        def handled() -> bool:
            return resync_handled(
                watch.in_namespaces(watch.states, nsset),
                watch.in_namespaces(watch.releases, nsset),
                requested,
                len(namespaces),
            )

        cpu_before = ctx.quiet(operator.pid)
        with operator.profiled("resync"):
            window = ApiWindow(ctx.api)
            started = time.monotonic()
            others = Others(ctx, operator.pid)
            for ns in namespaces:
                ctx.api.merge_patch(
                    f"{GROUP_PATH}/namespaces/{ns}/helmfilestates/bench",
                    {"metadata": {"annotations": {RECONCILE_REQUEST: requested}}},
                )
            done = watch.wait(handled, ctx.timeout, f"{label}: reconcile request handled")
            control_plane = others.control_plane()
            cpu_after = ctx.quiet(operator.pid)
            api, writes, reads = window.close()
        metrics_resync = operator.scrape()
        helm, errors = _helm_phase(metrics_after, metrics_resync)
        used = cpu_after - cpu_before
        phases["resync"] = Phase(
            wall=done - started, cpu=used.total, cpu_own=used.own, helm=helm, helm_errors=errors,
            peak_rss_mib=measure.proc_memory(operator.pid).get("VmHWM"), api=api, objects=size,
            manifest_objects=size * chart.objects, control_plane_cpu=control_plane,
            writes=writes, secret_reads=reads,
            storage_secret_bytes=storage_secret_bytes(ctx, namespaces[0], release_name(0)),
        )  # fmt: skip

        # 3. the idle operator: nothing changes, no check is due (drift is not enabled yet).
        if idle > 0:
            phases["idle"] = _idle(ctx, operator, size, idle)

        # 4. drift detection (warn) on a short interval: one periodic pass of checks.
        if drift:
            phases.update(_drift(ctx, operator, namespaces, size, metrics_resync, chart))

        # 5. a change of every release under manual approval: a plan each, no upgrade.
        if plan:
            phases["plan"] = _plan(ctx, operator, namespaces, groups, label, drift=drift)
    finally:
        operator.stop()
        ctx.api.delete_namespaces(namespaces)
    return phases


def _idle(ctx: Context, operator: Operator, size: int, seconds: float) -> Phase:
    """`seconds` of the quiet operator holding `size` releases: its CPU, API requests and RSS."""
    cpu_before = ctx.quiet(operator.pid)
    window = ApiWindow(ctx.api)
    others = Others(ctx, operator.pid)
    started = time.monotonic()
    time.sleep(seconds)
    cpu_after = measure.proc_cpu(operator.pid)
    wall = time.monotonic() - started
    control_plane = others.control_plane()
    api, writes, reads = window.close()
    used = cpu_after - cpu_before
    memory = measure.proc_memory(operator.pid)
    return Phase(
        wall=wall, cpu=used.total, cpu_own=used.own, peak_rss_mib=memory.get("VmRSS"), api=api,
        objects=size, control_plane_cpu=control_plane, writes=writes, secret_reads=reads,
    )  # fmt: skip


def check_rounds_target(before: dict[str, float] | None, releases: int) -> float | None:
    """The value of helmfile_operator_drift_checks_total (all results) at which one more round of
    drift checks is complete: every release checked once more; None without the counter."""
    if before is None:
        return None
    return sum(before.values()) + releases


def _wait_checks(
    operator: Operator, target: float, timeout: float, poll: float, what: str
) -> tuple[float, dict[str, float], int]:
    """Scrape the operator's drift-check counter every `poll` seconds until it reaches `target`:
    time.monotonic() then, the counter by result, the number of scrapes."""
    deadline = time.monotonic() + timeout
    scrapes = 0
    while True:
        counts = measure.drift_checks(operator.scrape()) or {}
        scrapes += 1
        if sum(counts.values()) >= target:
            return time.monotonic(), counts, scrapes
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(poll)


def _drift(
    ctx: Context,
    operator: Operator,
    namespaces: list[str],
    size: int,
    metrics_before: str,
    chart: Chart = TRIVIAL,
) -> dict[str, Phase]:
    """Drift detection enabled (first round of checks), then one periodic round measured. A
    round is complete when helmfile_operator_drift_checks_total has grown by `size` (one
    increment per check of a release); an operator without that counter is followed through
    each HelmfileRelease's `status.lastDriftCheck` instead."""
    watch = ctx.watch
    nsset = set(namespaces)
    interval = drift_interval(size, chart)
    counter = measure.drift_checks(metrics_before)

    def releases() -> list[Seen]:
        return watch.in_namespaces(watch.releases, nsset)

    def first_checked() -> bool:
        seen = releases()
        return len(seen) == size and all(
            s.current and s.drift_checked and s.drifted == "False" for s in seen
        )

    cpu_before = ctx.quiet(operator.pid)
    window = ApiWindow(ctx.api)
    started = time.monotonic()
    for ns in namespaces:
        ctx.api.merge_patch(
            f"{GROUP_PATH}/namespaces/{ns}/helmfilestates/bench",
            {"spec": {"driftDetection": {"mode": "warn"}, "interval": f"{interval}s"}},
        )
    target = check_rounds_target(counter, size)
    results: dict[str, float] = {}
    if target is None:
        done = watch.wait(first_checked, ctx.timeout, "drift detection enabled and checked")
    else:
        done, results, _ = _wait_checks(
            operator, target, ctx.timeout, 0.5, "drift detection enabled and checked"
        )
    first_round = done
    cpu_after = ctx.quiet(operator.pid)
    api, _, _ = window.close()
    used = cpu_after - cpu_before
    enable = Phase(
        wall=done - started, cpu=used.total, cpu_own=used.own, api=api, objects=size,
        manifest_objects=size * chart.objects,
        drift_results={k: v - (counter or {}).get(k, 0.0) for k, v in results.items()},
    )  # fmt: skip

    # The periodic round: from now until every release was checked once more.
    with watch.changed:
        checked = {(s.namespace, s.name): s.drift_checked for s in releases()}

    def rechecked() -> bool:
        seen = releases()
        return len(seen) == size and all(
            s.drift_checked != checked.get((s.namespace, s.name)) for s in seen
        )

    cpu_before = ctx.quiet(operator.pid)
    counted = measure.drift_checks(operator.scrape()) if target is not None else None
    window = ApiWindow(ctx.api)
    others = Others(ctx, operator.pid)
    scrapes = 0
    with operator.profiled("drift"):
        started = time.monotonic()
        target = check_rounds_target(counted, size)
        if target is None:
            done = watch.wait(rechecked, interval * 3 + ctx.timeout / 10, "a periodic drift pass")
        else:
            # Each scrape costs the operator a little CPU: none until the round is about due
            # (each release is checked `interval` after its previous check), then a few.
            time.sleep(max(0.0, first_round + 0.9 * interval - time.monotonic()))
            done, results, scrapes = _wait_checks(
                operator, target, interval * 3 + ctx.timeout / 10, max(0.5, interval / 50),
                "a periodic drift pass",
            )  # fmt: skip
        control_plane = others.control_plane()
        cpu_after = ctx.quiet(operator.pid)
        api, _, reads = window.close()
    helm, errors = _helm_phase(metrics_before, operator.scrape())
    used = cpu_after - cpu_before
    if counted is not None:
        grown = {k: v - counted.get(k, 0.0) for k, v in results.items()}
        checks = int(sum(grown.values()))
    else:
        grown = {}
        checks = int(api.get("APPLY configmaps (dry run)", 0)) // chart.objects or size
    periodic = Phase(
        wall=done - started, cpu=used.total, cpu_own=used.own, helm=helm, helm_errors=errors,
        peak_rss_mib=measure.proc_memory(operator.pid).get("VmHWM"), api=api, objects=checks,
        manifest_objects=checks * chart.objects, control_plane_cpu=control_plane,
        secret_reads=reads, drift_results=grown, scrapes=scrapes,
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
    window = ApiWindow(ctx.api)
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
        api, writes, _ = window.close()
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
        control_plane_cpu=control_plane, writes=writes,
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

        window = ApiWindow(ctx.api)
        started = time.monotonic()
        others = Others(ctx)
        ctx.bed.kubectl("apply", "--server-side", "-f", str(directory / "states.json"))
        done = watch.wait(converged, ctx.timeout, f"{label}: states Ready")
        control_plane = others.control_plane()
        cpu_after = [ctx.quiet(operator.pid) for operator in operators.values()]
        api, writes, _ = window.close()
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
                api=api,
                writes=writes,
            )
        }
    finally:
        for operator in operators.values():
            operator.stop()
        ctx.api.delete_namespaces(namespaces)
