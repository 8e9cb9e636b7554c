"""Prometheus metrics (prefix `helmfile_operator_`), and the HTTP server for /metrics and /readyz.

Label sets are bounded: kinds, results, helm commands, condition types — plus object namespace and
name on the per-object series, which are removed when the object is deleted, and the remote
clusters in use (bounded by the connection cache). docs/metrics.md
lists every metric and the PromQL for the SLIs.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

from helmfile_operator import __version__

# Helm actions take seconds to minutes; a reconcile without helm takes milliseconds.
_DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)

_STANDBY_SAMPLES = ("helmfile_operator_build_info", "helmfile_operator_leader")

CONDITION_TYPES = ("Ready", "Reconciling", "Stalled", "Released", "Remediated", "Drifted")
_STATUSES = ("True", "False", "Unknown")


class Metrics:
    """Every metric of one operator, in a registry of its own (no process-wide state: tests and
    tools can run several)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.reconcile_duration = Histogram(
            "helmfile_operator_reconcile_duration_seconds",
            "Duration of one reconcile pass.",
            ["kind", "result"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.reconcile_total = Counter(
            "helmfile_operator_reconcile_total", "Reconcile passes.", ["kind", "result"], registry=r
        )
        self.helm_duration = Histogram(
            "helmfile_operator_helm_command_duration_seconds",
            "Duration of helm processes.",
            ["command", "result"],
            buckets=_DURATION_BUCKETS,
            registry=r,
        )
        self.helm_total = Counter(
            "helmfile_operator_helm_commands_total",
            "helm processes run.",
            ["command", "result"],
            registry=r,
        )
        self.release_actions = Counter(
            "helmfile_operator_release_actions_total",
            "Install/upgrade/uninstall actions taken on releases, by outcome.",
            ["action", "result"],
            registry=r,
        )
        self.remediations = Counter(
            "helmfile_operator_remediations_total",
            "Remediations of failed releases: rollback, uninstall (after a failed install), retry.",
            ["action"],
            registry=r,
        )
        self.release_tests = Counter(
            "helmfile_operator_release_tests_total",
            "`helm test` runs after an install/upgrade, by outcome (success, failure).",
            ["result"],
            registry=r,
        )
        self.drift_checks = Counter(
            "helmfile_operator_drift_checks_total",
            "Drift checks run, by result (clean, drifted, failed). Every check counts here; "
            "status.lastDriftCheck is written only when the outcome changes, or hourly.",
            ["result"],
            registry=r,
        )
        self.drift_detections = Counter(
            "helmfile_operator_drift_detections_total",
            "Drift checks that found a release drifted.",
            registry=r,
        )
        self.drifted_releases = Gauge(
            "helmfile_operator_drifted_releases", "Releases currently drifted.", registry=r
        )
        self.plans_awaiting_approval = Gauge(
            "helmfile_operator_plans_awaiting_approval",
            "HelmfileReleases whose plan waits for an approval (manual approval).",
            registry=r,
        )
        self.helm_in_flight = Gauge(
            "helmfile_operator_helm_in_flight", "helm processes running now.", registry=r
        )
        self.queue_depth = Gauge(
            "helmfile_operator_queue_depth", "Objects waiting for a reconcile pass.", registry=r
        )
        self.reconciles_in_flight = Gauge(
            "helmfile_operator_reconciles_in_flight", "Objects being reconciled now.", registry=r
        )
        self.workers = Gauge(
            "helmfile_operator_workers",
            "Reconcile worker tasks alive (equals the max_concurrent_reconciles setting).",
            registry=r,
        )
        self.release_condition = Gauge(
            "helmfile_operator_release_condition",
            "1 for the current status of each condition of each HelmfileRelease.",
            ["namespace", "name", "condition", "status"],
            registry=r,
        )
        self.state_condition = Gauge(
            "helmfile_operator_state_condition",
            "1 for the current status of each condition of each HelmfileState.",
            ["namespace", "name", "condition", "status"],
            registry=r,
        )
        self.state_last_success = Gauge(
            "helmfile_operator_state_last_success_timestamp_seconds",
            "When each HelmfileState was last seen Ready (Unix time).",
            ["namespace", "name"],
            registry=r,
        )
        self.cluster_reachable = Gauge(
            "helmfile_operator_cluster_reachable",
            "1 when the remote cluster (`spec.kubeConfig`) answered the last request, else 0; "
            "one series per cluster in use (at most 64).",
            ["cluster", "server"],
            registry=r,
        )
        self.build_info = Gauge(
            "helmfile_operator_build_info",
            'Versions of the operator and helm, and the shard it reconciles ("": unsharded).',
            ["version", "helm_version", "shard"],
            registry=r,
        )
        self.leader = Gauge(
            "helmfile_operator_leader",
            "1 while this replica acts (holds its shard's Lease, or runs without leader "
            "election), 0 while it stands by.",
            registry=r,
        )

    def observe_helm(self, command: str, result: str, seconds: float) -> None:
        """HelmClient's `on_command` hook."""
        self.helm_duration.labels(command, result).observe(seconds)
        self.helm_total.labels(command, result).inc()

    def observe_reconcile(self, kind: str, result: str, seconds: float) -> None:
        self.reconcile_duration.labels(kind, result).observe(seconds)
        self.reconcile_total.labels(kind, result).inc()

    def record_release(self, namespace: str, name: str, conditions: list[dict[str, str]]) -> None:
        _set_conditions(self.release_condition, namespace, name, conditions)

    def forget_release(self, namespace: str, name: str) -> None:
        _forget_conditions(self.release_condition, namespace, name)

    def record_state(self, namespace: str, name: str, conditions: list[dict[str, str]]) -> None:
        _set_conditions(self.state_condition, namespace, name, conditions)
        if any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions):
            self.state_last_success.labels(namespace, name).set(time.time())

    def forget_state(self, namespace: str, name: str) -> None:
        _forget_conditions(self.state_condition, namespace, name)
        _remove(self.state_last_success, namespace, name)

    def set_build_info(self, helm_version: str, shard: str = "") -> None:
        self.build_info.clear()
        self.build_info.labels(__version__, helm_version, shard).set(1)

    def exposition(self, *, standby: bool = False) -> bytes:
        """The text format. A standby shows only what describes the process (`build_info`,
        `leader`): it watches and queues every object too, and its per-object series and queue
        gauges would count each object twice in sums over the pods."""
        if standby:
            return generate_latest(self.registry.restricted_registry(_STANDBY_SAMPLES))
        return generate_latest(self.registry)


def _set_conditions(
    gauge: Gauge, namespace: str, name: str, conditions: list[dict[str, str]]
) -> None:
    current = {c.get("type"): c.get("status") for c in conditions}
    for type_ in CONDITION_TYPES:
        for status in _STATUSES:
            if current.get(type_) == status:
                gauge.labels(namespace, name, type_, status).set(1)
            else:
                _remove(gauge, namespace, name, type_, status)


def _remove(gauge: Gauge, *labels: str) -> None:
    with contextlib.suppress(KeyError):  # never set: nothing to remove
        gauge.remove(*labels)


def _forget_conditions(gauge: Gauge, namespace: str, name: str) -> None:
    for type_ in CONDITION_TYPES:
        for status in _STATUSES:
            _remove(gauge, namespace, name, type_, status)


async def start_server(
    port: int,
    metrics_: Metrics,
    ready: Callable[[], bool],
    role: Callable[[], str] = lambda: "leader",
) -> web.AppRunner:
    """/metrics and /readyz on `port` (all interfaces: Prometheus scrapes the pod IP). /readyz
    answers 200 on a standby too (`ok: standby`): a standby is a healthy pod, and a rollout must
    not wait for a new pod to become the leader."""

    async def metrics(_: web.Request) -> web.Response:
        body = metrics_.exposition(standby=role() == "standby")
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def readyz(_: web.Request) -> web.Response:
        if not ready():
            return web.Response(status=503, text="starting\n")
        return web.Response(text=f"ok: {role()}\n")

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/readyz", readyz)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "0.0.0.0", port).start()  # noqa: S104 (scraped via the pod IP)
    return runner
