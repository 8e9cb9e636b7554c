"""reconcile/workqueue.py: client-go work queue semantics on asyncio."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, defaultdict

from helmfile_operator.reconcile.workqueue import WorkQueue


async def drain(queue: WorkQueue[str]) -> list[str]:
    """Every key queued now, each marked done."""
    keys = []
    while len(queue):
        key = await queue.get()
        keys.append(key)
        queue.done(key)
    return keys


async def test_duplicates_coalesce() -> None:
    queue: WorkQueue[str] = WorkQueue()
    for key in ["a", "b", "a", "a", "b", "c"]:
        queue.add(key)
    assert len(queue) == 3
    assert await drain(queue) == ["a", "b", "c"]
    assert len(queue) == 0


async def test_key_added_while_processing_is_processed_again_after_done() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    key = await queue.get()
    assert queue.in_flight == 1
    queue.add("a")
    queue.add("a")
    assert len(queue) == 0  # not handed out while being processed
    queue.done(key)
    assert queue.in_flight == 0
    assert len(queue) == 1
    assert await drain(queue) == ["a"]
    assert len(queue) == 0


async def test_done_without_a_new_add_does_not_requeue() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    queue.done(await queue.get())
    assert len(queue) == 0
    assert queue.in_flight == 0


async def test_a_key_is_never_processed_by_two_workers_at_once() -> None:
    queue: WorkQueue[str] = WorkQueue()
    active: Counter[str] = Counter()
    overlaps: list[str] = []
    passes: Counter[str] = Counter()
    max_parallel = 0
    running = 0

    async def process(key: str) -> None:
        nonlocal max_parallel, running
        active[key] += 1
        running += 1
        max_parallel = max(max_parallel, running)
        if active[key] > 1:
            overlaps.append(key)
        passes[key] += 1
        queue.add(key)  # added while being processed: comes back after done
        queue.add("k0")  # and others keep getting re-added too
        await asyncio.sleep(0.001)
        running -= 1
        active[key] -= 1

    for i in range(5):
        queue.add(f"k{i}")
    workers = asyncio.create_task(queue.run_workers(8, process))
    await asyncio.sleep(0.05)
    workers.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await workers

    assert overlaps == []
    assert set(passes) == {f"k{i}" for i in range(5)}
    assert all(count > 1 for count in passes.values())  # each was processed again
    assert max_parallel > 1  # the workers did run in parallel, on different keys
    assert max_parallel <= 5


async def test_add_after_fires_after_the_delay() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 0.15)
    assert len(queue) == 0
    await asyncio.sleep(0.03)
    assert len(queue) == 0  # not yet
    await asyncio.sleep(0.17)
    assert len(queue) == 1
    assert await drain(queue) == ["a"]


async def test_an_add_cancels_a_pending_add_after() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 0.05)
    queue.add("a")
    assert await drain(queue) == ["a"]
    await asyncio.sleep(0.1)
    assert len(queue) == 0  # the timer did not add it a second time


async def test_add_after_while_processing_marks_the_key_dirty() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add("a")
    key = await queue.get()
    queue.add_after("a", 0.02)
    await asyncio.sleep(0.05)
    assert len(queue) == 0
    queue.done(key)
    assert await drain(queue) == ["a"]


async def test_an_earlier_add_after_wins_over_a_later_longer_one() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 0.03)
    queue.add_after("a", 0.5)
    await asyncio.sleep(0.08)
    assert len(queue) == 1
    assert await drain(queue) == ["a"]


async def test_a_shorter_add_after_replaces_a_longer_one() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 0.5)
    queue.add_after("a", 0.03)
    await asyncio.sleep(0.08)
    assert await drain(queue) == ["a"]
    queue.shutdown()


async def test_delays_of_different_keys_are_independent() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("slow", 0.2)
    queue.add_after("fast", 0.01)
    await asyncio.sleep(0.05)
    assert await drain(queue) == ["fast"]
    await asyncio.sleep(0.2)
    assert await drain(queue) == ["slow"]


async def test_forget_cancels_a_pending_delayed_add() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 0.03)
    queue.add_after("b", 0.03)
    queue.remove("a")
    queue.remove("never-added")  # no error
    await asyncio.sleep(0.08)
    assert await drain(queue) == ["b"]


async def test_shutdown_cancels_timers() -> None:
    queue: WorkQueue[str] = WorkQueue()
    queue.add_after("a", 0.02)
    queue.add_after("b", 0.03)
    queue.shutdown()
    await asyncio.sleep(0.08)
    assert len(queue) == 0


async def test_worker_processes_every_key_once_per_add() -> None:
    queue: WorkQueue[str] = WorkQueue()
    seen: defaultdict[str, int] = defaultdict(int)
    done = asyncio.Event()

    async def process(key: str) -> None:
        seen[key] += 1
        if sum(seen.values()) == 3:
            done.set()

    for key in ["a", "b", "c", "a"]:
        queue.add(key)
    workers = asyncio.create_task(queue.run_workers(2, process))
    await asyncio.wait_for(done.wait(), 1)
    await asyncio.sleep(0.01)
    workers.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await workers
    assert dict(seen) == {"a": 1, "b": 1, "c": 1}
    assert queue.in_flight == 0


async def test_one_group_cannot_take_every_worker() -> None:
    """Tenant a's slow keys hold at most two of four workers; tenant b's key runs meanwhile."""
    queue: WorkQueue[str] = WorkQueue(group=lambda key: key[0], max_per_group=2)
    release = asyncio.Event()
    running: list[str] = []
    b_done = asyncio.Event()

    async def process(key: str) -> None:
        running.append(key)
        if key.startswith("a"):
            await release.wait()
        else:
            b_done.set()

    for key in ["a1", "a2", "a3", "a4", "a5", "b1"]:
        queue.add(key)
    workers = asyncio.create_task(queue.run_workers(4, process))
    await asyncio.wait_for(b_done.wait(), 1)
    assert sorted(k for k in running if k.startswith("a")) == ["a1", "a2"]  # capped at two
    release.set()
    async with asyncio.timeout(1):
        while len(running) < 6:  # noqa: ASYNC110 - the parked keys follow
            await asyncio.sleep(0.01)
    workers.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await workers
    assert sorted(running) == ["a1", "a2", "a3", "a4", "a5", "b1"]
