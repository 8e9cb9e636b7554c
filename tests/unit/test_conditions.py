"""reconcile/conditions.py: kstatus conditions."""

from __future__ import annotations

import re
from typing import Any

import pytest

from helmfile_operator.api.models import Condition
from helmfile_operator.reconcile import conditions
from helmfile_operator.reconcile.conditions import (
    READY,
    RECONCILING,
    RELEASED,
    STALLED,
    body_is_ready,
    find,
    mark_not_ready,
    mark_ready,
    mark_reconciling,
    mark_stalled,
    set_condition,
)

LONG_AGO = "2000-01-01T00:00:00Z"


def cond(type_: str, status: str = "True", reason: str = "Old", generation: int = 1) -> Condition:
    return Condition(
        type=type_,
        status=status,  # type: ignore[arg-type]
        reason=reason,
        message="old message",
        last_transition_time=LONG_AGO,
        observed_generation=generation,
    )


def types(items: list[Condition]) -> list[str]:
    return [c.type for c in items]


def test_set_condition_keeps_the_transition_time_when_the_status_is_unchanged() -> None:
    before = [cond(READY, "True")]
    after = set_condition(before, READY, "True", "New", "new message", 2)
    ready = find(after, READY)
    assert ready is not None
    assert ready.last_transition_time == LONG_AGO
    assert (ready.reason, ready.message, ready.observed_generation) == ("New", "new message", 2)


def test_set_condition_moves_the_transition_time_when_the_status_changes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(conditions, "now", lambda: "2031-02-03T04:05:06Z")
    before = [cond(READY, "True")]
    after = set_condition(before, READY, "False", "Broken", "it broke", 1)
    ready = find(after, READY)
    assert ready is not None
    assert (ready.status, ready.reason, ready.message) == ("False", "Broken", "it broke")
    assert ready.last_transition_time == "2031-02-03T04:05:06Z"


def test_now_is_an_rfc3339_utc_timestamp() -> None:
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", conditions.now())


def test_set_condition_adds_a_new_condition_with_the_current_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(conditions, "now", lambda: "2031-02-03T04:05:06Z")
    after = set_condition([cond(RELEASED)], READY, "Unknown", "Waiting", "", None)
    assert types(after) == [RELEASED, READY]
    ready = find(after, READY)
    assert ready is not None
    assert ready.last_transition_time == "2031-02-03T04:05:06Z"
    assert ready.observed_generation is None


def test_set_condition_does_not_mutate_its_input() -> None:
    before = [cond(READY, "True")]
    set_condition(before, READY, "False", "Broken", "", 1)
    assert before == [cond(READY, "True")]


def test_set_condition_keeps_one_condition_per_type() -> None:
    items = [cond(READY), cond(RELEASED)]
    for status in ("False", "True", "Unknown"):
        items = set_condition(items, READY, status, "R", "", 1)
    assert sorted(types(items)) == sorted([READY, RELEASED])


def test_mark_ready_removes_reconciling_and_stalled() -> None:
    items = [cond(READY, "False"), cond(RECONCILING), cond(STALLED), cond(RELEASED)]
    after = mark_ready(items, "Installed", "done", 3)
    assert sorted(types(after)) == sorted([READY, RELEASED])
    ready = find(after, READY)
    assert ready is not None
    assert (ready.status, ready.reason, ready.observed_generation) == ("True", "Installed", 3)


def test_mark_stalled_removes_reconciling() -> None:
    items = [cond(READY, "Unknown"), cond(RECONCILING)]
    after = mark_stalled(items, "InstallFailed", "no chart", 2)
    assert sorted(types(after)) == sorted([READY, STALLED])
    ready, stalled = find(after, READY), find(after, STALLED)
    assert ready is not None and stalled is not None
    assert (ready.status, ready.reason) == ("False", "InstallFailed")
    assert (stalled.status, stalled.reason, stalled.message) == (
        "True",
        "InstallFailed",
        "no chart",
    )


def test_mark_not_ready_removes_stalled_and_sets_reconciling() -> None:
    after = mark_not_ready([cond(STALLED)], "UpgradeFailed", "retrying", 1)
    assert sorted(types(after)) == sorted([READY, RECONCILING])
    ready = find(after, READY)
    assert ready is not None and ready.status == "False"


def test_mark_reconciling_sets_ready_unknown_and_removes_stalled() -> None:
    after = mark_reconciling([cond(READY), cond(STALLED)], "NeedsNotReady", "waiting", 1)
    assert sorted(types(after)) == sorted([READY, RECONCILING])
    ready = find(after, READY)
    assert ready is not None
    assert (ready.status, ready.reason) == ("Unknown", "NeedsNotReady")
    assert ready.last_transition_time != LONG_AGO  # True → Unknown is a transition


def body(generation: Any, observed: Any, ready: str | None = "True") -> dict[str, Any]:
    status: dict[str, Any] = {"observedGeneration": observed}
    if ready is not None:
        status["conditions"] = [{"type": READY, "status": ready, "reason": "X"}]
    return {"metadata": {"generation": generation}, "status": status}


def test_body_is_ready_for_the_current_generation() -> None:
    assert body_is_ready(body(2, 2))


@pytest.mark.parametrize(
    "obj",
    [
        body(3, 2),  # Ready was observed for an older spec
        body(2, None),
        body(2, 2, ready="False"),
        body(2, 2, ready="Unknown"),
        body(2, 2, ready=None),
        {"metadata": {"generation": 1}},
        {},
    ],
)
def test_body_is_not_ready(obj: dict[str, Any]) -> None:
    assert not body_is_ready(obj)


def test_body_is_ready_ignores_other_true_conditions() -> None:
    obj = {
        "metadata": {"generation": 1},
        "status": {
            "observedGeneration": 1,
            "conditions": [
                {"type": RELEASED, "status": "True"},
                {"type": READY, "status": "False"},
            ],
        },
    }
    assert not body_is_ready(obj)
