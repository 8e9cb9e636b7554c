"""failed → remediate: a failed install is uninstalled; a failed atomic upgrade is rolled back.

Done by the operator (not helm's --atomic/--rollback-on-failure) so that it works the same on
Helm 3 and 4, shows up as its own Event and condition, and survives an operator restart.
"""

from __future__ import annotations

from typing import Literal

from helmfile_operator import metrics
from helmfile_operator.helm.errors import HelmError
from helmfile_operator.reconcile import conditions
from helmfile_operator.reconcile.release_context import ReleaseContext


async def remediate(ctx: ReleaseContext, failed: Literal["install", "upgrade"]) -> None:
    try:
        if failed == "install":
            await ctx.helm_uninstall()
            action, message = "Uninstalled", "uninstalled the failed install"
            ctx.status.revision = None
        elif ctx.options.atomic:
            await ctx.helm_rollback(None, wait=bool(ctx.options.wait))
            action, message = "RolledBack", "rolled back the failed upgrade"
        else:
            return
    except HelmError as error:
        ctx.status.conditions = conditions.set_condition(
            ctx.status.conditions,
            conditions.REMEDIATED,
            "False",
            "RemediationFailed",
            f"remediation failed ({error.kind}): {error.message}",
            ctx.generation,
        )
        ctx.event("Warning", "RemediationFailed", error.message)
        return
    metrics.REMEDIATIONS.labels("uninstall" if failed == "install" else "rollback").inc()
    ctx.status.conditions = conditions.set_condition(
        ctx.status.conditions, conditions.REMEDIATED, "True", action, message, ctx.generation
    )
    ctx.event("Normal", action, message)
