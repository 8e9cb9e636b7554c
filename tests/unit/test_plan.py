"""reconcile/plan.py: plan ids, the status summary, the masked text diff, a state's plan."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from helmfile_operator.api.models import PlanCounts, PlannedObject, ReleasePlan
from helmfile_operator.reconcile.drift import Comparison, diff_paths
from helmfile_operator.reconcile.plan import (
    ID_LENGTH,
    MASK,
    MASK_CHANGED,
    MAX_DIFF_BYTES,
    MAX_OBJECTS,
    MAX_PATHS,
    MAX_VALUE_PATHS,
    PendingPlan,
    PlanInput,
    build_plan,
    object_id,
    plan_id,
    state_plan,
    state_plan_summary,
    summary,
    text_diff,
)

NS = "apps"
HEX_ID = re.compile(rf"^[0-9a-f]{{{ID_LENGTH}}}$")


# --- helpers -------------------------------------------------------------------------------------


def obj(
    kind: str = "Deployment",
    name: str = "web",
    namespace: str | None = NS,
    api_version: str = "apps/v1",
    **fields: Any,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata, **fields}


def deployment(name: str = "web", replicas: int = 2, **kw: Any) -> dict[str, Any]:
    return obj("Deployment", name, spec={"replicas": replicas}, **kw)


def configmap(name: str = "conf", data: dict[str, str] | None = None, **kw: Any) -> dict[str, Any]:
    return obj("ConfigMap", name, api_version="v1", data=data or {}, **kw)


def secret(
    name: str = "creds",
    data: dict[str, str] | None = None,
    string_data: dict[str, str] | None = None,
    *,
    encode: bool = True,
) -> dict[str, Any]:
    fields: dict[str, Any] = {"type": "Opaque"}
    if data is not None:
        fields["data"] = {k: b64(v) if encode else v for k, v in data.items()}
    if string_data is not None:
        fields["stringData"] = dict(string_data)
    return obj("Secret", name, api_version="v1", **fields)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def plan_input(
    *,
    action: str = "upgrade",
    deployed: list[dict[str, Any]] | None = None,
    planned: list[dict[str, Any]] | None = None,
    comparisons: list[Comparison] | None = None,
    version_from: str | None = "1.0.0",
    version_to: str | None = "1.1.0",
    values_before: dict[str, Any] | None = None,
    values_after: dict[str, Any] | None = None,
) -> PlanInput:
    return PlanInput(
        id="abc123abc123",
        action=action,  # type: ignore[arg-type]
        digest="sha256:" + "0" * 64,
        namespace=NS,
        deployed=deployed or [],
        planned=planned or [],
        comparisons=comparisons,
        version_from=version_from,
        version_to=version_to,
        values_before=values_before,
        values_after=values_after,
    )


def unchanged(o: dict[str, Any]) -> Comparison:
    return Comparison(o, NS)


def missing(o: dict[str, Any]) -> Comparison:
    return Comparison(o, NS, missing=True)


def changed(o: dict[str, Any], *paths: str) -> Comparison:
    return Comparison(o, NS, paths=list(paths))


def actions(plan: ReleasePlan) -> list[tuple[str, str, str]]:
    return [(o.action, o.kind, o.name) for o in plan.objects]


def wire_text(plan: ReleasePlan) -> str:
    return json.dumps(plan.to_wire())


# --- plan_id -------------------------------------------------------------------------------------


def test_plan_id_is_stable_and_twelve_hex_chars() -> None:
    first = plan_id("upgrade", "sha256:aaaa", 3)
    assert first == plan_id("upgrade", "sha256:aaaa", 3)
    assert HEX_ID.match(first)
    assert len(first) == ID_LENGTH == 12


@pytest.mark.parametrize(
    "other",
    [
        ("install", "sha256:aaaa", 3),
        ("uninstall", "sha256:aaaa", 3),
        ("upgrade", "sha256:bbbb", 3),
        ("upgrade", "sha256:aaaa", 4),
        ("upgrade", "sha256:aaaa", None),
        ("upgrade", "7", 3),  # an uninstall names the revision it removes
    ],
    ids=["action-install", "action-uninstall", "digest", "generation", "no-generation", "rev"],
)
def test_plan_id_differs_for_another_desired_state(other: tuple[Any, str, int | None]) -> None:
    assert plan_id(*other) != plan_id("upgrade", "sha256:aaaa", 3)
    assert HEX_ID.match(plan_id(*other))


# --- object_id -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (deployment(api_version="apps/v1"), deployment(api_version="apps/v1beta1")),
        (deployment(api_version="apps/v1"), deployment(api_version="apps/v1beta2")),
        (
            obj("Ingress", "in", api_version="networking.k8s.io/v1"),
            obj("Ingress", "in", api_version="networking.k8s.io/v1beta1"),
        ),
        # No namespace in the manifest: the release's namespace is filled in.
        (deployment(namespace=None), deployment(namespace=NS)),
    ],
    ids=["apps-v1beta1", "apps-v1beta2", "networking", "default-namespace"],
)
def test_object_id_same_object(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert object_id(a, NS) == object_id(b, NS)


@pytest.mark.parametrize(
    ("o", "expected"),
    [
        (deployment(), ("apps", "Deployment", NS, "web")),
        (deployment(namespace=None), ("apps", "Deployment", NS, "web")),
        (deployment(namespace="other"), ("apps", "Deployment", "other", "web")),
        (configmap(), ("", "ConfigMap", NS, "conf")),  # the core group has no name
        (obj("ClusterRole", "r", namespace=None, api_version="rbac.authorization.k8s.io/v1"),
         ("rbac.authorization.k8s.io", "ClusterRole", NS, "r")),
        ({"kind": "Thing"}, ("", "Thing", NS, "")),
    ],
    ids=["apps", "default-ns", "explicit-ns", "core", "cluster-scoped", "sparse"],
)  # fmt: skip
def test_object_id_parts(o: dict[str, Any], expected: tuple[str, str, str, str]) -> None:
    assert object_id(o, NS) == expected


def test_object_id_without_any_namespace() -> None:
    assert object_id(deployment(namespace=None), None) == ("apps", "Deployment", "", "web")


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (deployment(name="web"), deployment(name="api")),
        (deployment(namespace="a"), deployment(namespace="b")),
        (deployment(), obj("StatefulSet", "web")),
        (deployment(), obj("Deployment", "web", api_version="extensions/v1beta1")),
    ],
    ids=["name", "namespace", "kind", "group"],
)
def test_object_id_other_object(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert object_id(a, NS) != object_id(b, NS)


# --- build_plan with the cluster's comparisons --------------------------------------------------


def test_build_plan_with_comparisons_classifies_each_object() -> None:
    web, api, conf, old = deployment("web"), deployment("api"), configmap("conf"), configmap("old")
    plan = build_plan(
        plan_input(
            deployed=[web, conf, old],
            planned=[web, api, conf],
            comparisons=[
                changed(web, "/spec/replicas", "/spec/template/spec/containers/0/image"),
                missing(api),
                unchanged(conf),
            ],
        )
    )
    assert actions(plan) == [
        ("update", "Deployment", "web"),
        ("create", "Deployment", "api"),
        ("delete", "ConfigMap", "old"),
    ]
    assert plan.counts == PlanCounts(create=1, update=1, delete=1, unchanged=1)
    by_name = {o.name: o for o in plan.objects}
    assert by_name["web"].paths == ["/spec/replicas", "/spec/template/spec/containers/0/image"]
    assert by_name["api"].paths == []
    assert by_name["old"].paths == []
    assert by_name["web"].api_version == "apps/v1"
    assert by_name["old"].api_version == "v1"
    assert {o.namespace for o in plan.objects} == {NS}
    assert plan.message == ""
    assert plan.phase == "AwaitingApproval"
    assert plan.id == "abc123abc123"
    assert plan.action == "upgrade"
    assert plan.digest == "sha256:" + "0" * 64
    assert (plan.chart_version_from, plan.chart_version_to) == ("1.0.0", "1.1.0")
    assert plan.computed_at


@pytest.mark.parametrize(
    ("comparison", "expected_action", "expected_counts"),
    [
        (lambda o: missing(o), "create", PlanCounts(create=1)),
        (lambda o: changed(o, "/spec/replicas"), "update", PlanCounts(update=1)),
        (lambda o: unchanged(o), None, PlanCounts(unchanged=1)),
        # Missing wins over paths (there is nothing live to update).
        (lambda o: Comparison(o, NS, missing=True, paths=["/x"]), "create", PlanCounts(create=1)),
    ],
    ids=["missing", "paths", "no-paths", "missing-with-paths"],
)
def test_build_plan_one_compared_object(
    comparison: Any, expected_action: str | None, expected_counts: PlanCounts
) -> None:
    web = deployment()
    plan = build_plan(plan_input(deployed=[web], planned=[web], comparisons=[comparison(web)]))
    assert [o.action for o in plan.objects] == ([expected_action] if expected_action else [])
    assert plan.counts == expected_counts


def test_build_plan_comparison_namespace_is_the_clusters() -> None:
    role = obj("ClusterRole", "reader", namespace=None, api_version="rbac.authorization.k8s.io/v1")
    plan = build_plan(
        plan_input(planned=[role], comparisons=[Comparison(role, None, missing=True)])
    )
    assert plan.objects[0].namespace is None
    assert "namespace" not in plan.to_wire()["objects"][0]


def test_build_plan_deleted_object_found_across_api_versions() -> None:
    """The deployed object under an older API version is the same object: not deleted."""
    before = deployment(api_version="apps/v1beta2", namespace=None)
    after = deployment(api_version="apps/v1")
    plan = build_plan(
        plan_input(deployed=[before], planned=[after], comparisons=[unchanged(after)])
    )
    assert plan.objects == []
    assert plan.counts == PlanCounts(unchanged=1)


def test_build_plan_uninstall_deletes_everything() -> None:
    deployed = [deployment("web"), configmap("conf")]
    plan = build_plan(
        plan_input(action="uninstall", deployed=deployed, planned=[], comparisons=None)
    )
    assert actions(plan) == [("delete", "Deployment", "web"), ("delete", "ConfigMap", "conf")]
    assert plan.counts == PlanCounts(delete=2)
    assert plan.message == ""  # nothing was to compare


def test_build_plan_lists_at_most_max_objects_but_counts_all() -> None:
    total = MAX_OBJECTS + 25
    planned = [configmap(f"c{i}") for i in range(total)]
    gone = [configmap(f"gone{i}") for i in range(5)]
    plan = build_plan(
        plan_input(deployed=gone, planned=planned, comparisons=[missing(o) for o in planned])
    )
    assert len(plan.objects) == MAX_OBJECTS
    assert plan.counts == PlanCounts(create=total, delete=5)
    assert [o.name for o in plan.objects] == [f"c{i}" for i in range(MAX_OBJECTS)]


def test_build_plan_lists_at_most_max_paths_per_object() -> None:
    web = deployment()
    paths = [f"/spec/template/metadata/labels/l{i}" for i in range(MAX_PATHS + 10)]
    plan = build_plan(plan_input(deployed=[web], planned=[web], comparisons=[changed(web, *paths)]))
    assert plan.objects[0].paths == paths[:MAX_PATHS]
    assert plan.counts.update == 1


@pytest.mark.parametrize(
    ("action", "before", "after", "expected"),
    [
        ("upgrade", {"replicas": 1}, {"replicas": 2}, ["/replicas"]),
        ("upgrade", {"replicas": 1, "image": "a"}, {"replicas": 1, "image": "a"}, []),
        (
            "upgrade",
            {"a": {"b": 1, "c": 2}, "gone": True},
            {"a": {"b": 1, "c": 3}, "new": "x"},
            ["/a/c", "/gone", "/new"],
        ),
        ("upgrade", {"list": [1, 2]}, {"list": [1, 3]}, ["/list/1"]),
        ("upgrade", {"list": [1, 2]}, {"list": [1, 2, 3]}, ["/list"]),
        ("upgrade", {"a/b": 1, "t~": 1}, {"a/b": 2, "t~": 2}, ["/a~1b", "/t~0"]),
        ("upgrade", None, {"replicas": 2}, []),  # the deployed values are unknown
        ("upgrade", {"replicas": 2}, None, []),
        ("install", None, {"replicas": 2, "image": "web:1.0"}, ["/image", "/replicas"]),
        ("install", None, {}, []),
        ("install", None, None, []),
        ("uninstall", None, {"replicas": 2}, []),
    ],
    ids=[
        "one-leaf",
        "same",
        "nested-added-removed",
        "list-index",
        "list-length",
        "escaped",
        "before-unknown",
        "after-unknown",
        "install-all-values",
        "install-empty",
        "install-unknown",
        "uninstall",
    ],
)
def test_build_plan_value_paths(
    action: str, before: dict[str, Any] | None, after: dict[str, Any] | None, expected: list[str]
) -> None:
    plan = build_plan(
        plan_input(action=action, values_before=before, values_after=after, comparisons=[])
    )
    assert plan.values == expected


def test_build_plan_install_value_paths_are_the_leaves() -> None:
    after = {"replicas": 2, "image": {"repository": "web", "tag": "1.0"}}
    plan = build_plan(plan_input(action="install", values_after=after, comparisons=[]))
    assert plan.values == ["/image/repository", "/image/tag", "/replicas"]


def test_build_plan_value_paths_are_bounded() -> None:
    after = {f"k{i:04d}": i for i in range(MAX_VALUE_PATHS + 50)}
    plan = build_plan(plan_input(action="install", values_after=after, comparisons=[]))
    assert len(plan.values) == MAX_VALUE_PATHS
    assert plan.values == diff_paths({}, after)[:MAX_VALUE_PATHS]


def test_build_plan_never_carries_a_value() -> None:
    password = "s3cr3t-Pa55word-value"
    token = "tok-9f8e7d6c5b4a"
    before_obj = secret("creds", {"password": "old-password-value"})
    after_obj = secret("creds", {"password": password}, {"token": token})
    conf = configmap("conf", {"url": f"postgres://u:{password}@db"})
    plan = build_plan(
        plan_input(
            deployed=[before_obj],
            planned=[after_obj, conf],
            comparisons=[changed(after_obj, "/data/password", "/data/token"), missing(conf)],
            values_before={"db": {"password": "old-password-value", "replicas": 1}},
            values_after={"db": {"password": password, "token": token, "replicas": 1}},
        )
    )
    assert plan.values == ["/db/password", "/db/token"]
    text = wire_text(plan)
    for value in (password, token, b64(password), b64(token), "old-password-value"):
        assert value not in text


def test_build_plan_fallback_never_carries_a_value() -> None:
    password = "s3cr3t-Pa55word-value"
    plan = build_plan(
        plan_input(
            deployed=[secret("creds", {"password": "old-password-value"})],
            planned=[secret("creds", {"password": password})],
            comparisons=None,
            values_before={"password": "old-password-value"},
            values_after={"password": password},
        )
    )
    assert plan.objects[0].paths == ["/data/password"]
    text = wire_text(plan)
    for value in (password, b64(password), "old-password-value", b64("old-password-value")):
        assert value not in text


# --- build_plan without comparisons: the two manifests -------------------------------------------


def test_build_plan_without_comparisons_compares_manifests() -> None:
    deployed = [
        deployment("web", replicas=2, namespace=NS),  # helm filled the namespace in
        configmap("same", {"a": "1"}),
        configmap("old"),
    ]
    planned = [
        deployment("web", replicas=3, namespace=None),
        configmap("same", {"a": "1"}, namespace=None),
        deployment("api"),
    ]
    plan = build_plan(plan_input(deployed=deployed, planned=planned, comparisons=None))
    assert actions(plan) == [
        ("update", "Deployment", "web"),
        ("create", "Deployment", "api"),
        ("delete", "ConfigMap", "old"),
    ]
    assert plan.counts == PlanCounts(create=1, update=1, delete=1, unchanged=1)
    assert plan.objects[0].paths == ["/spec/replicas"]  # not /metadata/namespace
    assert plan.objects[1].paths == []
    assert plan.objects[0].namespace == NS  # the default one, as the object lands there
    assert "not compared" in plan.message
    assert plan.message == "the live objects were not compared: the plan compares the two manifests"


@pytest.mark.parametrize(
    ("before", "after", "expected_paths"),
    [
        (deployment(replicas=1), deployment(replicas=5), ["/spec/replicas"]),
        (
            deployment(),
            {**deployment(), "metadata": {"name": "web", "namespace": NS, "labels": {"a": "b"}}},
            ["/metadata/labels"],
        ),
        (
            {**deployment(), "spec": {"replicas": 2, "template": {"x": 1}}},
            {**deployment(), "spec": {"replicas": 2, "template": {"x": 2}}},
            ["/spec/template/x"],
        ),
        (deployment(namespace=None), deployment(namespace=NS), None),
        (deployment(namespace=NS), deployment(namespace=None), None),
        (deployment(), deployment(), None),
    ],
    ids=["replicas", "labels-added", "nested", "namespace-added", "namespace-removed", "same"],
)
def test_build_plan_fallback_update_paths(
    before: dict[str, Any], after: dict[str, Any], expected_paths: list[str] | None
) -> None:
    plan = build_plan(plan_input(deployed=[before], planned=[after], comparisons=None))
    if expected_paths is None:
        assert plan.objects == []
        assert plan.counts == PlanCounts(unchanged=1)
    else:
        assert [(o.action, o.paths) for o in plan.objects] == [("update", expected_paths)]
        assert plan.counts == PlanCounts(update=1)


def test_build_plan_fallback_install_creates_everything() -> None:
    planned = [deployment("web"), configmap("conf")]
    plan = build_plan(
        plan_input(action="install", planned=planned, comparisons=None, version_from=None)
    )
    assert actions(plan) == [("create", "Deployment", "web"), ("create", "ConfigMap", "conf")]
    assert plan.counts == PlanCounts(create=2)
    assert "not compared" in plan.message


def test_build_plan_fallback_api_version_change_is_an_update_not_a_replace() -> None:
    before = deployment(api_version="apps/v1beta2")
    after = deployment(api_version="apps/v1")
    plan = build_plan(plan_input(deployed=[before], planned=[after], comparisons=None))
    assert [(o.action, o.api_version, o.paths) for o in plan.objects] == [
        ("update", "apps/v1", ["/apiVersion"])
    ]


def test_build_plan_fallback_bounds() -> None:
    total = MAX_OBJECTS + 3
    before = [
        configmap(f"c{i}", {f"k{j}": "1" for j in range(MAX_PATHS + 5)}) for i in range(total)
    ]
    after = [configmap(f"c{i}", {f"k{j}": "2" for j in range(MAX_PATHS + 5)}) for i in range(total)]
    plan = build_plan(plan_input(deployed=before, planned=after, comparisons=None))
    assert plan.counts == PlanCounts(update=total)
    assert len(plan.objects) == MAX_OBJECTS
    assert all(len(o.paths) == MAX_PATHS for o in plan.objects)


# --- summary -------------------------------------------------------------------------------------


def release_plan(**kw: Any) -> ReleasePlan:
    fields: dict[str, Any] = {
        "id": "abc123abc123",
        "action": "upgrade",
        "phase": "AwaitingApproval",
        "computed_at": "2024-05-01T12:00:00Z",
        "chart_version_from": "1.0.0",
        "chart_version_to": "1.1.0",
    }
    return ReleasePlan(**{**fields, **kw})


def planned_object(name: str, action: str, *paths: str, kind: str = "Deployment") -> PlannedObject:
    return PlannedObject(
        api_version="apps/v1",
        kind=kind,
        name=name,
        namespace=NS,
        action=action,  # type: ignore[arg-type]
        paths=list(paths),
    )


def test_summary_of_an_upgrade() -> None:
    plan = release_plan(
        counts=PlanCounts(update=1, unchanged=4),
        objects=[planned_object("web", "update", "/spec/replicas")],
    )
    assert summary(plan) == "upgrade 1.0.0 → 1.1.0: 1 to update (Deployment web: /spec/replicas)"


def test_summary_from_build_plan() -> None:
    web, api, old = deployment("web"), deployment("api"), configmap("old")
    plan = build_plan(
        plan_input(
            deployed=[web, old],
            planned=[web, api],
            comparisons=[changed(web, "/spec/replicas"), missing(api)],
        )
    )
    text = summary(plan)
    assert text.startswith("upgrade 1.0.0 → 1.1.0: ")
    assert "1 to create" in text
    assert "1 to update" in text
    assert "1 to delete" in text
    assert "Deployment web: /spec/replicas" in text


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        (
            {"counts": PlanCounts(create=2, update=1, delete=3)},
            "upgrade 1.0.0 → 1.1.0: 2 to create, 1 to update, 3 to delete",
        ),
        (
            {"chart_version_from": "1.1.0", "counts": PlanCounts(unchanged=3)},
            "upgrade: no object changes",
        ),
        (
            {"action": "install", "chart_version_from": None, "counts": PlanCounts(create=4)},
            "install ∅ → 1.1.0: 4 to create",
        ),
        (
            {"action": "uninstall", "chart_version_to": None, "counts": PlanCounts(delete=2)},
            "uninstall 1.0.0 → ∅: 2 to delete",
        ),
    ],
    ids=["all-counts", "same-version-nothing", "install", "uninstall"],
)
def test_summary_variants(kw: dict[str, Any], expected: str) -> None:
    assert summary(release_plan(**kw)) == expected


def test_summary_lists_at_most_three_objects_and_three_paths_each() -> None:
    objects = [planned_object(f"o{i}", "update", *(f"/p{j}" for j in range(5))) for i in range(5)]
    text = summary(release_plan(counts=PlanCounts(update=5), objects=objects))
    assert "o0: /p0, /p1, /p2;" in text
    assert "/p3" not in text
    assert "o2: /p0, /p1, /p2)" in text
    assert "o3" not in text


def test_summary_skips_objects_without_paths() -> None:
    objects = [planned_object("new", "create"), planned_object("web", "update", "/spec/replicas")]
    text = summary(release_plan(counts=PlanCounts(create=1, update=1), objects=objects))
    assert text.endswith("(Deployment web: /spec/replicas)")
    assert "new" not in text


# --- text_diff -----------------------------------------------------------------------------------


def diff(
    deployed: list[dict[str, Any]],
    planned: list[dict[str, Any]],
    secrets: list[str] | None = None,
    revision: int | None = 4,
) -> str:
    return text_diff(deployed, planned, NS, secrets or [], revision=revision)


def test_text_diff_is_a_unified_diff_per_object() -> None:
    out = diff(
        [deployment("web", 2), configmap("same", {"a": "1"})],
        [deployment("web", 3), configmap("same", {"a": "1"}), deployment("api")],
    )
    assert f"--- {NS}/Deployment/web (revision 4)\n" in out
    assert f"+++ {NS}/Deployment/web (planned)\n" in out
    assert "-  replicas: 2\n" in out
    assert "+  replicas: 3\n" in out
    assert "@@ " in out
    # A created object comes from /dev/null; an unchanged one has no diff.
    assert f"--- /dev/null\n+++ {NS}/Deployment/api (planned)\n" in out
    assert "ConfigMap/same" not in out
    # Planned order first.
    assert out.index("Deployment/web") < out.index("Deployment/api")


def test_text_diff_of_a_deleted_object_goes_to_dev_null() -> None:
    out = diff([deployment("web"), configmap("old", {"a": "1"})], [deployment("web")])
    assert f"--- {NS}/ConfigMap/old (revision 4)\n+++ /dev/null\n" in out
    assert "-kind: ConfigMap\n" in out
    assert "+kind" not in out


def test_text_diff_names_the_revision() -> None:
    out = diff([deployment(replicas=1)], [deployment(replicas=2)], revision=None)
    assert "(revision None)" in out  # as given: an unknown revision is said so


def test_text_diff_nothing_changes() -> None:
    assert diff([deployment()], [deployment()]) == ""
    assert diff([], []) == ""


def test_text_diff_matches_objects_across_api_versions_and_default_namespace() -> None:
    out = diff(
        [deployment(api_version="apps/v1beta2", namespace=None)],
        [deployment(api_version="apps/v1", namespace=None)],
    )
    assert "-apiVersion: apps/v1beta2\n+apiVersion: apps/v1\n" in out
    assert "/dev/null" not in out


def test_text_diff_cluster_scoped_name_has_the_default_namespace() -> None:
    role = obj("ClusterRole", "reader", namespace=None, api_version="rbac.authorization.k8s.io/v1")
    out = text_diff([], [role], "", [], revision=1)
    assert "+++ ClusterRole/reader (planned)\n" in out


SECRET_DIFF_CASES = [
    (
        "data-changed",
        secret(data={"db-pass": "old-password-1"}),
        secret(data={"db-pass": "new-password-2"}),
    ),
    (
        "stringData-changed",
        secret(string_data={"db-pass": "old-password-1"}),
        secret(string_data={"db-pass": "new-password-2"}),
    ),
    (
        "data-to-stringData",
        secret(data={"db-pass": "old-password-1"}),
        secret(string_data={"db-pass": "new-password-2"}),
    ),
    (
        "stringData-to-data",
        secret(string_data={"db-pass": "old-password-1"}),
        secret(data={"db-pass": "new-password-2"}),
    ),
]


@pytest.mark.parametrize(
    ("before", "after"),
    [(b, a) for _, b, a in SECRET_DIFF_CASES],
    ids=[name for name, _, _ in SECRET_DIFF_CASES],
)
def test_text_diff_masks_a_changed_secret_value(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    out = diff([before], [after])
    assert f"-  db-pass: '{MASK}'\n" in out
    assert f"+  db-pass: '{MASK_CHANGED}'\n" in out
    for value in ("old-password-1", "new-password-2"):
        assert value not in out
        assert b64(value) not in out
        assert b64(value).rstrip("=") not in out
    assert "stringData" not in out  # both shown as masked `data`


def test_text_diff_unchanged_secret_key_shows_the_mask() -> None:
    before = secret(data={"user": "admin-user", "db-pass": "old-password-1"})
    after = secret(data={"user": "admin-user", "db-pass": "new-password-2"})
    out = diff([before], [after])
    assert f"   user: '{MASK}'\n" in out  # context line: unchanged, masked
    assert f"+  db-pass: '{MASK_CHANGED}'\n" in out
    for value in ("admin-user", "old-password-1", "new-password-2"):
        assert value not in out
        assert b64(value) not in out


def test_text_diff_same_secret_value_in_data_and_string_data_is_unchanged() -> None:
    before = secret(data={"db-pass": "same-password"})
    after = secret(string_data={"db-pass": "same-password"})
    assert diff([before], [after]) == ""


def test_text_diff_string_data_wins_over_data() -> None:
    before = secret(data={"db-pass": "same-password"})
    after = secret(data={"db-pass": "same-password"}, string_data={"db-pass": "new-password"})
    out = diff([before], [after])
    assert f"+  db-pass: '{MASK_CHANGED}'\n" in out
    assert "same-password" not in out
    assert "new-password" not in out


def test_text_diff_secret_added_and_removed_keys() -> None:
    before = secret(data={"gone": "gone-value-1", "kept": "kept-value-1"})
    after = secret(data={"kept": "kept-value-1", "new": "new-value-1"})
    out = diff([before], [after])
    assert f"-  gone: '{MASK}'\n" in out
    assert f"+  new: '{MASK_CHANGED}'\n" in out
    assert f"   kept: '{MASK}'\n" in out
    for value in ("gone-value-1", "kept-value-1", "new-value-1"):
        assert value not in out
        assert b64(value) not in out


def test_text_diff_created_and_deleted_secrets_are_masked() -> None:
    created = secret("fresh", data={"api-key": "fresh-token-1"})
    deleted = secret("stale", string_data={"api-key": "stale-token-1"})
    out = diff([deleted], [created])
    assert f"--- /dev/null\n+++ {NS}/Secret/fresh (planned)\n" in out
    assert f"--- {NS}/Secret/stale (revision 4)\n+++ /dev/null\n" in out
    assert f"+  api-key: '{MASK_CHANGED}'\n" in out
    assert f"-  api-key: '{MASK}'\n" in out
    for value in ("fresh-token-1", "stale-token-1"):
        assert value not in out
        assert b64(value) not in out


@pytest.mark.parametrize("key", ["password", "token", "client-secret"])
def test_text_diff_secret_key_named_like_a_password_is_masked(key: str) -> None:
    before = secret(data={key: "old-value-1"})
    after = secret(data={key: "new-value-2"})
    out = diff([before], [after])
    for value in ("old-value-1", "new-value-2"):
        assert value not in out
        assert b64(value) not in out
    assert MASK_CHANGED in out


def test_text_diff_mask_of_a_password_key_stays_intact() -> None:
    before = secret(data={"password": "old-value-1"})
    after = secret(data={"password": "new-value-2"})
    out = diff([before], [after])
    assert f"+  password: '{MASK_CHANGED}'\n" in out


def test_text_diff_secret_with_data_that_is_not_base64_is_masked() -> None:
    before = secret(data={"k": "not base64 at all!"}, encode=False)
    after = secret(data={"k": "still not base64?"}, encode=False)
    out = diff([before], [after])
    assert f"+  k: '{MASK_CHANGED}'\n" in out
    assert "base64" not in out


def test_text_diff_secret_other_fields_still_diffed() -> None:
    before = secret(data={"k": "value-one"})
    after = {**secret(data={"k": "value-one"}), "type": "kubernetes.io/basic-auth"}
    out = diff([before], [after])
    assert "-type: Opaque\n+type: kubernetes.io/basic-auth\n" in out
    assert "value-one" not in out
    assert b64("value-one") not in out


def test_text_diff_only_core_v1_secrets_are_masked() -> None:
    """A custom `Secret` kind of another API group is no Kubernetes Secret."""
    before = obj("Secret", "s", api_version="example.com/v1", data={"k": "plain-a"})
    after = obj("Secret", "s", api_version="example.com/v1", data={"k": "plain-b"})
    out = diff([before], [after])
    assert "+  k: plain-b\n" in out


@pytest.mark.parametrize(
    "value",
    [
        "hunter2-password",
        "tok_9f8e7d6c5b4a3921",
        "p@ss:w0rd/with+chars=",
        "sëcret-ünïcode-€",
    ],
    ids=["plain", "token", "punctuation", "unicode"],
)
@pytest.mark.parametrize(
    "embed",
    [
        "{}",
        "postgres://user:{}@db:5432/app",
        "header\nline two {} here\nfooter\n",
        "encoded {} ",  # replaced below by the base64 form
    ],
    ids=["whole", "in-url", "multi-line", "base64"],
)
def test_text_diff_redacts_secret_strings_elsewhere(value: str, embed: str) -> None:
    shown = b64(value) if embed.startswith("encoded") else value
    before = configmap("conf", {"setting": "old"})
    after = configmap("conf", {"setting": embed.format(shown), "other": "plain"})
    out = diff([before], [after], secrets=[value])
    assert value not in out
    assert b64(value) not in out
    assert b64(value).rstrip("=") not in out
    assert "***" in out
    assert "+  other: plain\n" in out


def test_text_diff_redacts_secret_strings_on_both_sides_and_in_secrets() -> None:
    value = "shared-secret-value"
    before = configmap("conf", {"a": f"old {value}"})
    after = configmap("conf", {"a": f"new {value}"})
    out = diff([before, secret(data={"k": value})], [after], secrets=[value])
    assert value not in out
    assert b64(value) not in out
    assert "-  a: old ***\n" in out
    assert "+  a: new ***\n" in out


def test_text_diff_redacts_a_secret_string_in_metadata() -> None:
    value = "leaked-in-annotation"
    after = deployment()
    after["metadata"]["annotations"] = {"note": value}
    out = diff([deployment()], [after], secrets=[value])
    assert value not in out


def test_text_diff_short_secret_strings_are_not_redacted() -> None:
    """Strings under four characters would scrub ordinary words."""
    out = diff([configmap(data={"a": "old"})], [configmap(data={"a": "yes"})], secrets=["yes"])
    assert "+  a: 'yes'\n" in out


def test_text_diff_redacts_a_secret_string_yaml_single_quotes() -> None:
    value = "@dm1n'pw-value"
    before = configmap("conf", {"admin": "old"})
    after = configmap("conf", {"admin": value})
    out = diff([before], [after], secrets=[value])
    assert "dm1n" not in out


def test_text_diff_redacts_a_secret_string_yaml_folds() -> None:
    value = "correct horse battery staple"
    before = configmap("conf", {"note": "old"})
    after = configmap("conf", {"note": "passphrase is " * 5 + value + " ok"})
    out = diff([before], [after], secrets=[value])
    assert "horse battery" not in out
    assert "correct" not in out


def test_text_diff_is_bounded() -> None:
    big = {f"key{i:06d}": "x" * 100 for i in range(8000)}  # ~900 KiB of YAML
    out = diff([], [configmap("huge", big)])
    note = f"\n... (the diff is longer than {MAX_DIFF_BYTES // 1024} KiB; cut here)\n"
    assert out.endswith(note)
    body = out[: -len(note)]
    assert len(body.encode()) <= MAX_DIFF_BYTES
    assert len(out.encode()) <= MAX_DIFF_BYTES + len(note.encode())
    assert len(body.encode()) > MAX_DIFF_BYTES - 200  # cut at the last whole line
    assert body.endswith("x" * 100)  # no partial line
    assert out.startswith(f"--- /dev/null\n+++ {NS}/ConfigMap/huge (planned)\n")


def test_text_diff_bounded_cut_never_splits_a_character() -> None:
    big = {f"key{i:06d}": "€" * 50 for i in range(8000)}
    out = diff([], [configmap("huge", big)])
    assert "cut here" in out
    out.encode()  # valid text
    assert "\ufffd" not in out


def test_text_diff_under_the_bound_is_not_cut() -> None:
    out = diff([], [configmap("small", {f"k{i}": "v" for i in range(100)})])
    assert "cut here" not in out
    assert len(out.encode()) < MAX_DIFF_BYTES


# --- state_plan ----------------------------------------------------------------------------------


def pending(name: str, release_id: str, action: str = "upgrade", pid: str = "", n: int = 0) -> Any:
    return PendingPlan(
        name=name,
        release_id=release_id,
        action=action,  # type: ignore[arg-type]
        id=pid or f"id-{name}",
        objects=n,
    )


def test_state_plan_none_without_pending_plans() -> None:
    assert state_plan([], [["apps/web"]]) is None
    assert state_plan([], []) is None


def test_state_plan_follows_the_order_groups() -> None:
    plans = [
        pending("web", "apps/web"),
        pending("db", "data/db", "install"),
        pending("stray", "x/stray"),  # not in the order: last
        pending("api", "apps/api"),
        pending("cache", "data/cache", "install"),
    ]
    order = [["data/db", "data/cache"], ["apps/api", "apps/web"]]
    result = state_plan(plans, order)
    assert result is not None
    assert [r.name for r in result.releases] == ["db", "cache", "api", "web", "stray"]


def test_state_plan_unknown_ids_go_last_sorted_by_name() -> None:
    plans = [
        pending("zeta", "z/zeta"),
        pending("alpha", "a/alpha"),
        pending("known", "k/known"),
    ]
    result = state_plan(plans, [["k/known"]])
    assert result is not None
    assert [r.name for r in result.releases] == ["known", "alpha", "zeta"]


def test_state_plan_with_no_order_sorts_by_name() -> None:
    result = state_plan([pending("b", "n/b"), pending("a", "n/a")], [])
    assert result is not None
    assert [r.name for r in result.releases] == ["a", "b"]


def test_state_plan_releases_carry_their_plans() -> None:
    result = state_plan([pending("web", "apps/web", "install", "0123456789ab", 7)], [])
    assert result is not None
    release = result.releases[0]
    assert (release.name, release.action, release.id, release.objects) == (
        "web",
        "install",
        "0123456789ab",
        7,
    )


def test_state_plan_id() -> None:
    order = [["apps/db"], ["apps/web"]]
    base = [pending("db", "apps/db", pid="aaaaaaaaaaaa"), pending("web", "apps/web", pid="bbb")]
    first = state_plan(base, order)
    assert first is not None
    assert HEX_ID.match(first.id)
    # Stable, and independent of the order the plans come in.
    again = state_plan(list(reversed(base)), order)
    assert again is not None
    assert again.id == first.id
    # Any release's plan id changes it.
    other = state_plan(
        [pending("db", "apps/db", pid="aaaaaaaaaaaa"), pending("web", "apps/web", pid="ccc")],
        order,
    )
    assert other is not None
    assert other.id != first.id
    # So do another action, another release, one release fewer.
    for plans in (
        [pending("db", "apps/db", "install", "aaaaaaaaaaaa"), base[1]],
        [*base, pending("extra", "apps/extra")],
        base[:1],
    ):
        changed_plan = state_plan(plans, order)
        assert changed_plan is not None
        assert changed_plan.id != first.id


def test_state_plan_id_ignores_object_counts() -> None:
    a = state_plan([pending("web", "apps/web", pid="p1", n=1)], [])
    b = state_plan([pending("web", "apps/web", pid="p1", n=9)], [])
    assert a is not None and b is not None
    assert a.id == b.id


@pytest.mark.parametrize(
    ("acts", "expected"),
    [
        (["install"], (1, 0, 0)),
        (["upgrade", "upgrade"], (0, 2, 0)),
        (["uninstall"], (0, 0, 1)),
        (["delete"], (0, 0, 1)),
        (["install", "upgrade", "uninstall", "delete", "install"], (2, 1, 2)),
    ],
    ids=["install", "upgrades", "uninstall", "delete", "mixed"],
)
def test_state_plan_counts(acts: list[str], expected: tuple[int, int, int]) -> None:
    plans = [pending(f"r{i}", f"ns/r{i}", a) for i, a in enumerate(acts)]
    result = state_plan(plans, [])
    assert result is not None
    assert (result.install, result.upgrade, result.delete) == expected
    assert len(result.releases) == len(acts)


def test_state_plan_summary() -> None:
    plans = [
        pending("a", "n/a", "install"),
        pending("b", "n/b", "upgrade"),
        pending("c", "n/c", "upgrade"),
        pending("d", "n/d", "uninstall"),
        pending("e", "n/e", "delete"),
    ]
    result = state_plan(plans, [])
    assert result is not None
    assert state_plan_summary(result) == "1 to install, 2 to upgrade, 2 to delete"
