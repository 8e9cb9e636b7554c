"""The HelmfileRelease state machine (DESIGN §3): determine the state, take one action, re-evaluate.

deleting          → uninstall (after its dependents are gone), drop the finalizer
suspended         → nothing
needs not ready   → wait; woken by the watch when a need becomes Ready (no polling)
uninstall wanted  → uninstall (installed: false)
values unreadable → Ready=False naming the `valuesFrom` entry; retry with backoff
locked            → recover (pending-install → uninstall; pending-upgrade → rollback)
absent            → install
out of sync       → upgrade
failed            → wait for the backoff, retry; Stalled after `retries`
in sync           → nothing (no helm process), resync after `interval`
"""

from __future__ import annotations

import logging
from enum import StrEnum
from typing import Any

from pydantic import ValidationError

from helmfile_operator import metrics
from helmfile_operator.api.models import (
    DriftMode,
    HelmfileReleaseSpec,
    HelmfileReleaseStatus,
    describe_validation_error,
)
from helmfile_operator.helm.errors import HelmError
from helmfile_operator.helm.storage import latest_status_from_labels
from helmfile_operator.kube import RELEASES
from helmfile_operator.reconcile import conditions
from helmfile_operator.reconcile.actions.detect_drift import detect_drift, drift_mode
from helmfile_operator.reconcile.actions.install import install
from helmfile_operator.reconcile.actions.recover import recover
from helmfile_operator.reconcile.actions.uninstall import uninstall
from helmfile_operator.reconcile.actions.upgrade import upgrade
from helmfile_operator.reconcile.context import (
    FINALIZER,
    KEEP_RELEASE,
    RECONCILE_REQUEST,
    ObjectKey,
    Reconciler,
)
from helmfile_operator.reconcile.release_context import (
    LOCKED_STATUSES,
    ReleaseContext,
    StorageHead,
    seconds_since,
)
from helmfile_operator.reconcile.values import ValuesSourceError, final_values
from helmfile_operator.render.values import values_digest

logger = logging.getLogger("helmfile_operator.release")


class State(StrEnum):
    DELETING = "deleting"
    SUSPENDED = "suspended"
    NEEDS_NOT_READY = "needs not ready"
    UNINSTALL = "uninstall wanted"
    UNINSTALLED = "uninstalled"
    VALUES_UNREADABLE = "values unreadable"
    LOCKED = "locked"
    ABSENT = "absent"
    OUT_OF_SYNC = "out of sync"
    FAILED_WAITING = "failed, backing off"
    FAILED_STALLED = "failed, retries exhausted"
    IN_SYNC = "in sync"


async def reconcile_release(reconciler: Reconciler, key: ObjectKey) -> None:
    body = await reconciler.kube.get(RELEASES, key.namespace, key.name)
    if body is None:
        reconciler.queue.forget(key)
        return
    status = HelmfileReleaseStatus.model_validate(body.get("status") or {})
    try:
        spec = HelmfileReleaseSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        await _write_invalid_spec(reconciler, key, body, status, error)
        return
    ctx = ReleaseContext(reconciler, key, body, spec, status)
    before = status.to_wire()

    await _pass(ctx)

    ctx.status.observed_generation = ctx.generation
    after = ctx.status.to_wire()
    if after != before and not _is_gone(ctx):
        # A merge patch keeps the keys it leaves out: null those this pass cleared.
        cleared: dict[str, Any] = {k: None for k in before if k not in after}
        await reconciler.kube.patch_status(RELEASES, key.namespace, key.name, {**cleared, **after})
    if ctx.requeue_after is not None:
        reconciler.queue.add_after(key, ctx.requeue_after)


async def _pass(ctx: ReleaseContext) -> None:
    """One pass: determine the state, act once; the requeue re-evaluates."""
    state = await determine_state(ctx)
    logger.debug("%s: %s", ctx.key, state)
    if state is State.DELETING:
        await _delete(ctx)
    elif state is State.SUSPENDED:
        return
    elif state is State.NEEDS_NOT_READY:
        return  # the watch wakes us when a need turns Ready
    elif state is State.UNINSTALL:
        await _uninstall(ctx, "installed: false")
    elif state is State.UNINSTALLED:
        ctx.status.conditions = conditions.mark_ready(
            ctx.status.conditions, "Uninstalled", "not installed (installed: false)", ctx.generation
        )
    elif state is State.VALUES_UNREADABLE:
        return
    elif state is State.LOCKED:
        await _guard(ctx, recover(ctx), "RecoverFailed")
    elif state is State.ABSENT:
        await install(ctx)
    elif state is State.OUT_OF_SYNC:
        await upgrade(ctx)
    if state in (State.ABSENT, State.OUT_OF_SYNC) and ctx.status.failures == 0:
        if drift_mode(ctx) is not DriftMode.DISABLED:
            ctx.requeue(0)  # check drift right after the action, in the next (in-sync) pass
    elif state in (State.FAILED_WAITING, State.FAILED_STALLED):
        return
    elif state is State.IN_SYNC:
        _in_sync(ctx)
        await detect_drift(ctx)
    if state is not State.DELETING and not ctx.spec.suspend:
        ctx.requeue(_interval_seconds(ctx))


async def determine_state(ctx: ReleaseContext) -> State:
    """Reads what it must (index, Helm storage labels, values sources); runs no helm process."""
    metadata = ctx.body["metadata"]
    if metadata.get("deletionTimestamp"):
        return State.DELETING
    await _ensure_finalizer(ctx)
    _handle_reconcile_request(ctx)
    if ctx.spec.suspend:
        return State.SUSPENDED
    waiting = _unready_needs(ctx)
    if waiting:
        ctx.status.conditions = conditions.mark_reconciling(
            ctx.status.conditions,
            "NeedsNotReady",
            f"waiting for {', '.join(waiting)} to be Ready",
            ctx.generation,
        )
        return State.NEEDS_NOT_READY

    secrets = await ctx.reconciler.kube.helm_storage(
        ctx.spec.target_namespace, ctx.spec.release_name
    )
    head = latest_status_from_labels(secrets)
    ctx.storage = StorageHead(revision=head[0], status=head[1]) if head else None

    if not ctx.spec.installed:
        return State.UNINSTALL if ctx.storage else State.UNINSTALLED
    if ctx.storage and ctx.storage.status in LOCKED_STATUSES:
        return State.LOCKED

    try:
        resolved = await final_values(ctx.reconciler.kube, ctx.key.namespace, ctx.spec)
        ctx.values, ctx.secret_strings = resolved.values, resolved.secret_strings
    except (ValuesSourceError, ValueError) as error:
        ctx.status.failures = 0
        ctx.status.conditions = conditions.mark_not_ready(
            ctx.status.conditions, "ValuesUnavailable", str(error), ctx.generation
        )
        ctx.requeue(ctx.reconciler.settings.retry_max_seconds / 5)
        return State.VALUES_UNREADABLE
    ctx.digest = values_digest(ctx.spec.chart, ctx.values)

    status = ctx.status
    in_sync = (
        ctx.storage is not None
        and ctx.storage.status == "deployed"
        and status.last_applied_digest == ctx.digest
        and status.revision == ctx.storage.revision
    )
    if in_sync:
        return State.IN_SYNC
    last = status.last_attempted
    if last is not None and last.result == "failed" and last.digest == ctx.digest:
        retries = ctx.options.retries if ctx.options.retries is not None else 3
        if status.failures > retries or conditions.find(status.conditions, conditions.STALLED):
            return State.FAILED_STALLED
        remaining = ctx.reconciler.backoff(status.failures) - seconds_since(last.time)
        if remaining > 0:
            ctx.requeue(remaining)
            return State.FAILED_WAITING
        metrics.REMEDIATIONS.labels("retry").inc()
    elif last is not None and last.digest != ctx.digest:
        status.failures = 0  # a new spec starts with a clean slate
    return State.ABSENT if ctx.storage is None else State.OUT_OF_SYNC


def _unready_needs(ctx: ReleaseContext) -> list[str]:
    waiting = []
    for need in ctx.spec.needs:
        entry = ctx.reconciler.index.get(ctx.key.namespace, need)
        if entry is None or not entry.ready:
            waiting.append(need)
    return waiting


def _handle_reconcile_request(ctx: ReleaseContext) -> None:
    """`helmfile.dev/reconcile-requested-at` changed: reconcile now and retry a Stalled release."""
    requested = (ctx.body["metadata"].get("annotations") or {}).get(RECONCILE_REQUEST)
    if requested and requested != ctx.status.last_handled_reconcile_at:
        ctx.status.last_handled_reconcile_at = requested
        ctx.status.failures = 0
        ctx.status.last_attempted = None
        ctx.status.conditions = conditions.remove(ctx.status.conditions, conditions.STALLED)


def _in_sync(ctx: ReleaseContext) -> None:
    status = ctx.status
    ready = conditions.find(status.conditions, conditions.READY)
    if ready is None or ready.status != "True" or ready.observed_generation != ctx.generation:
        message = (
            f"revision {status.revision} of {status.chart_name} {status.chart_version} is deployed"
        )
        status.conditions = conditions.mark_ready(
            status.conditions, "InSync", message, ctx.generation
        )


async def _uninstall(ctx: ReleaseContext, why: str) -> bool:
    try:
        await uninstall(ctx, why)
    except HelmError as error:
        ctx.status.failures += 1
        ctx.status.conditions = conditions.mark_not_ready(
            ctx.status.conditions,
            "UninstallFailed",
            f"uninstall failed ({error.kind}): {error.message}",
            ctx.generation,
        )
        ctx.event("Warning", "UninstallFailed", error.message)
        ctx.requeue(ctx.reconciler.backoff(ctx.status.failures))
        return False
    ctx.status.conditions = conditions.mark_ready(
        ctx.status.conditions, "Uninstalled", f"not installed ({why})", ctx.generation
    )
    return True


async def _delete(ctx: ReleaseContext) -> None:
    """Uninstall in reverse `needs` order: wait until nothing that needs this release is left."""
    metadata = ctx.body["metadata"]
    if FINALIZER not in (metadata.get("finalizers") or []):
        return
    dependents = ctx.reconciler.index.dependents(ctx.key.namespace, ctx.key.name)
    if dependents:
        ctx.status.conditions = conditions.mark_reconciling(
            ctx.status.conditions,
            "WaitingForDependents",
            f"uninstalls after {', '.join(sorted(dependents))} (they need this release)",
            ctx.generation,
        )
        return  # the watch wakes us when a dependent disappears
    keep = (metadata.get("annotations") or {}).get(KEEP_RELEASE) == "true"
    if not keep and not await _uninstall(ctx, "deleted"):
        return
    finalizers = [f for f in metadata.get("finalizers") or [] if f != FINALIZER]
    await ctx.reconciler.kube.patch_metadata(
        RELEASES, ctx.key.namespace, ctx.key.name, {"finalizers": finalizers or None}
    )
    ctx.body["metadata"]["finalizers"] = finalizers
    ctx.reconciler.queue.forget(ctx.key)


def _is_gone(ctx: ReleaseContext) -> bool:
    """After the finalizer is dropped the object vanishes: no status to write."""
    metadata = ctx.body["metadata"]
    return bool(metadata.get("deletionTimestamp")) and FINALIZER not in (
        metadata.get("finalizers") or []
    )


async def _ensure_finalizer(ctx: ReleaseContext) -> None:
    finalizers = list(ctx.body["metadata"].get("finalizers") or [])
    if FINALIZER not in finalizers:
        finalizers.append(FINALIZER)
        await ctx.reconciler.kube.patch_metadata(
            RELEASES, ctx.key.namespace, ctx.key.name, {"finalizers": finalizers}
        )
        ctx.body["metadata"]["finalizers"] = finalizers


async def _guard(ctx: ReleaseContext, action: Any, reason: str) -> None:
    try:
        await action
    except HelmError as error:
        ctx.status.failures += 1
        ctx.status.conditions = conditions.mark_not_ready(
            ctx.status.conditions, reason, f"{error.kind}: {error.message}", ctx.generation
        )
        ctx.event("Warning", reason, error.message)
        ctx.requeue(ctx.reconciler.backoff(ctx.status.failures))


def _interval_seconds(ctx: ReleaseContext) -> float:
    from helmfile_operator.api.models import duration_seconds

    return max(duration_seconds(ctx.spec.interval), 1.0)


async def _write_invalid_spec(
    reconciler: Reconciler,
    key: ObjectKey,
    body: dict[str, Any],
    status: HelmfileReleaseStatus,
    error: ValidationError,
) -> None:
    problems = describe_validation_error(error)
    generation = body["metadata"].get("generation")
    status.conditions = conditions.mark_stalled(
        status.conditions, "InvalidSpec", problems, generation
    )
    status.observed_generation = generation
    await reconciler.kube.patch_status(RELEASES, key.namespace, key.name, status.to_wire())
