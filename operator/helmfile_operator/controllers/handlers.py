"""Thin kopf handlers. Watch events update the release index and feed the work queue; workers
run the reconcilers (reconcile/state.py, reconcile/release.py).

Why a work queue instead of kopf's change handlers: the state machine must run as "determine the
state, act once, re-evaluate", wake a release the moment one of its `needs` turns Ready, retry with
its own backoff, and never run two passes of one object at once — a keyed queue fed by
`kopf.on.event` expresses exactly that (see docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from typing import Any

import kopf

from helmfile_operator import metrics
from helmfile_operator.api.models import GROUP, VERSION
from helmfile_operator.helm.client import HelmClient
from helmfile_operator.kube import Kube
from helmfile_operator.reconcile.conditions import body_is_ready
from helmfile_operator.reconcile.context import (
    RECONCILE_REQUEST,
    STATE_LABEL,
    IndexedRelease,
    ObjectKey,
    Reconciler,
)
from helmfile_operator.reconcile.drift import DriftChecker
from helmfile_operator.reconcile.release import reconcile_release
from helmfile_operator.reconcile.state import reconcile_state
from helmfile_operator.reconcile.workqueue import WorkQueue
from helmfile_operator.settings import Settings

logger = logging.getLogger("helmfile_operator")

# What makes an object worth a pass: spec (generation), deletion, finalizers, a reconcile request.
# Status-only updates (our own writes) are not.
_signatures: dict[ObjectKey, tuple[Any, ...]] = {}
# What the owning state's summary shows of a release; only a change of it requeues the state.
_summaries: dict[ObjectKey, tuple[Any, ...]] = {}
_failures: dict[ObjectKey, int] = {}


def _signature(body: kopf.Body) -> tuple[Any, ...]:
    metadata = body.get("metadata", {})
    return (
        metadata.get("generation"),
        metadata.get("deletionTimestamp"),
        tuple(metadata.get("finalizers") or ()),
        (metadata.get("annotations") or {}).get(RECONCILE_REQUEST),
    )


def _summary(body: kopf.Body) -> tuple[Any, ...]:
    status = body.get("status") or {}
    conditions = tuple(
        (c.get("type"), c.get("status"), c.get("message")) for c in status.get("conditions") or []
    )
    return (
        body_is_ready(body),
        status.get("revision"),
        status.get("chartVersion"),
        conditions,
        (body.get("metadata") or {}).get("deletionTimestamp"),
    )


def _key(kind: str, body: kopf.Body) -> ObjectKey:
    metadata = body["metadata"]
    return ObjectKey(kind, metadata["namespace"], metadata["name"])  # type: ignore[arg-type]


@kopf.on.startup()
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    operator_settings: Settings = memo["settings"]
    settings.posting.level = logging.WARNING  # our own Events are explicit (kopf.event)
    settings.watching.server_timeout = 300
    # The Kubernetes client is synchronous; it runs in threads, enough for every worker.
    loop = asyncio.get_running_loop()
    loop.set_default_executor(
        concurrent.futures.ThreadPoolExecutor(
            max_workers=operator_settings.max_concurrent_reconciles + 8,
            thread_name_prefix="kube",
        )
    )
    queue: WorkQueue[ObjectKey] = WorkQueue()
    helm = HelmClient(
        operator_settings.helm_binary,
        max_concurrency=operator_settings.max_concurrent_helm,
        on_command=metrics.observe_helm,
    )
    # Fail at start, loudly, when helm is missing or broken — not at the first release.
    helm_version = await helm.version()
    metrics.set_build_info(helm_version.raw)
    kube = Kube.from_environment()
    reconciler = Reconciler(
        kube=kube,
        helm=helm,
        settings=operator_settings,
        queue=queue,
        drift=DriftChecker(kube.api_client.configuration),
    )
    metrics.QUEUE_DEPTH.set_function(lambda: len(queue))
    metrics.RECONCILES_IN_FLIGHT.set_function(lambda: queue.in_flight)
    metrics.HELM_IN_FLIGHT.set_function(lambda: helm.in_flight)
    metrics.DRIFTED_RELEASES.set_function(
        lambda: sum(entry.drifted for entry in reconciler.index.releases.values())
    )
    memo["metrics_server"] = await metrics.start_server(
        operator_settings.metrics_port, ready=lambda: memo.get("reconciler") is not None
    )
    memo["reconciler"] = reconciler


def _ensure_workers(memo: kopf.Memo, reconciler: Reconciler) -> None:
    """Start the workers from inside a watch handler: tasks inherit the handler's context, which
    is where kopf keeps its Event poster — so `kopf.event()` works from the workers."""
    if memo.get("workers") is None:
        memo["workers"] = asyncio.create_task(
            reconciler.queue.run_workers(
                reconciler.settings.max_concurrent_reconciles, _processor(reconciler)
            ),
            name="workers",
        )


@kopf.on.cleanup()
async def stop(memo: kopf.Memo, **_: Any) -> None:
    workers: asyncio.Task[None] | None = memo.get("workers")
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is not None:
        reconciler.queue.shutdown()
    if workers is not None:
        workers.cancel()
        await asyncio.gather(workers, return_exceptions=True)
    server = memo.get("metrics_server")
    if server is not None:
        await server.cleanup()


def _processor(reconciler: Reconciler) -> Any:
    async def process(key: ObjectKey) -> None:
        started = time.monotonic()
        try:
            if key.kind == "HelmfileState":
                await reconcile_state(reconciler, key)
            else:
                await reconcile_release(reconciler, key)
        except asyncio.CancelledError:
            raise
        except Exception:
            metrics.observe_reconcile(key.kind, "error", time.monotonic() - started)
            # One bad object must never stop the others: log, back off, try again.
            failures = _failures[key] = _failures.get(key, 0) + 1
            delay = reconciler.backoff(failures)
            logger.exception(
                "%s: reconcile failed (attempt %d), retrying in %.0fs", key, failures, delay
            )
            reconciler.queue.add_after(key, delay)
        else:
            metrics.observe_reconcile(key.kind, "success", time.monotonic() - started)
            _failures.pop(key, None)

    return process


@kopf.on.event(GROUP, VERSION, "helmfilestates")
async def state_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is None:
        return
    _ensure_workers(memo, reconciler)
    key = _key("HelmfileState", body)
    if event["type"] == "DELETED":
        _signatures.pop(key, None)
        reconciler.queue.forget(key)
        metrics.forget_state(key.namespace, key.name)
        return
    metrics.record_state(
        key.namespace, key.name, (body.get("status") or {}).get("conditions") or []
    )
    signature = _signature(body)
    if _signatures.get(key) != signature:
        _signatures[key] = signature
        reconciler.queue.add(key)


@kopf.on.event(GROUP, VERSION, "helmfilereleases")
async def release_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    reconciler: Reconciler | None = memo.get("reconciler")
    if reconciler is None:
        return
    _ensure_workers(memo, reconciler)
    key = _key("HelmfileRelease", body)
    index = reconciler.index
    state = (body["metadata"].get("labels") or {}).get(STATE_LABEL)
    previous = index.get(key.namespace, key.name)
    if event["type"] == "DELETED":
        index.releases.pop((key.namespace, key.name), None)
        _signatures.pop(key, None)
        _summaries.pop(key, None)
        metrics.forget_release(key.namespace, key.name)
        reconciler.queue.forget(key)
        # Releases it needed may be waiting for it to go (reverse-order uninstall).
        for need in previous.needs if previous else ():
            reconciler.queue.add(ObjectKey("HelmfileRelease", key.namespace, need))
    else:
        conditions = (body.get("status") or {}).get("conditions") or []
        entry = IndexedRelease(
            ready=body_is_ready(body),
            needs=tuple((body.get("spec") or {}).get("needs") or ()),
            state=state,
            drifted=any(
                c.get("type") == "Drifted" and c.get("status") == "True" for c in conditions
            ),
        )
        index.releases[(key.namespace, key.name)] = entry
        metrics.record_release(key.namespace, key.name, conditions)
        signature = _signature(body)
        if _signatures.get(key) != signature:
            _signatures[key] = signature
            reconciler.queue.add(key)
        if previous is None or previous.ready != entry.ready:
            # Wake what waits on this release now, not at its next resync.
            for dependent in index.dependents(key.namespace, key.name):
                reconciler.queue.add(ObjectKey("HelmfileRelease", key.namespace, dependent))
    if state:
        summary = _summary(body) if event["type"] != "DELETED" else None
        if summary is None or _summaries.get(key) != summary:
            if summary is not None:
                _summaries[key] = summary
            reconciler.queue.add(ObjectKey("HelmfileState", key.namespace, state))
