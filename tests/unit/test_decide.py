"""The release state machine's decision, as a table: observation in, one action out."""

from __future__ import annotations

import pytest

from helmfile_operator.reconcile.decide import (
    LOCK_MARGIN_SECONDS,
    Action,
    Attempt,
    Decision,
    Lock,
    Observation,
    decide,
)

D = "sha256:new"
IN_SYNC = {
    "in_storage": True,
    "head_deployed": True,
    "head_revision": 2,
    "digest": D,
    "applied_digest": D,
    "applied_revision": 2,
}
UPGRADE_WANTED = {**IN_SYNC, "applied_digest": "sha256:old"}
FAILED_NOW = Attempt(failed=True, digest=D, seconds_ago=1)
FAILED_LONG_AGO = Attempt(failed=True, digest=D, seconds_ago=700)
STALE = 300 + LOCK_MARGIN_SECONDS

CASES: list[tuple[str, Observation, Decision]] = [
    # deletion
    ("deleting without our finalizer", Observation(deleting=True, finalizer=False),
     Decision(Action.NOTHING)),
    ("deleting with dependents left", Observation(deleting=True, dependents=("api",)),
     Decision(Action.WAIT_FOR_DEPENDENTS)),
    ("deleting, keep the release", Observation(deleting=True, keep_release=True),
     Decision(Action.RELEASE)),
    ("deleting", Observation(deleting=True), Decision(Action.UNINSTALL_AND_RELEASE)),
    ("deleting, the remote cluster's kubeconfig unusable: say so, uninstall later",
     Observation(deleting=True, cluster_error=True), Decision(Action.REPORT_CLUSTER_ERROR)),
    ("deleting, kept: the remote cluster is not needed",
     Observation(deleting=True, keep_release=True, cluster_error=True),
     Decision(Action.RELEASE)),
    ("deleting a release another object drives: never uninstall it",
     Observation(deleting=True, owner="apps/first", dependents=("api",)),
     Decision(Action.RELEASE)),
    # gates
    ("suspended", Observation(suspended=True, **UPGRADE_WANTED), Decision(Action.SUSPENDED)),
    ("needs itself", Observation(self_needed=True), Decision(Action.REJECT_SELF_NEED)),
    ("owned by another", Observation(owner="apps/first"), Decision(Action.REJECT_OWNED)),
    ("needs a release of another shard (it would wait forever)",
     Observation(unready_needs=("db",), other_shard_needs=("db (shard 'b')",), **UPGRADE_WANTED),
     Decision(Action.REJECT_OTHER_SHARD_NEEDS)),
    ("needs of another shard, also under manual approval",
     Observation(unready_needs=("db",), other_shard_needs=("db (unsharded)",),
                 approval_manual=True),
     Decision(Action.REJECT_OTHER_SHARD_NEEDS)),
    ("needs not ready", Observation(unready_needs=("db",), **UPGRADE_WANTED),
     Decision(Action.WAIT_FOR_NEEDS)),
    ("asked to roll back, the remote cluster's kubeconfig unusable",
     Observation(held=True, rollback_to=3, cluster_error=True),
     Decision(Action.REPORT_CLUSTER_ERROR)),
    ("kubeconfig Secret missing, invalid or refused",
     Observation(cluster_error=True, **UPGRADE_WANTED), Decision(Action.REPORT_CLUSTER_ERROR)),
    ("remote cluster unreachable", Observation(cluster_unreachable=True, **UPGRADE_WANTED),
     Decision(Action.CLUSTER_UNREACHABLE)),
    ("needs first, then the cluster",
     Observation(unready_needs=("db",), cluster_unreachable=True),
     Decision(Action.WAIT_FOR_NEEDS)),
    ("Helm storage unreadable as the tenant",
     Observation(access_error="forbidden: ServiceAccount apps/default may not list secrets"),
     Decision(Action.REPORT_FORBIDDEN)),
    ("installed: false, in storage", Observation(install_wanted=False, in_storage=True),
     Decision(Action.UNINSTALL)),
    ("installed: false, absent", Observation(install_wanted=False),
     Decision(Action.MARK_UNINSTALLED)),
    # locks
    ("lock we left (crash mid-action)",
     Observation(in_storage=True, lock=Lock("pending-upgrade", 3, age_seconds=5, ours=True)),
     Decision(Action.RECOVER)),
    ("someone else's fresh lock: wait until it is stale",
     Observation(in_storage=True, lock=Lock("pending-upgrade", 3, age_seconds=20, ours=False)),
     Decision(Action.WAIT_FOR_LOCK, STALE - 20)),
    ("someone else's stale lock",
     Observation(in_storage=True, lock=Lock("pending-install", 1, age_seconds=STALE, ours=False)),
     Decision(Action.RECOVER)),
    # values
    ("values unreadable", Observation(values_error="spec.valuesFrom[0]: not found"),
     Decision(Action.REPORT_VALUES_ERROR)),
    # chart versions
    ("the range cannot be resolved (no deployed version to keep)",
     Observation(in_storage=True, chart_error=True), Decision(Action.REPORT_CHART_ERROR)),
    ("values errors are reported before chart errors",
     Observation(values_error="x", chart_error=True), Decision(Action.REPORT_VALUES_ERROR)),
    ("a newly published version in the range changed the digest",
     Observation(**{**IN_SYNC, "digest": "sha256:1.0.1"}), Decision(Action.UPGRADE)),
    # sync
    ("in sync", Observation(**IN_SYNC), Decision(Action.IN_SYNC)),
    ("absent", Observation(digest=D), Decision(Action.INSTALL)),
    ("values changed", Observation(**UPGRADE_WANTED), Decision(Action.UPGRADE)),
    ("deleted from storage behind our back", Observation(**{**IN_SYNC, "in_storage": False,
     "head_deployed": False, "head_revision": None}), Decision(Action.INSTALL)),
    ("head revision is not the one we applied", Observation(**{**IN_SYNC, "head_revision": 3}),
     Decision(Action.UPGRADE)),
    ("head failed (someone else's upgrade)",
     Observation(**{**IN_SYNC, "head_deployed": False, "head_revision": 3}),
     Decision(Action.UPGRADE)),
    # failures
    ("failed, backing off",
     Observation(**UPGRADE_WANTED, last_attempt=FAILED_NOW, backoff_seconds=10),
     Decision(Action.BACKOFF, 9)),
    ("failed, backoff over", Observation(**UPGRADE_WANTED, last_attempt=Attempt(True, D, 11),
     backoff_seconds=10), Decision(Action.UPGRADE)),
    ("failed with other values: a new spec tries at once",
     Observation(**UPGRADE_WANTED, last_attempt=Attempt(True, "sha256:other", 1),
                 backoff_seconds=10), Decision(Action.UPGRADE)),
    ("stalled: re-evaluated only every interval",
     Observation(**UPGRADE_WANTED, last_attempt=FAILED_NOW, stalled=True, interval_seconds=600),
     Decision(Action.STALLED, 599)),
    ("stalled, an interval later: tried again (the version may be published now)",
     Observation(**UPGRADE_WANTED, last_attempt=FAILED_LONG_AGO, stalled=True,
                 interval_seconds=600), Decision(Action.UPGRADE)),
    ("stalled first install, an interval later",
     Observation(digest=D, last_attempt=FAILED_LONG_AGO, stalled=True, interval_seconds=600),
     Decision(Action.INSTALL)),
    ("a failed attempt of values now in sync does not matter",
     Observation(**IN_SYNC, last_attempt=FAILED_NOW, stalled=True), Decision(Action.IN_SYNC)),
    # atomic rollouts of a state
    ("held by a failed rollout: no helm", Observation(**UPGRADE_WANTED, held=True),
     Decision(Action.HELD)),
    ("held, asked to roll back", Observation(**UPGRADE_WANTED, held=True, rollback_to=1),
     Decision(Action.ROLL_BACK_FOR_ROLLOUT)),
    ("deleting wins over a hold", Observation(deleting=True, held=True),
     Decision(Action.UNINSTALL_AND_RELEASE)),
    ("suspended wins over a hold", Observation(suspended=True, held=True, rollback_to=1),
     Decision(Action.SUSPENDED)),
    # manual approval
    ("manual: an install waits for the approval of its plan",
     Observation(digest=D, approval_manual=True), Decision(Action.AWAIT_APPROVAL)),
    ("manual: an upgrade waits for the approval of its plan",
     Observation(**UPGRADE_WANTED, approval_manual=True), Decision(Action.AWAIT_APPROVAL)),
    ("manual: planned before its needs are Ready (a stack is approved as one)",
     Observation(digest=D, approval_manual=True, unready_needs=("db",)),
     Decision(Action.AWAIT_APPROVAL)),
    ("manual, approved: still waits for its needs",
     Observation(digest=D, approval_manual=True, approved=True, unready_needs=("db",)),
     Decision(Action.WAIT_FOR_NEEDS)),
    ("manual, approved: installs", Observation(digest=D, approval_manual=True, approved=True),
     Decision(Action.INSTALL)),
    ("manual, approved: upgrades",
     Observation(**UPGRADE_WANTED, approval_manual=True, approved=True),
     Decision(Action.UPGRADE)),
    ("manual, approved, failed: backs off like any retry",
     Observation(**UPGRADE_WANTED, approval_manual=True, approved=True, last_attempt=FAILED_NOW,
                 backoff_seconds=10), Decision(Action.BACKOFF, 9)),
    ("manual, in sync: nothing to approve", Observation(**IN_SYNC, approval_manual=True),
     Decision(Action.IN_SYNC)),
    ("manual, in sync, needs not Ready: waits as before",
     Observation(**IN_SYNC, approval_manual=True, unready_needs=("db",)),
     Decision(Action.WAIT_FOR_NEEDS)),
    ("manual: an uninstall waits for the approval of its plan",
     Observation(install_wanted=False, in_storage=True, approval_manual=True),
     Decision(Action.AWAIT_APPROVAL)),
    ("manual, approved: uninstalls",
     Observation(install_wanted=False, in_storage=True, approval_manual=True, approved=True),
     Decision(Action.UNINSTALL)),
    ("manual: nothing installed, nothing to approve",
     Observation(install_wanted=False, approval_manual=True), Decision(Action.MARK_UNINSTALLED)),
    ("manual: values errors before the plan",
     Observation(values_error="x", approval_manual=True), Decision(Action.REPORT_VALUES_ERROR)),
    ("manual: a lock before the plan",
     Observation(**UPGRADE_WANTED, approval_manual=True,
                 lock=Lock("pending-upgrade", 3, 10, ours=False)),
     Decision(Action.WAIT_FOR_LOCK, STALE - 10)),
]  # fmt: skip


@pytest.mark.parametrize(
    ("observation", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_decide(observation: Observation, expected: Decision) -> None:
    assert decide(observation) == expected


def test_every_action_is_reachable() -> None:
    reached = {expected.action for _, _, expected in CASES}
    assert reached == set(Action)
