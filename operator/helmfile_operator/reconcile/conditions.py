"""kstatus-compatible conditions: Ready, Reconciling and Stalled, plus release-specific ones."""

from __future__ import annotations

import datetime
from collections.abc import Mapping
from typing import Any, Literal

from helmfile_operator.api.models import Condition

READY = "Ready"
RECONCILING = "Reconciling"
STALLED = "Stalled"
RELEASED = "Released"
REMEDIATED = "Remediated"
DRIFTED = "Drifted"
TEST_SUCCESS = "TestSuccess"

Status = Literal["True", "False", "Unknown"]


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def find(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: Status,
    reason: str,
    message: str,
    generation: int | None,
) -> list[Condition]:
    """A new list with the condition set; lastTransitionTime moves only when the status does."""
    previous = find(conditions, type_)
    transition = previous.last_transition_time if previous and previous.status == status else now()
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=transition,
        observed_generation=generation,
    )
    return [c for c in conditions if c.type != type_] + [updated]


def remove(conditions: list[Condition], type_: str) -> list[Condition]:
    return [c for c in conditions if c.type != type_]


def mark_ready(
    conditions: list[Condition], reason: str, message: str, generation: int | None
) -> list[Condition]:
    """Ready=True; kstatus wants Reconciling and Stalled absent then."""
    conditions = set_condition(conditions, READY, "True", reason, message, generation)
    return remove(remove(conditions, RECONCILING), STALLED)


def mark_reconciling(
    conditions: list[Condition], reason: str, message: str, generation: int | None
) -> list[Condition]:
    conditions = set_condition(conditions, RECONCILING, "True", reason, message, generation)
    conditions = set_condition(conditions, READY, "Unknown", reason, message, generation)
    return remove(conditions, STALLED)


def mark_not_ready(
    conditions: list[Condition], reason: str, message: str, generation: int | None
) -> list[Condition]:
    """Ready=False while we keep trying (Reconciling=True)."""
    conditions = set_condition(conditions, READY, "False", reason, message, generation)
    conditions = set_condition(conditions, RECONCILING, "True", reason, message, generation)
    return remove(conditions, STALLED)


def mark_waiting(
    conditions: list[Condition], reason: str, message: str, generation: int | None
) -> list[Condition]:
    """Ready=False, neither Reconciling nor Stalled: nothing happens until someone acts (an
    approval), and nothing failed."""
    conditions = set_condition(conditions, READY, "False", reason, message, generation)
    return remove(remove(conditions, RECONCILING), STALLED)


def mark_stalled(
    conditions: list[Condition], reason: str, message: str, generation: int | None
) -> list[Condition]:
    """Ready=False and Stalled=True: nothing more happens until the spec (or a request) changes."""
    conditions = set_condition(conditions, READY, "False", reason, message, generation)
    conditions = set_condition(conditions, STALLED, "True", reason, message, generation)
    return remove(conditions, RECONCILING)


def body_condition(body: Mapping[str, Any], type_: str) -> Mapping[str, Any] | None:
    """A condition of an object as the API sent it (no model built: states read hundreds)."""
    found: Mapping[str, Any] | None = next(
        (c for c in (body.get("status") or {}).get("conditions") or [] if c.get("type") == type_),
        None,
    )
    return found


def body_is_ready(body: Mapping[str, Any]) -> bool:
    """Ready=True for the object's current generation (what `needs` waits for)."""
    generation = (body.get("metadata") or {}).get("generation")
    if (body.get("status") or {}).get("observedGeneration") != generation:
        return False
    return (body_condition(body, READY) or {}).get("status") == "True"
