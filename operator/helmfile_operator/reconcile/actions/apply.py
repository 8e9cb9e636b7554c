"""install / upgrade: `helm upgrade --install` with the final values, then record the outcome."""

from __future__ import annotations

import time
from typing import Literal

import yaml

from helmfile_operator import metrics
from helmfile_operator.api.models import HistoryEntry, InventoryEntry, LastAttempt
from helmfile_operator.helm.errors import HelmError
from helmfile_operator.helm.storage import StorageDecodeError, latest_from_secrets
from helmfile_operator.reconcile import conditions
from helmfile_operator.reconcile.actions.remediate import remediate
from helmfile_operator.reconcile.release_context import ReleaseContext
from helmfile_operator.reconcile.values import ValuesSourceError, repository_access

Verb = Literal["install", "upgrade"]
PAST = {"install": "Installed", "upgrade": "Upgraded"}


def inventory(manifest: str) -> list[InventoryEntry]:
    """The objects a release manifest declares (kind, name, namespace), in manifest order."""
    entries = []
    for document in yaml.safe_load_all(manifest or ""):
        if not isinstance(document, dict) or "kind" not in document:
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
    started = time.monotonic()
    try:
        credentials, ca_pem = await repository_access(
            ctx.reconciler.kube, ctx.key.namespace, ctx.spec.chart.repository
        )
    except ValuesSourceError as error:
        ctx.status.conditions = conditions.mark_not_ready(
            ctx.status.conditions, "RepositoryAccessUnavailable", str(error), ctx.generation
        )
        ctx.requeue(ctx.reconciler.settings.retry_max_seconds / 5)
        return
    try:
        result = await ctx.reconciler.helm.upgrade_install(
            release=ctx.spec.release_name,
            namespace=ctx.spec.target_namespace,
            chart=ctx.spec.chart,
            values=ctx.values,
            options=ctx.options,
            impersonate=ctx.impersonate,
            credentials=credentials,
            ca_pem=ca_pem,
            redact=ctx.secret_strings,
        )
    except HelmError as error:
        await _failed(ctx, verb, error, time.monotonic() - started)
        return
    duration = time.monotonic() - started
    metrics.RELEASE_ACTIONS.labels(verb, "success").inc()
    status = ctx.status
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
        duration_seconds=round(duration, 3),
        time=conditions.now(),
    )
    status.failures = 0
    status.inventory = await _inventory_from_storage(ctx)
    _record_history(ctx, result.revision, result.chart_version, "deployed")
    message = (
        f"{PAST[verb]} revision {result.revision} of {result.chart_name} {result.chart_version}"
    )
    status.conditions = conditions.set_condition(
        status.conditions, conditions.RELEASED, "True", f"{PAST[verb]}", message, ctx.generation
    )
    status.conditions = conditions.remove(status.conditions, conditions.REMEDIATED)
    status.conditions = conditions.mark_ready(
        status.conditions, f"{PAST[verb]}", message, ctx.generation
    )
    ctx.event("Normal", PAST[verb], message)


async def _failed(ctx: ReleaseContext, verb: Verb, error: HelmError, duration: float) -> None:
    assert ctx.digest is not None
    metrics.RELEASE_ACTIONS.labels(verb, "failure").inc()
    status = ctx.status
    status.failures += 1
    status.last_attempted = LastAttempt(
        action=verb,
        digest=ctx.digest,
        result="failed",
        duration_seconds=round(duration, 3),
        time=conditions.now(),
        message=error.message,
    )
    reason = f"{verb.capitalize()}Failed"
    message = f"{verb} failed ({error.kind}): {error.message}"
    status.conditions = conditions.set_condition(
        status.conditions, conditions.RELEASED, "False", reason, message, ctx.generation
    )
    ctx.event("Warning", reason, message)
    await remediate(ctx, verb)
    retries = ctx.options.retries if ctx.options.retries is not None else 3
    if not error.retryable or status.failures > retries:
        why = "not retryable" if not error.retryable else f"{status.failures} failed attempts"
        status.conditions = conditions.mark_stalled(
            status.conditions,
            reason,
            f"{message} — {why}; fix the spec (or request a reconcile) to try again",
            ctx.generation,
        )
        return
    delay = ctx.reconciler.backoff(status.failures)
    status.conditions = conditions.mark_not_ready(
        status.conditions,
        reason,
        f"{message} — retry {status.failures}/{retries} in {delay:.0f}s",
        ctx.generation,
    )
    ctx.requeue(delay)


async def _inventory_from_storage(ctx: ReleaseContext) -> list[InventoryEntry]:
    """The objects of the revision just deployed, from Helm's storage (helm's JSON output is
    not read for it: it also carries the values)."""
    try:
        secrets = await ctx.reconciler.kube.helm_storage(
            ctx.spec.target_namespace, ctx.spec.release_name
        )
        stored = latest_from_secrets(secrets, release_name=ctx.spec.release_name)
    except StorageDecodeError:
        return []
    return inventory(stored.manifest) if stored is not None else []


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
