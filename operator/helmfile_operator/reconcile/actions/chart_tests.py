"""After a successful install/upgrade: `helm test`, when `helm.test.enable` asks for it.

The outcome is the `TestSuccess` condition (naming the failed test), an Event and a metric. A
failed test fails the release — remediated (rollback, uninstall) and retried like a failed
upgrade — unless `ignoreFailures` says to report it only. helm's result is already recorded when
the tests run: a failing test never re-runs the upgrade by itself, only the retry policy does.
"""

from __future__ import annotations

from typing import Literal

from helmfile_operator.api.models import LastAttempt, duration_seconds
from helmfile_operator.helm import HelmError
from helmfile_operator.kube import AccessDenied, ApiUnreachable
from helmfile_operator.reconcile import conditions
from helmfile_operator.reconcile.actions.remediate import remediate
from helmfile_operator.reconcile.failures import record_failure
from helmfile_operator.reconcile.release_context import ReleaseContext


async def run_chart_tests(ctx: ReleaseContext, verb: Literal["install", "upgrade"]) -> None:
    test = ctx.options.test
    if test is None or not test.enable:
        ctx.remove_condition(conditions.TEST_SUCCESS)
        return
    ready = conditions.find(ctx.status.conditions, conditions.READY)
    reason, message = (ready.reason, ready.message) if ready is not None else ("", "")
    revision = ctx.status.revision
    timeout = test.timeout or ctx.options.timeout
    assert timeout is not None  # helm_options() merges the models' defaults
    await ctx.starting("Testing", f"running the chart's tests on revision {revision}")
    metrics = ctx.reconciler.metrics
    try:
        await ctx.reconciler.helm.test(
            release=ctx.spec.release_name,
            namespace=ctx.spec.target_namespace,
            timeout_seconds=min(duration_seconds(timeout), ctx.timeout_seconds),
            impersonate=ctx.target_identity,
            tenant=ctx.key.namespace,
            kubeconfig=ctx.kubeconfig,
        )
    except HelmError as error:
        metrics.release_tests.labels("failure").inc()
        ctx.set_condition(conditions.TEST_SUCCESS, "False", "Failed", error.message)
        ctx.event("Warning", "TestFailed", f"revision {revision}: {error.message}")
        if test.ignore_failures:
            ctx.ready(reason, f"{message}; its tests failed (ignored: test.ignoreFailures)")
            return
        await _fail_release(ctx, verb, error)
        return
    metrics.release_tests.labels("success").inc()
    passed = f"the chart's tests passed on revision {revision}"
    ctx.set_condition(conditions.TEST_SUCCESS, "True", "Succeeded", passed)
    ctx.event("Normal", "TestSucceeded", passed)
    ctx.ready(reason, f"{message}; {passed}")


async def _fail_release(
    ctx: ReleaseContext, verb: Literal["install", "upgrade"], error: HelmError
) -> None:
    """The tested revision counts as a failed one: no longer the applied digest (so the next
    pass retries it after the backoff), remediated as configured, and counted."""
    assert ctx.digest is not None
    status = ctx.status
    status.last_applied_digest = None
    last = status.last_attempted
    status.last_attempted = LastAttempt(
        action=verb,
        digest=ctx.digest,
        result="failed",
        duration_seconds=last.duration_seconds if last is not None else 0.0,
        time=conditions.now(),
        message=error.message,
    )
    ctx.set_condition(conditions.RELEASED, "False", "TestFailed", error.message)
    try:
        storage = await ctx.read_storage()
    except (AccessDenied, ApiUnreachable) as reading:
        # Recorded as failed all the same: the next pass retries (and remediates) after backoff.
        ctx.event("Warning", "RemediationSkipped", f"Helm's storage unreadable: {reading}")
        return
    if storage is not None:
        await remediate(ctx, verb, storage)
    record_failure(ctx, "TestFailed", error)
