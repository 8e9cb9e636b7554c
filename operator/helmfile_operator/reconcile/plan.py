"""Plans: what a change of a release will do, computed before it is done. Pure: no I/O.

A plan compares the manifest helm would apply (its `--dry-run=server`) with the cluster: per
object `create`, `update` (the JSON pointers a server-side-apply dry run changes) or `delete` (in
the deployed manifest, no longer in the planned one), plus the chart versions and the value paths
that change. Its id names the desired state it was computed for — the spec's generation, the
digest of chart and values — so an approval of that id can never apply anything else.

The summary (paths, never values) goes on the status; the full text diff, with the data of
Secrets masked and every string read from a Secret redacted, goes into a Secret of its own
(reconcile/actions/plan.py).
"""

from __future__ import annotations

import base64
import binascii
import difflib
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from helmfile_operator.api.models import (
    PlanCounts,
    PlannedObject,
    ReleasePlan,
    StatePlan,
    StatePlanRelease,
)
from helmfile_operator.helm.errors import all_secret_forms, redact_forms
from helmfile_operator.reconcile.conditions import now
from helmfile_operator.reconcile.drift import Comparison, diff_paths

PlanAction = Literal["install", "upgrade", "uninstall"]

MAX_OBJECTS = 100  # objects listed on the status (the counts cover all)
MAX_PATHS = 30  # paths listed per object
MAX_VALUE_PATHS = 100
MAX_DIFF_BYTES = 512 * 1024  # a Secret holds at most 1 MiB
MASK = "***"
MASK_CHANGED = "*** (changed)"
ID_LENGTH = 12


def plan_id(action: PlanAction, desired: str, generation: int | None) -> str:
    """The id of the plan of `action` towards `desired` (the digest of chart and values, or for
    an uninstall the revision it removes) for the spec's `generation`."""
    text = f"{action}\n{desired}\n{generation}"
    return hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH]


ObjectId = tuple[str, str, str, str]  # (api group, kind, namespace, name)


def object_id(obj: Mapping[str, Any], default_namespace: str | None) -> ObjectId:
    """An object's identity across manifests: the version of its API does not matter."""
    metadata = obj.get("metadata") or {}
    group = str(obj.get("apiVersion") or "").rpartition("/")[0]
    namespace = metadata.get("namespace") or default_namespace or ""
    return (group, str(obj.get("kind") or ""), str(namespace), str(metadata.get("name") or ""))


@dataclass(frozen=True)
class PlanInput:
    """What a plan is computed from."""

    id: str
    action: PlanAction
    digest: str | None
    namespace: str  # the release's target namespace (objects without one land there)
    deployed: Sequence[dict[str, Any]]  # objects of the deployed manifest ([] for an install)
    planned: Sequence[dict[str, Any]]  # objects helm would apply ([] for an uninstall)
    # Per planned object (same order), the cluster's answer; None: not compared (the plan then
    # compares the two manifests, and says so).
    comparisons: Sequence[Comparison] | None
    version_from: str | None
    version_to: str | None
    values_before: Mapping[str, Any] | None  # the deployed revision's values (None: unknown)
    values_after: Mapping[str, Any] | None


def build_plan(plan: PlanInput) -> ReleasePlan:
    """The status summary of a plan (phase `AwaitingApproval`; the caller sets another)."""
    counts = PlanCounts()
    objects: list[PlannedObject] = []
    deployed = {object_id(o, plan.namespace): o for o in plan.deployed}
    planned_ids = set()
    for index, obj in enumerate(plan.planned):
        key = object_id(obj, plan.namespace)
        planned_ids.add(key)
        namespace = key[2] or None
        if plan.comparisons is not None:
            found = plan.comparisons[index]
            action = "create" if found.missing else ("update" if found.paths else None)
            paths, namespace = found.paths, found.namespace
        elif key not in deployed:
            action, paths = "create", []
        else:
            action = "update" if _comparable(deployed[key]) != _comparable(obj) else None
            paths = diff_paths(_comparable(deployed[key]), _comparable(obj)) if action else []
        if action is None:
            counts.unchanged += 1
            continue
        setattr(counts, action, getattr(counts, action) + 1)
        objects.append(_entry(obj, key, namespace, action, paths))
    for key, obj in deployed.items():
        if key not in planned_ids:
            counts.delete += 1
            objects.append(_entry(obj, key, key[2] or None, "delete", []))
    values: list[str] = []
    if plan.values_before is not None and plan.values_after is not None:
        values = diff_paths(dict(plan.values_before), dict(plan.values_after))
    elif plan.values_after is not None and plan.action == "install":
        values = leaf_paths(plan.values_after)
    return ReleasePlan(
        id=plan.id,
        action=plan.action,
        phase="AwaitingApproval",
        computed_at=now(),
        digest=plan.digest,
        chart_version_from=plan.version_from,
        chart_version_to=plan.version_to,
        counts=counts,
        objects=objects[:MAX_OBJECTS],
        values=values[:MAX_VALUE_PATHS],
        message="" if plan.comparisons is not None or not plan.planned else _UNCOMPARED,
    )


_UNCOMPARED = "the live objects were not compared: the plan compares the two manifests"
# A first install under automatic approval is not dry-run: it creates every object it renders.
INSTALL_UNPLANNED = (
    "a first install under automatic approval runs no dry run: it creates every object of its "
    "manifest, listed here once installed"
)


def install_plan(id_: str, digest: str | None, version: str | None, values: Any) -> ReleasePlan:
    """The plan recorded before a first install under automatic approval (no helm dry run: a
    fleet's first convergence would run twice the helm processes); its objects are filled in
    from the installed manifest (`fill_install_plan`)."""
    return ReleasePlan(
        id=id_,
        action="install",
        phase="Approved",
        computed_at=now(),
        digest=digest,
        chart_version_to=version,
        values=leaf_paths(values)[:MAX_VALUE_PATHS],
        message=INSTALL_UNPLANNED,
    )


def fill_install_plan(plan: ReleasePlan | None, manifest: str, namespace: str) -> None:
    """The objects a first install created, from its manifest (all `create`)."""
    if plan is None or plan.action != "install" or plan.message != INSTALL_UNPLANNED:
        return
    from helmfile_operator.reconcile.drift import manifest_objects

    objects = manifest_objects(manifest, "the installed manifest")
    plan.counts = PlanCounts(create=len(objects))
    plan.objects = [
        _entry(obj, object_id(obj, namespace), object_id(obj, namespace)[2] or None, "create", [])
        for obj in objects[:MAX_OBJECTS]
    ]


def leaf_paths(value: Any, prefix: str = "") -> list[str]:
    """JSON pointers of every leaf (a new install sets them all); an empty map inside is one."""
    if not prefix and not value:
        return []
    if isinstance(value, Mapping) and value:
        return [
            path
            for key in sorted(value, key=str)
            for path in leaf_paths(value[key], f"{prefix}/{_escape(str(key))}")
        ]
    if isinstance(value, list) and value:
        return [path for i, item in enumerate(value) for path in leaf_paths(item, f"{prefix}/{i}")]
    return [prefix or "/"]


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _entry(
    obj: Mapping[str, Any],
    key: ObjectId,
    namespace: str | None,
    action: str,
    paths: Sequence[str],
) -> PlannedObject:
    return PlannedObject(
        api_version=str(obj.get("apiVersion") or ""),
        kind=key[1],
        name=key[3],
        namespace=namespace,
        action=action,  # type: ignore[arg-type]  # one of the three literals, from above
        paths=list(paths[:MAX_PATHS]),
    )


def _comparable(obj: Mapping[str, Any]) -> dict[str, Any]:
    """An object as a manifest states it, without the namespace helm fills in."""
    metadata = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "namespace"}
    return {**obj, "metadata": metadata}


def summary(plan: ReleasePlan) -> str:
    """`upgrade 1.0.0 → 1.1.0: 1 to update (Deployment web: /spec/replicas)`."""
    counts = plan.counts
    parts = [
        f"{n} to {verb}"
        for n, verb in (
            (counts.create, "create"),
            (counts.update, "update"),
            (counts.delete, "delete"),
        )
        if n
    ]
    versions = ""
    if plan.chart_version_from != plan.chart_version_to:
        versions = f" {plan.chart_version_from or '∅'} → {plan.chart_version_to or '∅'}"
    changed = ", ".join(parts) or "no object changes"
    details = [f"{o.kind} {o.name}: {', '.join(o.paths[:3])}" for o in plan.objects if o.paths][:3]
    more = f" ({'; '.join(details)})" if details else ""
    return f"{plan.action}{versions}: {changed}{more}"


# --- the text diff -------------------------------------------------------------------------------


def text_diff(
    deployed: Sequence[dict[str, Any]],
    planned: Sequence[dict[str, Any]],
    namespace: str,
    secrets: Iterable[str],
    *,
    revision: int | None,
) -> str:
    """A unified diff per object (like helm-diff), deployed → planned. Secret `data` and
    `stringData` are masked (a changed value shows as changed, never itself), and every
    string read from a Secret is redacted wherever it appears."""
    forms = all_secret_forms(secrets)
    # Redacted in the objects, before they become YAML: the dump may quote or fold a string.
    before = {object_id(o, namespace): _redacted(o, forms) for o in deployed}
    after = {object_id(o, namespace): _redacted(o, forms) for o in planned}
    keys = list(after) + [k for k in before if k not in after]
    chunks: list[str] = []
    for key in keys:
        old, new = before.get(key), after.get(key)
        old_shown, new_shown = _masked_pair(old, new)
        name = f"{key[2] + '/' if key[2] else ''}{key[1]}/{key[3]}"
        lines = difflib.unified_diff(
            _yaml_lines(old_shown),
            _yaml_lines(new_shown),
            fromfile=f"{name} (revision {revision})" if old is not None else "/dev/null",
            tofile=f"{name} (planned)" if new is not None else "/dev/null",
        )
        chunks.append("".join(lines))
    return _bounded("".join(chunk for chunk in chunks if chunk))


def _redacted(value: Any, forms: Sequence[str]) -> Any:
    """`value` with every string (and key) read from a Secret redacted, in each of its forms."""
    if not forms:
        return value
    if isinstance(value, Mapping):
        return {redact_forms(str(k), forms): _redacted(v, forms) for k, v in value.items()}
    if isinstance(value, list):
        return [_redacted(item, forms) for item in value]
    if isinstance(value, str):
        return redact_forms(value, forms)
    return value


def _yaml_lines(obj: Mapping[str, Any] | None) -> list[str]:
    if obj is None:
        return []
    text = yaml.safe_dump(dict(obj), sort_keys=True, default_flow_style=False, allow_unicode=True)
    return text.splitlines(keepends=True)


def _masked_pair(
    old: Mapping[str, Any] | None, new: Mapping[str, Any] | None
) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    if not _is_secret(old) and not _is_secret(new):
        return old, new
    old_values = _secret_values(old)
    new_values = _secret_values(new)
    return (
        _mask(old, {k: MASK for k in old_values}),
        _mask(
            new,
            {k: MASK if old_values.get(k) == v else MASK_CHANGED for k, v in new_values.items()},
        ),
    )


def _is_secret(obj: Mapping[str, Any] | None) -> bool:
    return obj is not None and obj.get("kind") == "Secret" and obj.get("apiVersion") == "v1"


def _secret_values(obj: Mapping[str, Any] | None) -> dict[str, str]:
    """A Secret's values by key, decoded (`data` is base64, `stringData` plain; the latter wins
    as the API server merges them)."""
    if obj is None:
        return {}
    values: dict[str, str] = {}
    for key, value in (obj.get("data") or {}).items():
        try:
            values[str(key)] = base64.b64decode(str(value), validate=True).decode(
                "utf-8", "replace"
            )
        except (binascii.Error, ValueError):
            values[str(key)] = str(value)
    for key, value in (obj.get("stringData") or {}).items():
        values[str(key)] = str(value)
    return values


def _mask(obj: Mapping[str, Any] | None, shown: Mapping[str, str]) -> Mapping[str, Any] | None:
    if obj is None:
        return None
    masked = {k: v for k, v in obj.items() if k not in ("data", "stringData")}
    if shown:
        masked["data"] = dict(sorted(shown.items()))
    return masked


def _bounded(text: str) -> str:
    data = text.encode()
    if len(data) <= MAX_DIFF_BYTES:
        return text
    cut = data[:MAX_DIFF_BYTES].decode("utf-8", "ignore").rpartition("\n")[0]
    return f"{cut}\n... (the diff is longer than {MAX_DIFF_BYTES // 1024} KiB; cut here)\n"


# --- a state's plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingPlan:
    """A release of a state whose change waits for an approval."""

    name: str  # the HelmfileRelease
    release_id: str  # `namespace/name` of the Helm release: its place in the install order
    action: Literal["install", "upgrade", "uninstall", "delete"]
    id: str
    objects: int = 0


def state_plan(pending: Sequence[PendingPlan], order: Sequence[Sequence[str]]) -> StatePlan | None:
    """The pending plans of a state's releases as one plan, in `needs` order; its id changes
    whenever any of theirs does, so approving it approves exactly these."""
    if not pending:
        return None
    position = {
        rid: (group, index) for group, ids in enumerate(order) for index, rid in enumerate(ids)
    }
    last = (len(order), 0)
    ordered = sorted(pending, key=lambda p: (position.get(p.release_id, last), p.name))
    text = "\n".join(f"{p.name}:{p.action}:{p.id}" for p in ordered)
    return StatePlan(
        id=hashlib.sha256(text.encode()).hexdigest()[:ID_LENGTH],
        install=sum(p.action == "install" for p in ordered),
        upgrade=sum(p.action == "upgrade" for p in ordered),
        delete=sum(p.action in ("uninstall", "delete") for p in ordered),
        releases=[
            StatePlanRelease(name=p.name, action=p.action, id=p.id, objects=p.objects)
            for p in ordered
        ],
    )


def state_plan_summary(plan: StatePlan) -> str:
    return f"{plan.install} to install, {plan.upgrade} to upgrade, {plan.delete} to delete"
