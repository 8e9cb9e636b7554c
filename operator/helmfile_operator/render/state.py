"""Render a HelmfileState into HelmfileRelease specs and their install order. Pure: no I/O.

The caller reads the environment's `valuesFrom` ConfigMaps and passes their maps in; everything
else comes from the state object itself. Same input, same output (names, order, values).
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from helmfile_operator.api.models import (
    ChartReference,
    ChartRepository,
    Environment,
    HelmfileReleaseSpec,
    HelmfileStateSpec,
    ReleaseTemplate,
    Repository,
    merge_helm_options,
)
from helmfile_operator.render.dag import build_groups
from helmfile_operator.render.errors import (
    ConditionError,
    InvalidChartError,
    RenderError,
    RenderLimitExceeded,
    UnknownEnvironmentError,
    UnknownNeedError,
    UnknownRepositoryError,
    ValuesError,
    format_names,
)
from helmfile_operator.render.templates import RenderBudget, render_values_template
from helmfile_operator.render.values import (
    PathLimitError,
    check_set_growth,
    get_path,
    merge_all,
    parse_path,
)

__all__ = [
    "DEFAULT_ENVIRONMENT",
    "RenderedRelease",
    "RenderedState",
    "StateMeta",
    "parse_chart",
    "release_id",
    "render_state",
    "resource_name",
]

DEFAULT_ENVIRONMENT = "default"
DNS_LABEL_MAX = 63
_HASH_LENGTH = 8
_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_CHART_FORMS = (
    "use `<repository>/<chart>` with a repository listed in spec.repositories, or a full "
    "`oci://<registry>/<path>/<chart>` reference (the version goes in `version`)"
)


@dataclass(frozen=True)
class StateMeta:
    """What rendering needs of the HelmfileState's metadata."""

    name: str
    namespace: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]


@dataclass(frozen=True)
class RenderedRelease:
    id: str
    """`<namespace>/<name>` of the helm release."""
    template_name: str
    """`spec.releases[].name`."""
    resource_name: str
    """Name of the HelmfileRelease object (in the state's namespace)."""
    spec: HelmfileReleaseSpec


@dataclass(frozen=True)
class RenderedState:
    environment: str
    values: dict[str, Any]
    """The environment's merged values."""
    releases: list[RenderedRelease]
    """In `spec.releases` order."""
    order: list[list[str]]
    """Release ids in install groups: each group needs only releases of earlier groups."""


def release_id(namespace: str, name: str) -> str:
    return f"{namespace}/{name}"


def resource_name(state: str, release: str, rid: str, *, hashed: bool = False) -> str:
    """`<state>-<release>` as a DNS-1123 label. Longer than 63 characters, or `hashed`: cut and
    suffixed with `-` and 8 hex characters of sha256(`rid`), the release id."""
    name = _NOT_DNS.sub("-", f"{state}-{release}".lower()).strip("-")
    if not hashed and len(name) <= DNS_LABEL_MAX:
        return name
    digest = hashlib.sha256(rid.encode()).hexdigest()[:_HASH_LENGTH]
    prefix = name[: DNS_LABEL_MAX - _HASH_LENGTH - 1].rstrip("-") or "release"
    return f"{prefix}-{digest}"


def parse_chart(
    chart: str, version: str | None, repositories: Sequence[Repository], *, field: str
) -> ChartReference:
    """`oci://host/path/chart` or `<repository>/<chart>` → ChartReference."""
    if chart.startswith("oci://"):
        prefix, _, name = chart[len("oci://") :].rstrip("/").rpartition("/")
        if not prefix or not name or "" in prefix.split("/"):
            raise InvalidChartError(
                field,
                f"chart {chart!r} is not a full OCI reference: write "
                "`oci://<registry>/<path>/<chart>`, e.g. `oci://ghcr.io/org/charts/app`",
            )
        _check_chart_name(chart, name, field)
        return ChartReference(
            repository=ChartRepository(url=f"oci://{prefix}"), name=name, version=version
        )
    repository_name, slash, name = chart.partition("/")
    if not slash or not repository_name or not name or "/" in name or "://" in chart:
        raise InvalidChartError(field, f"chart {chart!r} is not supported: {_CHART_FORMS}")
    _check_chart_name(chart, name, field)
    for repository in repositories:
        if repository.name == repository_name:
            return ChartReference(
                repository=ChartRepository(
                    url=repository.url,
                    secret_ref=repository.secret_ref,
                    ca_secret_ref=repository.ca_secret_ref,
                    insecure_skip_tls_verify=repository.insecure_skip_tls_verify,
                ),
                name=name,
                version=version,
            )
    raise UnknownRepositoryError(
        field,
        f"chart {chart!r} names repository {repository_name!r}, which is not in "
        f"spec.repositories (known: {format_names(r.name for r in repositories)}); add it "
        "there, fix the name, or use a full `oci://` reference",
    )


def _check_chart_name(chart: str, name: str, field: str) -> None:
    if ":" in name or "@" in name:
        raise InvalidChartError(
            field,
            f"chart {chart!r} carries a tag or digest; put the version in `version` instead",
        )


def render_state(
    meta: StateMeta,
    spec: HelmfileStateSpec,
    environment_values_from: Sequence[dict[str, Any]] = (),
    *,
    budget: RenderBudget | None = None,
) -> RenderedState:
    """Render every release of `spec`. `environment_values_from` holds the maps read from the
    selected environment's `valuesFrom` ConfigMaps, in order. Raises a RenderError subclass
    naming the field at fault; RenderLimitExceeded when a bound is reached, or when `budget`'s
    time runs out (its clock starts here) or it is stopped. Without a budget, every limit but
    time applies."""
    budget = budget if budget is not None else RenderBudget()
    budget.start()
    environment_name = spec.environment
    environment = _environment(spec)
    environment_values = merge_all([*environment.values, *environment_values_from])

    namespaces = [release.namespace or meta.namespace for release in spec.releases]
    ids = [release_id(ns, r.name) for ns, r in zip(namespaces, spec.releases, strict=True)]
    names = _resource_names(meta, spec.releases, namespaces, ids)
    ids_by_name: dict[str, list[str]] = {}
    for rid, release in zip(ids, spec.releases, strict=True):
        ids_by_name.setdefault(release.name, []).append(rid)
    needs = [
        _resolve_needs(i, release, namespaces[i], ids, ids_by_name)
        for i, release in enumerate(spec.releases)
    ]
    order = build_groups(ids, dict(zip(ids, needs, strict=True)), field="spec.releases")
    index_of = {rid: i for i, rid in enumerate(ids)}

    state_context = {
        "name": meta.name,
        "namespace": meta.namespace,
        "labels": dict(meta.labels),
        "annotations": dict(meta.annotations),
    }
    # Templates cannot change what they read (immutable sandbox): one copy, so that `values`
    # and `environment.values` are distinct objects and errors name the path the template used.
    values_alias = copy.deepcopy(environment_values)
    budget.remember(environment_values, values_alias)
    releases = []
    for i, release in enumerate(spec.releases):
        field = f"spec.releases[{i}]"
        budget.field = field
        budget.check(field)
        chart = parse_chart(
            release.chart, release.version, spec.repositories, field=f"{field}.chart"
        )
        for k, entry in enumerate(release.set):
            try:
                parse_path(entry.name)
            except PathLimitError as error:
                raise RenderLimitExceeded(f"{field}.set[{k}].name", str(error)) from None
            except ValueError as error:
                raise ValuesError(f"{field}.set[{k}].name", str(error)) from None
        try:
            check_set_growth(release.set)
        except PathLimitError as error:
            raise RenderLimitExceeded(f"{field}.set[{error.entry}].name", error.message) from None
        installed = release.installed and _condition(release, environment_values, field)
        values: dict[str, Any] = {}
        if installed:
            context = {
                "environment": {"name": environment_name, "values": environment_values},
                "state": state_context,
                "release": {
                    "name": release.name,
                    "namespace": namespaces[i],
                    "labels": dict(release.labels),
                    "chart": release.chart,
                    "version": release.version,
                },
                "values": values_alias,
            }
            rendered = [
                render_values_template(
                    source, context, where=f"{field}.valuesTemplate[{k}]", budget=budget
                )
                for k, source in enumerate(release.values_template)
            ]
            values = merge_all([*release.values, *rendered])
        drift = release.drift_detection or spec.drift_detection
        approval = release.approval or spec.approval
        # The most specific cluster wins: the release's, the environment's, the state's.
        kube_config = release.kube_config or environment.kube_config or spec.kube_config
        release_spec = HelmfileReleaseSpec(
            release_name=release.name,
            target_namespace=namespaces[i],
            chart=chart,
            values=values,
            values_from=[reference.model_copy(deep=True) for reference in release.values_from],
            set=[entry.model_copy(deep=True) for entry in release.set],
            helm=merge_helm_options(spec.helm_defaults, release.helm),
            needs=[names[index_of[need]] for need in needs[i]],
            installed=installed,
            interval=spec.interval,
            service_account_name=spec.service_account_name,
            drift_detection=drift.model_copy(deep=True) if drift is not None else None,
            approval=approval.model_copy() if approval is not None else None,
            kube_config=kube_config.model_copy(deep=True) if kube_config is not None else None,
        )
        releases.append(
            RenderedRelease(
                id=ids[i], template_name=release.name, resource_name=names[i], spec=release_spec
            )
        )
    return RenderedState(
        environment=environment_name, values=environment_values, releases=releases, order=order
    )


def _environment(spec: HelmfileStateSpec) -> Environment:
    environment = spec.environments.get(spec.environment)
    if environment is not None:
        return environment
    if spec.environment == DEFAULT_ENVIRONMENT:
        return Environment()
    raise UnknownEnvironmentError(
        "spec.environment",
        f"environment {spec.environment!r} is not defined in spec.environments (known: "
        f"{format_names(spec.environments)}); add it there or select one of those",
    )


def _resource_names(
    meta: StateMeta, releases: Sequence[ReleaseTemplate], namespaces: list[str], ids: list[str]
) -> list[str]:
    """Plain `<state>-<release>` where possible. Releases sharing a name (in different
    namespaces) would collide: the one in the state's own namespace keeps the plain name, the
    others get the hash of their id, so adding a namespaced twin does not rename it."""
    plain = [resource_name(meta.name, r.name, rid) for r, rid in zip(releases, ids, strict=True)]
    counts = Counter(plain)
    names = [
        resource_name(meta.name, r.name, ids[i], hashed=True)
        if counts[plain[i]] > 1 and namespaces[i] != meta.namespace
        else plain[i]
        for i, r in enumerate(releases)
    ]
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise RenderError(
                f"spec.releases[{i}].name",
                f"its HelmfileRelease name {name!r} is also that of spec.releases[{seen[name]}]; "
                "rename one of the two releases",
            )
        seen[name] = i
    return names


def _resolve_needs(
    i: int,
    release: ReleaseTemplate,
    namespace: str,
    ids: list[str],
    ids_by_name: Mapping[str, list[str]],
) -> list[str]:
    """Release ids this release needs, in order, without repeats. (HelmfileStateSpec makes
    release names unique, so a bare name is never ambiguous there; this does not rely on it.)"""
    resolved: list[str] = []
    for j, need in enumerate(release.needs):
        field = f"spec.releases[{i}].needs[{j}]"
        if need.count("/") > 1 or need.startswith("/") or need.endswith("/") or not need:
            raise UnknownNeedError(
                field, f"{need!r} is not a release reference: write `name` or `namespace/name`"
            )
        if "/" in need:
            target = need
            same_name = ids_by_name.get(need.partition("/")[2], [])
            if need not in same_name:
                known = same_name or ids
                raise UnknownNeedError(
                    field,
                    f"release {release.name!r} needs {need!r}, but the state has no release "
                    f"{need!r} (known: {format_names(known)}); fix the name or the namespace",
                )
        else:
            same_namespace = release_id(namespace, need)
            named = ids_by_name.get(need, [])
            if same_namespace in named:
                target = same_namespace
            elif len(named) == 1:
                target = named[0]
            elif named:
                raise UnknownNeedError(
                    field,
                    f"release {release.name!r} needs {need!r}, which is ambiguous: "
                    f"{format_names(named)}; write `namespace/name`",
                )
            else:
                raise UnknownNeedError(
                    field,
                    f"release {release.name!r} needs {need!r}, but the state has no release "
                    f"of that name (known: {format_names(ids)}); fix the name",
                )
        if target not in resolved:
            resolved.append(target)
    return resolved


def _condition(release: ReleaseTemplate, values: Mapping[str, Any], field: str) -> bool:
    if release.condition is None:
        return True
    condition = release.condition
    try:
        value = get_path(values, condition)
    except ValueError as error:
        raise ConditionError(f"{field}.condition", str(error)) from None
    except KeyError:
        raise ConditionError(
            f"{field}.condition",
            f"{condition!r} is not in the values of the environment; define it as true or "
            "false in every environment (spec.environments.<name>.values), or remove the "
            "condition",
        ) from None
    if not isinstance(value, bool):
        raise ConditionError(
            f"{field}.condition",
            f"{condition!r} in the environment's values is a {type(value).__name__}, not a "
            "boolean; set it to true or false",
        )
    return value
