"""The release state machine's decision: a pure function from what one pass observed to the one
action it takes. No I/O and no clock here — `Observation` carries the ages it needs — so the whole
table is tested case by case (tests/unit/test_decide.py); docs/architecture.md shows it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple

# A lock (`pending-*`) not started by this operator is taken over only after the release's helm
# timeout plus this margin: until then a live `helm upgrade` elsewhere may still hold it.
LOCK_MARGIN_SECONDS = 120.0


class Action(StrEnum):
    NOTHING = "nothing"  # deleting, but our finalizer is already gone
    WAIT_FOR_DEPENDENTS = "wait for dependents"  # deleting: releases that need this one remain
    RELEASE = "release"  # deleting, keep the Helm release: drop the finalizer only
    UNINSTALL_AND_RELEASE = "uninstall and release"  # deleting: uninstall, then drop the finalizer
    SUSPENDED = "suspended"
    ROLL_BACK_FOR_ROLLOUT = "roll back for rollout"  # the state's atomic rollout failed
    HELD = "held"  # held by the state's failed atomic rollout: no helm runs
    REJECT_SELF_NEED = "reject self-need"  # Stalled: spec.needs names the release itself
    REJECT_OWNED = "reject owned by another"  # Stalled: another object drives this Helm release
    REJECT_OTHER_SHARD_NEEDS = "reject needs of another shard"  # Stalled: never seen turn Ready
    WAIT_FOR_NEEDS = "wait for needs"  # woken by the watch when a need turns Ready
    REPORT_CLUSTER_ERROR = "report cluster error"  # spec.kubeConfig unreadable or refused
    CLUSTER_UNREACHABLE = "cluster unreachable"  # the remote cluster did not answer; retried
    REPORT_FORBIDDEN = "report forbidden"  # the tenant's identity may not read Helm's storage
    UNINSTALL = "uninstall"  # installed: false, and a release is in storage
    MARK_UNINSTALLED = "mark uninstalled"  # installed: false, nothing in storage
    WAIT_FOR_LOCK = "wait for lock"  # pending-* that may belong to a live helm elsewhere
    RECOVER = "recover"  # stale pending-*: roll back to the last deployed revision, or uninstall
    REPORT_VALUES_ERROR = "report values error"  # valuesFrom unreadable / values invalid
    REPORT_CHART_ERROR = "report chart error"  # the version range could not be resolved
    IN_SYNC = "in sync"  # nothing to do (no helm); check drift
    AWAIT_APPROVAL = "await approval"  # manual approval: plan the change, then wait for it
    BACKOFF = "back off"  # the last attempt of these values failed; wait before the next
    STALLED = "stalled"  # terminal failure; re-evaluated every interval
    INSTALL = "install"
    UPGRADE = "upgrade"


class Decision(NamedTuple):
    action: Action
    after: float | None = None  # re-evaluate after this many seconds (None: the normal resync)


@dataclass(frozen=True)
class Lock:
    """A `pending-*` head revision in Helm's storage."""

    status: str
    revision: int
    age_seconds: float
    ours: bool  # this operator recorded starting an action on it and never finished it


@dataclass(frozen=True)
class Attempt:
    """The last helm action the operator recorded on the object."""

    failed: bool
    digest: str
    seconds_ago: float


@dataclass(frozen=True)
class Observation:
    deleting: bool = False
    finalizer: bool = True
    dependents: tuple[str, ...] = ()
    keep_release: bool = False
    suspended: bool = False
    held: bool = False  # a failed atomic rollout of the state holds this release
    rollback_to: int | None = None  # ... and asks it to roll back to this revision (not done)
    self_needed: bool = False
    owner: str | None = None  # the object that drives this Helm release, when not us
    unready_needs: tuple[str, ...] = ()
    other_shard_needs: tuple[str, ...] = ()  # needs that exist, labelled for another shard
    approval_manual: bool = False  # a change waits for its plan to be approved
    approved: bool = False  # the approval annotation names the plan of the change wanted now
    access_error: str | None = None  # reading Helm's storage as the tenant was refused
    cluster_error: bool = False  # spec.kubeConfig's Secret is missing, invalid or refused
    cluster_unreachable: bool = False  # the remote cluster did not answer Helm's storage read
    install_wanted: bool = True
    in_storage: bool = False
    head_deployed: bool = False
    head_revision: int | None = None
    lock: Lock | None = None
    values_error: str | None = None
    chart_error: bool = False  # the repository could not say which version the range means
    digest: str | None = None
    applied_digest: str | None = None
    applied_revision: int | None = None
    last_attempt: Attempt | None = None
    stalled: bool = False
    backoff_seconds: float = 0.0  # the backoff after the recorded number of failures
    helm_timeout_seconds: float = 300.0
    interval_seconds: float = 600.0


def decide(obs: Observation) -> Decision:
    if obs.deleting:
        return _decide_deletion(obs)
    if obs.suspended:
        return Decision(Action.SUSPENDED)
    if obs.rollback_to is not None:
        if obs.cluster_error:
            return Decision(Action.REPORT_CLUSTER_ERROR)
        return Decision(Action.ROLL_BACK_FOR_ROLLOUT)
    if obs.held:
        return Decision(Action.HELD)
    if obs.self_needed:
        return Decision(Action.REJECT_SELF_NEED)
    if obs.owner is not None:
        return Decision(Action.REJECT_OWNED)
    if obs.other_shard_needs:
        return Decision(Action.REJECT_OTHER_SHARD_NEEDS)
    # Manual approval plans a change before its needs are Ready: a stack is approved as a whole.
    if obs.unready_needs and not obs.approval_manual:
        return Decision(Action.WAIT_FOR_NEEDS)
    if obs.cluster_error:
        return Decision(Action.REPORT_CLUSTER_ERROR)
    if obs.cluster_unreachable:
        return Decision(Action.CLUSTER_UNREACHABLE)
    if obs.access_error is not None:
        return Decision(Action.REPORT_FORBIDDEN)
    if not obs.install_wanted:
        if not obs.in_storage:
            return Decision(Action.MARK_UNINSTALLED)
        return _gate(obs) or Decision(Action.UNINSTALL)
    if obs.lock is not None:
        stale_after = obs.helm_timeout_seconds + LOCK_MARGIN_SECONDS
        if obs.lock.ours or obs.lock.age_seconds >= stale_after:
            return Decision(Action.RECOVER)
        return Decision(Action.WAIT_FOR_LOCK, stale_after - obs.lock.age_seconds)
    if obs.values_error is not None:
        return Decision(Action.REPORT_VALUES_ERROR)
    if obs.chart_error:
        return Decision(Action.REPORT_CHART_ERROR)
    if (
        obs.head_deployed
        and obs.digest is not None
        and obs.applied_digest == obs.digest
        and obs.applied_revision == obs.head_revision
    ):
        return Decision(Action.WAIT_FOR_NEEDS if obs.unready_needs else Action.IN_SYNC)
    gate = _gate(obs)
    if gate is not None:
        return gate
    attempt = obs.last_attempt
    if attempt is not None and attempt.failed and attempt.digest == obs.digest:
        if obs.stalled:
            if attempt.seconds_ago < obs.interval_seconds:
                return Decision(Action.STALLED, obs.interval_seconds - attempt.seconds_ago)
        elif attempt.seconds_ago < obs.backoff_seconds:
            return Decision(Action.BACKOFF, obs.backoff_seconds - attempt.seconds_ago)
    return Decision(Action.UPGRADE if obs.in_storage else Action.INSTALL)


def _gate(obs: Observation) -> Decision | None:
    """A change is wanted: under manual approval it waits for the approval of its plan, then
    (approved) for its needs."""
    if obs.approval_manual and not obs.approved:
        return Decision(Action.AWAIT_APPROVAL)
    if obs.unready_needs:
        return Decision(Action.WAIT_FOR_NEEDS)
    return None


def _decide_deletion(obs: Observation) -> Decision:
    if not obs.finalizer:
        return Decision(Action.NOTHING)
    if obs.owner is not None:
        return Decision(Action.RELEASE)  # never uninstall a release another object drives
    if obs.dependents:
        return Decision(Action.WAIT_FOR_DEPENDENTS)
    if obs.keep_release:
        return Decision(Action.RELEASE)
    if obs.cluster_error:
        return Decision(Action.REPORT_CLUSTER_ERROR)  # cannot uninstall: say so, retry
    return Decision(Action.UNINSTALL_AND_RELEASE)
