"""install / upgrade: `helm upgrade --install` with the final values, then record the outcome.

Order matters: the action is recorded on the status (`inProgress`) before helm starts, so that a
`pending-*` lock left by a crash is known to be ours; helm's result (with its inventory, from
helm's output: no API request) is written as soon as helm returns, before anything else can fail,
so that a later error never re-runs helm; a failure is remediated only when helm stored a new
revision — a failure before that (chart or version not found, values not writable) left the
deployed revision untouched.
"""

from __future__ import annotations

import logging
import time
from typing import Literal

from helmfile_operator import goyaml
from helmfile_operator.api.models import (
    DriftMode,
    HistoryEntry,
    InProgress,
    InventoryEntry,
    LastAttempt,
)
from helmfile_operator.helm import HelmError, ReleaseInfo
from helmfile_operator.kube import describe
from helmfile_operator.reconcile import conditions
from helmfile_operator.reconcile.actions.chart_tests import run_chart_tests
from helmfile_operator.reconcile.actions.crds import prepare_crds
from helmfile_operator.reconcile.actions.detect_drift import drift_mode
from helmfile_operator.reconcile.actions.remediate import remediate
from helmfile_operator.reconcile.failures import record_failure
from helmfile_operator.reconcile.plan import fill_install_plan
from helmfile_operator.reconcile.release_context import ReleaseContext, Storage
from helmfile_operator.reconcile.values import ValuesSourceError, repository_access

logger = logging.getLogger("helmfile_operator.release")

Verb = Literal["install", "upgrade"]
PAST = {"install": "Installed", "upgrade": "Upgraded"}
PROGRESSING = {"install": "Installing", "upgrade": "Upgrading"}


def inventory(manifest: str, where: str = "the release manifest") -> list[InventoryEntry]:
    """The objects a release manifest declares (kind, name, namespace), in manifest order."""
    entries = []
    for document in goyaml.load_manifest(manifest or "", where):
        if "kind" not in document:
            continue
        metadata = document.get("metadata") or {}
        entries.append(
            InventoryEntry(
                api_version=str(document.get("apiVersion", "")),
                kind=str(document["kind"]),
                name=str(metadata.get("name", "")),
                namespace=metadata.get("namespace"),
            )
        )
    return entries


async def apply(ctx: ReleaseContext, verb: Verb) -> None:
    assert ctx.values is not None
    assert ctx.digest is not None
    assert ctx.chart is not None
    chart = ctx.chart
    try:
        credentials, ca_pem = await repository_access(
            ctx.tenant_kube, ctx.key.namespace, ctx.spec.chart.repository
        )
    except ValuesSourceError as error:
        ctx.not_ready("RepositoryAccessUnavailable", str(error))
        ctx.requeue(ctx.reconciler.settings.retry_max_seconds / 5)
        return
    before = ctx.storage.revision if ctx.storage is not None else None
    target = f"{chart.name} {chart.version or '(latest)'}"
    ctx.status.in_progress = InProgress(
        action=verb,
        started_at=conditions.now(),
        digest=ctx.digest,
        revision_before=before,
        chart_version=chart.version,
    )
    # No Event for the start of a routine install or upgrade: the status shows it while helm
    # runs, and its outcome's Event follows (one Event per release installed, not two).
    await ctx.starting(PROGRESSING[verb], f"{PROGRESSING[verb].lower()} {target}", event=False)
    started = time.monotonic()
    try:
        skip_crds = await prepare_crds(ctx, verb, chart, credentials, ca_pem)
        result = await ctx.reconciler.helm.upgrade_install(
            release=ctx.spec.release_name,
            namespace=ctx.spec.target_namespace,
            chart=chart,
            values=ctx.values,
            options=ctx.options,
            impersonate=ctx.target_identity,
            credentials=credentials,
            ca_pem=ca_pem,
            redact=ctx.secret_strings,
            tenant=ctx.key.namespace,  # its own helm cache and its share of helm slots
            skip_crds=skip_crds,
            kubeconfig=ctx.kubeconfig,
        )
    except HelmError as error:
        await _failed(ctx, verb, error, time.monotonic() - started, before)
        return
    record_success(ctx, verb, result, time.monotonic() - started)
    await ctx.flush()  # recorded before anything else can fail
    await run_chart_tests(ctx, verb)


def record_success(
    ctx: ReleaseContext, verb: Verb, result: ReleaseInfo, duration: float | None
) -> None:
    """Status after helm stored `result` for `ctx.digest` (also used to adopt an action whose
    success was never recorded: the operator died between helm and the status write)."""
    assert ctx.digest is not None
    ctx.reconciler.metrics.release_actions.labels(verb, "success").inc()
    status = ctx.status
    status.in_progress = None
    status.revision = result.revision
    status.chart_name = result.chart_name
    status.chart_version = result.chart_version
    status.app_version = result.app_version
    status.values_digest = ctx.digest
    status.last_applied_digest = ctx.digest
    status.last_applied_time = conditions.now()
    status.last_attempted = LastAttempt(
        action=verb,
        digest=ctx.digest,
        result="succeeded",
        duration_seconds=round(duration or 0.0, 3),
        time=conditions.now(),
    )
    status.failures = 0
    _record_history(ctx, result.revision, result.chart_version, "deployed")
    _record_inventory(ctx, result)
    plan = status.plan
    if plan is not None and plan.id == ctx.plan_id:
        plan.phase = "Applied"  # in the same write as the result
    message = (
        f"{PAST[verb]} revision {result.revision} of {result.chart_name} {result.chart_version}"
    )
    ctx.set_condition(conditions.RELEASED, "True", PAST[verb], message)
    ctx.remove_condition(conditions.REMEDIATED)
    ctx.ready(PAST[verb], message)
    ctx.event("Normal", PAST[verb], message)


async def _failed(
    ctx: ReleaseContext, verb: Verb, error: HelmError, duration: float, before: int | None
) -> None:
    assert ctx.digest is not None
    ctx.reconciler.metrics.release_actions.labels(verb, "failure").inc()
    status = ctx.status
    status.in_progress = None
    status.last_attempted = LastAttempt(
        action=verb,
        digest=ctx.digest,
        result="failed",
        duration_seconds=round(duration, 3),
        time=conditions.now(),
        message=error.message,
    )
    reason = f"{verb.capitalize()}Failed"
    ctx.set_condition(
        conditions.RELEASED, "False", reason, f"{verb} failed ({error.kind}): {error.message}"
    )
    after = await _storage_after_failure(ctx)
    recorded = after is not None and (before is None or after.revision > before)
    if recorded:
        assert after is not None
        await remediate(ctx, verb, after)
    record_failure(ctx, reason, error)
    if not recorded and before is not None:
        # Say plainly that what runs was not touched (a version typo must not alarm anyone).
        ready = conditions.find(status.conditions, conditions.READY)
        if ready is not None:
            ready.message += f"; revision {before} is still deployed, unchanged"


async def _storage_after_failure(ctx: ReleaseContext) -> Storage | None:
    try:
        return await ctx.read_storage()
    except Exception:  # unknown: assume helm recorded nothing, so nothing is rolled back
        logger.warning("%s: cannot read Helm storage after a failed action", ctx.key)
        return ctx.storage


def _record_inventory(ctx: ReleaseContext, result: ReleaseInfo) -> None:
    """The objects of the revision just deployed, from its manifest (helm's output, or Helm's
    storage when adopting): no API request. A drift check of this revision finds the manifest
    cached. Best effort: a manifest that cannot be parsed costs the inventory, never helm's
    result, which is recorded with it."""
    if drift_mode(ctx) is not DriftMode.DISABLED:
        ctx.reconciler.manifests.put(
            ctx.target, ctx.manifest_version(result.revision), result.manifest
        )
    try:
        ctx.status.inventory = inventory(result.manifest)
        fill_install_plan(ctx.status.plan, result.manifest, ctx.spec.target_namespace)
    except Exception as error:
        logger.warning("%s: inventory not recorded: %s", ctx.key, describe(error))
        ctx.event("Warning", "InventoryUnavailable", f"inventory not recorded: {describe(error)}")


def _record_history(ctx: ReleaseContext, revision: int, chart_version: str, state: str) -> None:
    assert ctx.digest is not None
    keep = max(ctx.options.history_max or 10, 1)
    entry = HistoryEntry(
        revision=revision,
        chart_version=chart_version,
        digest=ctx.digest,
        status=state,
        time=conditions.now(),
    )
    ctx.status.history = [*ctx.status.history, entry][-keep:]
