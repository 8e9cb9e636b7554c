"""The HelmfileRelease state machine: bookkeeping, observe (reads only), decide (pure, see
reconcile/decide.py), one action, write the status once; the requeue re-evaluates.
docs/architecture.md shows the table."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

from pydantic import ValidationError

from helmfile_operator.api.models import (
    DriftMode,
    HelmfileReleaseSpec,
    HelmfileReleaseStatus,
    ReleasePlan,
    RolloutHold,
    describe_validation_error,
)
from helmfile_operator.clusters import KubeconfigError
from helmfile_operator.helm import HelmError
from helmfile_operator.kube import RELEASES, AccessDenied, ApiUnreachable, FinalizerConflict
from helmfile_operator.logs import object_fields
from helmfile_operator.reconcile import conditions
from helmfile_operator.reconcile.actions.apply import record_success
from helmfile_operator.reconcile.actions.detect_drift import detect_drift, drift_mode
from helmfile_operator.reconcile.actions.install import install
from helmfile_operator.reconcile.actions.plan import ensure_plan
from helmfile_operator.reconcile.actions.recover import recover
from helmfile_operator.reconcile.actions.uninstall import uninstall
from helmfile_operator.reconcile.actions.upgrade import upgrade
from helmfile_operator.reconcile.context import (
    APPROVE,
    FINALIZER,
    KEEP_RELEASE,
    RECONCILE_REQUEST,
    SHARD_LABEL,
    STATE_LABEL,
    ObjectKey,
    Reconciler,
)
from helmfile_operator.reconcile.decide import Action, Attempt, Decision, Lock, Observation, decide
from helmfile_operator.reconcile.failures import (
    CLUSTER_UNREACHABLE,
    failure_reason,
    record_failure,
    retry_later,
    stall,
)
from helmfile_operator.reconcile.plan import PlanAction, install_plan, plan_id
from helmfile_operator.reconcile.plan import summary as plan_summary
from helmfile_operator.reconcile.release_context import ReleaseContext, seconds_since
from helmfile_operator.reconcile.rollout import HOLD as ROLLOUT_HOLD
from helmfile_operator.reconcile.rollout import ROLLBACK_TO
from helmfile_operator.reconcile.values import ValuesSourceError, final_values, source_access
from helmfile_operator.render.values import values_digest
from helmfile_operator.sources import ChartSourceError, is_exact
from helmfile_operator.sources.fetch import Access

logger = logging.getLogger("helmfile_operator.release")

# The Ready reason while the chart's repository cannot say which version a range stands for.
CHART_UNAVAILABLE = "ChartUnavailable"
AWAITING_APPROVAL = "AwaitingApproval"
FORBIDDEN = "Forbidden"  # Helm's storage unreadable as the release's identity
ROLLOUT_ROLLED_BACK = "RolloutRolledBack"


async def reconcile_release(reconciler: Reconciler, key: ObjectKey) -> None:
    # The watched body (no request); the API server's when the watch has not delivered it.
    body = reconciler.bodies.get(key.namespace, key.name) or await reconciler.kube.get(
        RELEASES, key.namespace, key.name
    )
    if body is None or not reconciler.in_shard(body):  # gone, or another shard's now
        reconciler.queue.remove(key)
        return
    status = HelmfileReleaseStatus.model_validate(body.get("status") or {})
    try:
        spec = HelmfileReleaseSpec.model_validate(body.get("spec") or {})
    except ValidationError as error:
        ctx = ReleaseContext(reconciler, key, body, HelmfileReleaseSpec.model_construct(), status)
        ctx.stalled("InvalidSpec", describe_validation_error(error))
        await ctx.flush()
        return
    ctx = ReleaseContext(reconciler, key, body, spec, status)

    forwarded_by = None
    if not body["metadata"].get("deletionTimestamp"):
        await _ensure_finalizer(ctx)
        forwarded_by = _handle_reconcile_request(ctx)
    observation = await observe(ctx)
    decision = decide(observation)
    logger.debug(
        "%s: %s",
        key,
        decision.action,
        extra=object_fields(key.kind, key.namespace, key.name, action=decision.action),
    )
    await ACTIONS[decision.action](ctx, decision)
    if decision.after is not None:
        ctx.requeue(decision.after)
    if decision.action not in _NO_RESYNC and not ctx.spec.suspend:
        ctx.requeue(ctx.interval_seconds)

    if not _is_gone(ctx):
        await ctx.flush()
    if ctx.requeue_after is not None:
        reconciler.queue.add_after(key, ctx.requeue_after)
    if forwarded_by is not None and reconciler.requests.handled(
        key.namespace, forwarded_by, key.name
    ):
        reconciler.queue.add(ObjectKey("HelmfileState", key.namespace, forwarded_by))


# --- observe: reads only ------------------------------------------------------------------------


async def observe(ctx: ReleaseContext) -> Observation:
    """What the decision needs. Reads are skipped where they cannot change it (a release waiting
    for its needs reads neither Helm storage nor values)."""
    metadata = ctx.body["metadata"]
    index = ctx.reconciler.index
    owner = index.owner(ctx.key.namespace, ctx.key.name)
    owner_name = f"{owner[0]}/{owner[1]}" if owner is not None else None
    if metadata.get("deletionTimestamp"):
        deletion = Observation(
            deleting=True,
            finalizer=FINALIZER in (metadata.get("finalizers") or []),
            dependents=tuple(await _live_dependents(ctx)),
            keep_release=(metadata.get("annotations") or {}).get(KEEP_RELEASE) == "true",
            owner=owner_name,
        )
        uninstalls = deletion.finalizer and not (
            deletion.owner or deletion.dependents or deletion.keep_release
        )
        if uninstalls and not await _connect(ctx):  # the uninstall needs the cluster
            deletion = dataclasses.replace(deletion, cluster_error=True)
        return deletion
    spec = ctx.spec
    hold = _rollout_hold(ctx)
    unready = _unready_needs(ctx)
    ctx.other_shard_needs = await _other_shard_needs(ctx, unready)
    base = Observation(
        suspended=spec.suspend,
        held=hold is not None,
        rollback_to=_rollback_wanted(ctx, hold),
        self_needed=ctx.key.name in spec.needs,
        owner=owner_name,
        unready_needs=tuple(unready),
        other_shard_needs=tuple(ctx.other_shard_needs),
        approval_manual=ctx.approval_manual,
        install_wanted=spec.installed,
        interval_seconds=ctx.interval_seconds,
        helm_timeout_seconds=ctx.timeout_seconds,
    )
    if base.held and base.rollback_to is not None and not base.suspended:
        # The rollback runs in the release's cluster.
        return base if await _connect(ctx) else dataclasses.replace(base, cluster_error=True)
    if base.suspended or base.held or base.self_needed or base.owner or base.other_shard_needs:
        return base
    if base.unready_needs and not base.approval_manual:
        return base

    if not await _connect(ctx):
        return dataclasses.replace(base, cluster_error=True)
    try:
        ctx.storage = await ctx.read_storage()
    except AccessDenied as error:
        ctx.access_error = str(error)
        return dataclasses.replace(base, access_error=ctx.access_error)
    except ApiUnreachable as error:
        if ctx.cluster is None:
            raise  # the operator's own API server: the pass fails and is retried
        ctx.cluster_unreachable = str(error)
        return dataclasses.replace(base, cluster_unreachable=True)
    _cluster_answered(ctx)
    storage = ctx.storage
    lock = None
    if storage is not None and storage.locked:
        progress = ctx.status.in_progress
        lock = Lock(
            status=storage.status,
            revision=storage.revision,
            age_seconds=seconds_since(storage.head.created),
            # Ours when we recorded starting an action from the revision below it: no worker
            # runs it now (one pass per object at a time), so the helm that held it is gone.
            ours=progress is not None and (progress.revision_before or 0) < storage.revision,
        )
    if spec.installed and lock is None:
        await _resolve_values(ctx)
        if ctx.values_error is None:
            await _resolve_chart(ctx)
    _plan_wanted_change(ctx)
    status = ctx.status
    last = status.last_attempted
    return dataclasses.replace(
        base,
        approved=ctx.plan_id is not None and ctx.approval == ctx.plan_id,
        in_storage=storage is not None,
        head_deployed=storage is not None and storage.status == "deployed",
        head_revision=storage.revision if storage is not None else None,
        lock=lock,
        values_error=ctx.values_error,
        chart_error=ctx.chart_error is not None,
        digest=ctx.digest,
        applied_digest=status.last_applied_digest,
        applied_revision=status.revision,
        last_attempt=Attempt(
            failed=last.result == "failed",
            digest=last.digest,
            seconds_ago=seconds_since(last.time),
        )
        if last is not None
        else None,
        stalled=ctx.has_condition(conditions.STALLED),
        backoff_seconds=ctx.reconciler.backoff(status.failures, cap=ctx.interval_seconds)
        if status.failures
        else 0.0,
    )


async def _connect(ctx: ReleaseContext) -> bool:
    """Connect to the release's cluster (spec.kubeConfig); False, with the error in the context,
    when its kubeconfig cannot be used."""
    try:
        await ctx.connect()
    except KubeconfigError as error:
        ctx.cluster_error = error
        return False
    return True


def _cluster_answered(ctx: ReleaseContext) -> None:
    """The remote cluster answered: failures counted while it did not start over."""
    ctx.mark_cluster(True)
    ready = conditions.find(ctx.status.conditions, conditions.READY)
    if ready is not None and ready.reason in (CLUSTER_UNREACHABLE, FORBIDDEN):
        ctx.status.failures = 0


async def _resolve_values(ctx: ReleaseContext) -> None:
    """Final values and their digest (with the spec's chart) into the context, or the error
    that names the field."""
    try:
        resolved = await final_values(ctx.tenant_kube, ctx.key.namespace, ctx.spec)
        ctx.values, ctx.secret_strings = resolved.values, resolved.secret_strings
        ctx.secret_paths = resolved.secret_paths
        ctx.digest = values_digest(ctx.spec.chart, ctx.values)
    except (ValuesSourceError, ValueError) as error:  # ValueError: the values loader's bounds
        ctx.values, ctx.digest = None, None
        ctx.values_error = str(error)


async def _resolve_chart(ctx: ReleaseContext) -> None:
    """The chart with its version range (or "latest") resolved against what the repository
    publishes now, and the digest of that chart and the values: a newly published version that
    fits the range changes the digest, which upgrades the release like any other change. An
    exact version keeps the digest `_resolve_values` computed."""
    assert ctx.values is not None
    chart, status = ctx.spec.chart, ctx.status
    if is_exact(chart.version):
        ctx.chart = chart
        status.chart_version_range = status.resolved_chart_version = None
    else:
        wanted = chart.version or ""
        try:
            version = await ctx.reconciler.versions.resolve(
                chart,
                tenant=ctx.key.namespace,
                max_age_seconds=ctx.interval_seconds,
                refresh=ctx.refresh_sources,
                access=lambda: _source_access(ctx),
            )
        except ChartSourceError as error:
            if not _keep_last_resolution(ctx, error):
                ctx.chart_error = error
                return
            version = status.resolved_chart_version or ""
        ctx.chart = chart.model_copy(update={"version": version})
        status.chart_version_range, status.resolved_chart_version = wanted, version
        ctx.digest = values_digest(ctx.chart, ctx.values)
    ready = conditions.find(status.conditions, conditions.READY)
    if ready is not None and ready.reason == CHART_UNAVAILABLE:
        # The source answers again: its failures do not count against the next helm run.
        status.failures = 0
        ctx.remove_condition(conditions.STALLED)


def _keep_last_resolution(ctx: ReleaseContext, error: ChartSourceError) -> bool:
    """An unreachable repository does not make a deployed release unready: the range keeps the
    version it resolved to last (the next interval asks again). Any other error, or no earlier
    resolution of this range, is the release's failure."""
    status = ctx.status
    if not error.retryable or status.resolved_chart_version is None:
        return False
    if status.chart_version_range != (ctx.spec.chart.version or ""):
        return False
    ctx.event(
        "Warning",
        "SourceUnavailable",
        f"{error.message}; keeping version {status.resolved_chart_version} until it answers",
    )
    return True


async def _source_access(ctx: ReleaseContext) -> Access:
    """Credentials and CA of the chart's repository, read as the tenant when a fetch needs them."""
    return await source_access(ctx.tenant_kube, ctx.key.namespace, ctx.spec.chart.repository)


def _rollout_hold(ctx: ReleaseContext) -> str | None:
    """The rollout holding this release, from the state's annotation; a lifted hold is
    forgotten."""
    hold = ctx.annotation(ROLLOUT_HOLD)
    status = ctx.status
    recorded = status.rollout_hold
    if recorded is not None and recorded.rollout != hold:
        status.rollout_hold = None if hold is None else RolloutHold(rollout=hold)
        if hold is None:
            # Released into the state's next rollout: a failure under the last one starts over.
            status.failures = 0
            status.last_attempted = None
            ctx.remove_condition(conditions.STALLED)
    return hold


def _rollback_wanted(ctx: ReleaseContext, hold: str | None) -> int | None:
    """The revision the held release is asked to roll back to, unless it did already."""
    value = ctx.annotation(ROLLBACK_TO)
    if hold is None or not value or not value.isdigit():
        return None
    recorded = ctx.status.rollout_hold
    if recorded is not None and recorded.rolled_back_to == int(value):
        return None
    return int(value)


def _plan_wanted_change(ctx: ReleaseContext) -> None:
    """The id of the plan of the change wanted now (install, upgrade or uninstall), and under
    manual approval, the approval it may have received."""
    storage = ctx.storage
    if ctx.spec.installed:
        action: PlanAction = "upgrade" if storage is not None else "install"
        desired = ctx.digest
        if ctx.approval_manual and storage is not None and desired is not None:
            # A plan starts from what is deployed: after a change by hand (helm rollback), or a
            # failed attempt that left another revision, an approval of the old plan is stale.
            desired = f"{desired}@{storage.revision}"
    else:
        action, desired = "uninstall", f"revision {storage.revision}" if storage else None
    ctx.plan_id = plan_id(action, desired, ctx.generation) if desired else None
    ctx.plan_action = action
    plan = ctx.status.plan
    if (
        ctx.approval_manual
        and plan is not None
        and plan.phase == "AwaitingApproval"
        and plan.id == ctx.plan_id
        and ctx.approval == plan.id
    ):
        plan.phase = "Approved"
        plan.refused_approval = None
        ctx.status.last_handled_approval = plan.id
        ctx.event("Normal", "PlanApproved", f"plan {plan.id} approved: {plan_summary(plan)}")


def _unready_needs(ctx: ReleaseContext) -> list[str]:
    waiting = []
    for need in ctx.spec.needs:
        entry = ctx.reconciler.index.get(ctx.key.namespace, need)
        if entry is None or not entry.ready:
            waiting.append(need)
    return waiting


async def _other_shard_needs(ctx: ReleaseContext, unready: list[str]) -> list[str]:
    """Needs missing from the index that exist with another shard's label: this operator's
    watch never shows them, so waiting for them would be forever. Read from the API only for a
    need the index does not know (rare: a typo, or not created yet)."""
    index = ctx.reconciler.index
    ours = ctx.reconciler.settings.shard
    found = []
    for need in unready:
        if index.get(ctx.key.namespace, need) is not None:
            continue
        body = await ctx.reconciler.kube.get(RELEASES, ctx.key.namespace, need)
        if body is None:
            continue
        theirs = (body["metadata"].get("labels") or {}).get(SHARD_LABEL, "")
        if theirs != ours:
            found.append(f"{need} (shard {theirs!r})" if theirs else f"{need} (unsharded)")
    return found


async def _live_dependents(ctx: ReleaseContext) -> list[str]:
    """Dependents per the index, checked against the API: after a watch gap the index may still
    hold objects that are gone, and waiting on them would block the deletion forever."""
    index = ctx.reconciler.index
    dependents = index.dependents(ctx.key.namespace, ctx.key.name)
    if not dependents:
        return []
    live = {
        item["metadata"]["name"]
        for item in await ctx.reconciler.kube.list_objects(RELEASES, ctx.key.namespace)
    }
    for gone in [name for name in dependents if name not in live]:
        index.pop(ctx.key.namespace, gone)
    return sorted(name for name in dependents if name in live)


# --- bookkeeping, before the decision ------------------------------------------------------------


async def _ensure_finalizer(ctx: ReleaseContext) -> None:
    metadata = ctx.body["metadata"]
    finalizers = list(metadata.get("finalizers") or [])
    if FINALIZER in finalizers:
        return
    wanted = [*finalizers, FINALIZER]
    await ctx.reconciler.kube.set_finalizers(
        RELEASES, ctx.key.namespace, ctx.key.name, metadata.get("resourceVersion", ""), wanted
    )
    metadata["finalizers"] = wanted


def _handle_reconcile_request(ctx: ReleaseContext) -> str | None:
    """A reconcile request — `helmfile.dev/reconcile-requested-at` on the release (recorded in
    its status), or on its state (forwarded in memory: returns the state's name): reconcile now,
    ask the chart's repository again, and retry a failed or Stalled release."""
    status = ctx.status
    requested = ctx.annotation(RECONCILE_REQUEST)
    direct = bool(requested and requested != status.last_handled_reconcile_at)
    state = (ctx.body["metadata"].get("labels") or {}).get(STATE_LABEL)
    forwarded = ctx.reconciler.requests.of_release(ctx.key.namespace, state, ctx.key.name)
    if not direct and forwarded is None:
        return None
    if direct:
        status.last_handled_reconcile_at = requested
    ctx.refresh_sources = True
    last = status.last_attempted
    failed = last is not None and last.result != "succeeded"
    if (
        direct
        or status.failures
        or failed
        or conditions.find(status.conditions, conditions.STALLED)
    ):
        status.failures = 0
        status.last_attempted = None
        ctx.remove_condition(conditions.STALLED)
    return state if forwarded is not None else None


# --- the actions: one per decision ----------------------------------------------------------------


async def _nothing(ctx: ReleaseContext, decision: Decision) -> None:
    """Nothing to do now: suspended, backing off or Stalled (the failure's condition stays and
    `decision.after` requeues), or deleting with our finalizer already gone."""


async def _wait_for_dependents(ctx: ReleaseContext, decision: Decision) -> None:
    # observe() checked them against the API and pruned the index: no second list call.
    dependents = sorted(ctx.reconciler.index.dependents(ctx.key.namespace, ctx.key.name))
    ctx.reconciling(
        "WaitingForDependents",
        f"uninstalls after {', '.join(dependents)} (they need this release)",
    )  # the watch wakes us when a dependent disappears


async def _release(ctx: ReleaseContext, decision: Decision) -> None:
    """Drop our finalizer (the object then goes); conflicts re-read and retry."""
    metadata = ctx.body["metadata"]
    finalizers = [f for f in metadata.get("finalizers") or [] if f != FINALIZER]
    try:
        await ctx.reconciler.kube.set_finalizers(
            RELEASES,
            ctx.key.namespace,
            ctx.key.name,
            metadata.get("resourceVersion", ""),
            finalizers,
        )
    except FinalizerConflict:
        ctx.requeue(0)
        return
    metadata["finalizers"] = finalizers
    ctx.reconciler.queue.remove(ctx.key)


async def _uninstall_and_release(ctx: ReleaseContext, decision: Decision) -> None:
    if await _uninstall(ctx, "deleted"):
        await _release(ctx, decision)


async def _reject_self_need(ctx: ReleaseContext, decision: Decision) -> None:
    ctx.stalled(
        "InvalidNeeds",
        f"spec.needs names this release itself ({ctx.key.name!r}), which can never be Ready "
        "first; remove it from spec.needs",
    )


async def _reject_owned(ctx: ReleaseContext, decision: Decision) -> None:
    owner = ctx.reconciler.index.owner(ctx.key.namespace, ctx.key.name)
    holder = f"HelmfileRelease {owner[0]}/{owner[1]}" if owner else "another object"
    ctx.stalled(
        "ReleaseOwnedByAnother",
        f"Helm release {ctx.spec.target_namespace}/{ctx.spec.release_name} is driven by "
        f"{holder}; change spec.releaseName or spec.targetNamespace (or remove the other one)",
    )


async def _reject_other_shard_needs(ctx: ReleaseContext, decision: Decision) -> None:
    # observe() looked them up (an API read each): not read again here.
    others = ctx.other_shard_needs
    ours = repr(ctx.reconciler.settings.shard) if ctx.reconciler.settings.shard else "unsharded"
    ctx.stalled(
        "NeedsInAnotherShard",
        f"spec.needs names {', '.join(others)}, reconciled by another operator "
        f"than this release (shard {ours}): a release can only wait for releases of its own "
        f"shard; give both (or their states) the same {SHARD_LABEL} label",
    )


async def _wait_for_needs(ctx: ReleaseContext, decision: Decision) -> None:
    waiting = _unready_needs(ctx)
    ctx.reconciling("NeedsNotReady", f"waiting for {', '.join(waiting)} to be Ready")


async def _uninstall_wanted(ctx: ReleaseContext, decision: Decision) -> None:
    await _plan_before_acting(ctx)
    await ctx.flush()  # the plan is recorded before helm runs
    _plan_done(ctx, ok=await _uninstall(ctx, "installed: false"))


async def _mark_uninstalled(ctx: ReleaseContext, decision: Decision) -> None:
    ctx.ready("Uninstalled", "not installed (installed: false)")


async def _held(ctx: ReleaseContext, decision: Decision) -> None:
    hold = ctx.annotation(ROLLOUT_HOLD) or ""
    status = ctx.status
    if status.rollout_hold is None:
        status.rollout_hold = RolloutHold(rollout=hold)
    done = status.rollout_hold.rolled_back_to
    back = f"; rolled back to revision {done}" if done is not None else ""
    ctx.waiting(
        ROLLOUT_ROLLED_BACK,
        f"held: rollout {hold} of the state failed{back}; no helm runs until a new generation "
        "of the state starts another rollout",
    )


async def _roll_back_for_rollout(ctx: ReleaseContext, decision: Decision) -> None:
    """The state's rollout failed after this release was upgraded by it: back to the revision
    from before the rollout. The Helm history keeps both."""
    hold = ctx.annotation(ROLLOUT_HOLD) or ""
    target = _rollback_wanted(ctx, hold)
    assert target is not None
    await ctx.starting("RollingBack", f"rollout {hold} failed: rolling back to revision {target}")
    try:
        await ctx.helm_rollback(target, wait=bool(ctx.options.wait))
    except HelmError as error:
        ctx.status.failures += 1
        reason = failure_reason(ctx, "RollbackFailed", error)
        retry_later(ctx, reason, f"rollback to revision {target} failed: {error.message}")
        return
    ctx.reconciler.metrics.remediations.labels("rollout-rollback").inc()
    status = ctx.status
    status.failures = 0
    try:
        storage = await ctx.read_storage()
    except (AccessDenied, ApiUnreachable):
        storage = None  # the rollback is recorded all the same: it must never run twice
    status.revision = storage.revision if storage is not None else status.revision
    entry = next((h for h in reversed(status.history) if h.revision == target), None)
    # The digest of the revision restored: the same spec as before the rollout is in sync.
    status.last_applied_digest = entry.digest if entry is not None else None
    status.values_digest = status.last_applied_digest
    if entry is not None:
        status.chart_version = entry.chart_version
    status.rollout_hold = RolloutHold(rollout=hold, rolled_back_to=target, revision=status.revision)
    message = (
        f"rolled back to revision {target} (now revision {status.revision}): rollout {hold} failed"
    )
    ctx.event("Warning", ROLLOUT_ROLLED_BACK, message)
    await _held(ctx, decision)


async def _report_cluster_error(ctx: ReleaseContext, decision: Decision) -> None:
    error = ctx.cluster_error
    assert error is not None
    deleting = bool(ctx.body["metadata"].get("deletionTimestamp"))
    message = error.message
    if deleting:
        message = (
            f"cannot uninstall from the remote cluster: {message}; or annotate "
            f"{KEEP_RELEASE}=true to leave the Helm release there"
        )
    if error.retryable or deleting:
        ctx.status.failures = 0
        ctx.not_ready(error.reason, message)
        ctx.event("Warning", error.reason, message)
        ctx.requeue(min(ctx.reconciler.settings.retry_max_seconds / 5, ctx.interval_seconds))
    else:
        stall(ctx, error.reason, message, "not retryable")


async def _cluster_unreachable(ctx: ReleaseContext, decision: Decision) -> None:
    ctx.mark_cluster(False)
    ctx.status.failures += 1
    retry_later(ctx, CLUSTER_UNREACHABLE, f"reading Helm's storage: {ctx.cluster_unreachable}")


async def _report_forbidden(ctx: ReleaseContext, decision: Decision) -> None:
    message = f"reading Helm's storage: {ctx.access_error}"
    if ctx.cluster is not None:
        # A remote API server refuses for a while after it starts (its authorizer's caches
        # are not synced yet), and its RBAC cannot be watched from here: retried with backoff.
        ctx.status.failures += 1
        retry_later(ctx, FORBIDDEN, message)
        return
    # Permissions come back by someone's hand: Stalled, re-evaluated every interval.
    stall(ctx, FORBIDDEN, message, "not retryable")


async def _wait_for_lock(ctx: ReleaseContext, decision: Decision) -> None:
    assert ctx.storage is not None
    ctx.reconciling(
        "Locked",
        f"revision {ctx.storage.revision} is {ctx.storage.status}: another helm operation may "
        f"still run; taken over in {decision.after or 0:.0f}s if it does not finish",
    )


async def _recover(ctx: ReleaseContext, decision: Decision) -> None:
    try:
        await recover(ctx)
    except HelmError as error:
        record_failure(ctx, "RecoverFailed", error)


async def _report_values_error(ctx: ReleaseContext, decision: Decision) -> None:
    ctx.status.failures = 0
    ctx.not_ready("ValuesUnavailable", ctx.values_error or "the values could not be resolved")
    ctx.requeue(min(ctx.reconciler.settings.retry_max_seconds / 5, ctx.interval_seconds))


async def _report_chart_error(ctx: ReleaseContext, decision: Decision) -> None:
    assert ctx.chart_error is not None
    record_failure(ctx, CHART_UNAVAILABLE, ctx.chart_error)


async def _await_approval(ctx: ReleaseContext, decision: Decision) -> None:
    """Manual approval: the plan of the wanted change is on the status (computed once per id)
    and nothing runs until `helmfile.dev/approve` names it."""
    assert ctx.plan_action is not None
    try:
        plan = await ensure_plan(ctx, ctx.plan_action)
    except (HelmError, ValuesSourceError) as error:
        stale = ctx.status.plan
        if stale is not None and stale.id != ctx.plan_id:
            ctx.status.plan = None  # the plan of an earlier spec must not be approved now
        if isinstance(error, HelmError):
            record_failure(ctx, "PlanFailed", error)
        else:
            ctx.not_ready("RepositoryAccessUnavailable", str(error))
            ctx.requeue(ctx.reconciler.settings.retry_max_seconds / 5)
        return
    _note_refused_approval(ctx, plan)
    status = ctx.status
    status.failures = 0
    state = (ctx.body["metadata"].get("labels") or {}).get(STATE_LABEL)
    how = (
        f"`kubectl annotate hfr {ctx.key.name} -n {ctx.key.namespace} {APPROVE}={plan.id} "
        "--overwrite`"
    )
    if state:
        how += f" (or approve the plan of HelmfileState {state})"
    refused = (
        f"; approval {plan.refused_approval} was refused: it names an earlier plan"
        if plan.refused_approval
        else ""
    )
    message = f"plan {plan.id}: {plan_summary(plan)}{refused}; approve it with {how}"
    ctx.waiting(AWAITING_APPROVAL, message)
    ctx.event("Normal", AWAITING_APPROVAL, f"plan {plan.id}: {plan_summary(plan)}")


def _note_refused_approval(ctx: ReleaseContext, plan: ReleasePlan) -> None:
    """An approval that names another plan than the current one is stale: the spec, a
    valuesFrom source or the resolved chart version changed since it was given."""
    approval = ctx.approval
    if (
        approval is None
        or approval == plan.id
        or approval == ctx.status.last_handled_approval
        or approval == plan.refused_approval
    ):
        return
    plan.refused_approval = approval
    ctx.event(
        "Warning",
        "ApprovalRefused",
        f"approval {approval} names another plan than the current one ({plan.id}): the spec, a "
        f"valuesFrom source or the chart version changed since; review plan {plan.id} and "
        "approve it",
    )


async def _plan_before_acting(ctx: ReleaseContext) -> None:
    """The plan is recorded before the action, approved or not (auto): `kubectl get hfr -o
    yaml` shows what the last change did. A plan that cannot be computed does not stop an
    automatic change (helm's own run says what is wrong); its message says why."""
    assert ctx.plan_id is not None
    assert ctx.plan_action is not None
    existing = ctx.status.plan
    if (
        ctx.plan_action == "install"
        and not ctx.approval_manual
        and (existing is None or existing.id != ctx.plan_id)
    ):
        ctx.status.plan = install_plan(
            ctx.plan_id, ctx.digest, ctx.chart.version if ctx.chart else None, ctx.values
        )
        return
    try:
        plan = await ensure_plan(ctx, ctx.plan_action)
    except (HelmError, ValuesSourceError) as error:
        why = f"{error.kind}: {error.message}" if isinstance(error, HelmError) else str(error)
        plan = ReleasePlan(
            id=ctx.plan_id,
            action=ctx.plan_action,
            phase="Approved",
            computed_at=conditions.now(),
            digest=ctx.digest,
            message=f"no plan: the dry run failed ({why})",
        )
        ctx.status.plan = plan
    plan.phase = "Approved"


def _plan_done(ctx: ReleaseContext, ok: bool) -> None:
    plan = ctx.status.plan
    if plan is not None and plan.id == ctx.plan_id:
        plan.phase = "Applied" if ok else "Failed"


async def _in_sync(ctx: ReleaseContext, decision: Decision) -> None:
    status = ctx.status
    plan = status.plan
    if plan is not None and plan.phase in ("AwaitingApproval", "Approved"):
        # Back in sync: that plan was applied (its id), or its change is no longer wanted.
        if plan.id == ctx.plan_id:
            plan.phase = "Applied"
        else:
            status.plan = None
    ready = conditions.find(status.conditions, conditions.READY)
    if ready is None or ready.status != "True" or ready.observed_generation != ctx.generation:
        ctx.ready(
            "InSync",
            f"revision {status.revision} of {status.chart_name} {status.chart_version} is deployed",
        )
    await detect_drift(ctx)


async def _install_or_upgrade(ctx: ReleaseContext, decision: Decision) -> None:
    if await _adopt_unrecorded_success(ctx):
        _plan_done(ctx, ok=True)
        return
    _count_attempt(ctx)
    await _plan_before_acting(ctx)
    await (install(ctx) if decision.action is Action.INSTALL else upgrade(ctx))
    last = ctx.status.last_attempted
    _plan_done(
        ctx, ok=last is not None and last.result == "succeeded" and last.digest == ctx.digest
    )
    _check_drift_next(ctx)


ACTIONS: dict[Action, Callable[[ReleaseContext, Decision], Awaitable[None]]] = {
    Action.NOTHING: _nothing,
    Action.WAIT_FOR_DEPENDENTS: _wait_for_dependents,
    Action.RELEASE: _release,
    Action.UNINSTALL_AND_RELEASE: _uninstall_and_release,
    Action.SUSPENDED: _nothing,
    Action.ROLL_BACK_FOR_ROLLOUT: _roll_back_for_rollout,
    Action.HELD: _held,
    Action.REJECT_SELF_NEED: _reject_self_need,
    Action.REJECT_OWNED: _reject_owned,
    Action.REJECT_OTHER_SHARD_NEEDS: _reject_other_shard_needs,
    Action.WAIT_FOR_NEEDS: _wait_for_needs,
    Action.REPORT_CLUSTER_ERROR: _report_cluster_error,
    Action.CLUSTER_UNREACHABLE: _cluster_unreachable,
    Action.REPORT_FORBIDDEN: _report_forbidden,
    Action.UNINSTALL: _uninstall_wanted,
    Action.MARK_UNINSTALLED: _mark_uninstalled,
    Action.WAIT_FOR_LOCK: _wait_for_lock,
    Action.RECOVER: _recover,
    Action.REPORT_VALUES_ERROR: _report_values_error,
    Action.REPORT_CHART_ERROR: _report_chart_error,
    Action.IN_SYNC: _in_sync,
    Action.AWAIT_APPROVAL: _await_approval,
    Action.BACKOFF: _nothing,
    Action.STALLED: _nothing,
    Action.INSTALL: _install_or_upgrade,
    Action.UPGRADE: _install_or_upgrade,
}
# Deletion ends in the object going away; waiting on needs or dependents is woken by the watch.
_NO_RESYNC = frozenset(
    {Action.NOTHING, Action.RELEASE, Action.UNINSTALL_AND_RELEASE, Action.WAIT_FOR_DEPENDENTS}
)


# --- helpers of the actions -------------------------------------------------------------------


async def _adopt_unrecorded_success(ctx: ReleaseContext) -> bool:
    """helm succeeded but its result never reached the status (the operator died, or the status
    write failed): the deployed head revision is ours — record it instead of running helm again."""
    progress = ctx.status.in_progress
    storage = ctx.storage
    if (
        progress is None
        or storage is None
        or storage.status != "deployed"
        or progress.digest != ctx.digest
        or storage.revision <= (progress.revision_before or 0)
    ):
        return False
    stored = await ctx.read_stored_release(storage.revision)
    if stored is None:
        return False
    verb: Literal["install", "upgrade"] = "install" if progress.action == "install" else "upgrade"
    record_success(ctx, verb, stored, None)
    return True


def _count_attempt(ctx: ReleaseContext) -> None:
    """A retry of the same values counts on; new values start with a clean slate."""
    last = ctx.status.last_attempted
    if last is None or last.result != "failed":
        return
    if last.digest == ctx.digest:
        ctx.reconciler.metrics.remediations.labels("retry").inc()
    else:
        ctx.status.failures = 0


def _check_drift_next(ctx: ReleaseContext) -> None:
    if ctx.status.failures == 0 and drift_mode(ctx) is not DriftMode.DISABLED:
        ctx.requeue(0)  # check drift right after the action, in the next (in-sync) pass


async def _uninstall(ctx: ReleaseContext, why: str) -> bool:
    try:
        await uninstall(ctx, why)
    except HelmError as error:
        ctx.status.failures += 1
        reason = failure_reason(ctx, "UninstallFailed", error)
        message = f"uninstall failed ({error.kind}): {error.message}"
        if reason == CLUSTER_UNREACHABLE and ctx.body["metadata"].get("deletionTimestamp"):
            message += f"; or annotate {KEEP_RELEASE}=true to let it go without uninstalling"
        retry_later(ctx, reason, message)
        return False
    ctx.status.failures = 0
    ctx.ready("Uninstalled", f"not installed ({why})")
    return True


def _is_gone(ctx: ReleaseContext) -> bool:
    """After the finalizer is dropped the object vanishes: no status to write."""
    metadata = ctx.body["metadata"]
    return bool(metadata.get("deletionTimestamp")) and FINALIZER not in (
        metadata.get("finalizers") or []
    )
