"""`plan -f FILE` / `diff -f FILE`: a state file rendered by the operator's own code, each of
its releases planned against the cluster as the operator would plan it — helm's server dry run,
a server-side-apply dry run per object — but with the user's own credentials. A release with
`kubeConfig` is planned in its cluster, through the kubeconfig Secret the user may read (checked
as the operator checks it: no exec plugins, no file paths). Nothing is written to any cluster."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from kubernetes.client.exceptions import ApiException
from rich.console import Console

from helmfile_operator.api.models import ChartReference
from helmfile_operator.cli.cluster import connect
from helmfile_operator.cli.offline import FileObjects, render_states
from helmfile_operator.clusters import ClusterPool, KubeconfigError
from helmfile_operator.helm import HelmClient, HelmError
from helmfile_operator.kube import RELEASES, AccessDenied, ApiUnreachable, Kube, describe
from helmfile_operator.reconcile.actions.plan import PlanRequest, compute_plan
from helmfile_operator.reconcile.context import STATE_LABEL
from helmfile_operator.reconcile.decide import Action, Observation, decide
from helmfile_operator.reconcile.drift import DriftChecker
from helmfile_operator.reconcile.plan import PlanAction
from helmfile_operator.reconcile.release_context import Storage
from helmfile_operator.reconcile.values import ValuesSourceError, final_values, source_access
from helmfile_operator.render.state import RenderedRelease, RenderedState
from helmfile_operator.render.values import values_digest
from helmfile_operator.sources import ChartSourceError, VersionResolver, is_exact

Printer = Callable[[Console, str, dict[str, Any], str | None], None]
OFFLINE_ID = "(not recorded)"


def plan_files(
    files: list[Path],
    environment: str | None,
    namespace: str,
    console: Console,
    with_diff: bool,
    printer: Printer,
) -> int:
    """Exit code 0 when nothing would change, 2 when something would, 1 on an error."""
    kube = connect()
    objects = FileObjects.read(files)
    # Environment valuesFrom: the ConfigMaps in the files, else those in the cluster.
    source = _Layered(objects, kube)
    rendered = render_states(objects, environment, namespace, source=source)
    helm = HelmClient("helm")
    local = _Target(kube, DriftChecker(kube.api_client.configuration), None)
    with tempfile.TemporaryDirectory(prefix="hfo-clusters-") as directory:
        pool = ClusterPool(Path(directory))
        try:
            return _plan_states(rendered, kube, helm, local, pool, console, with_diff, printer)
        finally:
            pool.close()


@dataclass(frozen=True)
class _Target:
    """The cluster a release is planned in: its API (Helm's storage), drift checker and helm's
    kubeconfig (None: the user's current cluster)."""

    kube: Kube
    drift: DriftChecker
    kubeconfig: str | None


async def _target(
    kube: Kube, pool: ClusterPool, local: _Target, namespace: str, release: RenderedRelease
) -> _Target:
    reference = release.spec.kube_config
    if reference is None:
        return local
    kubeconfig = await pool.read(kube, namespace, reference)
    remote = pool.connect(f"{namespace}/{reference.secret_ref.name}", kubeconfig)
    return _Target(remote.kube, remote.drift, remote.kubeconfig)


def _plan_states(
    rendered: list[tuple[dict[str, Any], RenderedState]],
    kube: Kube,
    helm: HelmClient,
    local: _Target,
    pool: ClusterPool,
    console: Console,
    with_diff: bool,
    printer: Printer,
) -> int:
    changes = 0
    for body, state in rendered:
        state_namespace = body["metadata"]["namespace"]
        live = asyncio.run(
            kube.list_objects(
                RELEASES, state_namespace, f"{STATE_LABEL}={body['metadata']['name']}"
            )
        )
        by_name = {child["metadata"]["name"]: child for child in live}
        for release in state.releases:
            try:
                target = asyncio.run(_target(kube, pool, local, state_namespace, release))
                plan, diff = asyncio.run(
                    _plan_release(kube, helm, target, state_namespace, release, by_name)
                )
            except KubeconfigError as error:
                raise click.ClickException(f"{release.resource_name}: {error.message}") from None
            except (AccessDenied, ApiUnreachable, ApiException) as error:
                raise click.ClickException(f"{release.resource_name}: {describe(error)}") from None
            except (ValuesSourceError, ChartSourceError) as error:
                raise click.ClickException(f"{release.resource_name}: {error}") from None
            except HelmError as error:
                raise click.ClickException(
                    f"{release.resource_name}: PlanFailed: {error.kind}: {error.message}"
                ) from None
            if plan is None:
                console.print(f"  {release.resource_name}  unchanged", style="dim")
                continue
            changes += 1
            printer(console, release.resource_name, plan, diff if with_diff else None)
        for name in sorted(set(by_name) - {r.resource_name for r in state.releases}):
            changes += 1
            console.print(f"- {name}  delete (left the state: uninstalled)", style="red bold")
    return 2 if changes else 0


class _Layered:
    """ConfigMaps of the files first, then the cluster's (read with the user's credentials)."""

    def __init__(self, files: FileObjects, kube: Kube) -> None:
        self.files, self.kube = files, kube

    async def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None:
        found = await self.files.get_config_map(namespace, name)
        return found if found is not None else await self.kube.get_config_map(namespace, name)

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.kube.get_secret(namespace, name)


async def _plan_release(
    kube: Kube,
    helm: HelmClient,
    target: _Target,
    namespace: str,
    release: RenderedRelease,
    live: dict[str, dict[str, Any]],
) -> tuple[dict[str, Any] | None, str]:
    """The plan of one rendered release (None: nothing would change, no helm ran)."""
    spec = release.spec
    status = (live.get(release.resource_name) or {}).get("status") or {}
    storage = Storage.from_secrets(
        await target.kube.helm_storage(spec.target_namespace, spec.release_name),
        spec.release_name,
    )
    action: PlanAction
    values: dict[str, Any] | None = None
    secrets: list[str] = []
    secret_paths: list[tuple[Any, ...]] = []
    chart: ChartReference | None = None
    digest = None
    if spec.installed:
        resolved = await final_values(kube, namespace, spec)
        values, secrets = resolved.values, resolved.secret_strings
        secret_paths = resolved.secret_paths
        chart = await _resolve(kube, namespace, spec.chart)
        digest = values_digest(chart, values)
        # The operator's own rule for "nothing to do" (its decision table).
        seen = Observation(
            in_storage=storage is not None,
            head_deployed=storage is not None and storage.status == "deployed",
            head_revision=storage.revision if storage is not None else None,
            digest=digest,
            applied_digest=status.get("lastAppliedDigest"),
            applied_revision=status.get("revision"),
        )
        if decide(seen).action is Action.IN_SYNC:
            return None, ""
        action = "upgrade" if storage is not None else "install"
    elif storage is not None:
        action = "uninstall"
    else:
        return None, ""
    request = PlanRequest(
        id=OFFLINE_ID,
        action=action,
        spec=spec,
        chart=chart,
        values=values,
        digest=digest,
        options=spec.helm_options(),
        tenant=namespace,
        impersonate=None,  # the user's own credentials decide what the plan may read
        deployed_revision=storage.revision if storage is not None else None,
        secret_strings=secrets,
        secret_paths=secret_paths,
        kubeconfig=target.kubeconfig,
    )
    plan, diff = await compute_plan(
        request, kube=kube, helm=helm, drift=target.drift, target_kube=target.kube
    )
    wire = plan.to_wire()
    wire.pop("id", None)  # the operator's id also covers the object's generation
    wire.pop("phase", None)
    return wire, diff


async def _resolve(kube: Kube, namespace: str, chart: ChartReference) -> ChartReference:
    if is_exact(chart.version):
        return chart
    version = await VersionResolver().resolve(
        chart,
        tenant=namespace,
        max_age_seconds=0,
        refresh=True,
        access=lambda: source_access(kube, namespace, chart.repository),
    )
    return chart.model_copy(update={"version": version})
