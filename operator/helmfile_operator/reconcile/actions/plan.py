"""plan: compute what a change of the release will do, before it is done (reconcile/plan.py).

One `helm upgrade --install --dry-run=server` (none for an uninstall), a GET and a
server-side-apply dry run per object of its manifest, one read of the deployed revision from
Helm's storage, one write of the diff Secret — all as the tenant. A plan already on the status
for the same id is not computed again: a retry, or an approval, costs nothing.
"""

from __future__ import annotations

import base64
import logging
from typing import Any

from helmfile_operator.api.models import API_VERSION, ReleasePlan
from helmfile_operator.helm.storage import StorageDecodeError, latest_release_json
from helmfile_operator.kube import AccessDenied
from helmfile_operator.reconcile.drift import Comparison, DriftCheckError, manifest_objects
from helmfile_operator.reconcile.plan import PlanAction, PlanInput, build_plan, text_diff
from helmfile_operator.reconcile.release_context import ReleaseContext
from helmfile_operator.reconcile.values import repository_access

logger = logging.getLogger("helmfile_operator.release")

PLAN_SECRET_TYPE = "helmfile.dev/plan"  # noqa: S105 (a Secret type, not a password)
PLAN_OF_LABEL = "helmfile.dev/plan-of"
DIFF_KEY = "diff"


def diff_secret_name(release_object: str) -> str:
    return f"{release_object}-plan"


async def ensure_plan(ctx: ReleaseContext, action: PlanAction) -> ReleasePlan:
    """The plan of `ctx.plan_id` on the status (computed now unless it is there). Raises
    HelmError when helm's dry run fails, ValuesSourceError when the repository's credentials
    cannot be read: the caller says what that means for the release."""
    assert ctx.plan_id is not None
    status = ctx.status
    if status.plan is not None and status.plan.id == ctx.plan_id:
        return status.plan
    deployed = await _deployed_release(ctx) if ctx.storage is not None else None
    deployed_objects = _objects(deployed.get("manifest") if deployed else "", "deployed")
    planned_manifest = ""
    comparisons: list[Comparison] | None = None
    notes: list[str] = []
    if action != "uninstall":
        planned_manifest = await _dry_run(ctx)
        comparisons, note = await _compare(ctx, planned_manifest)
        notes += [note] if note else []
    planned_objects = _objects(planned_manifest, "planned")
    chart_meta = ((deployed or {}).get("chart") or {}).get("metadata") or {}
    plan = build_plan(
        PlanInput(
            id=ctx.plan_id,
            action=action,
            digest=ctx.digest if action != "uninstall" else None,
            namespace=ctx.spec.target_namespace,
            deployed=deployed_objects,
            planned=planned_objects,
            comparisons=comparisons if action != "uninstall" else [],
            version_from=str(chart_meta["version"]) if chart_meta.get("version") else None,
            version_to=ctx.chart.version
            if ctx.chart is not None and action != "uninstall"
            else None,
            # helm leaves `config` out when no value was set.
            values_before=_mapping_or_none(deployed.get("config") or {}) if deployed else None,
            values_after=ctx.values if action != "uninstall" else None,
        )
    )
    diff = text_diff(
        deployed_objects,
        planned_objects,
        ctx.spec.target_namespace,
        ctx.secret_strings,
        revision=ctx.storage.revision if ctx.storage is not None else None,
    )
    stored, note = await _store_diff(ctx, plan.id, diff)
    plan.diff_secret = stored
    notes += [note] if note else []
    plan.message = "; ".join(n for n in [plan.message, *notes] if n)
    status.plan = plan
    return plan


async def _deployed_release(ctx: ReleaseContext) -> dict[str, Any] | None:
    """The head revision's release object (values included: memory only)."""
    try:
        secrets = await ctx.tenant_kube.helm_storage(
            ctx.spec.target_namespace, ctx.spec.release_name
        )
        return latest_release_json(secrets, release_name=ctx.spec.release_name)
    except StorageDecodeError as error:
        logger.warning("%s: deployed revision not readable for the plan: %s", ctx.key, error)
        return None


async def _dry_run(ctx: ReleaseContext) -> str:
    """The manifest helm would apply now (hooks are not part of it)."""
    assert ctx.values is not None
    assert ctx.chart is not None
    credentials, ca_pem = await repository_access(
        ctx.tenant_kube, ctx.key.namespace, ctx.spec.chart.repository
    )
    result = await ctx.reconciler.helm.upgrade_install(
        release=ctx.spec.release_name,
        namespace=ctx.spec.target_namespace,
        chart=ctx.chart,
        values=ctx.values,
        options=ctx.options,
        impersonate=ctx.impersonate,
        credentials=credentials,
        ca_pem=ca_pem,
        redact=ctx.secret_strings,
        tenant=ctx.key.namespace,
        dry_run=True,
    )
    return result.manifest


async def _compare(ctx: ReleaseContext, manifest: str) -> tuple[list[Comparison] | None, str]:
    checker = ctx.reconciler.drift
    if checker is None:
        return None, ""
    try:
        found = await checker.compare(
            manifest, ctx.spec.release_name, ctx.spec.target_namespace, ctx.impersonate
        )
        return found, ""
    except DriftCheckError as error:
        return None, f"live objects not compared ({error})"


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
