"""The operator's one runtime object, created at start-up and held in kopf's operator memo.

It owns the work queue (with its retry counters), the release index, what makes an object worth
a pass (signatures) and what its state shows of it (summaries), the Event poster and the index
audit. Watch events feed it through `on_state_event` / `on_release_event`; its workers run the
reconcilers. Nothing here lives at module level, so tests build as many as they like.

Why a work queue instead of kopf's change handlers: the state machine must run as "observe,
decide, act once, re-evaluate", wake a release the moment one of its `needs` turns Ready, retry
with its own backoff, and never run two passes of one object at once — a keyed queue fed by
`kopf.on.event` expresses exactly that (see docs/decisions.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

from helmfile_operator.api.models import Condition
from helmfile_operator.clusters import ClusterPool
from helmfile_operator.events import EventRecorder
from helmfile_operator.helm import HelmClient
from helmfile_operator.helm.runner import Fenced
from helmfile_operator.kube import RELEASES, STATES, FinalizerConflict, Kube
from helmfile_operator.leadership import LeaderElector, Timings, lease_namespace, new_identity
from helmfile_operator.logs import object_fields
from helmfile_operator.metrics import Metrics
from helmfile_operator.reconcile import conditions
from helmfile_operator.reconcile.conditions import body_is_ready
from helmfile_operator.reconcile.context import (
    APPROVE,
    RECONCILE_REQUEST,
    STATE_LABEL,
    IndexedRelease,
    ObjectKey,
    Reconciler,
    ReleaseIndex,
    ReleaseTarget,
    release_target,
)
from helmfile_operator.reconcile.drift import DriftChecker
from helmfile_operator.reconcile.release import reconcile_release
from helmfile_operator.reconcile.rollout import HOLD as ROLLOUT_HOLD
from helmfile_operator.reconcile.rollout import ROLLBACK_TO
from helmfile_operator.reconcile.state import reconcile_state
from helmfile_operator.reconcile.workqueue import WorkQueue
from helmfile_operator.settings import Settings

logger = logging.getLogger("helmfile_operator")

Body = Mapping[str, Any]


def signature(body: Body) -> tuple[Any, ...]:
    """What makes an object worth a pass: spec (generation), deletion, finalizers, a reconcile
    request. Status-only updates (our own writes) are not."""
    metadata = body.get("metadata") or {}
    return (
        metadata.get("generation"),
        metadata.get("deletionTimestamp"),
        tuple(metadata.get("finalizers") or ()),
        (metadata.get("annotations") or {}).get(RECONCILE_REQUEST),
        (metadata.get("annotations") or {}).get(APPROVE),
        (metadata.get("annotations") or {}).get(ROLLOUT_HOLD),
        (metadata.get("annotations") or {}).get(ROLLBACK_TO),
    )


def summary(body: Body) -> tuple[Any, ...]:
    """What the owning state's summary shows of a release; only a change of it requeues it."""
    status = body.get("status") or {}
    conds = tuple(
        (c.get("type"), c.get("status"), c.get("message")) for c in status.get("conditions") or []
    )
    plan = status.get("plan") or {}
    return (
        body_is_ready(body),
        status.get("revision"),
        status.get("chartVersion"),
        conds,
        (body.get("metadata") or {}).get("deletionTimestamp"),
        plan.get("id"),
        plan.get("phase"),
        (body.get("metadata") or {}).get("annotations", {}).get(APPROVE),
        json.dumps(status.get("rolloutHold"), sort_keys=True),
    )


def indexed(body: Body) -> IndexedRelease:
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    return IndexedRelease(
        ready=body_is_ready(body),
        needs=tuple(spec.get("needs") or ()),
        state=(metadata.get("labels") or {}).get(STATE_LABEL),
        drifted=(conditions.body_condition(body, conditions.DRIFTED) or {}).get("status") == "True",
        target=release_target(str(metadata.get("namespace") or ""), spec),
        created=str(metadata.get("creationTimestamp") or ""),
        awaiting_approval=((body.get("status") or {}).get("plan") or {}).get("phase")
        == "AwaitingApproval",
    )


def _key(kind: Any, body: Body) -> ObjectKey:
    metadata = body.get("metadata") or {}
    return ObjectKey(kind, str(metadata.get("namespace")), str(metadata.get("name")))


class Controller:
    def __init__(
        self,
        settings: Settings,
        kube: Kube,
        helm: HelmClient,
        *,
        drift: DriftChecker | None = None,
        metrics: Metrics | None = None,
        clusters: ClusterPool | None = None,
        identity: str | None = None,
        exit_process: Callable[[int], None] = os._exit,
    ) -> None:
        """`exit_process` ends the process when leadership is lost (tests pass their own)."""
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.queue: WorkQueue[ObjectKey] = WorkQueue(
            retry_base_seconds=settings.retry_base_seconds,
            retry_max_seconds=settings.retry_max_seconds,
            group=lambda key: key.namespace,
            max_per_group=settings.max_reconciles_per_namespace
            or max(1, settings.max_concurrent_reconciles // 4),
        )
        self.events = EventRecorder(kube.create_event)
        self.reconciler = Reconciler(
            kube=kube,
            helm=helm,
            settings=settings,
            queue=self.queue,
            drift=drift,
            events=self.events,
            metrics=self.metrics,
            clusters=clusters,
        )
        self.signatures: dict[ObjectKey, tuple[Any, ...]] = {}
        self.summaries: dict[ObjectKey, tuple[Any, ...]] = {}
        self._audit: asyncio.Task[None] | None = None
        self._started = False
        self._leading = False
        self._exit_process = exit_process
        # Leader election: watches (and so the index and the queue) run on every replica; the
        # workers, and with them every helm process, only on the leader.
        self.elector: LeaderElector | None = None
        self._election: asyncio.Task[None] | None = None
        if settings.leader_election:
            self.elector = LeaderElector(
                kube,
                lease_namespace(settings.leader_election_namespace),
                settings.lease_name,
                identity or new_identity(),
                Timings(
                    settings.lease_duration_seconds,
                    settings.renew_deadline_seconds,
                    settings.retry_period_seconds,
                ),
                on_started=self._lead,
                on_stopped=self._abdicate,
            )
            helm.runner.may_start = self.elector.may_act
        m = self.metrics
        m.leader.set_function(lambda: 1 if self.role == "leader" else 0)
        m.queue_depth.set_function(lambda: len(self.queue))
        m.reconciles_in_flight.set_function(lambda: self.queue.in_flight)
        m.helm_in_flight.set_function(lambda: helm.in_flight)
        m.workers.set_function(lambda: self.queue.workers)
        m.drifted_releases.set_function(
            lambda: sum(entry.drifted for entry in self.reconciler.index.releases.values())
        )
        m.plans_awaiting_approval.set_function(
            lambda: sum(
                entry.awaiting_approval for entry in self.reconciler.index.releases.values()
            )
        )

    @property
    def index(self) -> ReleaseIndex:
        return self.reconciler.index

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        """Start the Event poster, then the workers and the index audit — at once, or (leader
        election) once this replica holds the Lease. Once, however often called."""
        if self._started:
            return
        self._started = True
        self.events.start()
        if self.elector is None:
            self._lead()
        else:
            self._election = asyncio.create_task(self.elector.run(), name="leader-election")

    def _lead(self) -> None:
        """This replica acts: the queue, filled by the watches meanwhile, is worked off."""
        if self._leading:
            return
        self._leading = True
        self.queue.start_workers(self.settings.max_concurrent_reconciles, self.process)
        if self.settings.index_audit_seconds > 0:
            self._audit = asyncio.create_task(self._audit_loop(), name="index-audit")

    def _abdicate(self) -> None:
        """Leadership lost (the Lease was not renewed in time): the new leader may start within
        seconds, so nothing of ours may act any more — helm is killed and the process ends, as
        controller-runtime does; Kubernetes restarts it as a standby. No status is written
        (`may_act` already refuses new helm runs; a write now could race the new leader)."""
        killed = self.reconciler.helm.runner.kill_all()
        logger.error("leadership lost: killed %d helm process(es); exiting", killed)
        for handler in logging.getLogger().handlers:
            with contextlib.suppress(Exception):
                handler.flush()
        self._exit_process(1)

    async def stop(self) -> None:
        if self._audit is not None:
            self._audit.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._audit
        # Cancels the passes: their helm processes are ended (SIGTERM, then SIGKILL after the
        # grace). The Lease is still renewed meanwhile, so no standby acts before they are gone.
        await self.queue.stop_workers()
        if self._election is not None:
            self._election.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._election
        if self.elector is not None:
            await self.elector.release()  # a standby takes over at once, not after the lease
        await self.events.stop()
        if self.reconciler.clusters is not None:
            self.reconciler.clusters.close()

    @property
    def role(self) -> str:
        """`leader` (also without leader election) or `standby`."""
        return "leader" if self.elector is None or self.elector.is_leader else "standby"

    @property
    def healthy(self) -> bool:
        """False once a worker, the audit or the election ended: liveness fails and the pod is
        restarted. A standby, with no workers, is healthy while its election runs."""
        audit_ok = self._audit is None or not self._audit.done()
        election_ok = self.elector is None or (
            self._election is not None and not self._election.done()
        )
        workers_ok = self.queue.workers_healthy if self._leading else True
        return self._started and workers_ok and audit_ok and election_ok

    # --- watch events -----------------------------------------------------------------------

    def on_state_event(self, event_type: str | None, body: Body) -> None:
        key = _key("HelmfileState", body)
        if event_type == "DELETED":
            self.signatures.pop(key, None)
            self.reconciler.requests.forget(key.namespace, key.name)
            self.queue.remove(key)
            self.metrics.forget_state(key.namespace, key.name)
            return
        self.metrics.record_state(
            key.namespace, key.name, (body.get("status") or {}).get("conditions") or []
        )
        sig = signature(body)
        if self.signatures.get(key) != sig:
            self.signatures[key] = sig
            self.queue.add(key)

    def on_release_event(self, event_type: str | None, body: Body) -> None:
        key = _key("HelmfileRelease", body)
        if event_type == "DELETED":
            self.forget_release(key)
            return
        self.reconciler.bodies.seen(body)
        entry = indexed(body)
        index = self.reconciler.index
        previous = index.put(key.namespace, key.name, entry)
        self.metrics.record_release(
            key.namespace, key.name, (body.get("status") or {}).get("conditions") or []
        )
        sig = signature(body)
        if self.signatures.get(key) != sig:
            self.signatures[key] = sig
            self.queue.add(key)
        if previous is None or previous.ready != entry.ready:
            # Wake what waits on this release now, not at its next resync.
            for dependent in index.dependents(key.namespace, key.name):
                self.queue.add(ObjectKey("HelmfileRelease", key.namespace, dependent))
        if previous is not None and previous.target != entry.target:
            self._wake_claimants(previous.target)
        if entry.state:
            sums = summary(body)
            if self.summaries.get(key) != sums:
                self.summaries[key] = sums
                self.queue.add(ObjectKey("HelmfileState", key.namespace, entry.state))

    def forget_release(self, key: ObjectKey) -> None:
        """The object is gone: drop everything kept for it, and wake who waited on it."""
        previous = self.reconciler.index.pop(key.namespace, key.name)
        self.reconciler.bodies.evict(key.namespace, key.name)
        self.signatures.pop(key, None)
        self.summaries.pop(key, None)
        self.metrics.forget_release(key.namespace, key.name)
        self.queue.remove(key)
        if previous is None:
            return
        self.reconciler.manifests.evict(previous.target)
        if not self.reconciler.index.in_namespace(key.namespace):
            self.reconciler.versions.forget(key.namespace)  # its repositories' versions
        # Releases it needed may be waiting for it to go (reverse-order uninstall).
        for need in previous.needs:
            self.queue.add(ObjectKey("HelmfileRelease", key.namespace, need))
        self._wake_claimants(previous.target)
        if previous.state:
            self.queue.add(ObjectKey("HelmfileState", key.namespace, previous.state))

    def _wake_claimants(self, target: ReleaseTarget) -> None:
        """Another object naming the same Helm release may take it over now."""
        for namespace, name in self.reconciler.index.claimants(target):
            self.queue.add(ObjectKey("HelmfileRelease", namespace, name))

    # --- the index audit --------------------------------------------------------------------

    async def audit_index(self) -> int:
        """Drop index entries of objects that no longer exist — after a watch re-list (410 Gone,
        reconnect) no DELETED arrives for what vanished in the gap. Returns how many."""
        namespaces: list[str | None] = list(self.settings.namespaces) or [None]
        live: set[tuple[str, str]] = set()
        for namespace in namespaces:
            for item in await self.reconciler.kube.list_all(RELEASES, namespace):
                metadata = item["metadata"]
                live.add((metadata["namespace"], metadata["name"]))
        stale = [key for key in self.reconciler.index.releases if key not in live]
        for namespace, name in stale:
            logger.info("HelmfileRelease/%s/%s: gone (missed by the watch)", namespace, name)
            self.forget_release(ObjectKey("HelmfileRelease", namespace, name))
        return len(stale)

    async def _audit_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.index_audit_seconds)
            try:
                await self.audit_index()
            except Exception as error:  # the API may be down: next round
                logger.warning("index audit failed: %s", type(error).__name__)

    # --- one pass ---------------------------------------------------------------------------

    async def process(self, key: ObjectKey) -> None:
        """One pass of one object. No exception leaves it: a failure is logged, written to the
        object's conditions where possible, and retried with the queue's backoff."""
        started = time.monotonic()
        try:
            if key.kind == "HelmfileState":
                await reconcile_state(self.reconciler, key)
            else:
                await reconcile_release(self.reconciler, key)
        except asyncio.CancelledError:
            raise
        except Fenced:
            # Leadership is being lost: the process is about to end, and writes would race
            # the next leader. Nothing is recorded; the next leader runs this pass again.
            logger.warning("%s: helm not started: not the leader any more", key)
        except FinalizerConflict:
            # Someone wrote the object between our read and our write: read it again, now.
            self.metrics.observe_reconcile(key.kind, "conflict", time.monotonic() - started)
            self._reread(key)
            self.queue.add(key)
        except Exception as error:
            self._reread(key)
            self.metrics.observe_reconcile(key.kind, "error", time.monotonic() - started)
            delay = self.queue.add_rate_limited(key)
            logger.exception(
                "%s: reconcile failed (attempt %d), retrying in %.0fs",
                key,
                self.queue.num_requeues(key),
                delay,
                extra=object_fields(key.kind, key.namespace, key.name, reason="ReconcileError"),
            )
            await self._report_error(key, error, delay)
        else:
            self.metrics.observe_reconcile(key.kind, "success", time.monotonic() - started)
            self.queue.forget(key)

    def _reread(self, key: ObjectKey) -> None:
        """The next pass of a release reads it from the API server, not the watch's copy: what
        failed may have been a write whose answer never came."""
        if key.kind == "HelmfileRelease":
            self.reconciler.bodies.evict(key.namespace, key.name)

    async def _report_error(self, key: ObjectKey, error: Exception, delay: float) -> None:
        """Ready=False on the object: a pass that failed must not fail silently."""
        plural = STATES if key.kind == "HelmfileState" else RELEASES
        # The type and the API status only: an exception's text may quote Secret data.
        status = getattr(error, "status", None)
        what = f"{type(error).__name__}" + (f" (HTTP {status})" if status else "")
        message = f"reconcile failed: {what}; retrying in {delay:.0f}s (operator logs have more)"
        try:
            body = await self.reconciler.kube.get(plural, key.namespace, key.name)
            if body is None:
                return
            current = [
                Condition.model_validate(c)
                for c in (body.get("status") or {}).get("conditions") or []
            ]
            generation = body["metadata"].get("generation")
            updated = conditions.mark_not_ready(current, "ReconcileError", message, generation)
            await self.reconciler.kube.patch_status(
                plural,
                key.namespace,
                key.name,
                {"conditions": [c.to_wire() for c in updated]},
            )
        except Exception:  # the API itself may be what failed
            logger.debug("%s: could not write the error condition", key)
