"""locked → recover: a release left `pending-*` (the operator died mid-action) is unlocked.

With no good revision to return to (an interrupted first install) the release is uninstalled;
otherwise it is rolled back to the newest revision that was ever deployed.
"""

from __future__ import annotations

from helmfile_operator.reconcile.release_context import ReleaseContext

GOOD = frozenset({"deployed", "superseded"})


async def recover(ctx: ReleaseContext) -> None:
    assert ctx.storage is not None
    spec = ctx.spec
    history = await ctx.reconciler.helm.history(
        release=spec.release_name, namespace=spec.target_namespace, impersonate=ctx.impersonate
    )
    good = [r.revision for r in history if r.status in GOOD and r.revision < ctx.storage.revision]
    if not good:
        await ctx.helm_uninstall()
        done = "uninstalled it (no revision was ever deployed)"
    else:
        await ctx.helm_rollback(max(good), wait=False)
        done = f"rolled back to revision {max(good)}"
    ctx.event("Normal", "Recovered", f"release was left {ctx.storage.status}: {done}")
    ctx.requeue(0)
