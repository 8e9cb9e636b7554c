"""installed: false, removal from the state, or deletion → uninstall."""

from __future__ import annotations

from helmfile_operator.helm import HelmError
from helmfile_operator.reconcile.release_context import ReleaseContext


async def uninstall(ctx: ReleaseContext, why: str) -> None:
    """Raises HelmError when helm fails: the caller decides between retry and Stalled."""
    await ctx.starting("Uninstalling", f"uninstalling {ctx.spec.release_name} ({why})")
    try:
        await ctx.helm_uninstall(ctx.reconciler.settings.uninstall_timeout_seconds)
    except HelmError:
        ctx.reconciler.metrics.release_actions.labels("uninstall", "failure").inc()
        raise
    ctx.reconciler.metrics.release_actions.labels("uninstall", "success").inc()
    ctx.status.revision = None
    ctx.status.inventory = []
    ctx.status.last_applied_digest = None
    ctx.event("Normal", "Uninstalled", f"uninstalled {ctx.spec.release_name} ({why})")
