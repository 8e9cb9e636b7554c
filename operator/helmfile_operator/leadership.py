"""Leader election over a `coordination.k8s.io/v1` Lease, with client-go's rules.

One replica holds the Lease and renews it every `retry_period`; the others read it as often and
take it over once they have seen it unchanged for its `leaseDurationSeconds` — measured on their
own clock from when they saw it change, so clock skew between nodes does not matter. Every write
is a create or a replace carrying the resourceVersion that was read: of two replicas taking an
expired Lease at once, one gets 409 and stays a standby.

A leader that has not renewed for `renew_deadline` may no longer act (`may_act` turns false on
its own clock, without any I/O) and is told to stop: the process kills its helm runs and exits.
A standby can take over only `lease_duration` after it last saw the leader renew, which is at
least `lease_duration - renew_deadline` after the leader stopped acting.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import enum
import logging
import random
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helmfile_operator.kube import Kube

logger = logging.getLogger("helmfile_operator.leadership")

Body = dict[str, Any]

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


@dataclass(frozen=True)
class Timings:
    lease_duration: float
    renew_deadline: float
    retry_period: float


@dataclass(frozen=True)
class LeaseRecord:
    """The Lease as read: what the decision needs, and what identifies one renewal."""

    holder: str  # "" when released
    duration_seconds: float
    transitions: int
    acquire_time: str
    renew_time: str
    resource_version: str

    @classmethod
    def from_body(cls, body: Body) -> LeaseRecord:
        spec = body.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration_seconds=float(spec.get("leaseDurationSeconds") or 0),
            transitions=int(spec.get("leaseTransitions") or 0),
            acquire_time=str(spec.get("acquireTime") or ""),
            renew_time=str(spec.get("renewTime") or ""),
            resource_version=str((body.get("metadata") or {}).get("resourceVersion") or ""),
        )


class Verdict(enum.StrEnum):
    CREATE = "create"  # no Lease yet: create it, holding it
    ACQUIRE = "acquire"  # released, or unchanged for its duration: take it over
    RENEW = "renew"  # ours: renew it
    FOLLOW = "follow"  # another replica holds it: stand by


def decide(record: LeaseRecord | None, identity: str, unchanged_for: float) -> Verdict:
    """What to do with the Lease as read; `unchanged_for`: seconds since this replica first saw
    it as it is now (its own clock)."""
    if record is None:
        return Verdict.CREATE
    if record.holder == identity:
        return Verdict.RENEW
    if not record.holder or unchanged_for >= record.duration_seconds:
        return Verdict.ACQUIRE
    return Verdict.FOLLOW


def may_act(renewed_at: float | None, now: float, renew_deadline: float) -> bool:
    """A leader acts only within `renew_deadline` of the start of its last successful renewal
    (the start: the API server may have written it any time after)."""
    return renewed_at is not None and now - renewed_at < renew_deadline


class _Outcome(enum.Enum):
    HELD = "held"
    OTHER = "other"  # another replica holds it
    FAILED = "failed"  # the API could not tell (error, timeout, conflict)


def new_identity() -> str:
    """This replica's holder identity: the pod name (the hostname) and a random suffix, as
    client-go's, so that a restarted container is a new holder."""
    return f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"


def lease_namespace(configured: str, token_dir: Path = SERVICE_ACCOUNT_DIR) -> str:
    """The Lease's namespace: the setting (the chart sets it to the pod's namespace), else the
    namespace of the pod's ServiceAccount, else `default` (outside a cluster)."""
    if configured:
        return configured
    with contextlib.suppress(OSError):
        namespace = (token_dir / "namespace").read_text().strip()
        if namespace:
            return namespace
    return "default"


def _micro_time(moment: datetime.datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    """Runs the election for one Lease. `on_started` is called when this replica becomes the
    leader, `on_stopped` once when it stops being one (the caller ends the process)."""

    def __init__(
        self,
        kube: Kube,
        namespace: str,
        name: str,
        identity: str,
        timings: Timings,
        *,
        on_started: Callable[[], None],
        on_stopped: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.timings = timings
        self.on_started = on_started
        self.on_stopped = on_stopped
        self.clock = clock
        self.is_leader = False
        self.holder = ""  # who holds the Lease, as last read
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None

    def may_act(self) -> bool:
        """Whether this replica may start helm now: the leader, within its renew deadline."""
        return self.is_leader and may_act(
            self._renewed_at, self.clock(), self.timings.renew_deadline
        )

    async def run(self) -> None:
        """Until cancelled, or until leadership is lost (then `on_stopped` has been called)."""
        t = self.timings
        while True:
            if self.is_leader:
                assert self._renewed_at is not None
                budget = self._renewed_at + t.renew_deadline - self.clock()
            else:
                budget = t.renew_deadline
            outcome = _Outcome.FAILED
            if budget > 0:
                try:
                    # Not asyncio.wait_for: on 3.11 it can swallow a cancellation that races
                    # the inner call's end, and the loop would outlive its cancel.
                    async with asyncio.timeout(budget):
                        outcome = await self._attempt(budget)
                except asyncio.CancelledError:
                    raise
                except Exception as error:  # the API server may be unreachable: next round
                    status = getattr(error, "status", None)  # 403: the Lease RBAC is missing
                    logger.warning(
                        "Lease %s/%s: %s%s",
                        self.namespace,
                        self.name,
                        type(error).__name__,
                        f" (HTTP {status})" if status else "",
                    )
            if self.is_leader:
                if outcome is _Outcome.OTHER or not self.may_act():
                    self.is_leader = False
                    logger.error(
                        "Lease %s/%s: leadership lost (%s); stopping",
                        self.namespace,
                        self.name,
                        f"now held by {self.holder}"
                        if outcome is _Outcome.OTHER
                        else f"not renewed within {t.renew_deadline:g}s",
                    )
                    self.on_stopped()
                    return
                assert self._renewed_at is not None
                left = self._renewed_at + t.renew_deadline - self.clock()
                await asyncio.sleep(max(0.0, min(t.retry_period, left)))
                continue
            if outcome is _Outcome.HELD:
                self.is_leader = True
                logger.info("Lease %s/%s: acquired by %s", self.namespace, self.name, self.identity)
                self.on_started()
                await asyncio.sleep(t.retry_period)  # then renew on the leader's schedule
                continue
            # Standbys retry with jitter, so that they do not all ask at once.
            await asyncio.sleep(t.retry_period * random.uniform(1.0, 1.2))  # noqa: S311

    async def _attempt(self, budget: float) -> _Outcome:
        started = self.clock()
        timeout = (min(budget, self.timings.retry_period), budget)
        body = await self.kube.get_lease(self.namespace, self.name, timeout)
        record = LeaseRecord.from_body(body) if body is not None else None
        if record != self._observed:
            self._observed, self._observed_at = record, self.clock()
        self.holder = record.holder if record is not None else ""
        verdict = decide(record, self.identity, self.clock() - self._observed_at)
        if verdict is Verdict.FOLLOW:
            return _Outcome.OTHER
        written = await self._write(verdict, record, body, timeout)
        if written is None:
            return _Outcome.FAILED  # someone wrote it meanwhile: read it again
        self._observed, self._observed_at = LeaseRecord.from_body(written), self.clock()
        self.holder = self.identity
        self._renewed_at = started
        return _Outcome.HELD

    async def _write(
        self,
        verdict: Verdict,
        record: LeaseRecord | None,
        body: Body | None,
        request_timeout: tuple[float, float],
    ) -> Body | None:
        now = _micro_time(datetime.datetime.now(datetime.UTC))
        spec: Body = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": max(1, round(self.timings.lease_duration)),
            "renewTime": now,
        }
        if verdict is Verdict.CREATE:
            spec.update(acquireTime=now, leaseTransitions=0)
            lease = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": spec,
            }
            return await self.kube.create_lease(self.namespace, lease, request_timeout)
        assert record is not None
        assert body is not None
        if verdict is Verdict.ACQUIRE:
            spec.update(acquireTime=now, leaseTransitions=record.transitions + 1)
        else:
            spec.update(acquireTime=record.acquire_time or now, leaseTransitions=record.transitions)
        lease = {**body, "spec": {**(body.get("spec") or {}), **spec}}
        return await self.kube.replace_lease(self.namespace, lease, request_timeout)

    async def release(self) -> None:
        """On a clean shutdown (after helm stopped): give the Lease up, so that a standby takes
        over at its next check instead of after the lease duration. Best effort."""
        if not self.may_act():
            return
        self.is_leader = False
        timeout = (self.timings.retry_period, self.timings.renew_deadline)
        with contextlib.suppress(Exception):
            body = await self.kube.get_lease(self.namespace, self.name, timeout)
            if body is None or (body.get("spec") or {}).get("holderIdentity") != self.identity:
                return
            spec = {**body["spec"], "holderIdentity": "", "leaseDurationSeconds": 1}
            await self.kube.replace_lease(self.namespace, {**body, "spec": spec}, timeout)
            logger.info("Lease %s/%s: released", self.namespace, self.name)
