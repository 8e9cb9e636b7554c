"""One way to record a failed step of a pass: the condition says what failed and what happens
next, an Event says it once, and the pass is requeued.

- transient (the API server, a repository or registry unreachable, a lock): retried with a
  jittered backoff capped at the release's interval, for as long as it takes — never Stalled;
- terminal (the chart, version, values or permissions are wrong): Stalled at once;
- anything else (helm ran and the release failed): retried until `retries` is used up, then
  Stalled.
A Stalled release is still re-evaluated every interval, so a fixed environment (the version got
published, the Secret appeared) recovers without anyone touching it.
"""

from __future__ import annotations

from typing import Protocol

from helmfile_operator.helm import HelmErrorKind
from helmfile_operator.reconcile.release_context import ReleaseContext


class Failure(Protocol):
    """A failed step: a helm run (HelmError) or a repository asked for versions
    (ChartSourceError); `message` is safe to show."""

    @property
    def kind(self) -> HelmErrorKind: ...

    @property
    def message(self) -> str: ...

    @property
    def retryable(self) -> bool: ...


CLUSTER_UNREACHABLE = "ClusterUnreachable"

TRANSIENT_KINDS = frozenset(
    {HelmErrorKind.CONNECTION, HelmErrorKind.REPOSITORY_UNREACHABLE, HelmErrorKind.LOCKED}
)


def is_transient(error: Failure) -> bool:
    return error.kind in TRANSIENT_KINDS


def failure_reason(ctx: ReleaseContext, reason: str, error: Failure) -> str:
    """`reason`, or ClusterUnreachable when helm could not reach the release's remote cluster
    (also recorded by the `cluster_reachable` metric)."""
    if ctx.cluster is None or error.kind is not HelmErrorKind.CONNECTION:
        return reason
    ctx.mark_cluster(False)
    return CLUSTER_UNREACHABLE


def retry_later(ctx: ReleaseContext, reason: str, message: str) -> None:
    """Ready=False (still Reconciling), retried after the backoff of `status.failures`."""
    delay = ctx.reconciler.backoff(ctx.status.failures, cap=ctx.interval_seconds)
    ctx.not_ready(reason, f"{message} — retrying in {delay:.0f}s (attempt {ctx.status.failures})")
    ctx.event("Warning", reason, message)
    ctx.requeue(delay)


def stall(ctx: ReleaseContext, reason: str, message: str, why: str) -> None:
    ctx.stalled(
        reason,
        f"{message} — {why}; fix it (or request a reconcile) to retry now, "
        f"otherwise it is retried every {ctx.spec.interval}",
    )
    ctx.event("Warning", reason, message)
    ctx.requeue(ctx.interval_seconds)


def record_failure(ctx: ReleaseContext, reason: str, error: Failure) -> None:
    """A failed helm command (or version lookup): `status.failures` counts it; transient,
    terminal or retried."""
    ctx.status.failures += 1
    reason = failure_reason(ctx, reason, error)
    message = f"{error.kind}: {error.message}"
    retries = ctx.options.retries
    assert retries is not None  # helm_options() merges the models' defaults
    if is_transient(error):
        retry_later(ctx, reason, message)
    elif not error.retryable:
        stall(ctx, reason, message, "not retryable")
    elif ctx.status.failures > retries:
        stall(ctx, reason, message, f"{ctx.status.failures} failed attempts")
    else:
        retry_later(ctx, reason, f"{message} (retry {ctx.status.failures}/{retries})")
