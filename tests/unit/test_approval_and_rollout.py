"""Plans, manual approval and atomic rollouts: reconcile/release.py and reconcile/state.py over
the in-memory fakes (tests/unit/fakes.py), and the pure reconcile/rollout.py as a table."""

from __future__ import annotations

import base64
import contextlib
import json
from collections.abc import Mapping
from typing import Any

import pytest
from fakes import NAMESPACE, World, condition, release_body
from test_release_state_machine import reconcile, status, stored

from helmfile_operator.api.models import (
    API_VERSION,
    HelmfileStateStatus,
    RolloutRelease,
    RolloutStatus,
)
from helmfile_operator.events import EventRecorder
from helmfile_operator.helm import HelmErrorKind
from helmfile_operator.kube import RELEASES, STATES
from helmfile_operator.reconcile.context import APPROVE, FINALIZER, IndexedRelease, ObjectKey
from helmfile_operator.reconcile.rollout import HOLD, ROLLBACK_TO, Child, advance, rollout_id
from helmfile_operator.reconcile.state import reconcile_state

TARGET = "target"  # spec.targetNamespace of release_body()
MANUAL = {"mode": "manual"}
SECRET_VALUE = "Zebra-hunter2-0xC0FFEE"


# --- helpers -------------------------------------------------------------------------------------


class RecordedEvents(EventRecorder):
    """An EventRecorder that keeps what it was asked to record (the real one only logs in tests:
    it is never started)."""

    def __init__(self) -> None:
        super().__init__(None)
        self.recorded: list[tuple[str, str, str, str, str]] = []  # kind, name, type, reason, msg

    def record(self, involved: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        metadata = involved.get("metadata") or {}
        self.recorded.append(
            (str(involved.get("kind")), str(metadata.get("name")), type_, reason, message)
        )
        super().record(involved, type_, reason, message)

    def of(self, reason: str, name: str | None = None) -> list[tuple[str, str, str, str, str]]:
        return [e for e in self.recorded if e[3] == reason and (name is None or e[1] == name)]


@pytest.fixture
def events(world: World) -> RecordedEvents:
    recorder = RecordedEvents()
    world.reconciler.events = recorder
    return recorder


def plan_of(world: World, name: str = "web") -> dict[str, Any]:
    plan = status(world, name).get("plan")
    assert plan is not None, f"no plan on {name}: {status(world, name)}"
    result: dict[str, Any] = plan
    return result


def ready(world: World, name: str = "web") -> dict[str, Any]:
    found = condition(stored(world, name), "Ready")
    assert found is not None, f"no Ready condition on {name}"
    return found


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def diff_text(world: World, name: str = "web") -> str:
    secret = world.kube.secrets.get((NAMESPACE, f"{name}-plan"))
    assert secret is not None, f"no diff Secret {name}-plan in {sorted(world.kube.secrets)}"
    assert "diff" in secret["data"], secret["data"].keys()
    return base64.b64decode(secret["data"]["diff"]).decode()


def upgrades(world: World) -> int:
    return world.helm.verbs.count("upgrade_install")


async def installed(world: World, name: str = "web", **spec: Any) -> None:
    """A release installed by one pass (revision 1); helm's record of it cleared."""
    world.kube.create(RELEASES, release_body(name, **spec))
    await reconcile(world, name)
    assert world.helm.verbs == ["upgrade_install"], world.helm.verbs
    assert ready(world, name)["status"] == "True", ready(world, name)
    world.helm.calls.clear()
    world.helm.dry_runs.clear()


# --- 1. manual approval of a release ---------------------------------------------------------


async def test_manual_release_plans_waits_for_the_approval_then_installs(
    world: World, events: RecordedEvents
) -> None:
    world.kube.create(RELEASES, release_body(approval=MANUAL))

    await reconcile(world)

    assert len(world.helm.dry_runs) == 1
    assert world.helm.dry_runs[0].values == {"replicas": 1}
    assert "upgrade_install" not in world.helm.verbs
    assert world.kube.storage(TARGET, "web") == {}
    plan = plan_of(world)
    plan_id = plan["id"]
    assert plan["phase"] == "AwaitingApproval"
    assert plan["action"] == "install"
    assert plan["counts"]["create"] >= 1
    cond = ready(world)
    assert (cond["status"], cond["reason"]) == ("False", "AwaitingApproval")
    assert f"{APPROVE}={plan_id}" in cond["message"]
    assert condition(stored(world), "Stalled") is None
    assert "lastHandledApproval" not in status(world)
    assert diff_text(world)  # the diff Secret exists, with a `diff`
    assert world.kube.secrets[(NAMESPACE, "web-plan")]["metadata"]["annotations"] == {
        "helmfile.dev/plan-id": plan_id
    }
    assert plan["diffSecret"] == "web-plan"

    # Nothing changed: the plan on the status is reused, no second dry run.
    await reconcile(world)
    assert len(world.helm.dry_runs) == 1
    assert "upgrade_install" not in world.helm.verbs
    assert plan_of(world)["id"] == plan_id
    assert plan_of(world)["phase"] == "AwaitingApproval"

    world.kube.annotate(RELEASES, NAMESPACE, "web", **{APPROVE: plan_id})
    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]
    assert world.helm.calls[0].values == {"replicas": 1}
    assert len(world.helm.dry_runs) == 1  # the approved plan was not computed again
    assert world.kube.storage(TARGET, "web") == {1: "deployed"}
    st = status(world)
    assert st["plan"]["id"] == plan_id
    assert st["plan"]["phase"] == "Applied"
    assert st["lastHandledApproval"] == plan_id
    assert ready(world)["status"] == "True"
    assert events.of("PlanApproved", "web")
    assert not events.of("ApprovalRefused")

    # In sync afterwards: the applied plan stays, nothing runs, nothing is planned.
    await reconcile(world)
    assert world.helm.verbs == ["upgrade_install"]
    assert len(world.helm.dry_runs) == 1
    assert plan_of(world)["phase"] == "Applied"


async def test_manual_release_diff_secret_holds_the_text_diff(world: World) -> None:
    world.kube.create(RELEASES, release_body(approval=MANUAL))

    await reconcile(world)

    secret = world.kube.secrets[(NAMESPACE, "web-plan")]
    assert secret["type"] == "helmfile.dev/plan"
    assert list(secret["data"]) == ["diff"]
    owner = secret["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("HelmfileRelease", "web")
    assert owner["uid"] == stored(world)["metadata"]["uid"]
    text = diff_text(world)
    assert "Deployment/web (planned)" in text
    assert "+  replicas: 1" in text


async def test_manual_upgrade_is_planned_against_the_deployed_revision(
    world: World, events: RecordedEvents
) -> None:
    world.kube.create(RELEASES, release_body(approval=MANUAL))
    await reconcile(world)
    world.kube.annotate(RELEASES, NAMESPACE, "web", **{APPROVE: plan_of(world)["id"]})
    await reconcile(world)
    assert world.helm.verbs == ["upgrade_install"]

    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 4})
    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]  # the earlier approval does not carry over
    assert len(world.helm.dry_runs) == 2
    assert not events.of("ApprovalRefused")  # the handled approval is not a stale one
    plan = plan_of(world)
    assert plan["action"] == "upgrade"
    assert plan["phase"] == "AwaitingApproval"
    assert "/replicas" in plan["values"]
    assert plan["counts"]["update"] == 1
    assert world.kube.storage(TARGET, "web") == {1: "deployed"}

    world.kube.annotate(RELEASES, NAMESPACE, "web", **{APPROVE: plan["id"]})
    await reconcile(world)
    assert world.helm.verbs == ["upgrade_install", "upgrade_install"]
    assert world.helm.calls[-1].values == {"replicas": 4}
    assert plan_of(world)["phase"] == "Applied"
    assert status(world)["lastHandledApproval"] == plan["id"]


async def test_manual_uninstall_waits_for_the_approval_of_its_plan(world: World) -> None:
    await installed(world)
    world.kube.update_spec(RELEASES, NAMESPACE, "web", approval=MANUAL, installed=False)

    await reconcile(world)

    assert world.helm.calls == []
    assert world.helm.dry_runs == []  # an uninstall needs no dry run
    plan = plan_of(world)
    assert (plan["action"], plan["phase"]) == ("uninstall", "AwaitingApproval")
    assert plan["counts"]["delete"] == 1
    assert world.kube.storage(TARGET, "web") == {1: "deployed"}
    assert ready(world)["reason"] == "AwaitingApproval"
    assert "Deployment/web" in diff_text(world) and "/dev/null" in diff_text(world)

    world.kube.annotate(RELEASES, NAMESPACE, "web", **{APPROVE: plan["id"]})
    await reconcile(world)

    assert world.helm.verbs == ["uninstall"]
    assert world.kube.storage(TARGET, "web") == {}
    assert plan_of(world)["phase"] == "Applied"
    assert (ready(world)["status"], ready(world)["reason"]) == ("True", "Uninstalled")


# --- 2. a stale approval ---------------------------------------------------------------------


async def test_approval_of_an_earlier_plan_is_refused(world: World, events: RecordedEvents) -> None:
    world.kube.create(RELEASES, release_body(approval=MANUAL))
    await reconcile(world)
    old = plan_of(world)["id"]

    # Approved, but the spec changes before the next pass: the approval names the old plan.
    world.kube.annotate(RELEASES, NAMESPACE, "web", **{APPROVE: old})
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 5})
    await reconcile(world)

    assert "upgrade_install" not in world.helm.verbs
    assert world.kube.storage(TARGET, "web") == {}
    assert len(world.helm.dry_runs) == 2
    assert world.helm.dry_runs[-1].values == {"replicas": 5}
    plan = plan_of(world)
    assert plan["id"] != old
    assert plan["phase"] == "AwaitingApproval"
    assert plan["refusedApproval"] == old
    assert "lastHandledApproval" not in status(world)
    cond = ready(world)
    assert (cond["status"], cond["reason"]) == ("False", "AwaitingApproval")
    assert old in cond["message"] and f"{APPROVE}={plan['id']}" in cond["message"]
    refused = events.of("ApprovalRefused", "web")
    assert len(refused) == 1
    assert refused[0][2] == "Warning"
    assert old in refused[0][4] and plan["id"] in refused[0][4]

    # Refused once: another pass neither installs nor repeats the Event.
    await reconcile(world)
    assert "upgrade_install" not in world.helm.verbs
    assert len(events.of("ApprovalRefused", "web")) == 1

    # The current plan's id installs.
    world.kube.annotate(RELEASES, NAMESPACE, "web", **{APPROVE: plan["id"]})
    await reconcile(world)
    assert world.helm.verbs == ["upgrade_install"]
    assert world.helm.calls[0].values == {"replicas": 5}
    assert status(world)["lastHandledApproval"] == plan["id"]
    assert len(events.of("ApprovalRefused", "web")) == 1


async def test_the_refused_approval_is_forgotten_once_the_current_plan_is_approved(
    world: World,
) -> None:
    world.kube.create(RELEASES, release_body(approval=MANUAL))
    await reconcile(world)
    old = plan_of(world)["id"]
    world.kube.annotate(RELEASES, NAMESPACE, "web", **{APPROVE: old})
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 5})
    await reconcile(world)
    plan = plan_of(world)
    assert plan["refusedApproval"] == old

    world.kube.annotate(RELEASES, NAMESPACE, "web", **{APPROVE: plan["id"]})
    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]
    assert plan_of(world)["phase"] == "Applied"
    assert "refusedApproval" not in plan_of(world)  # in memory it is None: cleared


# --- 3. auto mode: the plan is recorded before acting ---------------------------------------


async def test_auto_release_records_the_plan_before_acting(world: World) -> None:
    world.kube.create(RELEASES, release_body())

    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]
    # A first install under auto runs no dry run: its objects come from the installed manifest.
    assert world.helm.dry_runs == []
    plan = plan_of(world)
    assert plan["action"] == "install"
    assert plan["phase"] == "Applied"
    assert plan["counts"]["create"] >= 1
    assert {o["action"] for o in plan["objects"]} == {"create"}
    assert "no dry run" in plan["message"]
    assert plan["digest"] == status(world)["lastAppliedDigest"]
    assert "/replicas" in plan["values"]
    # Recorded before helm ran: the status write of "Installing" carries the plan already.
    first = next(
        w.payload
        for w in world.kube.writes_of("patch_status")
        if (condition(w.payload, "Reconciling") or {}).get("reason") == "Installing"
    )
    assert first["plan"]["id"] == plan["id"]
    assert first["plan"]["phase"] == "Approved"

    await reconcile(world)  # nothing changed: no plan, no helm
    assert world.helm.dry_runs == []
    assert world.helm.verbs == ["upgrade_install"]

    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 3})
    await reconcile(world)

    assert len(world.helm.dry_runs) == 1
    assert world.helm.dry_runs[-1].values == {"replicas": 3}
    assert world.helm.verbs == ["upgrade_install", "upgrade_install"]
    plan2 = plan_of(world)
    assert plan2["id"] != plan["id"]
    assert plan2["action"] == "upgrade"
    assert plan2["phase"] == "Applied"
    assert "/replicas" in plan2["values"]
    assert plan2["chartVersionFrom"] == plan2["chartVersionTo"] == "1.2.3"


async def test_auto_release_plan_of_a_failed_upgrade_is_failed(world: World) -> None:
    await installed(world)
    world.helm.fail("upgrade_install", HelmErrorKind.TIMEOUT)
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 2})

    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install", "rollback"]
    assert plan_of(world)["phase"] == "Failed"


async def test_auto_release_acts_even_when_the_dry_run_fails(world: World) -> None:
    await installed(world)
    world.helm.fail("dry_run", HelmErrorKind.RENDER_FAILED, "template: boom")
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 2})

    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]
    plan = plan_of(world)
    assert plan["phase"] == "Applied"
    assert "dry run failed" in plan["message"]
    assert "boom" in plan["message"]


# --- 4. values from a Secret never reach a status or the diff -----------------------------


async def test_secret_values_are_in_no_status_and_not_in_the_diff(
    world: World, events: RecordedEvents
) -> None:
    world.kube.add_secret(
        NAMESPACE, "web-secrets", {"values.yaml": b64(f"db:\n  password: {SECRET_VALUE}\n")}
    )
    world.kube.create(
        RELEASES,
        release_body(approval=MANUAL, valuesFrom=[{"kind": "Secret", "name": "web-secrets"}]),
    )

    await reconcile(world)  # planned install

    assert world.helm.dry_runs[0].values == {"replicas": 1, "db": {"password": SECRET_VALUE}}
    assert "/db/password" in plan_of(world)["values"]  # the path, never the value

    def assert_no_leak() -> None:
        for leak in (SECRET_VALUE, b64(SECRET_VALUE)):
            assert leak not in json.dumps(stored(world))
            assert leak not in json.dumps([w.payload for w in world.kube.writes])
            text = diff_text(world)
            assert leak not in text
            assert leak not in world.kube.secrets[(NAMESPACE, "web-plan")]["data"]["diff"]
            assert all(leak not in e[4] for e in events.recorded)

    assert_no_leak()
    assert "web-db" in diff_text(world)  # the chart's Secret is in the diff, masked

    world.kube.annotate(RELEASES, NAMESPACE, "web", **{APPROVE: plan_of(world)["id"]})
    await reconcile(world)  # installed
    assert world.helm.verbs == ["upgrade_install"]

    # An upgrade: the deployed side of the diff holds the value too.
    world.kube.add_secret(
        NAMESPACE,
        "web-secrets",
        {"values.yaml": b64(f"db:\n  password: {SECRET_VALUE}-2\n  user: admin\n")},
    )
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 2})
    await reconcile(world)
    assert len(world.helm.dry_runs) == 2
    assert plan_of(world)["action"] == "upgrade"
    assert "/db/password" in plan_of(world)["values"]
    assert_no_leak()
    for leak in (f"{SECRET_VALUE}-2", b64(f"{SECRET_VALUE}-2")):
        assert leak not in diff_text(world)
        assert leak not in json.dumps(stored(world))


# --- 5. held by a failed rollout of the state ---------------------------------------------


async def test_held_release_runs_no_helm_then_rolls_back_once(
    world: World, events: RecordedEvents
) -> None:
    await installed(world)
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 2})
    await reconcile(world)  # revision 2
    assert world.kube.storage(TARGET, "web") == {1: "superseded", 2: "deployed"}
    world.helm.calls.clear()
    world.helm.dry_runs.clear()

    # Held, with an upgrade wanted: nothing runs, not even a plan.
    world.kube.annotate(RELEASES, NAMESPACE, "web", **{HOLD: "s-2"})
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 3})
    await reconcile(world)

    assert world.helm.calls == []
    assert world.helm.dry_runs == []
    cond = ready(world)
    assert (cond["status"], cond["reason"]) == ("False", "RolloutRolledBack")
    assert "s-2" in cond["message"]
    assert status(world)["rolloutHold"] == {"rollout": "s-2"}
    assert world.kube.storage(TARGET, "web") == {1: "superseded", 2: "deployed"}

    world.kube.annotate(RELEASES, NAMESPACE, "web", **{ROLLBACK_TO: "1"})
    await reconcile(world)

    assert world.helm.verbs == ["rollback"]
    assert world.helm.calls[0].kwargs["revision"] == 1
    assert world.helm.dry_runs == []
    hold = status(world)["rolloutHold"]
    assert hold["rolledBackTo"] == 1
    assert hold["rollout"] == "s-2"
    assert hold["revision"] == 3
    assert status(world)["revision"] == 3
    assert world.kube.storage(TARGET, "web") == {1: "superseded", 2: "superseded", 3: "deployed"}
    cond = ready(world)
    assert (cond["status"], cond["reason"]) == ("False", "RolloutRolledBack")
    assert "rolled back to revision 1" in cond["message"]
    assert events.of("RolloutRolledBack", "web")

    # Rolled back once: further passes neither roll back again nor upgrade.
    await reconcile(world)
    await reconcile(world)
    assert world.helm.verbs == ["rollback"]
    assert world.helm.dry_runs == []
    assert status(world)["rolloutHold"]["rolledBackTo"] == 1


async def test_a_new_rollout_hold_replaces_the_record_of_the_old_one(world: World) -> None:
    await installed(world)
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 2})
    await reconcile(world)  # revision 2
    world.kube.annotate(RELEASES, NAMESPACE, "web", **{HOLD: "s-2", ROLLBACK_TO: "1"})
    await reconcile(world)  # rolled back: revision 3
    assert status(world)["rolloutHold"] == {"rollout": "s-2", "rolledBackTo": 1, "revision": 3}

    # Held by the next rollout of the state (without a pass in between that lifted the hold).
    annotations = stored(world)["metadata"]["annotations"]
    annotations[HOLD] = "s-3"
    del annotations[ROLLBACK_TO]
    await reconcile(world)

    assert status(world)["rolloutHold"] == {"rollout": "s-3"}
    # ... so that a rollback this rollout asks for runs.
    calls = len(world.helm.calls)
    world.kube.annotate(RELEASES, NAMESPACE, "web", **{ROLLBACK_TO: "1"})
    await reconcile(world)
    assert world.helm.verbs[calls:] == ["rollback"]


async def test_lifted_hold_forgets_it_and_upgrades(world: World) -> None:
    await installed(world)
    world.kube.annotate(RELEASES, NAMESPACE, "web", **{HOLD: "s-2"})
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 3})
    await reconcile(world)
    assert world.helm.calls == []

    del stored(world)["metadata"]["annotations"][HOLD]
    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]
    assert "rolloutHold" not in status(world)
    assert ready(world)["status"] == "True"


# --- 6. rollout.advance, pure ------------------------------------------------------------------

# needs order: db, then api and cache (both need db), then web (needs api).
ORDER = [["apps/db"], ["apps/api", "apps/cache"], ["apps/web"]]
IDS = {"db": "apps/db", "api": "apps/api", "cache": "apps/cache", "web": "apps/web"}
# Revisions before the rollout; cache is first installed by it.
BEFORE: dict[str, int | None] = {"db": 1, "api": 2, "cache": None, "web": 3}


def rollout(phase: str = "Progressing", **fields: Any) -> RolloutStatus:
    return RolloutStatus(
        id=rollout_id("s", 2),
        generation=2,
        phase=phase,  # type: ignore[arg-type]
        releases=[RolloutRelease(name=n, revision_before=b) for n, b in BEFORE.items()],
        **fields,
    )


def kids(**overrides: dict[str, Any]) -> dict[str, Child]:
    """Every member upgraded by the rollout (one revision on) and Ready, unless overridden."""
    base: dict[str, dict[str, Any]] = {
        name: {"revision": (before or 0) + 1, "ready": True} for name, before in BEFORE.items()
    }
    for name, fields in overrides.items():
        base[name] = {**base[name], **fields}
    return {name: Child(name=name, release_id=IDS[name], **f) for name, f in base.items()}


ALL = frozenset(BEFORE)

ADVANCE_TABLE: list[tuple[str, RolloutStatus, dict[str, Child], dict[str, Any]]] = [
    (
        "progressing, all ready: succeeded",
        rollout(),
        kids(),
        {"phase": "Succeeded", "holds": frozenset(), "rollbacks": {}},
    ),
    (
        "progressing, one not ready yet: progressing",
        rollout(),
        kids(web={"ready": False, "revision": 3}),
        {"phase": "Progressing", "holds": frozenset(), "rollbacks": {}},
    ),
    (
        "web failed: all held, the last needs group of upgraded ones rolls back",
        rollout(),
        kids(web={"ready": False, "failed": True}),
        {"phase": "RollingBack", "failed": "web", "holds": ALL, "rollbacks": {"api": 2}},
    ),
    (
        "api failed: the failed one is not asked, web (not started) is held only",
        rollout(),
        kids(api={"ready": False, "failed": True}, web={"ready": False, "revision": 3}),
        {"phase": "RollingBack", "failed": "api", "holds": ALL, "rollbacks": {"db": 1}},
    ),
    (
        "rolling back, api done: the next group is asked",
        rollout("RollingBack", failed="web"),
        kids(web={"failed": True}, api={"revision": 4, "rolled_back_to": 2}),
        {
            "phase": "RollingBack",
            "failed": "web",
            "holds": ALL,
            "rollbacks": {"db": 1},
            "rolled_back": ["api"],
        },
    ),
    (
        "rolling back, api not done yet: asked again, db not yet",
        rollout("RollingBack", failed="web"),
        kids(web={"failed": True}, api={"revision": 4}),
        {"phase": "RollingBack", "holds": ALL, "rollbacks": {"api": 2}, "rolled_back": []},
    ),
    (
        "all rolled back: RolledBack, still held",
        rollout("RollingBack", failed="web", rolled_back=["api"]),
        kids(
            web={"failed": True},
            api={"revision": 4, "rolled_back_to": 2},
            db={"revision": 3, "rolled_back_to": 1},
        ),
        {
            "phase": "RolledBack",
            "failed": "web",
            "holds": ALL,
            "rollbacks": {},
            "rolled_back": ["api", "db"],
        },
    ),
    (
        "the only upgraded member failed: nothing to roll back, RolledBack at once",
        rollout(),
        kids(
            web={"failed": True, "ready": False},
            db={"revision": 1},
            api={"revision": 2},
            cache={"revision": 1},
        ),
        {"phase": "RolledBack", "failed": "web", "holds": ALL, "rollbacks": {}, "rolled_back": []},
    ),
    (
        "succeeded stays succeeded",
        rollout("Succeeded"),
        kids(web={"failed": True}),
        {"phase": "Succeeded", "holds": frozenset(), "rollbacks": {}},
    ),
]


@pytest.mark.parametrize(
    ("given", "children", "expected"),
    [row[1:] for row in ADVANCE_TABLE],
    ids=[row[0] for row in ADVANCE_TABLE],
)
def test_advance(
    given: RolloutStatus, children: dict[str, Child], expected: dict[str, Any]
) -> None:
    before = given.model_copy(deep=True)

    step = advance(given, children, ORDER)

    assert step.rollout.phase == expected["phase"]
    assert step.holds == expected["holds"]
    assert dict(step.rollbacks) == expected["rollbacks"]
    if "failed" in expected:
        assert step.rollout.failed == expected["failed"]
    if "rolled_back" in expected:
        assert step.rollout.rolled_back == expected["rolled_back"]
    assert "cache" not in step.rollbacks  # first installed by the rollout: never rolled back
    assert given == before  # the input is not changed


def test_advance_walks_a_failed_rollout_back_in_reverse_needs_order() -> None:
    # web fails after db, api and cache were upgraded (cache installed) by the rollout.
    children = kids(web={"ready": False, "failed": True})
    step = advance(rollout(), children, ORDER)
    assert (step.rollout.phase, step.rollout.failed) == ("RollingBack", "web")
    assert step.holds == ALL
    assert dict(step.rollbacks) == {"api": 2}
    assert "web" in step.rollout.message and "api" in step.rollout.message

    # The same observation again: still asking api (its status does not say it is done).
    again = advance(step.rollout, children, ORDER)
    assert dict(again.rollbacks) == {"api": 2}
    assert again.rollout.rolled_back == []

    children = kids(web={"ready": False, "failed": True}, api={"revision": 4, "rolled_back_to": 2})
    step = advance(step.rollout, children, ORDER)
    assert step.rollout.phase == "RollingBack"
    assert dict(step.rollbacks) == {"db": 1}
    assert step.rollout.rolled_back == ["api"]
    assert step.holds == ALL

    children = kids(
        web={"ready": False, "failed": True},
        api={"revision": 4, "rolled_back_to": 2},
        db={"revision": 3, "rolled_back_to": 1},
    )
    step = advance(step.rollout, children, ORDER)
    assert step.rollout.phase == "RolledBack"
    assert step.rollout.rolled_back == ["api", "db"]  # reverse needs order
    assert dict(step.rollbacks) == {}
    assert step.holds == ALL  # cache included: held, never uninstalled
    assert "web failed" in step.rollout.message
    assert "api, db" in step.rollout.message

    # RolledBack is stable.
    final = advance(step.rollout, children, ORDER)
    assert final.rollout.phase == "RolledBack"
    assert final.rollout.rolled_back == ["api", "db"]
    assert dict(final.rollbacks) == {}


def test_advance_asks_a_whole_group_at_once() -> None:
    # Both api and cache were upgraded from a revision: one group, asked together.
    given = rollout()
    given.releases = [
        RolloutRelease(name="db", revision_before=1),
        RolloutRelease(name="api", revision_before=2),
        RolloutRelease(name="cache", revision_before=5),
        RolloutRelease(name="web", revision_before=3),
    ]
    children = kids(web={"ready": False, "failed": True}, cache={"revision": 6})
    step = advance(given, children, ORDER)
    assert dict(step.rollbacks) == {"api": 2, "cache": 5}


def test_advance_ignores_members_that_are_gone() -> None:
    children = kids(web={"ready": False, "failed": True})
    del children["api"]
    step = advance(rollout(), children, ORDER)
    assert step.holds == ALL - {"api"}
    assert dict(step.rollbacks) == {"db": 1}


# --- 7. a state under manual approval -------------------------------------------------------

STATE = "platform"
REPOSITORY = {"name": "charts", "url": "https://charts.example.com"}
DB = {"name": "db", "chart": "charts/postgres", "version": "1.0.0"}
API = {
    "name": "api",
    "chart": "charts/api",
    "version": "2.0.0",
    "needs": ["db"],
    "values": [{"replicas": 2}],
}


def state_body(*releases: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "HelmfileState",
        "metadata": {"name": STATE, "namespace": NAMESPACE, "generation": 1},
        "spec": {"repositories": [REPOSITORY], "releases": list(releases) or [DB, API], **spec},
    }


async def reconcile_the_state(world: World) -> None:
    await reconcile_state(world.reconciler, ObjectKey("HelmfileState", NAMESPACE, STATE))


def the_state(world: World) -> dict[str, Any]:
    body = world.kube.obj(STATES, NAMESPACE, STATE)
    assert body is not None, "the state is gone"
    return body


def child(world: World, release: str) -> dict[str, Any]:
    body = world.kube.obj(RELEASES, NAMESPACE, f"{STATE}-{release}")
    assert body is not None, f"no child {release}"
    return body


def child_writes(world: World, since: int = 0) -> list[tuple[str, str]]:
    return [(w.verb, w.name) for w in world.kube.writes[since:] if w.plural == RELEASES]


async def manual_state_awaiting(world: World) -> dict[str, Any]:
    """A manual state whose two children computed their plans (their own reconciler ran):
    the state's plan, after the state's next pass."""
    world.kube.create(STATES, state_body(approval=MANUAL))
    await reconcile_the_state(world)
    for release in ("db", "api"):
        assert child(world, release)["spec"]["approval"] == MANUAL
        await reconcile(world, f"{STATE}-{release}")
        assert plan_of(world, f"{STATE}-{release}")["phase"] == "AwaitingApproval"
    assert "upgrade_install" not in world.helm.verbs
    await reconcile_the_state(world)
    plan: dict[str, Any] = the_state(world)["status"]["plan"]
    return plan


async def test_manual_state_lists_its_releases_plans_in_needs_order(
    world: World, events: RecordedEvents
) -> None:
    plan = await manual_state_awaiting(world)

    assert [r["name"] for r in plan["releases"]] == [f"{STATE}-db", f"{STATE}-api"]
    assert [r["action"] for r in plan["releases"]] == ["install", "install"]
    for entry in plan["releases"]:
        assert entry["id"] == plan_of(world, entry["name"])["id"]
    assert plan["id"]
    assert plan["install"] == 2
    cond = condition(the_state(world), "Ready")
    assert cond is not None
    assert (cond["status"], cond["reason"]) == ("False", "AwaitingApproval")
    assert f"{APPROVE}={plan['id']}" in cond["message"]
    assert condition(the_state(world), "Stalled") is None


async def test_approving_the_state_plan_approves_each_release(
    world: World, events: RecordedEvents
) -> None:
    plan = await manual_state_awaiting(world)
    ids = {r["name"]: r["id"] for r in plan["releases"]}
    writes = len(world.kube.writes)

    world.kube.annotate(STATES, NAMESPACE, STATE, **{APPROVE: plan["id"]})
    await reconcile_the_state(world)

    metadata_writes = [w for w in world.kube.writes[writes:] if w.verb == "patch_metadata"]
    assert sorted((w.name, w.payload["annotations"][APPROVE]) for w in metadata_writes) == sorted(
        ids.items()
    )
    for name, plan_id in ids.items():
        assert stored(world, name)["metadata"]["annotations"][APPROVE] == plan_id
    assert events.of("PlanApproved", STATE)
    st = the_state(world)["status"]
    assert st["lastHandledApproval"] == plan["id"]
    assert "refusedApproval" not in st
    cond = condition(the_state(world), "Ready")
    assert cond is not None and cond["reason"] != "AwaitingApproval"

    # The releases act on their approvals: db installs; api, approved, waits for db.
    await reconcile(world, f"{STATE}-db")
    assert world.helm.verbs == ["upgrade_install"]
    assert world.helm.calls[0].release == "db"
    assert plan_of(world, f"{STATE}-db")["phase"] == "Applied"
    await reconcile(world, f"{STATE}-api")
    assert world.helm.verbs == ["upgrade_install"]
    assert ready(world, f"{STATE}-api")["reason"] == "NeedsNotReady"
    assert plan_of(world, f"{STATE}-api")["phase"] == "Approved"
    world.reconciler.index.releases[(NAMESPACE, f"{STATE}-db")] = IndexedRelease(
        ready=True, needs=(), state=STATE
    )
    await reconcile(world, f"{STATE}-api")
    assert world.helm.verbs == ["upgrade_install", "upgrade_install"]
    assert world.helm.calls[1].release == "api"
    assert plan_of(world, f"{STATE}-api")["phase"] == "Applied"
    assert len(world.helm.dry_runs) == 2  # one plan per release, none computed again

    # The approval is handled once: another pass of the state writes no approval again.
    writes = len(world.kube.writes)
    await reconcile_the_state(world)
    assert [w for w in world.kube.writes[writes:] if w.verb == "patch_metadata"] == []


async def test_a_wrong_state_approval_is_refused_and_touches_no_release(
    world: World, events: RecordedEvents
) -> None:
    plan = await manual_state_awaiting(world)
    writes = len(world.kube.writes)

    world.kube.annotate(STATES, NAMESPACE, STATE, **{APPROVE: "0123456789ab"})
    await reconcile_the_state(world)

    assert child_writes(world, writes) == []
    for release in ("db", "api"):
        assert APPROVE not in (child(world, release)["metadata"].get("annotations") or {})
    st = the_state(world)["status"]
    assert st["refusedApproval"] == "0123456789ab"
    assert st["plan"]["id"] == plan["id"]  # still awaiting
    refused = events.of("ApprovalRefused", STATE)
    assert len(refused) == 1 and refused[0][2] == "Warning"
    assert not events.of("PlanApproved")
    cond = condition(the_state(world), "Ready")
    assert cond is not None and cond["reason"] == "AwaitingApproval"
    assert "0123456789ab" in cond["message"]

    # The right one still approves.
    await reconcile_the_state(world)
    assert len(events.of("ApprovalRefused", STATE)) == 1  # refused once
    world.kube.annotate(STATES, NAMESPACE, STATE, **{APPROVE: plan["id"]})
    await reconcile_the_state(world)
    assert child(world, "db")["metadata"]["annotations"][APPROVE] == plan["releases"][0]["id"]
    assert the_state(world)["status"]["lastHandledApproval"] == plan["id"]


async def test_the_approved_state_plan_leaves_the_stored_status(world: World) -> None:
    plan = await manual_state_awaiting(world)

    world.kube.annotate(STATES, NAMESPACE, STATE, **{APPROVE: plan["id"]})
    await reconcile_the_state(world)
    await reconcile_the_state(world)

    # Nothing awaits approval any more (both releases carry their approvals).
    assert "plan" not in the_state(world)["status"]


async def test_a_refused_state_approval_is_forgotten_once_the_plan_is_approved(
    world: World,
) -> None:
    plan = await manual_state_awaiting(world)
    world.kube.annotate(STATES, NAMESPACE, STATE, **{APPROVE: "0123456789ab"})
    await reconcile_the_state(world)
    assert the_state(world)["status"]["refusedApproval"] == "0123456789ab"

    world.kube.annotate(STATES, NAMESPACE, STATE, **{APPROVE: plan["id"]})
    await reconcile_the_state(world)

    assert "refusedApproval" not in the_state(world)["status"]


async def test_a_release_removed_from_a_manual_state_waits_for_the_approval(
    world: World, events: RecordedEvents
) -> None:
    world.kube.create(STATES, state_body(approval=MANUAL))
    await reconcile_the_state(world)
    api = child(world, "api")
    api["metadata"]["finalizers"] = [FINALIZER]  # as its own reconciler would have added
    writes = len(world.kube.writes)

    world.kube.update_spec(STATES, NAMESPACE, STATE, releases=[DB])
    await reconcile_the_state(world)
    await reconcile_the_state(world)

    assert ("delete", f"{STATE}-api") not in child_writes(world, writes)
    assert not child(world, "api")["metadata"].get("deletionTimestamp")
    plan = the_state(world)["status"]["plan"]
    assert [(r["name"], r["action"]) for r in plan["releases"]] == [(f"{STATE}-api", "delete")]
    assert plan["delete"] == 1
    cond = condition(the_state(world), "Ready")
    assert cond is not None and cond["reason"] == "AwaitingApproval"

    world.kube.annotate(STATES, NAMESPACE, STATE, **{APPROVE: plan["id"]})
    await reconcile_the_state(world)

    assert ("delete", f"{STATE}-api") in child_writes(world, writes)
    assert child(world, "api")["metadata"]["deletionTimestamp"]
    assert events.of("PlanApproved", STATE)
    assert events.of("ReleaseRemoved", STATE)

    writes = len(world.kube.writes)
    await reconcile_the_state(world)
    assert child_writes(world, writes) == []  # not deleted twice


# --- atomic rollout of a state, end to end (state and release reconcilers together) ----------


def mark_ready_in_index(world: World, *releases: str) -> None:
    """What the watch would tell the index: these children are Ready."""
    for release in releases:
        world.reconciler.index.releases[(NAMESPACE, f"{STATE}-{release}")] = IndexedRelease(
            ready=True, needs=(), state=STATE
        )


async def test_atomic_state_rolls_the_upgraded_release_back_when_another_fails(
    world: World, events: RecordedEvents
) -> None:
    world.kube.create(STATES, state_body(rollout={"atomic": True}))
    await reconcile_the_state(world)
    await reconcile(world, f"{STATE}-db")
    mark_ready_in_index(world, "db")
    await reconcile(world, f"{STATE}-api")
    assert world.helm.verbs == ["upgrade_install", "upgrade_install"]
    await reconcile_the_state(world)
    st = the_state(world)["status"]
    assert st["rollout"]["phase"] == "Succeeded"
    assert condition(the_state(world), "Ready")["status"] == "True"  # type: ignore[index]

    # Generation 2 changes both: db upgrades, then api fails for good (Stalled).
    db2 = {**DB, "values": [{"replicas": 3}]}
    api2 = {**API, "values": [{"replicas": 4}]}
    world.kube.update_spec(STATES, NAMESPACE, STATE, releases=[db2, api2])
    await reconcile_the_state(world)
    rollout = the_state(world)["status"]["rollout"]
    assert rollout["id"] == f"{STATE}-2"
    assert rollout["phase"] == "Progressing"
    assert {r["name"]: r.get("revisionBefore") for r in rollout["releases"]} == {
        f"{STATE}-db": 1,
        f"{STATE}-api": 1,
    }
    await reconcile(world, f"{STATE}-db")
    assert world.kube.storage(NAMESPACE, "db") == {1: "superseded", 2: "deployed"}
    world.helm.fail("upgrade_install", HelmErrorKind.CHART_NOT_FOUND, "chart 'api' not found")
    await reconcile(world, f"{STATE}-api")
    assert condition(stored(world, f"{STATE}-api"), "Stalled") is not None
    world.helm.heal()
    writes = len(world.kube.writes)

    await reconcile_the_state(world)

    rollout = the_state(world)["status"]["rollout"]
    assert rollout["phase"] == "RollingBack"
    assert rollout["failed"] == f"{STATE}-api"
    db_annotations = child(world, "db")["metadata"]["annotations"]
    api_annotations = child(world, "api")["metadata"]["annotations"]
    assert db_annotations[HOLD] == api_annotations[HOLD] == f"{STATE}-2"
    assert db_annotations[ROLLBACK_TO] == "1"
    assert ROLLBACK_TO not in api_annotations  # the failed one ran its own remediation
    assert {name for verb, name in child_writes(world, writes) if verb == "patch_metadata"} == {
        f"{STATE}-db",
        f"{STATE}-api",
    }
    assert events.of("RolloutRolledBack", STATE)
    cond = condition(the_state(world), "Ready")
    assert cond is not None and (cond["status"], cond["reason"]) == ("False", "RolloutRolledBack")

    calls = len(world.helm.calls)
    await reconcile(world, f"{STATE}-db")
    assert world.helm.verbs[calls:] == ["rollback"]
    assert world.helm.calls[-1].kwargs["revision"] == 1
    assert status(world, f"{STATE}-db")["rolloutHold"]["rolledBackTo"] == 1
    await reconcile(world, f"{STATE}-api")
    assert world.helm.verbs[calls:] == ["rollback"]  # held: no helm for api

    await reconcile_the_state(world)
    rollout = the_state(world)["status"]["rollout"]
    assert rollout["phase"] == "RolledBack"
    assert rollout["rolledBack"] == [f"{STATE}-db"]
    assert f"{STATE}-api failed" in rollout["message"]
    stalled = condition(the_state(world), "Stalled")
    assert stalled is not None and stalled["reason"] == "RolloutRolledBack"
    assert ROLLBACK_TO not in child(world, "db")["metadata"].get("annotations", {})

    # Further passes: nobody rolls back or upgrades again.
    for _ in range(2):
        await reconcile(world, f"{STATE}-db")
        await reconcile(world, f"{STATE}-api")
        await reconcile_the_state(world)
    assert world.helm.verbs[calls:] == ["rollback"]

    # Generation 3 (the chart of api fixed) starts a new rollout: the holds are lifted, and
    # both upgrade again.
    db3 = {**DB, "values": [{"replicas": 5}]}
    api3 = {**API, "values": [{"replicas": 6}]}
    world.kube.update_spec(STATES, NAMESPACE, STATE, releases=[db3, api3])
    await reconcile_the_state(world)
    rollout = the_state(world)["status"]["rollout"]
    assert (rollout["id"], rollout["phase"]) == (f"{STATE}-3", "Progressing")
    assert {r["name"] for r in rollout["releases"]} == {f"{STATE}-db", f"{STATE}-api"}
    for release in ("db", "api"):
        assert HOLD not in child(world, release)["metadata"].get("annotations", {})
    await reconcile(world, f"{STATE}-db")
    await reconcile(world, f"{STATE}-api")
    assert world.helm.verbs[calls:] == ["rollback", "upgrade_install", "upgrade_install"]
    assert world.helm.calls[-1].values == {"replicas": 6}
    for release in ("db", "api"):
        assert "rolloutHold" not in status(world, f"{STATE}-{release}")
        assert ready(world, f"{STATE}-{release}")["status"] == "True"
    await reconcile_the_state(world)
    assert the_state(world)["status"]["rollout"]["phase"] == "Succeeded"


def test_a_state_status_written_by_an_earlier_version_still_parses() -> None:
    """`status.plan` used to hold the install order (now `status.order`)."""
    old = HelmfileStateStatus.model_validate({"plan": [["ns/db"], ["ns/api"]], "order": []})
    assert old.plan is None


async def test_a_rollout_survives_a_failed_status_write_of_the_state(world: World) -> None:
    """The state applies gen-2 children, then its status write fails (API hiccup/restart).
    The retried pass finds the children up to date: the rollout was recorded before them."""
    world.kube.create(STATES, state_body(rollout={"atomic": True}))
    await reconcile_the_state(world)
    await reconcile(world, f"{STATE}-db")
    mark_ready_in_index(world, "db")
    await reconcile(world, f"{STATE}-api")
    await reconcile_the_state(world)
    assert the_state(world)["status"]["rollout"]["phase"] == "Succeeded"

    world.kube.update_spec(
        STATES,
        NAMESPACE,
        STATE,
        releases=[{**DB, "values": [{"replicas": 3}]}, {**API, "values": [{"replicas": 4}]}],
    )
    real = world.kube.patch_status
    calls = {"n": 0}

    async def flaky(plural: str, *a: Any, **k: Any) -> Any:
        if plural == STATES and calls["n"] == 0:
            calls["n"] += 1
            raise RuntimeError("500 from the API server")
        return await real(plural, *a, **k)

    world.kube.patch_status = flaky
    with contextlib.suppress(RuntimeError):
        await reconcile_the_state(world)
    await reconcile_the_state(world)  # the retry
    rollout = the_state(world)["status"]["rollout"]
    assert rollout["id"] == f"{STATE}-2", "generation 2 never became a rollout"


async def test_a_failed_plan_withdraws_the_earlier_plan_from_approval(world: World) -> None:
    world.kube.create(STATES, state_body(approval=MANUAL))
    await reconcile_the_state(world)
    for r in ("db", "api"):
        await reconcile(world, f"{STATE}-{r}")
    old = plan_of(world, f"{STATE}-api")["id"]
    # gen 2 of api; its dry run now fails
    world.kube.update_spec(
        STATES, NAMESPACE, STATE, releases=[DB, {**API, "values": [{"replicas": 9}]}]
    )
    await reconcile_the_state(world)
    world.helm.fail("dry_run", HelmErrorKind.UNKNOWN, "template: boom")
    await reconcile(world, f"{STATE}-api")
    assert "plan" not in status(world, f"{STATE}-api")  # the earlier spec's plan is gone
    assert ready(world, f"{STATE}-api")["reason"] == "PlanFailed"
    await reconcile_the_state(world)
    sp = the_state(world)["status"].get("plan")
    assert not any(r["id"] == old for r in (sp or {}).get("releases", [])), (
        "the state offers the earlier plan of api for approval"
    )
