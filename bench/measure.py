"""What the benchmark reads: the operator's /proc, the Prometheus text of operator and API."""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+([0-9.eE+-]+|NaN|\+Inf|-Inf)\s*$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Cpu:
    """CPU seconds of a process: its own, and that of its children it has waited for (helm)."""

    own: float
    children: float

    def __sub__(self, other: Cpu) -> Cpu:
        return Cpu(self.own - other.own, self.children - other.children)

    @property
    def total(self) -> float:
        return self.own + self.children


def proc_cpu(pid: int) -> Cpu:
    """utime+stime and cutime+cstime from /proc/<pid>/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(fields[i]) for i in (11, 12, 13, 14))
    return Cpu((utime + stime) / CLOCK_TICKS, (cutime + cstime) / CLOCK_TICKS)


def proc_memory(pid: int) -> dict[str, float]:
    """VmHWM (peak RSS) and VmRSS in MiB."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            found[key] = int(value.split()[0]) / 1024
    return found


def wait_quiet(
    pid: int, *, window: float = 0.5, idle_seconds: float = 0.02, rounds: int = 2
) -> Cpu:
    """Wait until the process has used at most `idle_seconds` of CPU in `rounds` consecutive
    windows (it finished its work: helm children are reaped, queues drained); return its CPU.
    Reading /proc costs the operator nothing, unlike a scrape of its /metrics."""
    quiet = 0
    before = proc_cpu(pid)
    deadline = time.monotonic() + 600
    while quiet < rounds and time.monotonic() < deadline:
        time.sleep(window)
        now = proc_cpu(pid)
        quiet = quiet + 1 if (now - before).total <= idle_seconds else 0
        before = now
    if quiet < rounds:
        print(f"bench: warning: process {pid} never went idle; CPU read anyway", file=sys.stderr)
    return before


def machine_busy() -> float:
    """Busy CPU seconds of the whole machine since boot (the `cpu` line of /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS


def pids_cpu(pids: Iterable[int]) -> float:
    """CPU seconds (own and reaped children) of the processes that still exist."""
    total = 0.0
    for pid in pids:
        try:
            total += proc_cpu(pid).total
        except (OSError, IndexError, ValueError):
            continue
    return total


# --- Prometheus text ------------------------------------------------------------------------------


Sample = tuple[str, dict[str, str], float]


def parse_prometheus(text: str) -> list[Sample]:
    samples: list[Sample] = []
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = _SAMPLE.match(line)
        if match is None:
            continue
        name, labels, value = match.groups()
        parsed = dict(_LABEL.findall(labels or ""))
        samples.append((name, parsed, float(value)))
    return samples


def counter_by(
    samples: Iterable[Sample],
    name: str,
    keys: tuple[str, ...],
    where: Callable[..., bool] | None = None,
) -> dict[tuple[str, ...], float]:
    """Sum of a metric's samples grouped by the given labels (optionally filtered)."""
    totals: dict[tuple[str, ...], float] = {}
    for sample_name, labels, value in samples:
        if sample_name != name or (where is not None and not where(labels)):
            continue
        key = tuple(labels.get(k, "") for k in keys)
        totals[key] = totals.get(key, 0.0) + value
    return totals


def delta(
    after: dict[tuple[str, ...], float], before: dict[tuple[str, ...], float]
) -> dict[tuple[str, ...], float]:
    keys = set(after) | set(before)
    changed = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in keys}
    return {k: v for k, v in changed.items() if v}


def helm_commands(metrics_text: str) -> dict[tuple[str, ...], float]:
    """helmfile_operator_helm_commands_total by (command, result)."""
    return counter_by(
        parse_prometheus(metrics_text),
        "helmfile_operator_helm_commands_total",
        ("command", "result"),
    )


def apiserver_requests(metrics_text: str) -> dict[tuple[str, ...], float]:
    """apiserver_request_total by (verb, resource, subresource, dry_run)."""
    return counter_by(
        parse_prometheus(metrics_text),
        "apiserver_request_total",
        ("verb", "resource", "subresource", "dry_run"),
    )


# Verbs of apiserver_request_total that change something (dry runs excluded by the caller).
WRITE_VERBS = ("POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION")


def writes(changed: dict[tuple[str, ...], float]) -> dict[str, float]:
    """The writes of an `apiserver_requests` delta, every resource, by "VERB resource[/sub]"
    (dry runs are not writes)."""
    out: dict[str, float] = {}
    for (verb, kind, subresource, dry_run), count in sorted(changed.items()):
        if verb not in WRITE_VERBS or dry_run or not count:
            continue
        what = f"{verb} {kind}" + (f"/{subresource}" if subresource else "")
        out[what] = out.get(what, 0.0) + count
    return out


def response_sizes(metrics_text: str, resource: str) -> dict[tuple[str, ...], float]:
    """apiserver_response_sizes (a histogram of the bytes of GET and LIST responses) of one
    resource: its `_sum` and `_count` by (verb, "bytes" | "count")."""
    samples = parse_prometheus(metrics_text)
    out: dict[tuple[str, ...], float] = {}
    for suffix, what in (("_sum", "bytes"), ("_count", "count")):
        found = counter_by(
            samples,
            "apiserver_response_sizes" + suffix,
            ("verb",),
            lambda labels: labels.get("resource") == resource and not labels.get("subresource"),
        )
        for (verb,), value in found.items():
            out[(verb, what)] = value
    return out


def secret_reads(after_text: str, before_text: str) -> dict[str, float]:
    """Bytes and number of the API server's GET and LIST responses of Secrets between two scrapes:
    {"LIST bytes": …, "LIST count": …, "GET bytes": …, "GET count": …} (zeros included)."""
    changed = delta(response_sizes(after_text, "secrets"), response_sizes(before_text, "secrets"))
    return {
        f"{verb} {what}": changed.get((verb, what), 0.0)
        for verb in ("LIST", "GET")
        for what in ("bytes", "count")
    }


DRIFT_CHECKS = "helmfile_operator_drift_checks_total"


def drift_checks(metrics_text: str) -> dict[str, float] | None:
    """The operator's helmfile_operator_drift_checks_total by result (clean, drifted, failed);
    None when the operator does not export the counter at all (an operator from before it). A
    labelled counter has no samples before its first increment: its HELP/TYPE lines tell that
    it exists."""
    family = DRIFT_CHECKS.removesuffix("_total")
    exported = any(
        line.startswith(("# HELP ", "# TYPE ")) and line.split()[2] in (family, DRIFT_CHECKS)
        for line in metrics_text.splitlines()
        if line.startswith("#") and len(line.split()) > 2
    )
    found = counter_by(parse_prometheus(metrics_text), DRIFT_CHECKS, ("result",))
    if not exported and not found:
        return None
    return {result: value for (result,), value in found.items()}
