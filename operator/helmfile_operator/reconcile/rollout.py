"""Atomic rollouts of a state (`spec.rollout.atomic`): the releases one generation changes roll
out as one unit, or back. Pure: the state reconciler observes its children, `advance` decides,
and the reconciler writes what it says onto the children as annotations.

- A generation that changes children starts a rollout, with each changed child's revision from
  before it.
- While it progresses, a child that fails for its current spec (Stalled, after its own
  remediation) fails the rollout.
- Rolling back: every child of the rollout is held (no helm runs; those not yet started never
  start), and those already upgraded by it are asked to roll back to their revision from before,
  one `needs` group at a time, in reverse order. A child first installed by the rollout is held,
  not uninstalled.
- A later generation starts a new rollout and lifts the holds.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from helmfile_operator.api.models import RolloutRelease, RolloutStatus

HOLD = "helmfile.dev/rollout-hold"  # on a child: the rollout that holds it
ROLLBACK_TO = "helmfile.dev/rollback-to"  # on a child: the revision to roll back to


@dataclass(frozen=True)
class Child:
    """What the state sees of one of its HelmfileReleases."""

    name: str
    release_id: str  # `namespace/name`: its place in the install order
    revision: int | None = None
    ready: bool = False  # Ready for its current generation
    failed: bool = False  # Stalled for its current generation
    rolled_back_to: int | None = None  # what its status says it rolled back to (this rollout)


@dataclass(frozen=True)
class Step:
    """What the children must carry now: holds, and the rollbacks asked for."""

    rollout: RolloutStatus
    holds: frozenset[str] = frozenset()
    rollbacks: Mapping[str, int] = field(default_factory=dict)


def rollout_id(state: str, generation: int) -> str:
    return f"{state}-{generation}"


def start(
    state: str, generation: int, changed: Sequence[str], before: Mapping[str, int | None]
) -> RolloutStatus:
    return RolloutStatus(
        id=rollout_id(state, generation),
        generation=generation,
        phase="Progressing",
        releases=[RolloutRelease(name=n, revision_before=before.get(n)) for n in changed],
    )


def advance(
    rollout: RolloutStatus, children: Mapping[str, Child], order: Sequence[Sequence[str]]
) -> Step:
    rollout = rollout.model_copy(deep=True)
    members = [r for r in rollout.releases if r.name in children]
    if rollout.phase == "Progressing":
        failed = next((r.name for r in members if children[r.name].failed), None)
        if failed is None:
            if all(children[r.name].ready for r in members):
                rollout.phase = "Succeeded"
            return Step(rollout)
        rollout.phase = "RollingBack"
        rollout.failed = failed
    if rollout.phase not in ("RollingBack", "RolledBack"):
        return Step(rollout)
    holds = frozenset(r.name for r in members)
    # Upgraded by this rollout (not the one that failed: its own remediation ran). A rollback
    # adds a revision too, so a target stays one; its status says when it is done.
    targets = [
        r
        for r in members
        if r.name != rollout.failed
        and r.revision_before is not None
        and (children[r.name].revision or 0) > r.revision_before
    ]
    pending = [r for r in targets if children[r.name].rolled_back_to != r.revision_before]
    for r in targets:
        if r not in pending and r.name not in rollout.rolled_back:
            rollout.rolled_back.append(r.name)
    if not pending:
        rollout.phase = "RolledBack"
        rollout.message = _message(rollout)
        return Step(rollout, holds)
    group = _group_of(order, children)
    last = max(group.get(r.name, 0) for r in pending)
    asked = {
        r.name: r.revision_before
        for r in pending
        if group.get(r.name, 0) == last and r.revision_before is not None
    }
    rollout.message = _message(rollout, rolling=sorted(asked))
    return Step(rollout, holds, asked)


def _group_of(order: Sequence[Sequence[str]], children: Mapping[str, Child]) -> dict[str, int]:
    index = {rid: k for k, ids in enumerate(order) for rid in ids}
    return {name: index.get(child.release_id, 0) for name, child in children.items()}


def _message(rollout: RolloutStatus, rolling: Sequence[str] = ()) -> str:
    back = ", ".join(rollout.rolled_back) or "none"
    text = f"rollout {rollout.id}: {rollout.failed} failed; rolled back: {back}"
    if rolling:
        text += f"; rolling back {', '.join(rolling)}"
    return text
