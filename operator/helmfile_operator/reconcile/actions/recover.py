"""locked → recover: a stale `pending-*` release (helm was killed mid-action) is unlocked.

Rolled back to the newest revision that was ever deployed, found among all revisions in storage
(whatever `historyMax`, however many failed revisions since); uninstalled only when no revision
was ever deployed (an interrupted first install) — a release that served once is never removed.
"""

from __future__ import annotations

from helmfile_operator.reconcile.release_context import ReleaseContext


async def recover(ctx: ReleaseContext) -> None:
    assert ctx.storage is not None
    locked = ctx.storage.head
    last_good = ctx.storage.last_deployed(below=locked.number)
    if last_good is None:
        await ctx.starting("Uninstalling", f"recovering from {locked.status}: uninstalling")
        await ctx.helm_uninstall()
        done = "uninstalled it (no revision was ever deployed)"
    else:
        await ctx.starting("RollingBack", f"recovering from {locked.status}: to {last_good}")
        await ctx.helm_rollback(last_good, wait=False)
        done = f"rolled back to revision {last_good}"
    ctx.status.in_progress = None
    ctx.event(
        "Normal",
        "Recovered",
        f"release was left {locked.status} (revision {locked.number}): {done}",
    )
    ctx.requeue(0)
