"""Fixtures of the reconciler unit tests: a Reconciler over in-memory fakes (see fakes.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from fakes import FakeHelm, FakeKube, World

from helmfile_operator.reconcile.context import ObjectKey, Reconciler
from helmfile_operator.reconcile.workqueue import WorkQueue
from helmfile_operator.settings import Settings


@pytest_asyncio.fixture(loop_scope="function")
async def world() -> AsyncIterator[World]:
    """Built inside the test's event loop, so that the queue's timers live on it."""
    kube = FakeKube()
    helm = FakeHelm(kube)
    queue: WorkQueue[ObjectKey] = WorkQueue()
    reconciler = Reconciler(
        kube=kube,  # type: ignore[arg-type]
        helm=helm,  # type: ignore[arg-type]
        settings=Settings(retry_base_seconds=1, retry_max_seconds=10),
        queue=queue,
    )
    yield World(kube=kube, helm=helm, queue=queue, reconciler=reconciler)
    queue.shutdown()
