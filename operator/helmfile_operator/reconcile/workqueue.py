"""A keyed work queue with the semantics of client-go's rate-limited queue: a key is processed by
one worker at a time, keys added while being processed are processed again afterwards, duplicates
coalesce, keys can be added after a delay (interval resyncs), and `add_rate_limited` retries a key
with a capped, jittered exponential backoff until `forget` resets it."""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

Key = TypeVar("Key", bound=Hashable)

logger = logging.getLogger("helmfile_operator.workqueue")

# 2**20 times any sane base is far beyond any cap: the exponent never needs to grow past it (and
# `2 ** failures` on an unbounded counter would end in OverflowError once converted to float).
MAX_BACKOFF_EXPONENT = 20


def backoff_delay(
    failures: int, base: float, cap: float, jitter: float = 0.2, rng: random.Random | None = None
) -> float:
    """`base * 2**(failures-1)`, capped, then spread by ±`jitter` so that many keys failing
    together (an API outage) do not retry in lockstep."""
    exponent = min(max(failures - 1, 0), MAX_BACKOFF_EXPONENT)
    delay = min(base * (2.0**exponent), cap)
    spread = (rng or random).uniform(1.0 - jitter, 1.0 + jitter)
    return max(min(delay * spread, cap), 0.0)


class WorkQueue(Generic[Key]):
    def __init__(
        self,
        *,
        retry_base_seconds: float = 5.0,
        retry_max_seconds: float = 300.0,
        group: Callable[[Key], Hashable] | None = None,
        max_per_group: int | None = None,
    ) -> None:
        """`group`/`max_per_group`: at most that many keys of one group (a namespace: a tenant)
        are processed at once, so one tenant's slow objects cannot hold every worker."""

        self._queue: asyncio.Queue[Key] = asyncio.Queue()
        self._queued: set[Key] = set()
        self._processing: set[Key] = set()
        self._dirty: set[Key] = set()
        self._timers: dict[Key, asyncio.TimerHandle] = {}
        self._failures: dict[Key, int] = {}
        self._workers: list[asyncio.Task[None]] = []
        self._group = group
        self._max_per_group = max_per_group
        self._active: dict[Hashable, int] = {}  # keys being processed, per group
        self._parked: dict[Hashable, collections.deque[Key]] = {}  # queued behind their group's cap
        self.retry_base_seconds = retry_base_seconds
        self.retry_max_seconds = retry_max_seconds

    def __len__(self) -> int:
        return len(self._queued)

    @property
    def in_flight(self) -> int:
        return len(self._processing)

    @property
    def tracked(self) -> int:
        """Keys with pending timers or failure counts (bounded by the live objects)."""
        return len(self._timers.keys() | self._failures.keys())

    def add(self, key: Key) -> None:
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        if key in self._processing:
            self._dirty.add(key)  # processed again once the current pass is done
        elif key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    def add_after(self, key: Key, delay: float) -> None:
        """Add the key after `delay` seconds, unless an earlier add comes first."""
        existing = self._timers.get(key)
        loop = asyncio.get_running_loop()
        if existing is not None and existing.when() <= loop.time() + delay:
            return
        if existing is not None:
            existing.cancel()
        self._timers[key] = loop.call_later(max(delay, 0.0), self._fire, key)

    def add_rate_limited(self, key: Key) -> float:
        """Retry the key after its backoff; returns the delay chosen."""
        failures = self._failures[key] = self._failures.get(key, 0) + 1
        delay = backoff_delay(failures, self.retry_base_seconds, self.retry_max_seconds)
        self.add_after(key, delay)
        return delay

    def num_requeues(self, key: Key) -> int:
        return self._failures.get(key, 0)

    def forget(self, key: Key) -> None:
        """The key succeeded: its next failure starts the backoff from the beginning."""
        self._failures.pop(key, None)

    def remove(self, key: Key) -> None:
        """The object is gone: drop its pending delayed add and its failure count."""
        timer = self._timers.pop(key, None)
        if timer is not None:
            timer.cancel()
        self._failures.pop(key, None)

    def _fire(self, key: Key) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> Key:
        while True:
            key = await self._queue.get()
            group = self._group(key) if self._group is not None else None
            if (
                group is not None
                and self._max_per_group is not None
                and self._active.get(group, 0) >= self._max_per_group
            ):
                self._parked.setdefault(group, collections.deque()).append(key)
                continue  # stays queued (adds coalesce); released when its group has room
            break
        self._queued.discard(key)
        self._processing.add(key)
        if group is not None:
            self._active[group] = self._active.get(group, 0) + 1
        return key

    def done(self, key: Key) -> None:
        self._processing.discard(key)
        if self._group is not None:
            group = self._group(key)
            active = self._active.get(group, 1) - 1
            if active > 0:
                self._active[group] = active
            else:
                self._active.pop(group, None)
            parked = self._parked.get(group)
            if parked:
                self._queue.put_nowait(parked.popleft())
                if not parked:
                    del self._parked[group]
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def shutdown(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for worker in self._workers:
            worker.cancel()

    # --- workers ------------------------------------------------------------------------------

    @property
    def workers(self) -> int:
        """Worker tasks alive now."""
        return sum(not worker.done() for worker in self._workers)

    @property
    def workers_healthy(self) -> bool:
        """False once a started worker has ended (only cancellation by shutdown ends one)."""
        return bool(self._workers) and all(not worker.done() for worker in self._workers)

    def start_workers(self, count: int, process: Callable[[Key], Awaitable[None]]) -> None:
        """Start `count` workers once (idempotent). `process` should handle its own errors; one
        that escapes is logged and the worker goes on: no key can stop the others."""
        if self._workers:
            return

        async def worker() -> None:
            while True:
                key = await self.get()
                try:
                    await process(key)
                except Exception:
                    logger.exception("%s: unhandled error in a reconcile pass", key)
                    try:
                        self.add_rate_limited(key)
                    except Exception:  # pragma: no cover - the queue itself is broken
                        logger.exception("%s: cannot requeue", key)
                finally:
                    self.done(key)

        self._workers = [
            asyncio.create_task(worker(), name=f"worker-{index}") for index in range(count)
        ]

    async def stop_workers(self) -> None:
        self.shutdown()
        await asyncio.gather(*self._workers, return_exceptions=True)

    async def run_workers(self, count: int, process: Callable[[Key], Awaitable[None]]) -> None:
        """Run `count` workers until cancelled (for scripts and tests)."""
        self.start_workers(count, process)
        try:
            await asyncio.gather(*self._workers)
        finally:
            await self.stop_workers()
