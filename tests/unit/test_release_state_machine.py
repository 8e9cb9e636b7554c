"""reconcile/release.py: the HelmfileRelease state machine, over in-memory Kube and helm fakes."""

from __future__ import annotations

import base64
import datetime
import json
import logging
from collections.abc import Callable
from typing import Any

import pytest
from fakes import CHART, NAMESPACE, World, condition, release_body

from helmfile_operator.api.models import ChartReference
from helmfile_operator.helm import HelmErrorKind
from helmfile_operator.kube import RELEASES
from helmfile_operator.reconcile import conditions
from helmfile_operator.reconcile import release as release_module
from helmfile_operator.reconcile.context import (
    FINALIZER,
    KEEP_RELEASE,
    RECONCILE_REQUEST,
    SHARD_LABEL,
    IndexedRelease,
    ObjectKey,
)
from helmfile_operator.reconcile.drift import DriftReport
from helmfile_operator.reconcile.release import reconcile_release
from helmfile_operator.render.values import values_digest

TARGET = "target"  # spec.targetNamespace of release_body()
INTERVAL = 600.0  # the default spec.interval, 10m


def key(name: str = "web") -> ObjectKey:
    return ObjectKey("HelmfileRelease", NAMESPACE, name)


async def reconcile(world: World, name: str = "web") -> None:
    await reconcile_release(world.reconciler, key(name))


def stored(world: World, name: str = "web") -> dict[str, Any]:
    body = world.kube.obj(RELEASES, NAMESPACE, name)
    assert body is not None, f"{name} is gone"
    return body


def status(world: World, name: str = "web") -> dict[str, Any]:
    result: dict[str, Any] = stored(world, name).get("status") or {}
    return result


def cond(world: World, type_: str, name: str = "web") -> dict[str, Any] | None:
    return condition(stored(world, name), type_)


def assert_condition(
    world: World, type_: str, status_: str, reason: str | None = None, name: str = "web"
) -> dict[str, Any]:
    found = cond(world, type_, name)
    assert found is not None, f"no {type_} condition in {status(world, name).get('conditions')}"
    assert found["status"] == status_, found
    if reason is not None:
        assert found["reason"] == reason, found
    return found


def digest_of(values: dict[str, Any]) -> str:
    return values_digest(ChartReference.model_validate(CHART), values)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def elapsed(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Pin the seconds since the last attempt (status times have a one-second resolution)."""

    def set_elapsed(seconds: float) -> None:
        monkeypatch.setattr(release_module, "seconds_since", lambda _time: seconds)

    set_elapsed(0.0)
    return set_elapsed


async def installed(world: World, name: str = "web", **spec: Any) -> None:
    """A release that was installed by one pass (revision 1)."""
    world.kube.create(RELEASES, release_body(name, **spec))
    await reconcile(world, name)
    assert world.helm.verbs[-1] == "upgrade_install"
    assert_condition(world, "Ready", "True", "Installed", name)
    world.helm.calls.clear()


# --- absent → install; in sync → nothing --------------------------------------------------------


async def test_absent_release_is_installed_once(world: World) -> None:
    world.kube.create(RELEASES, release_body())

    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]
    call = world.helm.calls[0]
    assert (call.release, call.namespace) == ("web", TARGET)
    assert call.values == {"replicas": 1}
    assert call.kwargs["chart"]["name"] == "app"
    assert world.kube.storage(TARGET, "web") == {1: "deployed"}
    st = status(world)
    assert st["revision"] == 1
    assert st["valuesDigest"] == st["lastAppliedDigest"] == digest_of({"replicas": 1})
    assert st["observedGeneration"] == 1
    assert st["failures"] == 0
    assert st["chartName"] == "app"
    assert st["chartVersion"] == "1.2.3"
    assert st["lastAttempted"]["action"] == "install"
    assert st["lastAttempted"]["result"] == "succeeded"
    assert [h["revision"] for h in st["history"]] == [1]
    assert st["inventory"] == [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}]
    assert_condition(world, "Ready", "True", "Installed")
    assert_condition(world, "Released", "True", "Installed")
    assert cond(world, "Reconciling") is None
    assert cond(world, "Stalled") is None
    assert FINALIZER in stored(world)["metadata"]["finalizers"]
    assert world.pending_delay(key()) == pytest.approx(INTERVAL, abs=1)


async def test_second_pass_with_nothing_changed_runs_no_helm_and_writes_nothing(
    world: World,
) -> None:
    world.kube.create(RELEASES, release_body())
    await reconcile(world)
    assert world.helm.verbs == ["upgrade_install"]
    writes = len(world.kube.writes)

    for _ in range(3):
        await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]
    assert world.kube.writes[writes:] == []  # no status patch, no finalizer patch
    assert world.pending_delay(key()) == pytest.approx(INTERVAL, abs=1)


async def test_install_and_no_op_passes_read_no_helm_storage_data(world: World) -> None:
    """The inventory comes from helm's output; a pass reads Helm's storage labels only (a
    metadata list), never a revision's data (its values and manifest, up to a MiB each)."""
    world.kube.create(RELEASES, release_body())
    await reconcile(world)
    assert status(world)["inventory"] == [
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"}
    ]
    for _ in range(3):
        await reconcile(world)
    assert world.kube.storage_data_reads == []


async def test_values_change_upgrades_and_unchanged_values_do_nothing(world: World) -> None:
    await installed(world)

    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 3})
    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]
    assert world.helm.calls[0].values == {"replicas": 3}
    assert world.kube.storage(TARGET, "web") == {1: "superseded", 2: "deployed"}
    st = status(world)
    assert st["revision"] == 2
    assert st["lastAppliedDigest"] == digest_of({"replicas": 3})
    assert st["observedGeneration"] == 2
    assert st["lastAttempted"]["action"] == "upgrade"
    assert [h["revision"] for h in st["history"]] == [1, 2]
    assert_condition(world, "Ready", "True", "Upgraded")

    writes = len(world.kube.writes)
    await reconcile(world)
    assert world.helm.verbs == ["upgrade_install"]
    assert world.kube.writes[writes:] == []


async def test_spec_change_with_the_same_values_runs_no_helm(world: World) -> None:
    await installed(world)

    world.kube.update_spec(RELEASES, NAMESPACE, "web", interval="5m")
    await reconcile(world)

    assert world.helm.verbs == []
    assert status(world)["observedGeneration"] == 2
    ready = assert_condition(world, "Ready", "True", "InSync")
    assert ready["observedGeneration"] == 2
    assert world.pending_delay(key()) == pytest.approx(300, abs=1)


async def test_release_deleted_from_storage_behind_our_back_is_reinstalled(world: World) -> None:
    await installed(world)
    world.kube.drop_release(TARGET, "web")

    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]
    assert world.helm.calls[0].kwargs["options"]["atomic"] is True
    assert status(world)["lastAttempted"]["action"] == "install"


async def test_missing_object_is_forgotten(world: World) -> None:
    world.queue.add_after(key("gone"), 5)
    await reconcile(world, "gone")
    assert world.helm.verbs == []
    assert world.kube.writes == []
    assert world.pending_delay(key("gone")) is None


async def test_invalid_spec_is_stalled_without_helm(world: World) -> None:
    body = release_body()
    del body["spec"]["chart"]
    world.kube.create(RELEASES, body)

    await reconcile(world)

    assert world.helm.verbs == []
    stalled = assert_condition(world, "Stalled", "True", "InvalidSpec")
    assert "spec.chart" in stalled["message"]
    assert_condition(world, "Ready", "False", "InvalidSpec")


# --- needs --------------------------------------------------------------------------------------


async def test_needs_gate_waits_for_the_index_then_installs(world: World) -> None:
    world.kube.create(RELEASES, release_body("api", needs=["db"]))

    await reconcile(world, "api")  # db is not in the index at all
    assert world.helm.verbs == []
    ready = assert_condition(world, "Ready", "Unknown", "NeedsNotReady", name="api")
    assert "db" in ready["message"]
    assert_condition(world, "Reconciling", "True", "NeedsNotReady", name="api")
    assert world.kube.storage(TARGET, "api") == {}

    world.reconciler.index.releases[(NAMESPACE, "db")] = IndexedRelease(
        ready=False, needs=(), state=None
    )
    await reconcile(world, "api")  # known, not Ready
    assert world.helm.verbs == []
    assert_condition(world, "Ready", "Unknown", "NeedsNotReady", name="api")

    world.reconciler.index.releases[(NAMESPACE, "db")] = IndexedRelease(
        ready=True, needs=(), state=None
    )
    await reconcile(world, "api")
    assert world.helm.verbs == ["upgrade_install"]
    assert_condition(world, "Ready", "True", "Installed", name="api")
    assert cond(world, "Reconciling", name="api") is None


async def test_needs_in_another_namespace_do_not_count(world: World) -> None:
    world.kube.create(RELEASES, release_body("api", needs=["db"]))
    world.reconciler.index.releases[("elsewhere", "db")] = IndexedRelease(
        ready=True, needs=(), state=None
    )
    await reconcile(world, "api")
    assert world.helm.verbs == []
    assert_condition(world, "Ready", "Unknown", "NeedsNotReady", name="api")


async def test_a_need_of_another_shard_is_reported_not_waited_for(world: World) -> None:
    world.kube.create(RELEASES, release_body("api", needs=["db", "cache"]))
    other = release_body("db")
    other["metadata"]["labels"] = {SHARD_LABEL: "b"}
    world.kube.create(RELEASES, other)  # exists, but this (unsharded) operator never sees it

    await reconcile(world, "api")

    assert world.helm.verbs == []
    stalled = assert_condition(world, "Stalled", "True", "NeedsInAnotherShard", name="api")
    assert "db (shard 'b')" in stalled["message"] and "unsharded" in stalled["message"]
    assert "cache" not in stalled["message"]  # missing, not another shard's: waited for

    # Relabelled into this operator's shard: the watch indexes it, and the wait is the usual one.
    world.reconciler.index.releases[(NAMESPACE, "db")] = IndexedRelease(
        ready=False, needs=(), state=None
    )
    await reconcile(world, "api")
    assert_condition(world, "Ready", "Unknown", "NeedsNotReady", name="api")


async def test_a_release_relabelled_into_another_shard_is_left_to_it(world: World) -> None:
    await installed(world)
    world.queue.add_after(key("web"), 600)  # its interval resync, scheduled by the last pass
    labels = world.kube.objects[(RELEASES, NAMESPACE, "web")]["metadata"].setdefault("labels", {})
    labels[SHARD_LABEL] = "b"  # this operator is unsharded
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 2})
    calls, writes = len(world.helm.calls), len(world.kube.writes)

    await reconcile(world)

    assert world.helm.calls[calls:] == []
    assert world.kube.writes[writes:] == []
    assert world.pending_delay(key("web")) is None  # never resynced here again


# --- failures, remediation, retries -------------------------------------------------------------


async def test_failed_atomic_upgrade_is_rolled_back_and_retried_with_backoff(
    world: World, elapsed: Callable[[float], None]
) -> None:
    await installed(world)
    world.helm.fail("upgrade_install", HelmErrorKind.TIMEOUT, "timed out waiting for the condition")
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 2})

    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install", "rollback"]
    assert world.helm.calls[1].kwargs["revision"] == 1  # the last deployed revision
    assert world.kube.storage(TARGET, "web") == {1: "superseded", 2: "failed", 3: "deployed"}
    st = status(world)
    assert st["failures"] == 1
    assert st["lastAttempted"]["result"] == "failed"
    assert st["lastAttempted"]["action"] == "upgrade"
    assert st["lastAttempted"]["digest"] == digest_of({"replicas": 2})
    assert st["lastAttempted"]["message"] == "timed out waiting for the condition"
    assert st["lastAppliedDigest"] == digest_of({"replicas": 1})
    assert_condition(world, "Remediated", "True", "RolledBack")
    assert_condition(world, "Released", "False", "UpgradeFailed")
    ready = assert_condition(world, "Ready", "False", "UpgradeFailed")
    assert "Timeout" in ready["message"] and "retry 1/3" in ready["message"]
    assert_condition(world, "Reconciling", "True")
    assert cond(world, "Stalled") is None
    assert world.pending_delay(key()) == pytest.approx(1, abs=0.25)  # backoff(1) = base ± 20 %

    # Within the backoff: nothing runs, the retry stays scheduled.
    await reconcile(world)
    assert world.helm.verbs == ["upgrade_install", "rollback"]
    assert world.pending_delay(key()) == pytest.approx(1, abs=0.25)

    # Backoff over (the timer fired): retried, failing again doubles the delay.
    world.queue.shutdown()
    elapsed(1.5)
    await reconcile(world)
    assert world.helm.verbs == ["upgrade_install", "rollback", "upgrade_install", "rollback"]
    assert status(world)["failures"] == 2
    assert world.pending_delay(key()) == pytest.approx(2, abs=0.45)

    # helm recovers: the next retry succeeds and clears the failure state.
    world.helm.heal()
    elapsed(5)
    await reconcile(world)
    assert world.helm.verbs[-1] == "upgrade_install"
    st = status(world)
    assert st["failures"] == 0
    assert st["revision"] == 6
    assert st["lastAppliedDigest"] == digest_of({"replicas": 2})
    assert_condition(world, "Ready", "True", "Upgraded")
    assert cond(world, "Remediated") is None
    assert cond(world, "Reconciling") is None


async def test_failed_upgrade_without_atomic_is_not_rolled_back(world: World) -> None:
    await installed(world, helm={"atomic": False})
    world.helm.fail("upgrade_install", HelmErrorKind.TIMEOUT)
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 2})

    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]
    assert cond(world, "Remediated") is None
    assert_condition(world, "Ready", "False", "UpgradeFailed")


async def test_failed_rollback_is_reported_as_remediation_failure(world: World) -> None:
    await installed(world)
    world.helm.fail("upgrade_install", HelmErrorKind.TIMEOUT)
    world.helm.fail("rollback", HelmErrorKind.CONNECTION, "connection refused")
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 2})

    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install", "rollback"]
    remediated = assert_condition(world, "Remediated", "False", "RemediationFailed")
    assert "connection refused" in remediated["message"]
    assert_condition(world, "Ready", "False", "UpgradeFailed")
    assert status(world)["failures"] == 1


async def test_retries_zero_stalls_at_the_first_failure(
    world: World, elapsed: Callable[[float], None]
) -> None:
    await installed(world, helm={"retries": 0})
    world.helm.fail("upgrade_install", HelmErrorKind.TIMEOUT)
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 2})

    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install", "rollback"]
    stalled = assert_condition(world, "Stalled", "True", "UpgradeFailed")
    assert "1 failed attempts" in stalled["message"]
    assert_condition(world, "Ready", "False", "UpgradeFailed")
    assert cond(world, "Reconciling") is None
    assert world.pending_delay(key()) == pytest.approx(INTERVAL, abs=1)  # no retry before

    elapsed(INTERVAL / 2)
    await reconcile(world)
    assert world.helm.verbs == ["upgrade_install", "rollback"]  # Stalled: nothing runs
    # Re-evaluated every interval: a fixed environment recovers by itself.
    world.helm.heal()
    elapsed(INTERVAL + 1)
    await reconcile(world)
    assert world.helm.verbs == ["upgrade_install", "rollback", "upgrade_install"]
    assert_condition(world, "Ready", "True", "Upgraded")
    assert cond(world, "Stalled") is None


async def test_retries_exhausted_stalls(world: World, elapsed: Callable[[float], None]) -> None:
    await installed(world, helm={"retries": 1})
    world.helm.fail("upgrade_install", HelmErrorKind.TIMEOUT)
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 2})

    await reconcile(world)
    assert_condition(world, "Ready", "False", "UpgradeFailed")
    assert cond(world, "Stalled") is None
    elapsed(3600)
    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install", "rollback"] * 2
    assert status(world)["failures"] == 2
    assert_condition(world, "Stalled", "True", "UpgradeFailed")
    elapsed(1)
    await reconcile(world)
    assert len(world.helm.calls) == 4
    # Still failing an interval later: tried once more, still Stalled.
    elapsed(2 * 3600)
    await reconcile(world)
    assert len(world.helm.calls) == 6
    assert_condition(world, "Stalled", "True", "UpgradeFailed")


async def test_new_spec_resets_failures_and_retries_immediately(
    world: World, elapsed: Callable[[float], None]
) -> None:
    await installed(world)
    world.helm.fail("upgrade_install", HelmErrorKind.TIMEOUT)
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 2})
    await reconcile(world)
    await reconcile(world)  # backing off: nothing runs for the same spec
    assert world.helm.verbs == ["upgrade_install", "rollback"]

    # Within the backoff, a new spec gets a fresh attempt at once, counted from zero.
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 3})
    await reconcile(world)
    assert world.helm.verbs == ["upgrade_install", "rollback"] * 2
    assert world.helm.calls[2].values == {"replicas": 3}
    assert status(world)["failures"] == 1

    world.helm.heal()
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 4})
    await reconcile(world)
    assert world.helm.verbs[-1] == "upgrade_install"
    assert world.helm.calls[-1].values == {"replicas": 4}
    assert status(world)["failures"] == 0
    assert_condition(world, "Ready", "True", "Upgraded")


async def test_new_spec_retries_a_stalled_release(world: World) -> None:
    await installed(world, helm={"retries": 0})
    world.helm.fail("upgrade_install", HelmErrorKind.TIMEOUT)
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 2})
    await reconcile(world)
    assert_condition(world, "Stalled", "True")

    world.helm.heal()
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 3})
    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install", "rollback", "upgrade_install"]
    assert world.helm.calls[-1].values == {"replicas": 3}
    assert status(world)["failures"] == 0
    assert_condition(world, "Ready", "True", "Upgraded")
    assert cond(world, "Stalled") is None


async def test_failed_install_is_uninstalled(world: World) -> None:
    world.helm.fail("upgrade_install", HelmErrorKind.TIMEOUT, "context deadline exceeded")
    world.kube.create(RELEASES, release_body())

    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install", "uninstall"]
    assert world.helm.calls[1].kwargs["ignore_not_found"] is True
    assert world.kube.storage(TARGET, "web") == {}
    st = status(world)
    assert st["failures"] == 1
    assert "revision" not in st
    assert st["lastAttempted"]["action"] == "install"
    assert_condition(world, "Remediated", "True", "Uninstalled")
    assert_condition(world, "Ready", "False", "InstallFailed")
    assert world.pending_delay(key()) == pytest.approx(1, abs=0.25)


async def test_non_retryable_error_stalls_at_once(
    world: World, elapsed: Callable[[float], None]
) -> None:
    world.helm.fail("upgrade_install", HelmErrorKind.CHART_NOT_FOUND, "chart 'app' not found")
    world.kube.create(RELEASES, release_body())

    await reconcile(world)

    # helm stored no revision: nothing to uninstall.
    assert world.helm.verbs == ["upgrade_install"]
    assert status(world)["failures"] == 1  # far below retries (3)
    stalled = assert_condition(world, "Stalled", "True", "InstallFailed")
    assert "ChartNotFound" in stalled["message"] and "not retryable" in stalled["message"]
    assert_condition(world, "Ready", "False", "InstallFailed")
    assert cond(world, "Reconciling") is None

    elapsed(INTERVAL / 2)
    await reconcile(world)
    assert world.helm.verbs == ["upgrade_install"]


# --- locked storage → recover -------------------------------------------------------------------


async def test_pending_install_is_recovered_by_uninstalling(world: World) -> None:
    world.kube.put_revision(TARGET, "web", 1, "pending-install")
    world.kube.create(RELEASES, release_body())

    await reconcile(world)

    assert world.helm.verbs == ["uninstall"]
    assert world.helm.calls[0].kwargs["ignore_not_found"] is True
    assert world.kube.storage(TARGET, "web") == {}
    assert world.pending_delay(key()) == pytest.approx(0, abs=0.1)  # re-evaluate at once

    await reconcile(world)
    assert world.helm.verbs == ["uninstall", "upgrade_install"]
    assert_condition(world, "Ready", "True", "Installed")


async def test_pending_upgrade_is_rolled_back_to_the_last_good_revision(world: World) -> None:
    world.kube.put_revision(TARGET, "web", 1, "superseded")
    world.kube.put_revision(TARGET, "web", 2, "deployed")
    world.kube.put_revision(TARGET, "web", 3, "failed")
    world.kube.put_revision(TARGET, "web", 4, "pending-upgrade")
    world.kube.create(RELEASES, release_body())

    await reconcile(world)

    assert world.helm.verbs == ["rollback"]
    assert world.helm.calls[0].kwargs["revision"] == 2
    assert world.helm.calls[0].kwargs["wait"] is False
    assert world.kube.storage(TARGET, "web")[5] == "deployed"
    assert world.pending_delay(key()) == pytest.approx(0, abs=0.1)


async def test_failed_recovery_backs_off(world: World) -> None:
    world.kube.put_revision(TARGET, "web", 1, "pending-install")
    world.helm.fail("uninstall", HelmErrorKind.CONNECTION, "connection refused")
    world.kube.create(RELEASES, release_body())

    await reconcile(world)

    assert world.helm.verbs == ["uninstall"]
    assert status(world)["failures"] == 1
    assert_condition(world, "Ready", "False", "RecoverFailed")
    assert world.pending_delay(key()) == pytest.approx(1, abs=0.25)


# --- installed: false, suspend ------------------------------------------------------------------


async def test_installed_false_uninstalls_a_release_in_storage(world: World) -> None:
    await installed(world)

    world.kube.update_spec(RELEASES, NAMESPACE, "web", installed=False)
    await reconcile(world)

    assert world.helm.verbs == ["uninstall"]
    assert world.kube.storage(TARGET, "web") == {}
    ready = assert_condition(world, "Ready", "True", "Uninstalled")
    assert ready["observedGeneration"] == 2
    st = status(world)
    # What the uninstall cleared is cleared on the server too (merge patch: null, not omitted).
    assert "revision" not in st
    assert "lastAppliedDigest" not in st
    assert st["inventory"] == []

    writes = len(world.kube.writes)
    await reconcile(world)
    assert world.helm.verbs == ["uninstall"]
    assert world.kube.writes[writes:] == []


async def test_installed_false_without_a_release_runs_no_helm(world: World) -> None:
    world.kube.create(RELEASES, release_body(installed=False))
    await reconcile(world)
    assert world.helm.verbs == []
    assert_condition(world, "Ready", "True", "Uninstalled")


async def test_failed_uninstall_is_retried(world: World) -> None:
    await installed(world)
    world.helm.fail("uninstall", HelmErrorKind.CONNECTION, "connection refused")
    world.kube.update_spec(RELEASES, NAMESPACE, "web", installed=False)

    await reconcile(world)

    assert world.helm.verbs == ["uninstall"]
    assert_condition(world, "Ready", "False", "UninstallFailed")
    assert status(world)["failures"] == 1
    assert world.pending_delay(key()) == pytest.approx(1, abs=0.25)


async def test_suspended_release_runs_no_helm(world: World) -> None:
    world.kube.create(RELEASES, release_body(suspend=True))
    await reconcile(world)
    assert world.helm.verbs == []
    assert world.pending_delay(key()) is None  # no resync either


async def test_suspended_release_is_not_upgraded(world: World) -> None:
    await installed(world)
    world.queue.shutdown()
    world.kube.update_spec(RELEASES, NAMESPACE, "web", suspend=True, values={"replicas": 5})
    await reconcile(world)
    assert world.helm.verbs == []
    assert status(world)["revision"] == 1
    assert world.pending_delay(key()) is None


# --- deletion -----------------------------------------------------------------------------------


async def delete(world: World, name: str = "web") -> None:
    await world.kube.delete(RELEASES, NAMESPACE, name)
    assert stored(world, name)["metadata"]["deletionTimestamp"]


async def test_deletion_uninstalls_then_drops_the_finalizer(world: World) -> None:
    await installed(world)
    await delete(world)
    writes = len(world.kube.writes)

    await reconcile(world)

    assert world.helm.verbs == ["uninstall"]
    assert world.kube.storage(TARGET, "web") == {}
    assert world.kube.obj(RELEASES, NAMESPACE, "web") is None  # finalizer dropped: gone
    new = world.kube.writes[writes:]
    # "Uninstalling" while helm runs; after that no status write on a vanishing object.
    assert [w.verb for w in new] == ["patch_status", "patch_metadata"]
    assert condition(new[0].payload, "Reconciling")["reason"] == "Uninstalling"  # type: ignore[index]
    assert new[1].payload == {"finalizers": None}
    assert world.pending_delay(key()) is None


async def test_deletion_keeps_other_finalizers(world: World) -> None:
    await installed(world)
    stored(world)["metadata"]["finalizers"].append("example.com/other")
    await delete(world)

    await reconcile(world)

    assert world.helm.verbs == ["uninstall"]
    assert stored(world)["metadata"]["finalizers"] == ["example.com/other"]


async def test_deletion_waits_for_dependents(world: World) -> None:
    await installed(world)
    world.kube.create(RELEASES, release_body("api", needs=["web"]))
    world.reconciler.index.put(NAMESPACE, "api", IndexedRelease(True, ("web",), None))
    await delete(world)

    await reconcile(world)

    assert world.helm.verbs == []
    assert FINALIZER in stored(world)["metadata"]["finalizers"]
    ready = assert_condition(world, "Ready", "Unknown", "WaitingForDependents")
    assert "api" in ready["message"]
    assert world.kube.storage(TARGET, "web") == {1: "deployed"}

    del world.reconciler.index.releases[(NAMESPACE, "api")]  # the dependent is gone
    await reconcile(world)
    assert world.helm.verbs == ["uninstall"]
    assert world.kube.obj(RELEASES, NAMESPACE, "web") is None


async def test_deletion_with_keep_release_leaves_helm_alone(world: World) -> None:
    await installed(world)
    world.kube.annotate(RELEASES, NAMESPACE, "web", **{KEEP_RELEASE: "true"})
    await delete(world)

    await reconcile(world)

    assert world.helm.verbs == []
    assert world.kube.obj(RELEASES, NAMESPACE, "web") is None
    assert world.kube.storage(TARGET, "web") == {1: "deployed"}


async def test_failed_uninstall_on_deletion_keeps_the_finalizer(world: World) -> None:
    await installed(world)
    world.helm.fail("uninstall", HelmErrorKind.TIMEOUT)
    await delete(world)

    await reconcile(world)

    assert world.helm.verbs == ["uninstall"]
    assert FINALIZER in stored(world)["metadata"]["finalizers"]
    assert_condition(world, "Ready", "False", "UninstallFailed")
    assert world.pending_delay(key()) == pytest.approx(1, abs=0.25)

    world.helm.heal()
    await reconcile(world)
    assert world.kube.obj(RELEASES, NAMESPACE, "web") is None


async def test_deletion_without_our_finalizer_does_nothing(world: World) -> None:
    body = release_body()
    body["metadata"]["finalizers"] = ["example.com/other"]
    world.kube.create(RELEASES, body)
    await delete(world)

    await reconcile(world)

    assert world.helm.verbs == []
    assert world.kube.writes_of("patch_metadata") == []


# --- reconcile requests -------------------------------------------------------------------------


async def test_reconcile_request_retries_a_stalled_release(
    world: World, elapsed: Callable[[float], None]
) -> None:
    world.helm.fail("upgrade_install", HelmErrorKind.TIMEOUT)
    world.kube.create(RELEASES, release_body(helm={"retries": 0}))
    await reconcile(world)
    assert_condition(world, "Stalled", "True", "InstallFailed")
    world.helm.heal()  # e.g. the cluster was fixed: the spec did not change

    elapsed(60)  # within the interval
    await reconcile(world)
    assert world.helm.verbs == ["upgrade_install", "uninstall"]  # still Stalled

    world.kube.annotate(RELEASES, NAMESPACE, "web", **{RECONCILE_REQUEST: "2031-01-01T00:00:00Z"})
    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install", "uninstall", "upgrade_install"]
    st = status(world)
    assert st["lastHandledReconcileAt"] == "2031-01-01T00:00:00Z"
    assert st["failures"] == 0
    assert_condition(world, "Ready", "True", "Installed")
    assert cond(world, "Stalled") is None

    await reconcile(world)  # handled once
    assert len(world.helm.calls) == 3


async def test_reconcile_request_clears_the_failure_record_on_the_server(world: World) -> None:
    world.helm.fail("upgrade_install", HelmErrorKind.CHART_NOT_FOUND)
    world.kube.create(RELEASES, release_body())
    await reconcile(world)
    assert status(world)["lastAttempted"]["result"] == "failed"

    # Suspended: the request is handled (failure record reset), no helm runs.
    world.kube.update_spec(RELEASES, NAMESPACE, "web", suspend=True)
    world.kube.annotate(RELEASES, NAMESPACE, "web", **{RECONCILE_REQUEST: "2031-01-01T00:00:00Z"})
    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]  # no revision stored: nothing to undo
    st = status(world)
    assert st["lastHandledReconcileAt"] == "2031-01-01T00:00:00Z"
    assert st["failures"] == 0
    assert "lastAttempted" not in st  # nulled by the merge patch, not left behind
    assert cond(world, "Stalled") is None


# --- valuesFrom -----------------------------------------------------------------------------------

SECRET_VALUE = "Zebra-hunter2-0xC0FFEE"


async def test_missing_values_secret_is_reported_by_field(world: World) -> None:
    world.kube.create(
        RELEASES, release_body(valuesFrom=[{"kind": "Secret", "name": "web-secrets"}])
    )

    await reconcile(world)

    assert world.helm.verbs == []
    ready = assert_condition(world, "Ready", "False", "ValuesUnavailable")
    assert "spec.valuesFrom[0]" in ready["message"]
    assert "web-secrets" in ready["message"]
    assert_condition(world, "Reconciling", "True", "ValuesUnavailable")
    assert world.pending_delay(key()) == pytest.approx(2, abs=0.1)  # retry_max_seconds / 5

    world.kube.add_secret(NAMESPACE, "web-secrets", {"values.yaml": b64("tls: true\n")})
    await reconcile(world)
    assert world.helm.verbs == ["upgrade_install"]
    assert world.helm.calls[0].values == {"replicas": 1, "tls": True}
    assert_condition(world, "Ready", "True", "Installed")


async def test_optional_missing_values_source_is_skipped(world: World) -> None:
    world.kube.create(
        RELEASES,
        release_body(
            valuesFrom=[
                {"kind": "ConfigMap", "name": "absent", "optional": True},
                {"kind": "ConfigMap", "name": "present", "key": "v.yaml"},
            ],
            set=[{"name": "image.tag", "value": "v2"}],
        ),
    )
    world.kube.add_config_map(NAMESPACE, "present", {"v.yaml": "replicas: 4\nimage: {tag: v1}\n"})

    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]
    assert world.helm.calls[0].values == {"replicas": 4, "image": {"tag": "v2"}}


async def test_missing_key_names_the_entry(world: World) -> None:
    world.kube.add_secret(NAMESPACE, "web-secrets", {"other.yaml": b64(f"x: {SECRET_VALUE}")})
    world.kube.create(
        RELEASES,
        release_body(
            valuesFrom=[
                {"kind": "ConfigMap", "name": "cm", "optional": True},
                {"kind": "Secret", "name": "web-secrets"},
            ]
        ),
    )

    await reconcile(world)

    ready = assert_condition(world, "Ready", "False", "ValuesUnavailable")
    assert "spec.valuesFrom[1]" in ready["message"]
    assert "values.yaml" in ready["message"]
    assert SECRET_VALUE not in json.dumps(status(world))


@pytest.mark.parametrize(
    "content",
    [f"password: [{SECRET_VALUE}\n", f"- {SECRET_VALUE}\n", f"{SECRET_VALUE}\n"],
    ids=["bad-yaml", "list", "scalar"],
)
async def test_unreadable_values_secret_never_quotes_its_content(
    world: World, content: str
) -> None:
    world.kube.add_secret(NAMESPACE, "web-secrets", {"values.yaml": b64(content)})
    world.kube.create(
        RELEASES, release_body(valuesFrom=[{"kind": "Secret", "name": "web-secrets"}])
    )

    await reconcile(world)

    assert world.helm.verbs == []
    ready = assert_condition(world, "Ready", "False", "ValuesUnavailable")
    assert "spec.valuesFrom[0]" in ready["message"]
    assert SECRET_VALUE not in json.dumps([w.payload for w in world.kube.writes])


async def test_secret_values_reach_helm_and_nothing_else(
    world: World, caplog: pytest.LogCaptureFixture, elapsed: Callable[[float], None]
) -> None:
    caplog.set_level(logging.DEBUG)
    world.kube.add_secret(
        NAMESPACE, "web-secrets", {"values.yaml": b64(f"db:\n  password: {SECRET_VALUE}\n")}
    )
    world.kube.create(
        RELEASES, release_body(valuesFrom=[{"kind": "Secret", "name": "web-secrets"}])
    )

    await reconcile(world)  # install
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 2})
    await reconcile(world)  # upgrade
    world.helm.fail("upgrade_install", HelmErrorKind.TIMEOUT)
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 3})
    await reconcile(world)  # failed upgrade, rolled back
    world.kube.update_spec(RELEASES, NAMESPACE, "web", installed=False)
    await reconcile(world)  # uninstall

    assert world.helm.verbs == [
        "upgrade_install",
        "upgrade_install",
        "upgrade_install",
        "rollback",
        "uninstall",
    ]
    expected = {"replicas": 1, "db": {"password": SECRET_VALUE}}
    assert world.helm.calls[0].values == expected
    # The chart put the value into a Secret of the release: the inventory names that object only.
    inventory = [w.payload.get("inventory") for w in world.kube.writes_of("patch_status")]
    assert {"apiVersion": "v1", "kind": "Secret", "name": "web-db"} in next(
        i for i in inventory if i
    )
    payloads = [w.payload for w in world.kube.writes]
    for leak in (SECRET_VALUE, b64(SECRET_VALUE)):
        assert leak not in json.dumps(payloads)
        assert leak not in json.dumps(stored(world))
    for call in world.helm.calls:
        # `values` go to helm's private values file; `redact` lists what helm's errors must not
        # show. Nothing else (argv, options) may carry the Secret's data.
        others = {k: v for k, v in call.kwargs.items() if k not in ("values", "redact")}
        assert SECRET_VALUE not in json.dumps(others, default=str)
    upgrades = [call for call in world.helm.calls if call.verb == "upgrade_install"]
    assert all(SECRET_VALUE in call.kwargs["redact"] for call in upgrades)
    assert SECRET_VALUE not in caplog.text
    # The digest covers the Secret's data (a change there is a change), as a hash only.
    assert status(world)["valuesDigest"] == digest_of(
        {"replicas": 2, "db": {"password": SECRET_VALUE}}
    )


# --- defects found in review: each pinned by a test ----------------------------------------------


async def test_failure_before_helm_stored_a_revision_rolls_nothing_back(world: World) -> None:
    await installed(world)
    world.kube.update_spec(RELEASES, NAMESPACE, "web", values={"replicas": 2})
    await reconcile(world)  # revision 2
    world.helm.calls.clear()
    world.helm.fail("upgrade_install", HelmErrorKind.VERSION_NOT_FOUND, 'version "9.9.9" not found')
    world.kube.update_spec(RELEASES, NAMESPACE, "web", chart={**CHART, "version": "9.9.9"})

    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]  # no rollback, no uninstall
    assert world.kube.storage(TARGET, "web") == {1: "superseded", 2: "deployed"}
    ready = assert_condition(world, "Ready", "False", "UpgradeFailed")
    assert "9.9.9" in ready["message"] and "revision 2 is still deployed" in ready["message"]
    assert cond(world, "Remediated") is None


async def test_transient_failures_never_stall(
    world: World, elapsed: Callable[[float], None]
) -> None:
    world.helm.fail("upgrade_install", HelmErrorKind.REPOSITORY_UNREACHABLE, "connection refused")
    world.kube.create(RELEASES, release_body(helm={"retries": 1}))
    for attempt in range(1, 8):
        elapsed(3600)
        await reconcile(world)
        assert status(world)["failures"] == attempt
        assert cond(world, "Stalled") is None
        assert_condition(world, "Reconciling", "True", "InstallFailed")
        delay = world.pending_delay(key())
        assert delay is not None and delay <= INTERVAL  # capped at the interval
    world.helm.heal()
    elapsed(3600)
    await reconcile(world)
    assert_condition(world, "Ready", "True", "Installed")


async def test_a_fresh_lock_of_someone_else_is_waited_for(world: World) -> None:
    world.kube.put_revision(TARGET, "web", 1, "deployed")
    now = datetime.datetime.now(datetime.UTC)
    world.kube.put_revision(
        TARGET, "web", 2, "pending-upgrade", created=now.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    world.kube.create(RELEASES, release_body())

    await reconcile(world)

    assert world.helm.verbs == []  # a live `helm upgrade` elsewhere may hold it
    assert_condition(world, "Reconciling", "True", "Locked")
    delay = world.pending_delay(key())
    assert delay is not None and 300 < delay <= 300 + 120 + 1  # helm timeout + margin


async def test_our_own_interrupted_action_is_recovered_at_once(world: World) -> None:
    await installed(world)
    now = datetime.datetime.now(datetime.UTC)
    world.kube.put_revision(
        TARGET, "web", 2, "pending-upgrade", created=now.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    world.kube.set_status(
        RELEASES,
        NAMESPACE,
        "web",
        {
            **status(world),
            "inProgress": {
                "action": "upgrade",
                "startedAt": "2026-01-01T00:00:00Z",
                "digest": "sha256:x",
                "revisionBefore": 1,
            },
        },
    )

    await reconcile(world)

    assert world.helm.verbs == ["rollback"]
    assert world.helm.calls[0].kwargs["revision"] == 1
    assert "inProgress" not in status(world)


async def test_a_lock_over_many_failed_revisions_never_uninstalls_a_served_release(
    world: World,
) -> None:
    world.kube.put_revision(TARGET, "web", 1, "superseded")
    for revision in range(2, 30):
        world.kube.put_revision(TARGET, "web", revision, "failed")
    world.kube.put_revision(TARGET, "web", 30, "pending-install")
    world.kube.create(RELEASES, release_body(helm={"historyMax": 0, "atomic": False}))

    await reconcile(world)

    assert world.helm.verbs == ["rollback"]
    assert world.helm.calls[0].kwargs["revision"] == 1


async def test_helm_result_is_recorded_even_if_the_inventory_cannot_be_read(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    from helmfile_operator.reconcile.actions import apply as apply_module

    def broken(manifest: str, where: str = "") -> list[Any]:
        raise ValueError("the manifest is not YAML helm would read")

    monkeypatch.setattr(apply_module, "inventory", broken)
    world.kube.create(RELEASES, release_body())

    await reconcile(world)
    await reconcile(world)
    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]  # once: the result was recorded
    assert_condition(world, "Ready", "True", "Installed")
    assert status(world)["revision"] == 1


async def test_success_whose_status_write_was_lost_is_adopted_without_helm(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    world.kube.create(RELEASES, release_body())
    real = world.kube.patch_status
    calls = 0

    async def flaky(plural: str, namespace: str, name: str, status_: dict[str, Any]) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the write right after helm succeeded
            raise ConnectionError("the API server went away")
        await real(plural, namespace, name, status_)

    monkeypatch.setattr(world.kube, "patch_status", flaky)
    with pytest.raises(ConnectionError):
        await reconcile(world)
    assert world.helm.verbs == ["upgrade_install"]
    assert "inProgress" in status(world)

    await reconcile(world)

    assert world.helm.verbs == ["upgrade_install"]  # not run again
    assert_condition(world, "Ready", "True", "Installed")
    assert status(world)["revision"] == 1
    assert "inProgress" not in status(world)


async def test_a_release_that_needs_itself_is_stalled(world: World) -> None:
    world.kube.create(RELEASES, release_body(needs=["web"]))

    await reconcile(world)

    assert world.helm.verbs == []
    stalled = assert_condition(world, "Stalled", "True", "InvalidNeeds")
    assert "spec.needs" in stalled["message"]


async def test_a_helm_release_driven_by_another_object_is_left_alone(world: World) -> None:
    first = release_body("first", releaseName="shared")
    second = release_body("second", releaseName="shared")
    for name, body, created in (
        ("first", first, "2026-01-01T00:00:00Z"),
        ("second", second, "2026-01-02T00:00:00Z"),
    ):
        body["metadata"]["creationTimestamp"] = created
        world.kube.create(RELEASES, body)
        world.reconciler.index.put(
            NAMESPACE,
            name,
            IndexedRelease(False, (), None, target=(TARGET, "shared"), created=created),
        )

    await reconcile(world, "first")
    await reconcile(world, "second")

    assert world.helm.verbs == ["upgrade_install"]
    assert world.helm.calls[0].release == "shared"
    stalled = assert_condition(world, "Stalled", "True", "ReleaseOwnedByAnother", "second")
    assert f"{NAMESPACE}/first" in stalled["message"]

    await delete(world, "second")
    await reconcile(world, "second")
    assert world.helm.verbs == ["upgrade_install"]  # never uninstalls the other's release
    assert world.kube.obj(RELEASES, NAMESPACE, "second") is None


async def test_a_dependent_gone_during_a_watch_gap_does_not_block_deletion(world: World) -> None:
    await installed(world)
    # The index still holds "api" (its DELETED was missed); the API no longer has it.
    world.reconciler.index.put(NAMESPACE, "api", IndexedRelease(True, ("web",), None))
    await delete(world)

    await reconcile(world)

    assert world.helm.verbs == ["uninstall"]
    assert world.reconciler.index.get(NAMESPACE, "api") is None


async def test_deletion_drops_the_finalizer_after_its_own_status_write(world: World) -> None:
    """The "Uninstalling" status write moves the resourceVersion on; the finalizer write that
    follows must use the new one, or it conflicts with ourselves and uninstalls forever."""
    await installed(world)
    stored(world)["metadata"]["resourceVersion"] = "7"
    await delete(world)

    await reconcile(world)

    assert world.helm.verbs == ["uninstall"]
    assert world.kube.obj(RELEASES, NAMESPACE, "web") is None


class CleanChecker:
    """A drift checker whose live objects always match (counts its checks)."""

    def __init__(self) -> None:
        self.checks = 0

    async def check(self, manifest: str, namespace: str, ignore: Any, identity: Any) -> DriftReport:
        self.checks += 1
        return DriftReport()


async def test_clean_drift_checks_write_the_status_only_when_the_outcome_changes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    checker = CleanChecker()
    world.reconciler.drift = checker  # type: ignore[assignment]
    world.kube.create(RELEASES, release_body(driftDetection={"mode": "warn"}))
    await reconcile(world)  # install; the manifest of revision 1 is cached from helm's output
    await reconcile(world)  # the first check: Drifted=False is news, lastDriftCheck with it
    assert checker.checks == 1
    assert_condition(world, "Drifted", "False", "NoDrift")
    first = status(world)["lastDriftCheck"]
    writes = len(world.kube.writes)

    for _ in range(3):
        await reconcile(world)

    assert checker.checks == 4
    assert world.kube.writes[writes:] == []  # the same outcome: nothing written
    assert status(world)["lastDriftCheck"] == first
    assert world.kube.storage_data_reads == []  # the manifest came from the install
    counted = world.reconciler.metrics.drift_checks.labels("clean")._value.get()
    assert counted == 4

    world.reconciler.settings.drift_check_record_seconds = 0  # as if an hour had passed
    monkeypatch.setattr(conditions, "now", lambda: "2031-01-01T00:00:00Z")
    await reconcile(world)
    assert [w.verb for w in world.kube.writes[writes:]] == ["patch_status"]
    assert status(world)["lastDriftCheck"] == "2031-01-01T00:00:00Z"


async def test_a_first_install_writes_the_status_twice(world: World) -> None:
    """Before helm (in progress, the plan) and after it (the result, the plan applied): no
    finalizer write when the object came with it (a state's releases do), no third write."""
    body = release_body()
    body["metadata"]["finalizers"] = [FINALIZER]
    world.kube.create(RELEASES, body)
    await reconcile(world)
    await reconcile(world)
    assert [w.verb for w in world.kube.writes] == ["patch_status", "patch_status"]
    assert status(world)["plan"]["phase"] == "Applied"
