#!/usr/bin/env python3
"""`make bench`: the operator against the raw floor and helmfile, on a private test bed.

    .venv/bin/python bench/run.py [--sizes 10,100,300] [--repeat R] [--large 50] ...

For every size N: N trivial releases (one ConfigMap each, bench/charts/trivial) installed from
absent by
  - the raw floor: `helm upgrade --install` per release, C at a time (bench/raw_floor.py);
  - helmfile sync, and helmfile apply (then a second, no-op apply; by default only for N ≤ 300:
    it costs twice a sync and is no target);
  - the operator with all releases in one HelmfileState, and spread across 10 states; then a
    forced resync of the unchanged states, the idle operator for 30 s, one periodic pass of
    drift checks, and a change of every release under `approval: {mode: manual}` (a plan each,
    no upgrade).
Then the large-chart case: 50 releases of bench/charts/large (200 ConfigMaps, a ≈ 1.6 MiB
manifest each) by the raw floor and by the operator (one state): convergence, a forced resync
and a periodic drift pass.
Between runs every namespace is deleted, so each run starts from absent. Results go to stdout,
to a JSON file and to the generated section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import report
from cluster import (
    LARGE,
    REPO_ROOT,
    Api,
    Baselines,
    Bed,
    BenchError,
    baseline_binaries,
    cache_dir,
    chart_repo,
    testbin_dir,
    version_of,
)
from contenders import Context, Phase, run_helmfile, run_operator, run_raw, run_sharded
from watch import Watch

DEFAULT_SIZES = (10, 100, 300)
MAX_SIZE = 1000
CONTENDERS = tuple(report.LABELS)
# Above this N, `helmfile apply` runs only when --contenders names it.
HELMFILE_APPLY_MAX_SIZE = 300
DEFAULT_LARGE = 50
DEFAULT_IDLE_SECONDS = 30.0


def contenders_for(size: int, chosen: list[str] | None) -> list[str]:
    """The contenders of one size: those of --contenders, or all but `helmfile apply` above
    HELMFILE_APPLY_MAX_SIZE."""
    if chosen is not None:
        return chosen
    return [c for c in CONTENDERS if not (c == "helmfile-apply" and size > HELMFILE_APPLY_MAX_SIZE)]


def parse_sizes(text: str) -> list[int]:
    sizes = sorted({int(part) for part in text.split(",") if part.strip()})
    if not sizes or sizes[0] < 1 or sizes[-1] > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"sizes are between 1 and {MAX_SIZE}")
    return sizes


def parse_contenders(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = set(chosen) - set(CONTENDERS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown contender(s) {sorted(unknown)}; of {CONTENDERS}")
    return chosen


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/run.py", description=(__doc__ or "").split("\n\n")[0]
    )
    parser.add_argument(
        "--sizes", type=parse_sizes, default=list(DEFAULT_SIZES),
        help=f"release counts, comma-separated, up to {MAX_SIZE} (default: 10,100,300); at "
        "N=1000: one state of 1000 releases and 10 states of 100; `--sizes 100,1000` takes "
        "about 70 min on 2 cores",
    )  # fmt: skip
    parser.add_argument(
        "--repeat", type=int, default=None,
        help="runs per size and contender (default: 3 for N ≤ 100, 1 above); medians are reported",
    )  # fmt: skip
    parser.add_argument(
        "--concurrency", type=int, default=8,
        help="helm processes at once, for every contender (HELMFILE_OPERATOR_MAX_CONCURRENT_HELM)",
    )  # fmt: skip
    parser.add_argument(
        "--states", type=int, default=10, help="states of the spread layout (default: 10)"
    )
    parser.add_argument(
        "--wait", action="store_true",
        help="helm --wait for every contender (default: no wait; a ConfigMap is ready at once)",
    )  # fmt: skip
    parser.add_argument(
        "--contenders", type=parse_contenders, default=None,
        help=f"comma-separated subset of {','.join(CONTENDERS)} (default: all, but helmfile-apply "
        f"only for N ≤ {HELMFILE_APPLY_MAX_SIZE}: above, it costs twice a sync and would stretch "
        "`--sizes 100,1000` well past an hour on 2 cores; name it here to run it anyway)",
    )  # fmt: skip
    parser.add_argument(
        "--no-drift", action="store_true", help="skip the drift-check phase of the operator"
    )
    parser.add_argument(
        "--large", type=int, default=DEFAULT_LARGE, metavar="N",
        help="releases of the large-chart case (bench/charts/large: 200 ConfigMaps, a ≈ 1.6 MiB "
        f"manifest each; raw floor and operator, 1 state); 0 = skip it (default: {DEFAULT_LARGE})",
    )  # fmt: skip
    parser.add_argument(
        "--idle-seconds", type=float, default=DEFAULT_IDLE_SECONDS,
        help="the window in which the idle operator's CPU is measured, after the resync of each "
        f"run with drift checks; 0 = skip (default: {DEFAULT_IDLE_SECONDS:.0f})",
    )  # fmt: skip
    parser.add_argument(
        "--testbed-dir", type=Path, default=cache_dir() / "bench-testbed",
        help="state of the benchmark's own control plane (destroyed at the end)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-testbed", action="store_true", help="stop the control plane but keep its files"
    )
    parser.add_argument(
        "--workdir", type=Path, default=None,
        help="logs, plans and results (default: a new directory under /tmp)",
    )  # fmt: skip
    parser.add_argument(
        "--docs", type=Path, default=REPO_ROOT / "docs" / "benchmarks.md",
        help="Markdown file whose generated section is replaced",
    )  # fmt: skip
    parser.add_argument("--no-docs", action="store_true", help="print only; leave the docs")
    parser.add_argument(
        "--py-spy", type=Path, default=None,
        help="a py-spy binary: sample the operator's phases into <workdir>/profiles (slows it)",
    )  # fmt: skip
    parser.add_argument(
        "--operator-pythonpath", type=Path, default=None,
        help="directory holding a modified copy of helmfile_operator to run instead (to measure "
        "a proposed change without touching operator/)",
    )  # fmt: skip
    parser.add_argument(
        "--report-only", type=Path, default=None, metavar="RESULTS_JSON",
        help="run nothing: rebuild the tables from a results.json of an earlier run",
    )  # fmt: skip
    return parser


def repeats_for(size: int, repeat: int | None) -> int:
    if repeat is not None:
        return max(1, repeat)
    return 3 if size <= 100 else 1


def machine() -> str:
    model = "?"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory = "?"
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            memory = f"{int(line.split()[1]) / 1024 / 1024:.0f} GiB"
    load = Path("/proc/loadavg").read_text().split()[0]
    return (
        f"{os.cpu_count()} cores ({model}), {memory}, Linux {platform.release()}; "
        f"load average {load} when the run started (the machine is shared with other work)"
    )


def commit() -> str:
    """The repository's commit, and whether operator/ differs from it."""
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--", "operator"],
        cwd=REPO_ROOT, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    return f"commit {head or '?'}" + (", operator/ modified" if dirty else "")


def versions(bins: Path, baselines: Baselines | None) -> dict[str, str]:
    found = {
        "helmfile-operator": f"{importlib.metadata.version('helmfile-operator')} ({commit()})",
        "Python": platform.python_version(),
        "kopf": importlib.metadata.version("kopf"),
        "kubernetes (client)": importlib.metadata.version("kubernetes"),
        "helm": version_of([str(bins / "helm"), "version", "--template={{.Version}}"]),
        "Kubernetes": version_of([str(bins / "kube-apiserver"), "--version"]).split()[-1],
    }
    if baselines is not None:
        found["helmfile"] = version_of([str(baselines.helmfile), "--version"]).split()[-1]
        plugin = (baselines.helm_plugins / "diff" / "plugin.yaml").read_text()
        found["helm-diff"] = next(
            (line.split(":", 1)[1].strip().strip('"') for line in plugin.splitlines()
             if line.startswith("version:")), "?",
        )  # fmt: skip
    return found


def header(
    args: argparse.Namespace, found: dict[str, str], command: str, elapsed: float, host: str
) -> list[str]:
    today = datetime.date.today().isoformat()
    caveats = []
    if args.operator_pythonpath is not None:
        caveats.append(f"- **the operator ran from a modified copy: {args.operator_pythonpath}**")
    if args.py_spy is not None:
        caveats.append("- **the operator was sampled by py-spy: its numbers are inflated**")
    return [
        *caveats,
        f"Generated {today} by `{command}` in {elapsed / 60:.0f} min.",
        "",
        f"- machine: {host}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in found.items()),
        f"- concurrency C = {args.concurrency} helm processes for every contender; "
        f"helm `--wait`: {'yes' if args.wait else 'no'}; spread layout: {args.states} states",
        f"- large-chart case: {args.large} releases of bench/charts/large (200 ConfigMaps each)"
        if args.large
        else "- large-chart case: not run",
        "- contenders: "
        + (
            ", ".join(args.contenders) + " (--contenders)"
            if args.contenders is not None
            else f"all; helmfile apply only for N ≤ {HELMFILE_APPLY_MAX_SIZE}"
        ),
        "- CPU: the process and every helm process it ran (operator: /proc/<pid>/stat "
        "utime+stime+cutime+cstime; raw floor and helmfile: wait4 rusage); peak RSS: the "
        "operator's VmHWM (baselines: the largest of their processes)",
    ]


def print_phase(label: str, name: str, phase: Phase) -> None:
    extra = f", operator {phase.cpu_own:.2f}s" if phase.cpu_own is not None else ""
    rss = f", peak RSS {phase.peak_rss_mib:.0f} MiB" if phase.peak_rss_mib else ""
    if phase.others_cores is not None:
        rss += f", other work {phase.others_cores:.2f} cores"
    if phase.control_plane_cpu is not None:
        rss += f", control plane CPU {phase.control_plane_cpu:.1f}s"
    if phase.api:
        rss += f", API requests {sum(phase.api.values()):.0f}"
    if phase.writes:
        rss += f", API writes {sum(phase.writes.values()):.0f}"
    if phase.secret_reads:
        rss += f", Secret bytes read {report.secret_bytes(phase):.0f}"
    if phase.drift_results:
        rss += ", drift checks " + ", ".join(
            f"{k} {v:.0f}" for k, v in sorted(phase.drift_results.items())
        )
    helm = ", ".join(f"{k} {v}" for k, v in sorted(phase.helm.items()))
    print(
        f"    {label:<22} {name:<13} wall {phase.wall:7.2f}s  CPU {phase.cpu:7.2f}s{extra}{rss}"
        f"  helm: {helm or 'none'}",
        flush=True,
    )


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # ^C and SIGTERM stop the run through the `finally` blocks: the operator, the namespaces and
    # the control plane are cleaned up. (A background job of a script starts with SIGINT ignored.)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    if args.report_only is not None:
        return report_only(args)
    flags = sys.argv[1:] if argv is None else argv
    command = "make bench" + (f" BENCH_FLAGS={shlex.quote(shlex.join(flags))}" if flags else "")
    started = time.monotonic()
    host = machine()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="hfo-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"bench: work directory {workdir}", flush=True)
    bins = testbin_dir()
    needs_helmfile = any(
        c.startswith("helmfile")
        for size in args.sizes
        for c in contenders_for(size, args.contenders)
    )
    baselines = baseline_binaries() if needs_helmfile else None
    found = versions(bins, baselines)
    print("bench: " + ", ".join(f"{k} {v}" for k, v in found.items()), flush=True)

    bed = Bed(args.testbed_dir.resolve(), bins, keep=args.keep_testbed)
    results: report.Results = {}
    bed.up()
    api = Api(bed.kubeconfig)
    watch = Watch(api)
    try:
        bed.kubectl("apply", "--server-side", "-f", str(REPO_ROOT / "crds"))
        bed.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        watch.start()
        with chart_repo(bins / "helm", workdir) as repo:
            ctx = Context(
                bed=bed, api=api, watch=watch, repo=repo, baselines=baselines, workdir=workdir,
                concurrency=args.concurrency, wait=args.wait, py_spy=args.py_spy,
                operator_pythonpath=args.operator_pythonpath,
            )  # fmt: skip
            for size in args.sizes:
                runs = repeats_for(size, args.repeat)
                by: dict[str, list[dict[str, Phase]]] = results.setdefault(size, {})
                for rep in range(runs):
                    print(f"bench: N={size}, run {rep + 1}/{runs}", flush=True)
                    for contender in contenders_for(size, args.contenders):
                        label = f"n{size}-r{rep + 1}-{contender}"
                        if contender == "raw":
                            phases = run_raw(ctx, size, label)
                        elif contender.startswith("helmfile"):
                            phases = run_helmfile(ctx, size, contender.split("-")[1], label)
                        elif contender == "operator-2-shards":
                            phases = run_sharded(ctx, size, args.states, 2, label)
                        else:
                            states = 1 if contender == "operator-1" else args.states
                            drift = rep == 0 and not args.no_drift
                            idle = args.idle_seconds if drift else 0.0
                            phases = run_operator(ctx, size, states, label, drift=drift, idle=idle)
                        by.setdefault(contender, []).append(phases)
                        for name, phase in phases.items():
                            print_phase(report.LABELS[contender], name, phase)
                        save(workdir / "results.json", results)
            if args.large > 0:
                run_large(ctx, args.large, not args.no_drift, results)
                save(workdir / "results.json", results)
    except BenchError as error:
        print(f"bench: {error}", file=sys.stderr)
        return 1
    finally:
        watch.stop()
        api.close()
        bed.destroy()

    elapsed = time.monotonic() - started
    text = report.markdown(results, header(args, found, command, elapsed, host))
    print("\n" + text)
    if not args.no_docs:
        report.write_docs(args.docs, text)
        print(f"bench: wrote {args.docs}")
    print(f"bench: raw results in {workdir / 'results.json'}")
    return 0


def run_large(ctx: Context, size: int, drift: bool, results: report.Results) -> None:
    """The large-chart case: the raw floor's convergence, then the operator (one state):
    convergence, forced resync, and (unless --no-drift) one periodic drift pass."""
    print(f"bench: large chart, N={size}", flush=True)
    by = results.setdefault(size, {})
    for contender in report.LARGE_LABELS:
        label = f"large{size}-{contender}"
        if contender == "raw-large":
            phases = run_raw(ctx, size, label, chart=LARGE)
        else:
            phases = run_operator(ctx, size, 1, label, drift=drift, plan=False, chart=LARGE)
        by.setdefault(contender, []).append(phases)
        for name, phase in phases.items():
            print_phase(report.LARGE_LABELS[contender], name, phase)


def save(path: Path, results: report.Results) -> None:
    data: dict[str, Any] = {
        str(size): {
            contender: [{name: dataclasses.asdict(p) for name, p in run.items()} for run in runs]
            for contender, runs in by.items()
        }
        for size, by in results.items()
    }
    path.write_text(json.dumps(data, indent=1))


def load(path: Path) -> report.Results:
    data = json.loads(path.read_text())
    return {
        int(size): {
            contender: [{name: Phase(**p) for name, p in run.items()} for run in runs]
            for contender, runs in by.items()
        }
        for size, by in data.items()
    }


def report_only(args: argparse.Namespace) -> int:
    """Tables again from a results.json, under the header of the docs' generated section."""
    results = load(args.report_only)
    text = args.docs.read_text() if args.docs.exists() else ""
    block = text.split(report.BEGIN, 1)[-1].split(report.END, 1)[0] if report.BEGIN in text else ""
    header = block.strip("\n").split("\n### ", 1)[0].rstrip("\n").splitlines() or ["(no header)"]
    generated = report.markdown(results, header)
    print(generated)
    if not args.no_docs:
        report.write_docs(args.docs, generated)
    return 0


if __name__ == "__main__":
    sys.exit(main())
