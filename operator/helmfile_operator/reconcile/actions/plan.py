"""plan: compute what a change of the release will do, before it is done (reconcile/plan.py).

One `helm upgrade --install --dry-run=server` (none for an uninstall), a GET and a
server-side-apply dry run per object of its manifest, one read of the deployed revision from
Helm's storage, one write of the diff Secret — all as the tenant. A plan already on the status
for the same id is not computed again: a retry, or an approval, costs nothing.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from helmfile_operator.api.models import (
    API_VERSION,
    ChartReference,
    HelmfileReleaseSpec,
    HelmOptions,
    ReleasePlan,
)
from helmfile_operator.helm import HelmClient
from helmfile_operator.helm.storage import StorageDecodeError, secret_release_json
from helmfile_operator.kube import AccessDenied, Kube
from helmfile_operator.reconcile.drift import (
    Comparison,
    DriftChecker,
    DriftCheckError,
    manifest_objects,
)
from helmfile_operator.reconcile.plan import PlanAction, PlanInput, build_plan, text_diff
from helmfile_operator.reconcile.release_context import ReleaseContext
from helmfile_operator.reconcile.values import repository_access, strings_at

logger = logging.getLogger("helmfile_operator.release")

PLAN_SECRET_TYPE = "helmfile.dev/plan"  # noqa: S105 (a Secret type, not a password)
PLAN_OF_LABEL = "helmfile.dev/plan-of"
DIFF_KEY = "diff"


def diff_secret_name(release_object: str) -> str:
    return f"{release_object}-plan"


@dataclass(frozen=True)
class PlanRequest:
    """What computing a plan needs to know of one release (the operator's pass, or the CLI's
    offline render of a state)."""

    id: str
    action: PlanAction
    spec: HelmfileReleaseSpec
    chart: ChartReference | None  # spec.chart with its range resolved (None: an uninstall)
    values: dict[str, Any] | None  # final values (may hold Secret data: memory only)
    digest: str | None
    options: HelmOptions
    tenant: str  # the object's namespace: repository Secrets, helm's home and slots
    impersonate: str | None  # who the change runs as in the target cluster
    deployed_revision: int | None  # the head revision in Helm's storage (None: not installed)
    secret_strings: Sequence[str] = ()
    secret_paths: Sequence[tuple[Any, ...]] = ()  # where Secret layers set values
    kubeconfig: str | None = None  # the target cluster's (None: the cluster `kube` talks to)


async def ensure_plan(ctx: ReleaseContext, action: PlanAction) -> ReleasePlan:
    """The plan of `ctx.plan_id` on the status (computed now unless it is there). Raises
    HelmError when helm's dry run fails, ValuesSourceError when the repository's credentials
    cannot be read: the caller says what that means for the release."""
    assert ctx.plan_id is not None
    status = ctx.status
    if status.plan is not None and status.plan.id == ctx.plan_id:
        return status.plan
    request = PlanRequest(
        id=ctx.plan_id,
        action=action,
        spec=ctx.spec,
        chart=ctx.chart,
        values=ctx.values,
        digest=ctx.digest,
        options=ctx.options,
        tenant=ctx.key.namespace,
        impersonate=ctx.target_identity,
        deployed_revision=ctx.storage.revision if ctx.storage is not None else None,
        secret_strings=ctx.secret_strings,
        secret_paths=ctx.secret_paths,
        kubeconfig=ctx.kubeconfig,
    )
    plan, diff = await compute_plan(
        request,
        kube=ctx.tenant_kube,
        helm=ctx.reconciler.helm,
        drift=ctx.drift_checker,
        target_kube=ctx.target_kube,
    )
    stored, note = await _store_diff(ctx, plan.id, diff)
    plan.diff_secret = stored
    plan.message = "; ".join(n for n in [plan.message, note] if n)
    status.plan = plan
    return plan


async def compute_plan(
    request: PlanRequest,
    *,
    kube: Kube,
    helm: HelmClient,
    drift: DriftChecker | None,
    target_kube: Kube | None = None,
) -> tuple[ReleasePlan, str]:
    """The plan and its text diff (masked). `kube` reads the repository's Secrets (as the
    tenant), `target_kube` (default: `kube`) Helm's storage and `drift` compares with the live
    objects, in the target cluster, as the identity the change runs as."""
    action, spec = request.action, request.spec
    deployed = (
        await _deployed_release(target_kube or kube, spec, request.deployed_revision)
        if request.deployed_revision is not None
        else None
    )
    deployed_objects = _objects(deployed.get("manifest") if deployed else "", "deployed")
    planned_manifest = ""
    comparisons: list[Comparison] | None = None
    notes: list[str] = []
    if action != "uninstall":
        planned_manifest = await _dry_run(request, kube, helm)
        comparisons, note = await _compare(request, drift, planned_manifest)
        notes += [note] if note else []
    planned_objects = _objects(planned_manifest, "planned")
    chart_meta = ((deployed or {}).get("chart") or {}).get("metadata") or {}
    plan = build_plan(
        PlanInput(
            id=request.id,
            action=action,
            digest=request.digest if action != "uninstall" else None,
            namespace=spec.target_namespace,
            deployed=deployed_objects,
            planned=planned_objects,
            comparisons=comparisons if action != "uninstall" else [],
            version_from=str(chart_meta["version"]) if chart_meta.get("version") else None,
            version_to=None
            if action == "uninstall" or request.chart is None
            else request.chart.version,
            # helm leaves `config` out when no value was set.
            values_before=_mapping_or_none(deployed.get("config") or {}) if deployed else None,
            values_after=request.values if action != "uninstall" else None,
        )
    )
    # What the deployed revision held where Secrets put values now: a rotated secret's old
    # value is in the deployed manifest.
    deployed_secrets = strings_at((deployed or {}).get("config") or {}, request.secret_paths)
    diff = text_diff(
        deployed_objects,
        planned_objects,
        spec.target_namespace,
        [*request.secret_strings, *deployed_secrets],
        revision=request.deployed_revision,
    )
    plan.message = "; ".join(n for n in [plan.message, *notes] if n)
    return plan, diff


async def _deployed_release(
    kube: Kube, spec: HelmfileReleaseSpec, revision: int
) -> dict[str, Any] | None:
    """The deployed revision's release object (values included: memory only)."""
    try:
        secret = await kube.helm_revision(spec.target_namespace, spec.release_name, revision)
        return secret_release_json(secret) if secret is not None else None
    except StorageDecodeError as error:
        logger.warning(
            "%s/%s: deployed revision not readable for the plan: %s",
            spec.target_namespace,
            spec.release_name,
            error,
        )
        return None


async def _dry_run(request: PlanRequest, kube: Kube, helm: HelmClient) -> str:
    """The manifest helm would apply now (hooks are not part of it)."""
    assert request.values is not None
    assert request.chart is not None
    spec = request.spec
    credentials, ca_pem = await repository_access(kube, request.tenant, spec.chart.repository)
    result = await helm.upgrade_install(
        release=spec.release_name,
        namespace=spec.target_namespace,
        chart=request.chart,
        values=request.values,
        options=request.options,
        impersonate=request.impersonate,
        credentials=credentials,
        ca_pem=ca_pem,
        redact=request.secret_strings,
        tenant=request.tenant,
        dry_run=True,
        kubeconfig=request.kubeconfig,
    )
    return result.manifest


async def _compare(
    request: PlanRequest, checker: DriftChecker | None, manifest: str
) -> tuple[list[Comparison] | None, str]:
    if checker is None:
        return None, ""
    spec = request.spec
    try:
        found = await checker.compare(
            manifest, spec.release_name, spec.target_namespace, request.impersonate
        )
    except DriftCheckError as error:
        return None, f"live objects not compared ({error})"
    return found, ""


async def _store_diff(ctx: ReleaseContext, plan_id: str, diff: str) -> tuple[str | None, str]:
    """Write the text diff into the release's plan Secret, as the tenant: who may read the
    namespace's Secrets may read it, nobody else. (name, "") or (None, why not)."""
    name = diff_secret_name(ctx.key.name)
    body = {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": PLAN_SECRET_TYPE,
        "metadata": {
            "name": name,
            "namespace": ctx.key.namespace,
            "labels": {PLAN_OF_LABEL: ctx.key.name},
            "annotations": {"helmfile.dev/plan-id": plan_id},
            "ownerReferences": [
                {
                    "apiVersion": API_VERSION,
                    "kind": "HelmfileRelease",
                    "name": ctx.key.name,
                    "uid": ctx.body["metadata"].get("uid", ""),
                }
            ],
        },
        "data": {DIFF_KEY: base64.b64encode(diff.encode()).decode()},
    }
    try:
        await ctx.tenant_kube.apply_secret(ctx.key.namespace, body)
    except AccessDenied as error:
        return None, f"text diff not stored: {error}"
    except Exception as error:  # the plan stands without its text
        logger.warning("%s: plan diff not stored: %s", ctx.key, error)
        return None, "text diff not stored: the API server refused the Secret"
    return name, ""


def _objects(manifest: str | None, which: str) -> list[dict[str, Any]]:
    try:
        return manifest_objects(manifest or "", f"the {which} manifest")
    except ValueError as error:
        logger.warning("%s manifest unreadable for the plan: %s", which, error)
        return []


def _mapping_or_none(value: object) -> dict[str, Any] | None:
    return dict(value) if isinstance(value, dict) else None
