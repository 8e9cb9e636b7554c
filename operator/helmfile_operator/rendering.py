"""Rendering a HelmfileState off the event loop, with a time limit.

`render.state.render_state` is pure and CPU-bound: run on the event loop, one tenant's slow
template would stall `/healthz`, the watches and every other tenant's reconciles. So it runs in
a worker thread (the loop's default executor), and its sandbox bounds the work of every template
(`render.templates`), checking the deadline at every step: a template past the time limit stops
itself within one step. Should a worker still not answer shortly after its deadline (one
operation of a template is bounded, but a C-level call cannot be interrupted), it is abandoned
and told to stop, and the caller gets the same RenderLimitExceeded.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

from helmfile_operator.api.models import HelmfileStateSpec
from helmfile_operator.render.errors import RenderLimitExceeded
from helmfile_operator.render.state import RenderedState, StateMeta, render_state
from helmfile_operator.render.templates import RenderBudget

__all__ = [
    "RENDER_GRACE_SECONDS",
    "RENDER_TIMEOUT_SECONDS",
    "RenderLimitExceeded",
    "render_state_bounded",
]

# The time one rendering of a state may take, from when its worker starts: ordinary states take
# milliseconds; 2000 releases with 1 MiB of output each still parse in a few seconds.
RENDER_TIMEOUT_SECONDS = 10.0
# How long past its deadline a worker may take to notice it before it is abandoned.
RENDER_GRACE_SECONDS = 2.0


async def render_state_bounded(
    meta: StateMeta,
    spec: HelmfileStateSpec,
    from_config_maps: Sequence[dict[str, Any]],
    *,
    timeout_seconds: float = RENDER_TIMEOUT_SECONDS,
    slots: asyncio.Semaphore | None = None,
) -> RenderedState:
    """`render_state(meta, spec, from_config_maps)` in a worker thread, within
    `timeout_seconds` of the worker starting (waiting for a free worker does not count).

    Raises what render_state raises (a RenderError subclass), and RenderLimitExceeded, naming
    the release being rendered (`spec.releases[3].valuesTemplate[0]`), when the time is up. If
    the caller is cancelled, the worker is told to stop at its next step. `slots` bounds how
    many renders run at once."""
    budget = RenderBudget(timeout_seconds)
    if slots is not None:
        # Renders at once are bounded operator-wide (each may use up to its memory budget); the
        # slot is held until the worker really ends, even one abandoned after its time limit.
        await slots.acquire()
    work = asyncio.ensure_future(
        asyncio.to_thread(render_state, meta, spec, from_config_maps, budget=budget)
    )
    # An abandoned worker still ends (with RenderLimitExceeded): retrieve that, unlogged.
    work.add_done_callback(_retrieve)
    if slots is not None:
        work.add_done_callback(lambda _: slots.release())
    try:
        while True:
            deadline = budget.deadline  # set by the worker as it starts
            wait = (
                timeout_seconds + RENDER_GRACE_SECONDS
                if deadline is None
                else deadline + RENDER_GRACE_SECONDS - time.monotonic()
            )
            try:
                return await asyncio.wait_for(asyncio.shield(work), max(wait, 0.0))
            except TimeoutError:
                if budget.deadline is not None and time.monotonic() >= (
                    budget.deadline + RENDER_GRACE_SECONDS
                ):
                    raise RenderLimitExceeded(budget.field, budget.time_message()) from None
                # Not started yet (every worker busy): keep waiting for it to start.
    finally:
        if not work.done():
            budget.stop()


def _retrieve(work: asyncio.Future[RenderedState]) -> None:
    if not work.cancelled():
        work.exception()
