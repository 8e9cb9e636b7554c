"""Thin kopf handlers: build the Controller at start-up, hand it every watch event, report its
health. All the logic lives in controllers/runtime.py (and the reconcilers it runs)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from typing import Any

import kopf

from helmfile_operator import metrics
from helmfile_operator.api.models import GROUP, VERSION
from helmfile_operator.clusters import ClusterPool
from helmfile_operator.controllers.runtime import Controller
from helmfile_operator.helm import HelmClient
from helmfile_operator.helm.files import ensure_private_dir, run_work_dir
from helmfile_operator.kube import Kube
from helmfile_operator.reconcile.context import shard_selector
from helmfile_operator.reconcile.drift import DriftChecker
from helmfile_operator.settings import Settings

CONTROLLER = "controller"


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    operator_settings: Settings = memo["settings"]
    settings.posting.enabled = False  # Events are posted by the controller, through the API
    settings.watching.server_timeout = 300
    # A half-open connection must not hang a watch forever: bound the client side too.
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    settings.networking.request_timeout = 60
    # Sharding: the API server filters the watches (kopf sends the selector on list and watch),
    # so an operator never receives another shard's objects. An object relabelled out of the
    # shard arrives as DELETED.
    for plural in ("helmfilestates", "helmfilereleases"):
        settings.watching.label_selectors[GROUP, plural] = shard_selector(operator_settings.shard)
    # The Kubernetes client is synchronous; it runs in threads, enough for every worker.
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        concurrent.futures.ThreadPoolExecutor(
            max_workers=operator_settings.max_concurrent_reconciles + 8,
            thread_name_prefix="kube",
        )
    )
    operator_metrics = metrics.Metrics()
    run_dir = run_work_dir(operator_settings.work_dir)
    helm = HelmClient(
        operator_settings.helm_binary,
        max_concurrency=operator_settings.max_concurrent_helm,
        max_concurrency_per_tenant=operator_settings.max_concurrent_helm_per_namespace,
        max_timeout_seconds=operator_settings.max_helm_timeout_seconds,
        on_command=operator_metrics.observe_helm,
        work_dir=run_dir,
        tenant_home_dir=ensure_private_dir(operator_settings.work_dir / "helm-homes"),
    )
    # Fail at start, loudly, when helm is missing or broken — not at the first release.
    helm_version = await helm.version()
    operator_metrics.set_build_info(helm_version.raw, operator_settings.shard)
    kube = Kube.from_environment()
    controller = Controller(
        operator_settings,
        kube,
        helm,
        drift=DriftChecker(kube.api_client.configuration, cache_dir=run_dir),
        metrics=operator_metrics,
        clusters=ClusterPool(
            run_dir / "clusters",
            allow_exec=operator_settings.allow_kubeconfig_exec,
            metrics=operator_metrics,
        ),
    )
    controller.start()
    memo[CONTROLLER] = controller
    memo["metrics_server"] = await metrics.start_server(
        operator_settings.metrics_port,
        operator_metrics,
        ready=lambda: controller.healthy,
        role=lambda: controller.role,
    )


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    controller: Controller | None = memo.get(CONTROLLER)
    if controller is not None:
        await controller.stop()
    server = memo.get("metrics_server")
    if server is not None:
        await server.cleanup()


@kopf.on.probe(id="workers")
def workers_alive(memo: kopf.Memo, **_: Any) -> int:
    """Liveness (/healthz): fails once the reconcile workers died, so the pod is restarted."""
    controller: Controller | None = memo.get(CONTROLLER)
    if controller is not None and not controller.healthy:
        logging.getLogger("helmfile_operator").error("reconcile workers are not running")
        raise kopf.PermanentError("reconcile workers are not running")
    return controller.queue.workers if controller is not None else 0


@kopf.on.event(GROUP, VERSION, "helmfilestates")
async def state_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller: Controller | None = memo.get(CONTROLLER)
    if controller is not None:
        controller.on_state_event(event["type"], body)


@kopf.on.event(GROUP, VERSION, "helmfilereleases")
async def release_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    controller: Controller | None = memo.get(CONTROLLER)
    if controller is not None:
        controller.on_release_event(event["type"], event["object"])  # the raw dict
