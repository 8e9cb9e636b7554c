"""Kubernetes Events on our objects, posted through the API by one background task.

Posting does not depend on kopf's handler context (workers run outside it), never blocks a
reconcile pass, and is bounded: a full queue drops Events (they are advisory; conditions carry the
truth), and the same reason and message on the same object is posted once per `repeat_seconds`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import datetime
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from helmfile_operator.logs import object_fields

logger = logging.getLogger("helmfile_operator.events")

COMPONENT = "helmfile-operator"
MESSAGE_MAX = 1000
QUEUE_MAX = 1000
SEEN_MAX = 4096

PostEvent = Callable[[str, dict[str, Any]], Awaitable[None]]


def event_body(
    involved: Mapping[str, Any], type_: str, reason: str, message: str, instance: str
) -> dict[str, Any]:
    metadata = involved.get("metadata") or {}
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{metadata.get('name', 'object')}.", "namespace": None},
        "involvedObject": {
            "apiVersion": involved.get("apiVersion"),
            "kind": involved.get("kind"),
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "uid": metadata.get("uid"),
        },
        "type": type_,
        "reason": reason,
        "message": message[:MESSAGE_MAX],
        "source": {"component": COMPONENT},
        "reportingComponent": COMPONENT,
        "reportingInstance": instance,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventRecorder:
    def __init__(self, post: PostEvent | None, repeat_seconds: float = 600.0) -> None:
        self._post = post
        self._repeat_seconds = repeat_seconds
        self._queue: asyncio.Queue[dict[str, Any]] | None = None
        self._task: asyncio.Task[None] | None = None
        self._seen: collections.OrderedDict[tuple[str, str, str], float] = collections.OrderedDict()
        self._instance = socket.gethostname()
        self.dropped = 0

    def record(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """Log the Event and queue it for posting; never blocks, never raises."""
        metadata = involved.get("metadata") or {}
        where = f"{involved.get('kind')}/{metadata.get('namespace')}/{metadata.get('name')}"
        (logger.warning if type_ == "Warning" else logger.info)(
            "%s: %s: %s",
            where,
            reason,
            message,
            extra=object_fields(
                involved.get("kind"), metadata.get("namespace"), metadata.get("name"), reason=reason
            ),
        )
        if self._queue is None:
            return  # not started (unit tests, one-shot commands): the log line is all
        key = (str(metadata.get("uid") or where), reason, message)
        now = time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last < self._repeat_seconds:
            return
        self._seen[key] = now
        self._seen.move_to_end(key)
        while len(self._seen) > SEEN_MAX:
            self._seen.popitem(last=False)
        body = event_body(involved, type_, reason, message, self._instance)
        body["metadata"]["namespace"] = metadata.get("namespace")
        try:
            self._queue.put_nowait(body)
        except asyncio.QueueFull:
            self.dropped += 1

    def start(self) -> None:
        if self._task is not None or self._post is None:
            return
        self._queue = asyncio.Queue(maxsize=QUEUE_MAX)
        self._task = asyncio.create_task(self._run(), name="events")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        assert self._queue is not None
        assert self._post is not None
        while True:
            body = await self._queue.get()
            try:
                await self._post(body["metadata"]["namespace"], body)
            except Exception as error:  # an Event is advisory: never fail a pass for it
                logger.debug("posting an Event failed: %s", type(error).__name__)
