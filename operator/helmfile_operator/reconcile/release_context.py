"""Everything one pass of the release state machine knows, shared by the actions, with the
condition helpers bound to it (`ctx.not_ready(reason, message)`)."""

from __future__ import annotations

import copy
import datetime
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from helmfile_operator.api.models import (
    ApprovalMode,
    ChartReference,
    ClusterStatus,
    HelmfileReleaseSpec,
    HelmfileReleaseStatus,
    HelmOptions,
    duration_seconds,
)
from helmfile_operator.clusters import KubeconfigError, RemoteCluster
from helmfile_operator.helm import ReleaseInfo, secret_release
from helmfile_operator.kube import RELEASES, Kube, merge_patch_between
from helmfile_operator.reconcile import conditions
from helmfile_operator.reconcile.context import (
    APPROVE,
    ManifestVersion,
    ObjectKey,
    Reconciler,
    ReleaseTarget,
    release_target,
)
from helmfile_operator.reconcile.drift import DriftChecker
from helmfile_operator.reconcile.plan import PlanAction
from helmfile_operator.sources import ChartSourceError

logger = logging.getLogger("helmfile_operator.release")

LOCKED_STATUSES = frozenset({"pending-install", "pending-upgrade", "pending-rollback"})
DEPLOYED_STATUSES = frozenset({"deployed", "superseded"})  # superseded: deployed once


@dataclass(frozen=True)
class Revision:
    number: int
    status: str
    created: str | None  # creationTimestamp of its storage Secret


@dataclass(frozen=True)
class Storage:
    """Every revision of a release in Helm's storage, read from Secret labels (nothing decoded,
    no helm process) — all of them, so the last deployed one is found whatever `historyMax`."""

    revisions: tuple[Revision, ...]

    @classmethod
    def from_secrets(cls, secrets: Iterable[Mapping[str, Any]], release: str) -> Storage | None:
        found = []
        for secret in secrets:
            metadata = secret.get("metadata") or {}
            labels = metadata.get("labels") or {}
            if labels.get("owner") != "helm" or labels.get("name") != release:
                continue
            if secret.get("type") not in (None, "helm.sh/release.v1"):
                continue
            try:
                number = int(str(labels.get("version")))
            except ValueError:
                continue
            status = str(labels.get("status") or "")
            found.append(Revision(number, status, metadata.get("creationTimestamp")))
        return cls(tuple(sorted(found, key=lambda r: r.number))) if found else None

    @property
    def head(self) -> Revision:
        return self.revisions[-1]

    @property
    def revision(self) -> int:
        return self.head.number

    @property
    def status(self) -> str:
        return self.head.status

    @property
    def locked(self) -> bool:
        return self.head.status in LOCKED_STATUSES

    def last_deployed(self, below: int | None = None) -> int | None:
        good = [
            r.number
            for r in self.revisions
            if r.status in DEPLOYED_STATUSES and (below is None or r.number < below)
        ]
        return max(good) if good else None


@dataclass
class ReleaseContext:
    reconciler: Reconciler
    key: ObjectKey
    body: dict[str, Any]
    spec: HelmfileReleaseSpec
    status: HelmfileReleaseStatus  # actions update it; `flush` writes what changed
    storage: Storage | None = None
    values: dict[str, Any] | None = None  # final values (may hold Secret data: memory only)
    secret_strings: list[str] = field(default_factory=list)  # scrubbed from helm's errors
    secret_paths: list[tuple[Any, ...]] = field(default_factory=list)  # set by Secret layers
    digest: str | None = None
    chart: ChartReference | None = None  # spec.chart with its range resolved to one version
    chart_error: ChartSourceError | None = None  # why the range could not be resolved
    refresh_sources: bool = False  # a reconcile request: ask the repository again now
    plan_id: str | None = None  # the id of the plan of the change wanted now (none: no change)
    plan_action: PlanAction | None = None
    values_error: str | None = None  # why the final values could not be resolved
    access_error: str | None = None  # why Helm's storage could not be read as the tenant
    cluster_error: KubeconfigError | None = None  # why spec.kubeConfig cannot be used
    cluster_unreachable: str | None = None  # why the remote cluster did not answer
    other_shard_needs: list[str] = field(default_factory=list)  # needs another shard owns
    requeue_after: float | None = None
    cluster: RemoteCluster | None = None  # spec.kubeConfig's cluster (None: the operator's own)
    written: dict[str, Any] = field(default_factory=dict)  # the status as last read or written

    def __post_init__(self) -> None:
        # As stored (not as parsed): the base of the merge patches `flush` writes.
        self.written = copy.deepcopy(self.body.get("status") or {})

    @property
    def generation(self) -> int | None:
        generation = self.body["metadata"].get("generation")
        return int(generation) if generation is not None else None

    @property
    def options(self) -> HelmOptions:
        options = self.spec.helm_options()
        if (
            self.spec.kube_config is None
            and self.spec.target_namespace == self.key.namespace
            and options.create_namespace
        ):
            # The object's own namespace exists; asking helm to create it would need a
            # cluster-wide permission a tenant does not have.
            options = options.model_copy(update={"create_namespace": False})
        return options

    @property
    def timeout_seconds(self) -> float:
        timeout = self.options.timeout
        assert timeout is not None  # helm_options() merges the models' defaults
        # helm itself is clamped to the operator-wide maximum: so are the waits derived from it.
        return min(duration_seconds(timeout), self.reconciler.settings.max_helm_timeout_seconds)

    @property
    def approval_manual(self) -> bool:
        approval = self.spec.approval
        return approval is not None and approval.mode is ApprovalMode.MANUAL

    def annotation(self, key: str) -> str | None:
        """An annotation of the object (None when absent or empty)."""
        return (self.body["metadata"].get("annotations") or {}).get(key) or None

    @property
    def approval(self) -> str | None:
        """The plan id the `helmfile.dev/approve` annotation approves, if any."""
        return self.annotation(APPROVE)

    @property
    def interval_seconds(self) -> float:
        return max(duration_seconds(self.spec.interval), 1.0)

    @property
    def impersonate(self) -> str | None:
        """Who helm, drift checks and every read of tenant data run as: the spec's
        ServiceAccount, else the operator-wide default one, of the object's namespace. None (the
        operator's own identity) only when the installer emptied the default (single-tenant)."""
        return tenant_identity(
            self.key.namespace,
            self.spec.service_account_name,
            self.reconciler.settings.default_service_account,
        )

    @property
    def tenant_kube(self) -> Kube:
        """The API as the tenant, in this cluster: reads of valuesFrom, repository Secrets, the
        kubeconfig Secret; writes of the plan Secret."""
        return self.reconciler.kube.impersonating(self.impersonate)

    # --- the cluster the release is installed in ------------------------------------------------

    @property
    def target(self) -> ReleaseTarget:
        return release_target(self.key.namespace, self.body.get("spec") or {})

    @property
    def target_identity(self) -> str | None:
        """Who helm, Helm's storage reads and drift checks run as in the target cluster. In a
        remote cluster the kubeconfig's own identity, unless the spec names a ServiceAccount
        (impersonated there, in the object's namespace): the operator-wide default account is
        an account of this cluster."""
        if self.cluster is None:
            return self.impersonate
        return tenant_identity(self.key.namespace, self.spec.service_account_name, "")

    @property
    def target_kube(self) -> Kube:
        """The target cluster's API as `target_identity`: Helm's storage, the chart's CRDs."""
        kube = self.cluster.kube if self.cluster is not None else self.reconciler.kube
        return kube.impersonating(self.target_identity)

    @property
    def drift_checker(self) -> DriftChecker | None:
        return self.cluster.drift if self.cluster is not None else self.reconciler.drift

    @property
    def kubeconfig(self) -> str | None:
        """helm's kubeconfig, its text (None: the operator's own cluster)."""
        return self.cluster.kubeconfig if self.cluster is not None else None

    async def connect(self) -> None:
        """Read `spec.kubeConfig`'s Secret (as the tenant) and connect to its cluster; records
        the cluster in the status. Raises KubeconfigError."""
        reference = self.spec.kube_config
        if reference is None:
            self.cluster = self.status.cluster = None
            return
        pool = self.reconciler.clusters
        if pool is None:
            raise KubeconfigError(
                "KubeconfigUnsupported",
                "spec.kubeConfig: this operator does not deploy to other clusters",
            )
        kubeconfig = await pool.read(self.tenant_kube, self.key.namespace, reference)
        self.cluster = pool.connect(self.target[0], kubeconfig)
        self.status.cluster = ClusterStatus(name=kubeconfig.name, server=kubeconfig.server)

    def mark_cluster(self, reachable: bool) -> None:
        if self.cluster is not None and self.reconciler.clusters is not None:
            self.reconciler.clusters.mark(self.cluster, reachable)

    # --- conditions ---------------------------------------------------------------------------

    def ready(self, reason: str, message: str) -> None:
        self.status.conditions = conditions.mark_ready(
            self.status.conditions, reason, message, self.generation
        )

    def not_ready(self, reason: str, message: str) -> None:
        self.status.conditions = conditions.mark_not_ready(
            self.status.conditions, reason, message, self.generation
        )

    def reconciling(self, reason: str, message: str) -> None:
        self.status.conditions = conditions.mark_reconciling(
            self.status.conditions, reason, message, self.generation
        )

    def waiting(self, reason: str, message: str) -> None:
        self.status.conditions = conditions.mark_waiting(
            self.status.conditions, reason, message, self.generation
        )

    def stalled(self, reason: str, message: str) -> None:
        self.status.conditions = conditions.mark_stalled(
            self.status.conditions, reason, message, self.generation
        )

    def set_condition(
        self, type_: str, status: conditions.Status, reason: str, message: str
    ) -> None:
        self.status.conditions = conditions.set_condition(
            self.status.conditions, type_, status, reason, message, self.generation
        )

    def remove_condition(self, type_: str) -> None:
        self.status.conditions = conditions.remove(self.status.conditions, type_)

    def has_condition(self, type_: str) -> bool:
        return conditions.find(self.status.conditions, type_) is not None

    # --- helm -----------------------------------------------------------------------------------

    async def helm_uninstall(self, timeout_seconds: float | None = None) -> None:
        """Uninstall this release (absent is fine); raises HelmError."""
        await self.reconciler.helm.uninstall(
            release=self.spec.release_name,
            namespace=self.spec.target_namespace,
            timeout_seconds=timeout_seconds or self.timeout_seconds,
            impersonate=self.target_identity,
            ignore_not_found=True,
            tenant=self.key.namespace,
            kubeconfig=self.kubeconfig,
        )

    async def helm_rollback(self, revision: int | None, wait: bool) -> None:
        """Roll this release back (None: to the previous revision); raises HelmError."""
        await self.reconciler.helm.rollback(
            release=self.spec.release_name,
            namespace=self.spec.target_namespace,
            revision=revision,
            timeout_seconds=self.timeout_seconds,
            wait=wait,
            impersonate=self.target_identity,
            tenant=self.key.namespace,
            kubeconfig=self.kubeconfig,
        )

    def manifest_version(self, revision: int) -> ManifestVersion:
        """Which deployed manifest `revision` is, in the manifest cache: revision numbers repeat
        across clusters, so the remote connection's digest is part of it."""
        return (self.cluster.digest if self.cluster is not None else "", revision)

    async def read_stored_release(self, revision: int) -> ReleaseInfo | None:
        """One revision in Helm's storage, decoded (manifest included), read as the tenant: that
        revision's Secret alone (None: gone). Raises StorageDecodeError when it is not a Helm
        release."""
        secret = await self.target_kube.helm_revision(
            self.spec.target_namespace, self.spec.release_name, revision
        )
        return secret_release(secret) if secret is not None else None

    async def read_storage(self) -> Storage | None:
        """Every revision's number and status, from the labels of Helm's storage Secrets (a
        metadata-only list: no Secret data is read)."""
        secrets = await self.target_kube.helm_storage(
            self.spec.target_namespace, self.spec.release_name
        )
        return Storage.from_secrets(secrets, self.spec.release_name)

    # --- side effects ---------------------------------------------------------------------------

    def event(self, type_: str, reason: str, message: str) -> None:
        self.reconciler.event(self.body, type_, reason, message)

    def requeue(self, seconds: float) -> None:
        """Ask for another pass after `seconds` (the earliest request wins)."""
        if self.requeue_after is None or seconds < self.requeue_after:
            self.requeue_after = max(seconds, 0.0)

    async def starting(self, reason: str, message: str, *, event: bool = True) -> None:
        """Before a helm command that may take minutes: Reconciling=True with `reason`
        (Installing, Upgrading, RollingBack, Uninstalling), Ready=Unknown, and an Event unless
        `event` is False — written now, so that the status does not show the previous Ready
        while helm waits."""
        self.reconciling(reason, message)
        if event:
            self.event("Normal", reason, message)
        await self.flush()

    async def flush(self) -> None:
        """Write the status fields that changed since the last read or write (none: no call)."""
        self.status.observed_generation = self.generation
        after = self.status.to_wire()
        if after == self.written:
            return
        # A merge patch keeps the keys it leaves out: it nulls those this pass cleared.
        written = await self.reconciler.kube.patch_status(
            RELEASES, self.key.namespace, self.key.name, merge_patch_between(self.written, after)
        )
        self.written = after
        self.reconciler.bodies.wrote(written)
        # Later writes with a resourceVersion precondition (finalizers) must see this one.
        version = ((written or {}).get("metadata") or {}).get("resourceVersion")
        if version:
            self.body["metadata"]["resourceVersion"] = version


def tenant_identity(namespace: str, account: str | None, default: str) -> str | None:
    name = account or default
    return f"system:serviceaccount:{namespace}:{name}" if name else None


def parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def seconds_since(value: str | None) -> float:
    """Seconds since an RFC 3339 UTC time; 0 when unknown or unparsable."""
    if not value:
        return 0.0
    try:
        return (datetime.datetime.now(datetime.UTC) - parse_time(value)).total_seconds()
    except ValueError:
        return 0.0
