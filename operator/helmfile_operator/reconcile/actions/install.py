"""absent → install."""

from helmfile_operator.reconcile.actions.apply import apply
from helmfile_operator.reconcile.release_context import ReleaseContext


async def install(ctx: ReleaseContext) -> None:
    await apply(ctx, "install")
