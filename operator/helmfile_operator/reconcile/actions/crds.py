"""The chart's `crds/` on install and upgrade, per `helm.crds` (as Flux's install/upgrade.crds).

helm creates `crds/` on first install and never touches them again. `Create` and `Skip` on
install are helm's own (`--skip-crds`); `Create` on upgrade creates the CRDs that do not exist
yet, and `CreateReplace` applies them server-side — as the tenant's ServiceAccount, so its RBAC
decides — before helm runs, so that objects of the new chart version find the new schema. CRDs
are never deleted: deleting one deletes every object of its kind in the cluster.
"""

from __future__ import annotations

from typing import Literal

from kubernetes.client.exceptions import ApiException

from helmfile_operator import goyaml
from helmfile_operator.api.models import ChartReference, CrdPolicy
from helmfile_operator.helm import HelmError, HelmErrorKind, RepositoryCredentials
from helmfile_operator.kube import AccessDenied, ApiUnreachable
from helmfile_operator.reconcile.release_context import ReleaseContext


def crd_policy(ctx: ReleaseContext, verb: Literal["install", "upgrade"]) -> CrdPolicy:
    crds = ctx.options.crds
    assert crds is not None  # helm_options() merges the models' defaults
    policy = crds.install if verb == "install" else crds.upgrade
    assert policy is not None
    return policy


async def prepare_crds(
    ctx: ReleaseContext,
    verb: Literal["install", "upgrade"],
    chart: ChartReference,
    credentials: RepositoryCredentials | None,
    ca_pem: str | None,
) -> bool:
    """Create or apply the chart's CRDs as the policy says; True when helm must skip them.
    Raises HelmError (nothing of the release was changed yet)."""
    policy = crd_policy(ctx, verb)
    if policy is CrdPolicy.SKIP or (verb == "install" and policy is CrdPolicy.CREATE):
        return verb == "install" and policy is CrdPolicy.SKIP
    text = await ctx.reconciler.helm.show_crds(
        chart=chart, credentials=credentials, ca_pem=ca_pem, tenant=ctx.key.namespace
    )
    field = f"spec.helm.crds.{verb}"
    try:
        documents = goyaml.load_manifest(text, f"the crds/ of {chart.name} {chart.version}")
    except ValueError as error:
        raise HelmError(HelmErrorKind.RENDER_FAILED, "apply crds", str(error)) from None
    crds = [d for d in documents if d.get("kind") == "CustomResourceDefinition"]
    kube = ctx.target_kube
    changed = []
    for crd in crds:
        name = str((crd.get("metadata") or {}).get("name", ""))
        try:
            if policy is CrdPolicy.CREATE_REPLACE:
                await kube.apply_crd(crd)
                changed.append(name)
            elif await kube.create_crd(crd):
                changed.append(name)
        except AccessDenied as error:
            raise HelmError(HelmErrorKind.FORBIDDEN, "apply crds", f"{field}: {error}") from None
        except ApiUnreachable as error:
            raise HelmError(HelmErrorKind.CONNECTION, "apply crds", f"{field}: {error}") from None
        except ApiException as error:
            raise HelmError(
                HelmErrorKind.RENDER_FAILED,
                "apply crds",
                f"{field}: the API server refused CRD {name} (HTTP {error.status}: {error.reason})",
            ) from None
    if changed:
        done = "applied" if policy is CrdPolicy.CREATE_REPLACE else "created"
        ctx.event(
            "Normal",
            "CRDsApplied",
            f"{done} {len(changed)} CRD(s) of {chart.name} {chart.version} ({policy}): "
            f"{', '.join(changed[:10])}",
        )
    return True
