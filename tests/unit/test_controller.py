"""The Controller: one worker pool whatever the number of objects, workers that survive any
object's failure, bounded backoff with jitter, an index that forgets what is gone."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from fakes import FakeHelm, FakeKube, release_body

from helmfile_operator.controllers.runtime import Controller
from helmfile_operator.kube import RELEASES
from helmfile_operator.reconcile.context import BodyCache, ObjectKey
from helmfile_operator.reconcile.workqueue import MAX_BACKOFF_EXPONENT, WorkQueue, backoff_delay
from helmfile_operator.settings import Settings
from helmfile_operator.sources.resolver import SourceKey, _Entry


def controller(kube: FakeKube, **settings: Any) -> Controller:
    return Controller(
        Settings(**{"max_concurrent_reconciles": 4, "index_audit_seconds": 0, **settings}),
        kube,  # type: ignore[arg-type]
        FakeHelm(kube),  # type: ignore[arg-type]
    )


def suspended(name: str) -> dict[str, Any]:
    body = release_body(name, suspend=True)
    body["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    return body


async def settle(ctl: Controller) -> None:
    async with asyncio.timeout(10):
        while len(ctl.queue) or ctl.queue.in_flight:  # noqa: ASYNC110 - polling a fake
            await asyncio.sleep(0.01)


async def test_one_worker_pool_for_300_objects() -> None:
    kube = FakeKube()
    ctl = controller(kube)
    ctl.start()
    ctl.start()  # idempotent
    try:
        for index in range(300):
            body = kube.create(RELEASES, suspended(f"r{index}"))
            ctl.on_release_event("ADDED", body)
        await settle(ctl)
        assert ctl.queue.workers == 4
        assert ctl.metrics.registry.get_sample_value("helmfile_operator_workers") == 4
        tasks = [t for t in asyncio.all_tasks() if t.get_name().startswith("worker-")]
        assert len(tasks) == 4
        assert ctl.healthy
    finally:
        await ctl.stop()
    assert not [t for t in asyncio.all_tasks() if t.get_name().startswith("worker-")]


async def test_an_object_that_always_fails_stops_no_one(monkeypatch: pytest.MonkeyPatch) -> None:
    kube = FakeKube()
    ctl = controller(kube, retry_base_seconds=0.001, retry_max_seconds=0.002)
    seen: list[ObjectKey] = []
    real_set_finalizers = kube.set_finalizers

    async def set_finalizers(plural: str, namespace: str, name: str, *args: Any) -> Any:
        if name == "bad":  # every pass of it fails, the first from the watch's body
            raise RecursionError("maximum recursion depth exceeded")
        seen.append(ObjectKey("HelmfileRelease", namespace, name))
        return await real_set_finalizers(plural, namespace, name, *args)

    monkeypatch.setattr(kube, "set_finalizers", set_finalizers)
    ctl.start()
    try:
        kube.create(RELEASES, suspended("bad"))
        ctl.on_release_event("ADDED", suspended("bad"))
        bad = ObjectKey("HelmfileRelease", "apps", "bad")

        async with asyncio.timeout(30):
            # past where 2**n overflowed a float
            while ctl.queue.num_requeues(bad) < 1100:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        good = kube.create(RELEASES, suspended("good"))
        ctl.on_release_event("ADDED", good)
        await asyncio.sleep(0.2)
        assert ObjectKey("HelmfileRelease", "apps", "good") in seen
        assert ctl.healthy
        assert ctl.queue.workers == 4
    finally:
        await ctl.stop()


def test_backoff_is_bounded_and_jittered() -> None:
    rng = random.Random(7)  # noqa: S311 - jitter, not crypto
    assert backoff_delay(10**9, 5, 300, rng=rng) <= 300
    delays = {round(backoff_delay(3, 5, 300, rng=rng), 3) for _ in range(20)}
    assert len(delays) > 1  # spread: no lockstep retries
    assert all(16 <= d <= 24 for d in delays)  # 20s ± 20 %
    assert backoff_delay(MAX_BACKOFF_EXPONENT + 5, 1e-9, 1e9, jitter=0) == pytest.approx(
        1e-9 * 2**MAX_BACKOFF_EXPONENT
    )


async def test_workers_that_die_make_the_controller_unhealthy() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.start_workers(2, lambda key: asyncio.sleep(0))
    assert queue.workers_healthy
    queue._workers[0].cancel()
    await asyncio.sleep(0)
    assert not queue.workers_healthy
    await queue.stop_workers()


async def test_audit_forgets_releases_the_watch_never_reported_deleted() -> None:
    kube = FakeKube()
    ctl = controller(kube)
    for name in ("db", "api"):
        ctl.on_release_event("ADDED", kube.create(RELEASES, suspended(name)))
    kube.remove(RELEASES, "apps", "api")  # vanished during a watch gap: no DELETED event
    assert await ctl.audit_index() == 1
    assert ctl.index.get("apps", "api") is None
    assert ctl.index.get("apps", "db") is not None
    assert ObjectKey("HelmfileRelease", "apps", "api") not in ctl.signatures
    ctl.queue.shutdown()


async def test_deleted_release_leaves_no_trace() -> None:
    kube = FakeKube()
    ctl = controller(kube)
    body = kube.create(RELEASES, suspended("web"))
    ctl.on_release_event("ADDED", body)
    ctl.reconciler.manifests.put(("", "target", "web"), ("", 1), "kind: ConfigMap")
    ctl.on_release_event("DELETED", body)
    key = ObjectKey("HelmfileRelease", "apps", "web")
    assert key not in ctl.signatures
    assert key not in ctl.summaries
    assert ctl.index.get("apps", "web") is None
    assert len(ctl.reconciler.manifests) == 0
    assert len(ctl.reconciler.bodies) == 0
    assert ctl.queue.tracked == 0
    ctl.queue.shutdown()


async def test_the_last_release_of_a_namespace_takes_its_cached_versions_along() -> None:
    kube = FakeKube()
    ctl = controller(kube)
    web, db = kube.create(RELEASES, suspended("web")), kube.create(RELEASES, suspended("db"))
    for body in (web, db):
        ctl.on_release_event("ADDED", body)
    versions = ctl.reconciler.versions
    versions._entries[SourceKey("apps", "https://r", None, None, None, False)] = _Entry(0, {})
    ctl.on_release_event("DELETED", web)
    assert len(versions) == 1  # db still uses it
    ctl.on_release_event("DELETED", db)
    assert len(versions) == 0
    ctl.queue.shutdown()


async def test_the_first_claimant_of_a_helm_release_keeps_it() -> None:
    kube = FakeKube()
    ctl = controller(kube)
    first = release_body("first", releaseName="shared")
    first["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    second = release_body("second", releaseName="shared")
    second["metadata"]["creationTimestamp"] = "2026-01-02T00:00:00Z"
    ctl.on_release_event("ADDED", second)
    ctl.on_release_event("ADDED", first)
    assert ctl.index.owner("apps", "second") == ("apps", "first")
    assert ctl.index.owner("apps", "first") is None
    ctl.on_release_event("DELETED", first)
    assert ctl.index.owner("apps", "second") is None
    ctl.queue.shutdown()


async def test_liveness_probe_fails_once_the_workers_died() -> None:
    import kopf

    from helmfile_operator.controllers.handlers import CONTROLLER, workers_alive

    kube = FakeKube()
    ctl = controller(kube)
    ctl.start()
    memo = kopf.Memo({CONTROLLER: ctl})
    assert workers_alive(memo=memo) == 4
    for worker in ctl.queue._workers:
        worker.cancel()
    await asyncio.sleep(0)
    with pytest.raises(kopf.PermanentError):
        workers_alive(memo=memo)
    await ctl.stop()


async def test_a_pass_reads_the_watched_body_and_its_own_writes_not_the_api(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    kube = FakeKube()
    ctl = controller(kube)
    gets: list[str] = []
    real_get = kube.get

    async def get(plural: str, namespace: str, name: str) -> Any:
        gets.append(name)
        return await real_get(plural, namespace, name)

    monkeypatch.setattr(kube, "get", get)
    ctl.start()
    try:
        web = release_body("web")
        web["metadata"]["resourceVersion"] = "1"
        ctl.on_release_event("ADDED", kube.create(RELEASES, web))
        await settle(ctl)  # installed: finalizer and status written, answers kept
        assert (kube.obj(RELEASES, "apps", "web") or {})["status"]["revision"] == 1
        ctl.queue.add(ObjectKey("HelmfileRelease", "apps", "web"))  # a resync: no event
        await settle(ctl)
        assert gets == []
        helm = ctl.reconciler.helm
        assert isinstance(helm, FakeHelm)
        assert helm.verbs == ["upgrade_install"]
    finally:
        await ctl.stop()


def test_body_cache_keeps_the_newest_of_watch_and_own_writes() -> None:
    cache = BodyCache()

    def body(version: str, revision: int) -> dict[str, Any]:
        return {
            "metadata": {"namespace": "apps", "name": "web", "resourceVersion": version},
            "status": {"revision": revision},
        }

    cache.wrote(body("5", 1))
    assert cache.get("apps", "web") is None  # only the watch says an object exists
    cache.seen(body("5", 1))
    cache.wrote(body("7", 2))  # our write's answer, before its watch event
    cache.wrote(body("6", 9))  # an older answer arriving late changes nothing
    assert (cache.get("apps", "web") or {})["status"] == {"revision": 2}
    cache.seen(body("8", 3))
    assert (cache.get("apps", "web") or {})["status"] == {"revision": 3}
    cache.wrote({"metadata": {"namespace": "apps", "name": "web", "resourceVersion": "x"}})
    assert cache.get("apps", "web") is None  # which is newer is unknown: read it again
