"""reconcile/state.py: a HelmfileState rendered into HelmfileRelease children, over a fake Kube."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fakes import NAMESPACE, World, condition

from helmfile_operator.api.models import API_VERSION
from helmfile_operator.kube import RELEASES, STATES
from helmfile_operator.reconcile.context import (
    FINALIZER,
    KEEP_RELEASE,
    RECONCILE_REQUEST,
    SHARD_LABEL,
    STATE_LABEL,
    IndexedRelease,
    ObjectKey,
)
from helmfile_operator.reconcile.release import reconcile_release
from helmfile_operator.reconcile.state import reconcile_state

STATE = "platform"
REPOSITORY = {"name": "charts", "url": "https://charts.example.com"}


def state_body(*releases: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "HelmfileState",
        "metadata": {"name": STATE, "namespace": NAMESPACE, "generation": 1},
        "spec": {
            "repositories": [REPOSITORY],
            "releases": list(releases) or DB_AND_API,
            **spec,
        },
    }


DB = {"name": "db", "chart": "charts/postgres", "version": "1.0.0"}
API = {"name": "api", "chart": "charts/api", "needs": ["db"], "values": [{"replicas": 2}]}
DB_AND_API = [DB, API]


async def reconcile(world: World) -> None:
    await reconcile_state(world.reconciler, ObjectKey("HelmfileState", NAMESPACE, STATE))


def state(world: World) -> dict[str, Any]:
    body = world.kube.obj(STATES, NAMESPACE, STATE)
    assert body is not None, "the state is gone"
    return body


def child(world: World, release: str) -> dict[str, Any] | None:
    return world.kube.obj(RELEASES, NAMESPACE, f"{STATE}-{release}")


def children(world: World) -> list[str]:
    return sorted(name for plural, _, name in world.kube.objects if plural == RELEASES)


def child_writes(world: World, since: int = 0) -> list[tuple[str, str]]:
    return [(w.verb, w.name) for w in world.kube.writes[since:] if w.plural == RELEASES]


def set_child_status(
    world: World,
    release: str,
    *conditions: tuple[str, str, str],
    observed: int | None = None,
    **fields: Any,
) -> None:
    """Give a child the status its own reconciler would write (for its current generation)."""
    body = child(world, release)
    assert body is not None
    generation = body["metadata"]["generation"]
    world.kube.set_status(
        RELEASES,
        NAMESPACE,
        body["metadata"]["name"],
        {
            "observedGeneration": generation if observed is None else observed,
            "conditions": [
                {
                    "type": type_,
                    "status": status_,
                    "reason": "Test",
                    "message": message,
                    "lastTransitionTime": "2030-01-01T00:00:00Z",
                }
                for type_, status_, message in conditions
            ],
            **fields,
        },
    )


async def test_renders_children_with_owner_references_and_labels(world: World) -> None:
    world.kube.create(STATES, state_body())

    await reconcile(world)

    assert children(world) == ["platform-api", "platform-db"]
    uid = state(world)["metadata"]["uid"]
    for release in ("db", "api"):
        body = child(world, release)
        assert body is not None
        metadata = body["metadata"]
        assert metadata["labels"] == {STATE_LABEL: STATE, "helmfile.dev/release": release}
        assert metadata["ownerReferences"] == [
            {
                "apiVersion": API_VERSION,
                "kind": "HelmfileState",
                "name": STATE,
                "uid": uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]
        assert body["spec"]["releaseName"] == release
        assert body["spec"]["targetNamespace"] == NAMESPACE
        assert body["spec"]["chart"]["repository"]["url"] == REPOSITORY["url"]
    api = child(world, "api")
    assert api is not None
    assert api["spec"]["needs"] == ["platform-db"]
    assert api["spec"]["values"] == {"replicas": 2}
    db = child(world, "db")
    assert db is not None
    assert "values" not in db["spec"] and "needs" not in db["spec"]  # empty fields left out
    assert db["spec"]["chart"]["version"] == "1.0.0"

    assert FINALIZER in state(world)["metadata"]["finalizers"]
    st = state(world)["status"]
    assert st["observedGeneration"] == 1
    assert st["environment"] == "default"
    assert st["order"] == [[f"{NAMESPACE}/db"], [f"{NAMESPACE}/api"]]
    assert st["counts"] == {"total": 2, "ready": 0, "failed": 0, "pending": 2, "disabled": 0}
    reconciling = condition(state(world), "Reconciling")
    assert reconciling is not None and reconciling["reason"] == "Progressing"
    ready = condition(state(world), "Ready")
    assert ready is not None and ready["status"] == "Unknown"
    assert "0/2 releases ready" in ready["message"]


async def test_second_pass_with_nothing_changed_writes_nothing(world: World) -> None:
    world.kube.create(STATES, state_body())
    await reconcile(world)
    writes = len(world.kube.writes)

    await reconcile(world)

    assert world.kube.writes[writes:] == []


async def test_spec_change_reapplies_only_the_changed_child(world: World) -> None:
    world.kube.create(STATES, state_body())
    await reconcile(world)
    writes = len(world.kube.writes)

    api = {**API, "values": [{"replicas": 5}]}
    world.kube.update_spec(STATES, NAMESPACE, STATE, releases=[DB, api])
    await reconcile(world)

    assert child_writes(world, writes) == [("apply", "platform-api")]
    body = child(world, "api")
    assert body is not None
    assert body["spec"]["values"] == {"replicas": 5}
    assert body["metadata"]["generation"] == 2
    assert state(world)["status"]["observedGeneration"] == 2


async def test_render_error_stalls_and_touches_no_child(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    world.kube.create(STATES, state_body(DB, API, {"name": "old", "chart": "charts/old"}))
    await reconcile(world)
    before = {name: world.kube.objects[(RELEASES, NAMESPACE, name)] for name in children(world)}
    writes = len(world.kube.writes)

    broken = {**API, "needs": ["nope"], "values": [{"replicas": 9}]}
    world.kube.update_spec(STATES, NAMESPACE, STATE, releases=[DB, broken])  # also drops "old"
    with caplog.at_level(logging.WARNING):
        await reconcile(world)
        await reconcile(world)

    assert child_writes(world, writes) == []  # nothing created, changed or deleted
    assert {name: world.kube.objects[(RELEASES, NAMESPACE, name)] for name in children(world)} == (
        before
    )
    stalled = condition(state(world), "Stalled")
    assert stalled is not None and stalled["status"] == "True"
    assert stalled["reason"] == "RenderFailed"
    assert "spec.releases[1].needs[0]" in stalled["message"]
    assert "nope" in stalled["message"]
    assert stalled["message"].endswith("(nothing was changed)")
    ready = condition(state(world), "Ready")
    assert ready is not None and ready["status"] == "False"
    assert condition(state(world), "Reconciling") is None
    st = state(world)["status"]
    assert st["observedGeneration"] == 2
    assert st["counts"]["total"] == 3  # the summary still shows what runs
    assert sum("RenderFailed" in r.message for r in caplog.records) == 1  # one Event per error


async def test_render_error_on_the_first_pass_creates_nothing(world: World) -> None:
    world.kube.create(STATES, state_body(DB, {**API, "needs": ["nope"]}))

    await reconcile(world)

    assert children(world) == []
    assert child_writes(world) == []
    stalled = condition(state(world), "Stalled")
    assert stalled is not None and "spec.releases[1].needs[0]" in stalled["message"]


async def test_invalid_spec_stalls_with_the_field(world: World) -> None:
    world.kube.create(STATES, state_body(DB, {**DB}))  # the same name twice

    await reconcile(world)

    assert children(world) == []
    stalled = condition(state(world), "Stalled")
    assert stalled is not None and stalled["reason"] == "InvalidSpec"
    assert "spec.releases" in stalled["message"] and "'db'" in stalled["message"]


async def test_missing_environment_config_map_stalls_with_the_field(world: World) -> None:
    world.kube.create(
        STATES,
        state_body(
            environment="prod",
            environments={"prod": {"valuesFrom": [{"kind": "ConfigMap", "name": "prod-env"}]}},
        ),
    )

    await reconcile(world)

    assert children(world) == []
    stalled = condition(state(world), "Stalled")
    assert stalled is not None
    assert "spec.environments.prod.valuesFrom[0]" in stalled["message"]

    world.kube.add_config_map(NAMESPACE, "prod-env", {"values.yaml": "tier: gold\n"})
    await reconcile(world)
    assert children(world) == ["platform-api", "platform-db"]
    assert condition(state(world), "Stalled") is None
    assert state(world)["status"]["environment"] == "prod"


async def test_release_removed_from_the_state_is_deleted(world: World) -> None:
    world.kube.create(STATES, state_body())
    await reconcile(world)
    api = child(world, "api")
    assert api is not None
    api["metadata"]["finalizers"] = [FINALIZER]  # as its own reconciler would have added
    writes = len(world.kube.writes)

    world.kube.update_spec(STATES, NAMESPACE, STATE, releases=[DB])
    await reconcile(world)

    assert child_writes(world, writes) == [("delete", "platform-api")]
    api = child(world, "api")
    assert api is not None and api["metadata"]["deletionTimestamp"]  # uninstalling
    assert state(world)["status"]["counts"]["total"] == 1
    assert [r["name"] for r in state(world)["status"]["releases"]] == ["db"]

    writes = len(world.kube.writes)
    await reconcile(world)
    assert child_writes(world, writes) == []  # not deleted twice


async def test_children_of_other_states_are_left_alone(world: World) -> None:
    world.kube.create(
        RELEASES,
        {
            "metadata": {
                "name": "other-db",
                "namespace": NAMESPACE,
                "labels": {STATE_LABEL: "other"},
            },
            "spec": {},
        },
    )
    world.kube.create(STATES, state_body())

    await reconcile(world)

    assert "other-db" in children(world)
    assert ("delete", "other-db") not in child_writes(world)


async def test_summary_and_counts_come_from_the_children(world: World) -> None:
    cache = {"name": "cache", "chart": "charts/redis", "installed": False}
    worker = {"name": "worker", "chart": "charts/worker"}
    world.kube.create(STATES, state_body(DB, API, cache, worker))
    await reconcile(world)
    set_child_status(
        world, "db", ("Ready", "True", "revision 3 is deployed"), revision=3, chartVersion="1.0.0"
    )
    set_child_status(
        world,
        "api",
        ("Ready", "False", "install failed (ChartNotFound)"),
        ("Stalled", "True", "install failed (ChartNotFound)"),
        ("Drifted", "True", "someone edited it"),
    )
    set_child_status(world, "cache", ("Ready", "True", "not installed (installed: false)"))
    set_child_status(world, "worker", ("Ready", "True", "old news"), observed=0)  # stale

    await reconcile(world)

    st = state(world)["status"]
    assert st["counts"] == {"total": 4, "ready": 2, "failed": 1, "pending": 1, "disabled": 1}
    summaries = {r["name"]: r for r in st["releases"]}
    assert summaries["db"] == {
        "name": "db",
        "namespace": NAMESPACE,
        "ready": True,
        "revision": 3,
        "chartVersion": "1.0.0",
        "drifted": False,
        "message": "revision 3 is deployed",
    }
    assert summaries["api"]["ready"] is False
    assert summaries["api"]["drifted"] is True
    assert summaries["api"]["message"] == "install failed (ChartNotFound)"
    assert summaries["worker"]["ready"] is False
    stalled = condition(state(world), "Stalled")
    assert stalled is not None and stalled["reason"] == "ReleaseFailed"
    assert stalled["message"] == "1 release(s) failed: platform-api"

    set_child_status(world, "api", ("Ready", "True", "fixed"))
    await reconcile(world)
    assert condition(state(world), "Stalled") is None
    reconciling = condition(state(world), "Reconciling")
    assert reconciling is not None and reconciling["reason"] == "Progressing"
    assert reconciling["message"] == "3/4 releases ready; waiting for platform-worker"

    set_child_status(world, "worker", ("Ready", "True", "done"))
    await reconcile(world)
    ready = condition(state(world), "Ready")
    assert ready is not None and ready["status"] == "True"
    assert (ready["reason"], ready["message"]) == ("Succeeded", "4/4 releases ready")
    assert condition(state(world), "Reconciling") is None
    assert state(world)["status"]["counts"]["ready"] == 4


async def test_suspended_state_suspends_its_children(world: World) -> None:
    world.kube.create(STATES, state_body(suspend=True))
    await reconcile(world)
    for release in ("db", "api"):
        body = child(world, release)
        assert body is not None and body["spec"]["suspend"] is True

    world.kube.update_spec(STATES, NAMESPACE, STATE, suspend=False)
    await reconcile(world)
    body = child(world, "db")
    assert body is not None and body["spec"]["suspend"] is False


def in_shard(world: World, shard: str) -> None:
    """The operator runs with `--shard SHARD` ("": unsharded)."""
    settings = world.reconciler.settings
    world.reconciler.settings = settings.model_copy(update={"shard": shard})


async def test_the_shard_label_of_the_state_is_copied_to_its_children(world: World) -> None:
    body = state_body()
    body["metadata"]["labels"] = {SHARD_LABEL: "a"}
    world.kube.create(STATES, body)
    in_shard(world, "a")
    await reconcile(world)
    for release in ("db", "api"):
        labels = (child(world, release) or {})["metadata"]["labels"]
        assert labels[SHARD_LABEL] == "a"

    # Moved to another shard, then out of sharding: the children follow (re-applied).
    for wanted in ("b", None):
        labels = state(world)["metadata"]["labels"]
        if wanted is None:
            del labels[SHARD_LABEL]
        else:
            labels[SHARD_LABEL] = wanted
        # The state's new shard's operator renders it (the old one's watch dropped it).
        in_shard(world, wanted or "")
        await reconcile(world)
        for release in ("db", "api"):
            labels = (child(world, release) or {})["metadata"]["labels"]
            assert labels.get(SHARD_LABEL) == wanted
            assert labels[STATE_LABEL] == STATE


async def drain(world: World) -> set[ObjectKey]:
    queued = set()
    while len(world.queue):
        queued_key = await world.queue.get()
        world.queue.done(queued_key)
        queued.add(queued_key)
    return queued


async def test_reconcile_request_reaches_the_children_in_memory(world: World) -> None:
    """A state's reconcile request queues a pass of every release — nothing is written to them
    — and the state records it once the last one has run."""
    world.kube.create(STATES, state_body())
    await reconcile(world)
    await drain(world)
    requested = "2031-01-01T00:00:00Z"

    world.kube.annotate(STATES, NAMESPACE, STATE, **{RECONCILE_REQUEST: requested})
    writes = len(world.kube.writes)
    await reconcile(world)

    assert child_writes(world, writes) == []
    names = [f"{STATE}-db", f"{STATE}-api"]
    assert await drain(world) == {ObjectKey("HelmfileRelease", NAMESPACE, n) for n in names}
    assert "lastHandledReconcileAt" not in state(world).get("status", {})
    for name in names:
        assert RECONCILE_REQUEST not in (child(world, name[len(STATE) + 1 :]) or {})[
            "metadata"
        ].get("annotations", {})
        assert await drain(world) == set()  # the state waits for the last release
        await reconcile_release(world.reconciler, ObjectKey("HelmfileRelease", NAMESPACE, name))
    assert ObjectKey("HelmfileState", NAMESPACE, STATE) in await drain(world)
    await reconcile(world)
    assert state(world)["status"]["lastHandledReconcileAt"] == requested
    writes = len(world.kube.writes)
    await reconcile(world)  # handled: not forwarded again
    assert await drain(world) == set()
    assert world.kube.writes[writes:] == []


async def test_deletion_policy_keep_marks_children(world: World) -> None:
    world.kube.create(STATES, state_body(deletionPolicy="Keep"))
    await reconcile(world)
    for release in ("db", "api"):
        body = child(world, release)
        assert body is not None and body["metadata"]["annotations"][KEEP_RELEASE] == "true"


async def test_deletion_policy_back_to_uninstall_unmarks_children(world: World) -> None:
    world.kube.create(STATES, state_body(deletionPolicy="Keep"))
    await reconcile(world)

    world.kube.update_spec(STATES, NAMESPACE, STATE, deletionPolicy="Uninstall")
    await reconcile(world)

    # Otherwise deleting the state now would still keep every Helm release installed.
    for release in ("db", "api"):
        body = child(world, release)
        assert body is not None
        assert KEEP_RELEASE not in (body["metadata"].get("annotations") or {})


# --- deletion -----------------------------------------------------------------------------------


async def created_then_deleted(world: World, **spec: Any) -> None:
    world.kube.create(STATES, state_body(**spec))
    await reconcile(world)
    for name in children(world):
        world.kube.objects[(RELEASES, NAMESPACE, name)]["metadata"]["finalizers"] = [FINALIZER]
    await world.kube.delete(STATES, NAMESPACE, STATE)
    assert state(world)["metadata"]["deletionTimestamp"]


async def test_deletion_deletes_children_and_drops_the_finalizer_when_none_remain(
    world: World,
) -> None:
    await created_then_deleted(world)
    writes = len(world.kube.writes)

    await reconcile(world)

    assert sorted(child_writes(world, writes)) == [
        ("delete", "platform-api"),
        ("delete", "platform-db"),
    ]
    assert FINALIZER in state(world)["metadata"]["finalizers"]  # children still uninstalling

    writes = len(world.kube.writes)
    await reconcile(world)  # woken while they uninstall
    assert world.kube.writes[writes:] == []
    assert FINALIZER in state(world)["metadata"]["finalizers"]

    world.kube.remove(RELEASES, NAMESPACE, "platform-db")
    await reconcile(world)
    assert FINALIZER in state(world)["metadata"]["finalizers"]

    world.kube.remove(RELEASES, NAMESPACE, "platform-api")
    await reconcile(world)
    assert world.kube.obj(STATES, NAMESPACE, STATE) is None  # finalizer dropped: gone
    assert world.kube.writes[-1].verb == "patch_metadata"
    assert world.kube.writes[-1].payload == {"finalizers": None}


async def test_deletion_with_keep_policy_marks_children_before_deleting_them(
    world: World,
) -> None:
    await created_then_deleted(world)
    # The policy changed together with the deletion: no pass marked the children yet.
    world.kube.objects[(STATES, NAMESPACE, STATE)]["spec"]["deletionPolicy"] = "Keep"
    writes = len(world.kube.writes)

    await reconcile(world)

    verbs = child_writes(world, writes)
    assert sorted(verbs) == sorted(
        [
            ("patch_metadata", "platform-db"),
            ("patch_metadata", "platform-api"),
            ("delete", "platform-db"),
            ("delete", "platform-api"),
        ]
    )
    for name in ("platform-db", "platform-api"):
        assert verbs.index(("patch_metadata", name)) < verbs.index(("delete", name))
        body = world.kube.obj(RELEASES, NAMESPACE, name)
        assert body is not None and body["metadata"]["annotations"][KEEP_RELEASE] == "true"


async def test_missing_state_is_ignored(world: World) -> None:
    await reconcile(world)
    assert world.kube.writes == []


async def test_a_child_name_held_by_another_state_is_not_taken_over(world: World) -> None:
    # State "platform-db" with release "x" would also be named "platform-db-x"; here the
    # HelmfileRelease "platform-db" (state "platform", release "db") is held by another state.
    world.reconciler.index.releases[(NAMESPACE, f"{STATE}-db")] = IndexedRelease(
        ready=True, needs=(), state="other"
    )
    world.kube.create(STATES, state_body(DB))

    await reconcile(world)

    assert children(world) == []
    stalled = condition(state(world), "Stalled")
    assert stalled is not None
    assert "spec.releases[0].name" in stalled["message"]
    assert "already belongs to state 'other'" in stalled["message"]


async def test_a_child_name_held_in_another_shard_is_not_taken_over(world: World) -> None:
    # This operator's index never sees another shard's objects: the API is asked.
    world.kube.create(
        RELEASES,
        {
            "metadata": {
                "name": f"{STATE}-db",
                "namespace": NAMESPACE,
                "labels": {STATE_LABEL: "other", SHARD_LABEL: "b"},
            },
            "spec": {},
        },
    )
    world.kube.create(STATES, state_body(DB))

    await reconcile(world)

    assert children(world) == [f"{STATE}-db"]
    assert (child(world, "db") or {})["metadata"]["labels"][STATE_LABEL] == "other"
    stalled = condition(state(world), "Stalled")
    assert stalled is not None
    assert "already belongs to state 'other'" in stalled["message"]


async def test_a_state_of_another_shard_is_not_rendered(world: World) -> None:
    body = state_body()
    body["metadata"]["labels"] = {SHARD_LABEL: "b"}  # this operator is unsharded
    world.kube.create(STATES, body)
    await reconcile(world)
    assert children(world) == []
    assert world.kube.writes == []


async def test_a_release_leaving_the_state_does_not_hold_up_its_request(
    world: World,
) -> None:
    world.kube.create(STATES, state_body())
    await reconcile(world)
    await drain(world)
    requested = "2031-01-01T00:00:00Z"
    world.kube.annotate(STATES, NAMESPACE, STATE, **{RECONCILE_REQUEST: requested})
    await reconcile(world)
    await drain(world)
    await reconcile_release(
        world.reconciler, ObjectKey("HelmfileRelease", NAMESPACE, f"{STATE}-db")
    )
    world.kube.update_spec(STATES, NAMESPACE, STATE, releases=[DB])  # api leaves, unhandled
    await reconcile(world)  # deletes it
    assert (child(world, "api") or {})["metadata"].get("deletionTimestamp")
    await reconcile(world)
    assert state(world)["status"]["lastHandledReconcileAt"] == requested
