"""out of sync → upgrade."""

from helmfile_operator.reconcile.actions.apply import apply
from helmfile_operator.reconcile.release_context import ReleaseContext


async def upgrade(ctx: ReleaseContext) -> None:
    await apply(ctx, "upgrade")
