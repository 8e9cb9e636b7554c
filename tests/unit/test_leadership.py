"""Leader election: the decision as a table, and electors (with short timings) on a fake Lease API
— one leader at a time, a takeover only after the lease duration, a leader that cannot renew
stops acting before its Lease can expire."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeHelm, FakeKube, FakeLeases

from helmfile_operator.controllers.runtime import Controller
from helmfile_operator.leadership import (
    LeaderElector,
    LeaseRecord,
    Timings,
    Verdict,
    decide,
    lease_namespace,
    may_act,
)
from helmfile_operator.settings import Settings


def record(holder: str, duration: float = 15) -> LeaseRecord:
    return LeaseRecord(holder, duration, 3, "t0", "t1", "42")


DECISIONS: list[tuple[str, LeaseRecord | None, float, Verdict]] = [
    ("no Lease yet", None, 0, Verdict.CREATE),
    ("ours", record("me"), 0, Verdict.RENEW),
    ("ours, even when we saw it unchanged for long", record("me"), 99, Verdict.RENEW),
    ("released (empty holder)", record(""), 0, Verdict.ACQUIRE),
    ("another holder, renewed just now", record("other"), 0, Verdict.FOLLOW),
    ("another holder, unchanged just under its duration", record("other"), 14.9, Verdict.FOLLOW),
    ("another holder, unchanged for its duration", record("other"), 15, Verdict.ACQUIRE),
    ("the Lease's own duration counts, not ours", record("other", 30), 20, Verdict.FOLLOW),
]


@pytest.mark.parametrize(
    ("lease", "unchanged_for", "verdict"),
    [case[1:] for case in DECISIONS],
    ids=[case[0] for case in DECISIONS],
)
def test_decide(lease: LeaseRecord | None, unchanged_for: float, verdict: Verdict) -> None:
    assert decide(lease, "me", unchanged_for) is verdict


@pytest.mark.parametrize(
    ("renewed_at", "now", "allowed"),
    [(None, 0.0, False), (100.0, 100.0, True), (100.0, 109.9, True), (100.0, 110.0, False)],
)
def test_may_act_only_within_the_renew_deadline(
    renewed_at: float | None, now: float, allowed: bool
) -> None:
    assert may_act(renewed_at, now, renew_deadline=10) is allowed


def test_lease_namespace(tmp_path: Path) -> None:
    assert lease_namespace("ops", tmp_path) == "ops"
    assert lease_namespace("", tmp_path) == "default"  # outside a pod
    (tmp_path / "namespace").write_text("helmfile-system\n")
    assert lease_namespace("", tmp_path) == "helmfile-system"


FAST = Timings(lease_duration=0.6, renew_deadline=0.4, retry_period=0.05)


class Replica:
    def __init__(self, api: FakeLeases, identity: str, timings: Timings = FAST) -> None:
        self.started_at: float | None = None
        self.stopped_at: float | None = None
        self.elector = LeaderElector(
            api,  # type: ignore[arg-type]
            "ops",
            "helmfile-operator",
            identity,
            timings,
            on_started=self._started,
            on_stopped=self._stopped,
        )
        self.task: asyncio.Task[None] = asyncio.create_task(self.elector.run())

    def _started(self) -> None:
        self.started_at = time.monotonic()

    def _stopped(self) -> None:
        self.stopped_at = time.monotonic()

    async def cancel(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


async def until(predicate: Any, within: float = 5) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polling fakes
            await asyncio.sleep(0.01)


async def test_one_leader_and_a_takeover_only_after_the_lease_duration() -> None:
    api = FakeLeases()
    first = Replica(api, "a")
    await until(lambda: first.elector.is_leader)
    second = Replica(api, "b")
    try:
        await asyncio.sleep(FAST.lease_duration * 2)
        assert first.elector.is_leader and not second.elector.is_leader
        assert second.elector.holder == "a"
        # The leader dies without a word (SIGKILL): its last renewal is at most one retry ago.
        await first.cancel()
        died = time.monotonic()
        await until(lambda: second.elector.is_leader)
        assert second.started_at is not None
        waited = second.started_at - died
        assert FAST.lease_duration - FAST.retry_period <= waited < FAST.lease_duration + 0.5
        lease = api.leases["ops", "helmfile-operator"]["spec"]
        assert lease["holderIdentity"] == "b"
        assert lease["leaseTransitions"] == 1
    finally:
        await first.cancel()
        await second.cancel()


async def test_a_leader_cut_off_from_the_api_stops_before_its_lease_can_expire() -> None:
    api = FakeLeases()
    leader = Replica(api, "a")
    await until(lambda: leader.elector.is_leader)
    try:
        await asyncio.sleep(0.2)
        api.down = True
        cut = time.monotonic()
        # The gate closes on the leader's own clock, whether or not its loop has run yet.
        await until(lambda: not leader.elector.may_act(), within=FAST.renew_deadline + 0.2)
        assert time.monotonic() - cut <= FAST.renew_deadline + 0.05
        await until(lambda: leader.stopped_at is not None, within=1)
        assert leader.stopped_at is not None
        # Stopped before a standby that saw the last renewal could take over.
        assert leader.stopped_at - cut < FAST.lease_duration
        assert leader.task.done() and not leader.elector.is_leader
    finally:
        await leader.cancel()


async def test_a_conflicting_write_leaves_exactly_one_leader() -> None:
    api = FakeLeases()
    replicas = [Replica(api, name) for name in "abcd"]
    try:
        await until(lambda: any(r.elector.is_leader for r in replicas))
        await asyncio.sleep(FAST.lease_duration)
        leaders = [r for r in replicas if r.elector.is_leader]
        assert len(leaders) == 1
        assert api.holder("ops", "helmfile-operator") == leaders[0].elector.identity
    finally:
        for replica in replicas:
            await replica.cancel()


async def test_a_released_lease_is_taken_over_at_the_next_check() -> None:
    slow = Timings(lease_duration=30, renew_deadline=20, retry_period=0.05)
    api = FakeLeases()
    first = Replica(api, "a", slow)
    await until(lambda: first.elector.is_leader)
    second = Replica(api, "b", slow)
    try:
        await asyncio.sleep(0.2)
        await first.cancel()
        await first.elector.release()  # a clean shutdown
        await until(lambda: second.elector.is_leader, within=1)  # not after 30 s
    finally:
        await first.cancel()
        await second.cancel()


def elected(kube: FakeKube, exits: list[int], **settings: Any) -> Controller:
    return Controller(
        Settings(
            max_concurrent_reconciles=2,
            index_audit_seconds=0,
            leader_election=True,
            leader_election_namespace="ops",
            lease_duration_seconds=FAST.lease_duration,
            renew_deadline_seconds=FAST.renew_deadline,
            retry_period_seconds=FAST.retry_period,
            **settings,
        ),
        kube,  # type: ignore[arg-type]
        FakeHelm(kube),  # type: ignore[arg-type]
        identity="me",
        exit_process=exits.append,
    )


async def test_a_standby_keeps_its_queue_but_runs_no_workers() -> None:
    kube = FakeKube()
    kube.leases["ops", "helmfile-operator"] = {
        "metadata": {"name": "helmfile-operator", "namespace": "ops", "resourceVersion": "1"},
        "spec": {"holderIdentity": "other", "leaseDurationSeconds": 15, "renewTime": "x"},
    }
    exits: list[int] = []
    ctl = elected(kube, exits)
    ctl.start()
    try:
        await asyncio.sleep(0.2)
        assert ctl.role == "standby" and ctl.healthy
        assert ctl.queue.workers == 0
        assert ctl.metrics.registry.get_sample_value("helmfile_operator_leader") == 0
        runner = ctl.reconciler.helm.runner
        assert runner.may_start is not None and not runner.may_start()
    finally:
        await ctl.stop()


async def test_the_leader_works_and_exits_when_it_cannot_renew() -> None:
    kube = FakeKube()
    exits: list[int] = []
    ctl = elected(kube, exits)
    ctl.start()
    try:
        await until(lambda: ctl.role == "leader")
        assert ctl.queue.workers == 2 and ctl.healthy
        assert ctl.metrics.registry.get_sample_value("helmfile_operator_leader") == 1
        assert ctl.reconciler.helm.runner.may_start()
        kube.down = True
        await until(lambda: exits == [1], within=FAST.renew_deadline + 0.5)
        assert ctl.reconciler.helm.runner.killed == 1  # helm killed before the exit
        assert not ctl.reconciler.helm.runner.may_start()
    finally:
        await ctl.stop()


async def test_a_clean_stop_releases_the_lease() -> None:
    kube = FakeKube()
    ctl = elected(kube, [])
    ctl.start()
    await until(lambda: ctl.role == "leader")
    await ctl.stop()
    assert kube.holder("ops", "helmfile-operator") == ""


def test_lease_timings_must_leave_a_margin() -> None:
    with pytest.raises(ValueError, match="renew_deadline_seconds"):
        Settings(lease_duration_seconds=10, renew_deadline_seconds=10)
    with pytest.raises(ValueError, match="retry_period_seconds"):
        Settings(renew_deadline_seconds=2, retry_period_seconds=2)


def test_each_shard_has_its_own_lease() -> None:
    assert Settings().lease_name == "helmfile-operator"
    assert Settings(shard="eu-1").lease_name == "helmfile-operator-shard-eu-1"
    with pytest.raises(ValueError, match="shard"):
        Settings(shard="Not_A_Name")


async def test_a_cancelled_election_always_ends() -> None:
    # A cancellation that races the end of a Lease call must not be lost (asyncio.wait_for on
    # Python 3.11 loses it): shutdown awaits the election task.
    api = FakeLeases()
    for attempt in range(300):
        replica = Replica(api, f"r{attempt % 3}", Timings(0.6, 0.4, 0.001))
        for _ in range(attempt % 7):
            await asyncio.sleep(0)
        replica.task.cancel()
        async with asyncio.timeout(2):
            await asyncio.gather(replica.task, return_exceptions=True)
        assert replica.task.cancelled()
