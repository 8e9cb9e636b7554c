"""The HelmfileState reconciler: render the state into HelmfileRelease children and summarise them.

A render error (bad template, cycle, unknown need or repository…) marks the state Stalled with a
message naming the field, and touches none of the children: what is installed stays installed.
"""

from __future__ import annotations

import asyncio
import copy
import logging
from typing import Any

from pydantic import ValidationError

from helmfile_operator.api.models import (
    API_VERSION,
    ApprovalMode,
    DeletionPolicy,
    HelmfileStateSpec,
    HelmfileStateStatus,
    ReleaseCounts,
    ReleaseSummary,
    RolloutHold,
    StatePlan,
    describe_validation_error,
)
from helmfile_operator.kube import RELEASES, STATES, merge_patch_between
from helmfile_operator.reconcile import conditions
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
from helmfile_operator.reconcile.plan import PendingPlan, plan_id, state_plan, state_plan_summary
from helmfile_operator.reconcile.release_context import tenant_identity
from helmfile_operator.reconcile.rollout import HOLD as ROLLOUT_HOLD
from helmfile_operator.reconcile.rollout import ROLLBACK_TO, advance
from helmfile_operator.reconcile.rollout import Child as RolloutChild
from helmfile_operator.reconcile.rollout import start as rollout_start
from helmfile_operator.reconcile.values import (
    ObjectSource,
    ValuesSourceError,
    resolve_values_from,
)
from helmfile_operator.render.errors import RenderError
from helmfile_operator.render.state import RenderedState, StateMeta
from helmfile_operator.rendering import RenderLimitExceeded, render_state_bounded

logger = logging.getLogger("helmfile_operator.state")

ROLLED_BACK = "RolloutRolledBack"
BACKING_OUT = frozenset({"RollingBack", "RolledBack"})
# Reconciling reasons of a release while a helm command runs for it.
HELM_IN_PROGRESS = frozenset({"Installing", "Upgrading", "RollingBack", "Uninstalling"})


async def reconcile_state(reconciler: Reconciler, key: ObjectKey) -> None:
    kube = reconciler.kube
    body = await kube.get(STATES, key.namespace, key.name)
    if body is None:
        return
    if not reconciler.in_shard(body):  # relabelled meanwhile: another shard's now
        reconciler.queue.remove(key)
        return
    metadata = body["metadata"]
    generation = metadata.get("generation")
    status = HelmfileStateStatus.model_validate(body.get("status") or {})
    before = copy.deepcopy(body.get("status") or {})  # as stored: the base of the merge patch
    children = await kube.list_objects(RELEASES, key.namespace, f"{STATE_LABEL}={key.name}")

    if metadata.get("deletionTimestamp"):
        await _delete(reconciler, key, body, children)
        return
    if FINALIZER not in (metadata.get("finalizers") or []):
        await kube.set_finalizers(
            STATES,
            key.namespace,
            key.name,
            metadata.get("resourceVersion", ""),
            [*(metadata.get("finalizers") or []), FINALIZER],
        )

    rendered = await _render(reconciler, key, body, status)
    removals: list[dict[str, Any]] = []
    if rendered is not None:
        desired = [child_body(key, body, rendered, i) for i in range(len(rendered.releases))]
        outdated = _outdated(desired, children)
        if _start_rollout(key, body, status, outdated, children):
            # Recorded before any child changes: a pass that fails after writing the children
            # must not lose the rollout (the retry finds them up to date).
            after = status.to_wire()
            await kube.patch_status(
                STATES, key.namespace, key.name, merge_patch_between(before, after)
            )
            before = after
        children, removals = await _apply_children(
            reconciler, key, body, desired, outdated, children
        )
        status.environment = rendered.environment
        status.order = rendered.order
        await _roll_out(reconciler, key, body, status, children)
    _forward_reconcile_request(reconciler, key, metadata, status, children)
    status.plan = await _plan(reconciler, key, body, status, children, removals)
    _summarise(key, status, children, generation, rendered is not None)
    status.observed_generation = generation
    after = status.to_wire()
    if after != before:
        await kube.patch_status(STATES, key.namespace, key.name, merge_patch_between(before, after))


def _forward_reconcile_request(
    reconciler: Reconciler,
    key: ObjectKey,
    metadata: dict[str, Any],
    status: HelmfileStateStatus,
    children: list[dict[str, Any]],
) -> None:
    """A new `reconcile-requested-at`: every release runs a pass for it (queued, nothing
    written to them); once the last one has, the state records it as handled."""
    requested = (metadata.get("annotations") or {}).get(RECONCILE_REQUEST)
    if not requested or requested == status.last_handled_reconcile_at:
        return
    requests = reconciler.requests
    names = [c["metadata"]["name"] for c in children if not c["metadata"].get("deletionTimestamp")]
    requests.retain(key.namespace, key.name, names)  # a release that went meanwhile: no wait
    if requests.all_handled(key.namespace, key.name, requested):
        status.last_handled_reconcile_at = requested
        requests.forget(key.namespace, key.name)
        return
    if requests.forwarded(key.namespace, key.name, requested):
        return  # still running
    if not names:
        status.last_handled_reconcile_at = requested
        return
    requests.forward(key.namespace, key.name, requested, names)
    for name in names:
        reconciler.queue.add(ObjectKey("HelmfileRelease", key.namespace, name))


async def _render(
    reconciler: Reconciler, key: ObjectKey, body: dict[str, Any], status: HelmfileStateStatus
) -> RenderedState | None:
    metadata = body["metadata"]
    generation = metadata.get("generation")
    try:
        spec = HelmfileStateSpec.model_validate(body.get("spec") or {})
        # Read as the state's identity: its RBAC decides what it may feed into charts.
        source = reconciler.kube.impersonating(
            tenant_identity(
                key.namespace,
                spec.service_account_name,
                reconciler.settings.default_service_account,
            )
        )
        rendered = await render_body(body, source, reconciler.render_slots)
        await _check_names_are_free(reconciler, key, rendered)
        return rendered
    except ValidationError as error:
        message, reason = describe_validation_error(error), "InvalidSpec"
    except (RenderError, ValuesSourceError) as error:
        message = str(error)
        reason = "RenderLimitExceeded" if isinstance(error, RenderLimitExceeded) else "RenderFailed"
    stalled = conditions.find(status.conditions, conditions.STALLED)
    status.conditions = conditions.mark_stalled(
        status.conditions, reason, f"{message} (nothing was changed)", generation
    )
    if stalled is None or stalled.message != status.conditions[-1].message:
        reconciler.event(body, "Warning", reason, message)
    return None


async def render_body(
    body: dict[str, Any], config_maps: ObjectSource, slots: asyncio.Semaphore
) -> RenderedState:
    """A HelmfileState object rendered (the operator's pass and the CLI's `render`), its
    environment's `valuesFrom` ConfigMaps read from `config_maps`. Raises ValidationError,
    RenderError or ValuesSourceError, whose messages name the field."""
    metadata = body["metadata"]
    spec = HelmfileStateSpec.model_validate(body.get("spec") or {})
    environment = spec.environments.get(spec.environment)
    from_config_maps = (
        await resolve_values_from(
            config_maps,
            metadata.get("namespace") or "",
            environment.values_from,
            f"spec.environments.{spec.environment}.valuesFrom",
        )
        if environment
        else []
    )
    meta = StateMeta(
        name=metadata["name"],
        namespace=metadata.get("namespace") or "",
        labels=metadata.get("labels") or {},
        annotations=metadata.get("annotations") or {},
    )
    return await render_state_bounded(meta, spec, from_config_maps, slots=slots)


async def _check_names_are_free(
    reconciler: Reconciler, key: ObjectKey, rendered: RenderedState
) -> None:
    """A child name held by another state (or written by hand) is never taken over. The index
    holds only this operator's shard: a name it does not know is looked up in the API (one list,
    and only when some name is new), since another shard's object may hold it."""
    others: dict[str, str | None] | None = None
    for index, release in enumerate(rendered.releases):
        name = release.resource_name
        existing = reconciler.index.get(key.namespace, name)
        holder_state = existing.state if existing is not None else None
        if existing is None:
            if others is None:
                listed = await reconciler.kube.list_objects(RELEASES, key.namespace)
                others = {
                    item["metadata"]["name"]: (item["metadata"].get("labels") or {}).get(
                        STATE_LABEL
                    )
                    for item in listed
                }
            if name not in others:
                continue
            holder_state = others[name]
        if holder_state == key.name:
            continue
        holder = f"state {holder_state!r}" if holder_state else "a hand-written HelmfileRelease"
        raise RenderError(
            f"spec.releases[{index}].name",
            f"its HelmfileRelease {release.resource_name!r} already belongs to {holder}; "
            "rename the release (or the state)",
        )


def child_body(
    key: ObjectKey, state: dict[str, Any], rendered: RenderedState, index: int
) -> dict[str, Any]:
    release = rendered.releases[index]
    annotations = {}
    if state["spec"].get("deletionPolicy") == DeletionPolicy.KEEP:
        annotations[KEEP_RELEASE] = "true"
    spec = release.spec.to_wire()
    if state["spec"].get("suspend"):
        spec["suspend"] = True  # a suspended state pauses every one of its releases
    labels = {STATE_LABEL: key.name, "helmfile.dev/release": release.template_name}
    shard = (state["metadata"].get("labels") or {}).get(SHARD_LABEL)
    if shard is not None:
        labels[SHARD_LABEL] = shard  # its releases are reconciled by the state's shard
    return {
        "apiVersion": API_VERSION,
        "kind": "HelmfileRelease",
        "metadata": {
            "name": release.resource_name,
            "namespace": key.namespace,
            "labels": labels,
            "annotations": annotations,
            # Set at creation, so that the release's first pass has no finalizer to write.
            "finalizers": [FINALIZER],
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "HelmfileState",
                    "name": key.name,
                    "uid": state["metadata"]["uid"],
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        # Empty top-level fields are left out: under server-side apply, `values: {}` after a
        # `values: {a: 1}` would become null (and fail validation) instead of empty.
        "spec": {k: v for k, v in spec.items() if v not in ({}, [])},
    }


async def _apply_children(
    reconciler: Reconciler,
    key: ObjectKey,
    body: dict[str, Any],
    desired: list[dict[str, Any]],
    outdated: list[str],
    existing: list[dict[str, Any]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Write the `outdated` of the desired children (server-side apply); delete those no longer
    in the state (uninstalls) — under manual approval they are returned instead, and deleted
    once the plan is approved. Returns the children and those removals."""
    kube = reconciler.kube
    current = {child["metadata"]["name"]: child for child in existing}
    applied = []
    to_write = set(outdated)
    for child in desired:
        name = child["metadata"]["name"]
        if name in to_write:
            applied.append(await kube.apply(RELEASES, key.namespace, child))
        else:
            applied.append(current[name])
    wanted = {child["metadata"]["name"] for child in desired}
    removals = []
    for name, child in current.items():
        if name not in wanted and not child["metadata"].get("deletionTimestamp"):
            if _approval_manual(body) or _approval_manual(child):
                removals.append(child)  # its own approval mode counts too
                continue
            await _remove_child(reconciler, key, body, name)
    return applied, removals


async def _remove_child(
    reconciler: Reconciler, key: ObjectKey, body: dict[str, Any], name: str
) -> None:
    await reconciler.kube.delete(RELEASES, key.namespace, name)
    reconciler.event(body, "Normal", "ReleaseRemoved", f"{name} left the state: uninstalling")


def _approval_manual(body: dict[str, Any]) -> bool:
    """`spec.approval.mode: manual` on a state or a release."""
    approval = (body.get("spec") or {}).get("approval") or {}
    return bool(approval.get("mode") == ApprovalMode.MANUAL)


# --- atomic rollouts (reconcile/rollout.py) -----------------------------------------------------


def _outdated(desired: list[dict[str, Any]], children: list[dict[str, Any]]) -> list[str]:
    """The children to write (new, or not saying what the state renders now), in order."""
    current = {child["metadata"]["name"]: child for child in children}
    return [
        body["metadata"]["name"]
        for body in desired
        if (have := current.get(body["metadata"]["name"])) is None or not _up_to_date(have, body)
    ]


def _start_rollout(
    key: ObjectKey,
    body: dict[str, Any],
    status: HelmfileStateStatus,
    outdated: list[str],
    children: list[dict[str, Any]],
) -> bool:
    """A new generation of an atomic state that changes children starts a rollout of them
    (and of the last rollout's held releases), with their revisions from before it."""
    generation = int(body["metadata"].get("generation") or 0)
    rollout = status.rollout
    if not _atomic(body) or (rollout is not None and rollout.generation == generation):
        return False
    current = {child["metadata"]["name"]: child for child in children}
    changed = list(outdated)
    if not changed:
        return False
    if rollout is not None and rollout.phase in BACKING_OUT:
        # Released from their hold, the last rollout's releases change again too.
        changed += [r.name for r in rollout.releases if r.name in current and r.name not in changed]
    revisions = {
        name: (child.get("status") or {}).get("revision") for name, child in current.items()
    }
    status.rollout = rollout_start(key.name, generation, changed, revisions)
    return True


def _atomic(body: dict[str, Any]) -> bool:
    return bool(((body.get("spec") or {}).get("rollout") or {}).get("atomic"))


async def _roll_out(
    reconciler: Reconciler,
    key: ObjectKey,
    body: dict[str, Any],
    status: HelmfileStateStatus,
    children: list[dict[str, Any]],
) -> None:
    """Advance the rollout and mark the children with what it says (holds, rollbacks)."""
    rollout = status.rollout if _atomic(body) else None
    step = (
        advance(rollout, {c.name: c for c in map(_rollout_child, children)}, status.order)
        if rollout is not None
        else None
    )
    phase = rollout.phase if rollout is not None else None
    if step is not None and step.rollout.phase != phase and step.rollout.phase in BACKING_OUT:
        reconciler.event(body, "Warning", ROLLED_BACK, step.rollout.message)
    status.rollout = step.rollout if step is not None else None
    for child in children:
        name = child["metadata"]["name"]
        wanted = {
            ROLLOUT_HOLD: step.rollout.id if step is not None and name in step.holds else None,
            ROLLBACK_TO: str(step.rollbacks[name])
            if step is not None and name in step.rollbacks
            else None,
        }
        annotations = child["metadata"].get("annotations") or {}
        if all(annotations.get(k) == v for k, v in wanted.items()):
            continue
        await reconciler.kube.patch_metadata(RELEASES, key.namespace, name, {"annotations": wanted})
        child["metadata"]["annotations"] = {
            **{k: v for k, v in annotations.items() if k not in wanted},
            **{k: v for k, v in wanted.items() if v is not None},
        }


def _rollout_child(child: dict[str, Any]) -> RolloutChild:
    child_status = child.get("status") or {}  # the fields it needs, not a full status model
    spec = child.get("spec") or {}
    current = child_status.get("observedGeneration") == child["metadata"].get("generation")
    hold = child_status.get("rolloutHold")
    stalled = conditions.body_condition(child, conditions.STALLED) is not None
    return RolloutChild(
        name=child["metadata"]["name"],
        release_id=f"{spec.get('targetNamespace')}/{spec.get('releaseName')}",
        revision=child_status.get("revision"),
        ready=conditions.body_is_ready(child),
        failed=current and stalled,
        rolled_back_to=RolloutHold.model_validate(hold).rolled_back_to if hold else None,
    )


# --- plans and their approval --------------------------------------------------------------


def _pending(children: list[dict[str, Any]], removals: list[dict[str, Any]]) -> list[PendingPlan]:
    """The children whose plan awaits an approval they have not received, and (manual
    approval) the children that left the state."""
    pending = []
    for child in children:
        plan = ((child.get("status") or {}).get("plan")) or {}
        approval = (child["metadata"].get("annotations") or {}).get(APPROVE)
        if plan.get("phase") != "AwaitingApproval" or approval == plan.get("id"):
            continue
        if (child.get("status") or {}).get("observedGeneration") != child["metadata"].get(
            "generation"
        ):
            continue  # its spec changed: its plan is being computed again
        spec = child.get("spec") or {}
        counts = plan.get("counts") or {}
        pending.append(
            PendingPlan(
                name=child["metadata"]["name"],
                release_id=f"{spec.get('targetNamespace')}/{spec.get('releaseName')}",
                action=plan.get("action", "upgrade"),
                id=str(plan.get("id")),
                objects=sum(int(counts.get(k) or 0) for k in ("create", "update", "delete")),
            )
        )
    for child in removals:
        spec = child.get("spec") or {}
        pending.append(
            PendingPlan(
                name=child["metadata"]["name"],
                release_id=f"{spec.get('targetNamespace')}/{spec.get('releaseName')}",
                action="delete",
                id=plan_id("uninstall", f"delete {child['metadata'].get('uid')}", None),
            )
        )
    return pending


async def _plan(
    reconciler: Reconciler,
    key: ObjectKey,
    body: dict[str, Any],
    status: HelmfileStateStatus,
    children: list[dict[str, Any]],
    removals: list[dict[str, Any]],
) -> StatePlan | None:
    """The state's plan; an approval (`helmfile.dev/approve` on the state) of exactly that plan
    approves each release's own plan and deletes the releases that left the state. An approval
    of another plan is refused, once, with an Event."""
    plan = state_plan(_pending(children, removals), status.order)
    approval = (body["metadata"].get("annotations") or {}).get(APPROVE)
    if not approval or approval == status.last_handled_approval:
        return plan
    status.last_handled_approval = approval
    if plan is None or approval != plan.id:
        status.refused_approval = approval
        current = f"the current plan is {plan.id}" if plan else "nothing awaits approval now"
        reconciler.event(
            body,
            "Warning",
            "ApprovalRefused",
            f"approval {approval} names another plan ({current}): a release's spec, values or "
            "chart version changed since; review the plan and approve it again",
        )
        return plan
    status.refused_approval = None
    by_name = {child["metadata"]["name"]: child for child in children}
    for release in plan.releases:
        if release.action == "delete":
            await _remove_child(reconciler, key, body, release.name)
            continue
        await reconciler.kube.patch_metadata(
            RELEASES, key.namespace, release.name, {"annotations": {APPROVE: release.id}}
        )
        child = by_name[release.name]
        child["metadata"].setdefault("annotations", {})[APPROVE] = release.id
    reconciler.event(
        body, "Normal", "PlanApproved", f"plan {plan.id} approved: {state_plan_summary(plan)}"
    )
    return None


def _up_to_date(have: dict[str, Any], desired: dict[str, Any]) -> bool:
    """Skip the apply (and its API call) when the child already says what we would write."""
    metadata = have["metadata"]
    spec = {k: v for k, v in (have.get("spec") or {}).items() if v not in ({}, [])}
    return (
        spec == desired["spec"]
        and all(
            (metadata.get("annotations") or {}).get(k) == v
            for k, v in desired["metadata"]["annotations"].items()
        )
        # Back from deletionPolicy Keep: the apply must run to drop the keep-release mark.
        and (metadata.get("annotations") or {}).get(KEEP_RELEASE)
        == desired["metadata"]["annotations"].get(KEEP_RELEASE)
        and (metadata.get("labels") or {}).get(STATE_LABEL)
        == desired["metadata"]["labels"][STATE_LABEL]
        and (metadata.get("labels") or {}).get(SHARD_LABEL)
        == desired["metadata"]["labels"].get(SHARD_LABEL)
    )


def _summarise(
    key: ObjectKey,
    status: HelmfileStateStatus,
    children: list[dict[str, Any]],
    generation: int | None,
    rendered: bool,
) -> None:
    summaries = []
    counts = ReleaseCounts(total=len(children))
    not_ready = []
    stalled = []
    for child in children:
        # The few fields a summary shows, read from the body as is: a state of 1000 releases
        # would otherwise build 1000 full status models on every pass.
        child_status = child.get("status") or {}
        ready = conditions.body_is_ready(child)
        drifted = conditions.body_condition(child, conditions.DRIFTED) or {}
        spec = child.get("spec") or {}
        summaries.append(
            ReleaseSummary(
                name=spec.get("releaseName", child["metadata"]["name"]),
                namespace=spec.get("targetNamespace", ""),
                ready=ready,
                revision=child_status.get("revision"),
                chart_version=child_status.get("chartVersion"),
                drifted=drifted.get("status") == "True",
                message=str(
                    (conditions.body_condition(child, conditions.READY) or {}).get("message") or ""
                ),
                cluster=(child_status.get("cluster") or {}).get("name"),
            )
        )
        if not spec.get("installed", True):
            counts.disabled += 1
        if ready:
            counts.ready += 1
        elif conditions.body_condition(child, conditions.STALLED) is not None:
            counts.failed += 1
            stalled.append(child["metadata"]["name"])
        else:
            counts.pending += 1
            reconciling = conditions.body_condition(child, conditions.RECONCILING) or {}
            running = str(reconciling.get("reason") or "")
            name = child["metadata"]["name"]
            not_ready.append(f"{name} ({running})" if running in HELM_IN_PROGRESS else name)
    status.releases = summaries
    status.counts = counts
    if not rendered:
        return  # Stalled by the render error; the summary above still shows what runs
    plan = status.plan
    rollout = status.rollout
    if rollout is not None and rollout.phase in BACKING_OUT:
        mark = (
            conditions.mark_stalled if rollout.phase == "RolledBack" else conditions.mark_not_ready
        )
        status.conditions = mark(status.conditions, ROLLED_BACK, rollout.message, generation)
    elif plan is not None and not stalled:
        refused = (
            f"; approval {status.refused_approval} was refused: it names an earlier plan"
            if status.refused_approval
            else ""
        )
        status.conditions = conditions.mark_waiting(
            status.conditions,
            "AwaitingApproval",
            f"plan {plan.id}: {state_plan_summary(plan)}{refused}; approve it with `kubectl "
            f"annotate hfs {key.name} -n {key.namespace} {APPROVE}={plan.id} --overwrite`",
            generation,
        )
    elif stalled:
        status.conditions = conditions.mark_stalled(
            status.conditions,
            "ReleaseFailed",
            f"{len(stalled)} release(s) failed: {', '.join(sorted(stalled))}",
            generation,
        )
    elif not_ready:
        status.conditions = conditions.mark_reconciling(
            status.conditions,
            "Progressing",
            f"{counts.ready}/{counts.total} releases ready; waiting for "
            f"{', '.join(sorted(not_ready)[:5])}{'…' if len(not_ready) > 5 else ''}",
            generation,
        )
    else:
        status.conditions = conditions.mark_ready(
            status.conditions,
            "Succeeded",
            f"{counts.ready}/{counts.total} releases ready",
            generation,
        )


async def _delete(
    reconciler: Reconciler, key: ObjectKey, body: dict[str, Any], children: list[dict[str, Any]]
) -> None:
    """Delete every child; each uninstalls after its dependents (see reconcile/release.py)."""
    kube = reconciler.kube
    keep = (body.get("spec") or {}).get("deletionPolicy") == DeletionPolicy.KEEP
    for child in children:
        name = child["metadata"]["name"]
        if keep and (child["metadata"].get("annotations") or {}).get(KEEP_RELEASE) != "true":
            await kube.patch_metadata(
                RELEASES, key.namespace, name, {"annotations": {KEEP_RELEASE: "true"}}
            )
        if not child["metadata"].get("deletionTimestamp"):
            await kube.delete(RELEASES, key.namespace, name)
    if children:
        return  # woken again as each child disappears
    finalizers = [f for f in body["metadata"].get("finalizers") or [] if f != FINALIZER]
    await kube.set_finalizers(
        STATES, key.namespace, key.name, body["metadata"].get("resourceVersion", ""), finalizers
    )
