"""failed → remediate: a failed install is uninstalled; a failed atomic upgrade is rolled back to
the last revision that was deployed.

Only called when helm stored a new (failed) revision: a failure before that changed nothing and
there is nothing to undo. Done by the operator (not helm's --atomic/--rollback-on-failure) so
that it works the same on Helm 3 and 4, shows up as its own Event and condition, and survives an
operator restart.
"""

from __future__ import annotations

from typing import Literal

from helmfile_operator.helm import HelmError
from helmfile_operator.reconcile import conditions
from helmfile_operator.reconcile.release_context import ReleaseContext, Storage


async def remediate(
    ctx: ReleaseContext, failed: Literal["install", "upgrade"], storage: Storage
) -> None:
    last_good = storage.last_deployed(below=storage.revision)
    try:
        if failed == "install" and last_good is None:
            await ctx.starting("Uninstalling", "uninstalling the failed install")
            await ctx.helm_uninstall()
            action, message = "Uninstalled", "uninstalled the failed install"
            ctx.status.revision = None
        elif ctx.options.atomic and last_good is not None:
            await ctx.starting("RollingBack", f"rolling back the failed upgrade to {last_good}")
            await ctx.helm_rollback(last_good, wait=bool(ctx.options.wait))
            action, message = "RolledBack", f"rolled back to revision {last_good}"
        else:
            return
    except HelmError as error:
        ctx.set_condition(
            conditions.REMEDIATED,
            "False",
            "RemediationFailed",
            f"remediation failed ({error.kind}): {error.message}",
        )
        ctx.event("Warning", "RemediationFailed", error.message)
        return
    ctx.reconciler.metrics.remediations.labels(
        "uninstall" if action == "Uninstalled" else "rollback"
    ).inc()
    ctx.set_condition(conditions.REMEDIATED, "True", action, message)
    ctx.event("Normal", action, message)
