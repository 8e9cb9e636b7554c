"""What every reconciler needs: API access, helm, settings, the release index, the queue, Events."""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

from helmfile_operator.clusters import ClusterPool
from helmfile_operator.events import EventRecorder
from helmfile_operator.helm import HelmClient
from helmfile_operator.kube import Kube
from helmfile_operator.metrics import Metrics
from helmfile_operator.reconcile.drift import DriftChecker
from helmfile_operator.reconcile.workqueue import WorkQueue, backoff_delay
from helmfile_operator.settings import Settings
from helmfile_operator.sources import VersionResolver

STATE_LABEL = "helmfile.dev/state"
# Which operator (shard) reconciles an object; copied from a state to its releases.
SHARD_LABEL = "helmfile.dev/shard"
FINALIZER = "helmfile.dev/finalizer"
RECONCILE_REQUEST = "helmfile.dev/reconcile-requested-at"
KEEP_RELEASE = "helmfile.dev/keep-release"
APPROVE = "helmfile.dev/approve"  # the id of the plan someone approved


# (cluster, targetNamespace, releaseName): one Helm release. The cluster is "" for the operator's
# own, else the kubeconfig Secret that names it (`namespace/secret/key`).
ReleaseTarget = tuple[str, str, str]


def release_target(namespace: str, spec: Mapping[str, Any]) -> ReleaseTarget:
    """The Helm release a HelmfileRelease's spec (as stored) drives; `namespace` is its own."""
    secret_ref = (spec.get("kubeConfig") or {}).get("secretRef") or {}
    cluster = (
        f"{namespace}/{secret_ref.get('name', '')}/{secret_ref.get('key') or ''}"
        if secret_ref
        else ""
    )
    return (cluster, str(spec.get("targetNamespace") or ""), str(spec.get("releaseName") or ""))


def shard_selector(shard: str) -> str:
    """The label selector of a shard's objects: labelled with its key, or (no key) unlabelled."""
    return f"{SHARD_LABEL}={shard}" if shard else f"!{SHARD_LABEL}"


class ObjectKey(NamedTuple):
    kind: Literal["HelmfileState", "HelmfileRelease"]
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass
class IndexedRelease:
    """What the watch told us last about a HelmfileRelease: enough to gate and wake `needs`, and
    to tell which object drives a Helm release when two name the same one."""

    ready: bool
    needs: tuple[str, ...]
    state: str | None
    drifted: bool = False
    target: ReleaseTarget = ("", "", "")
    created: str = ""  # creationTimestamp: the oldest claimant of a Helm release keeps it
    awaiting_approval: bool = False  # its plan waits for an approval


@dataclass
class ReleaseIndex:
    """HelmfileReleases by namespace and name, fed by the watch (a cache, like an informer's)."""

    releases: dict[tuple[str, str], IndexedRelease] = field(default_factory=dict)
    # Helm release → the objects that name it.
    _claims: dict[ReleaseTarget, set[tuple[str, str]]] = field(default_factory=dict)

    def get(self, namespace: str, name: str) -> IndexedRelease | None:
        return self.releases.get((namespace, name))

    def put(self, namespace: str, name: str, entry: IndexedRelease) -> IndexedRelease | None:
        """Store the entry; returns the previous one."""
        previous = self.releases.get((namespace, name))
        if previous is not None:
            self._unclaim(previous.target, (namespace, name))
        self.releases[(namespace, name)] = entry
        self._claims.setdefault(entry.target, set()).add((namespace, name))
        return previous

    def in_namespace(self, namespace: str) -> bool:
        """Whether any HelmfileRelease of `namespace` is indexed."""
        return any(ns == namespace for ns, _ in self.releases)

    def pop(self, namespace: str, name: str) -> IndexedRelease | None:
        previous = self.releases.pop((namespace, name), None)
        if previous is not None:
            self._unclaim(previous.target, (namespace, name))
        return previous

    def _unclaim(self, target: ReleaseTarget, key: tuple[str, str]) -> None:
        claimants = self._claims.get(target)
        if claimants is not None:
            claimants.discard(key)
            if not claimants:
                del self._claims[target]

    def claimants(self, target: ReleaseTarget) -> list[tuple[str, str]]:
        """The objects naming this Helm release, first claimant first."""
        keys = self._claims.get(target, set())
        return sorted(keys, key=lambda key: (self.releases[key].created, key))

    def owner(self, namespace: str, name: str) -> tuple[str, str] | None:
        """The object that drives the same Helm release as this one, when that is not this one."""
        entry = self.releases.get((namespace, name))
        if entry is None:
            return None
        claimants = self.claimants(entry.target)
        first = claimants[0] if claimants else None
        return first if first is not None and first != (namespace, name) else None

    def dependents(self, namespace: str, name: str) -> list[str]:
        return [
            other
            for (ns, other), entry in self.releases.items()
            if ns == namespace and name in entry.needs and other != name
        ]


# Which deployed revision a manifest is of: (the remote cluster's kubeconfig digest, "" for the
# operator's own cluster; the revision). A Secret pointed at another cluster reaches other
# releases with the same revision numbers.
ManifestVersion = tuple[str, int]


class ManifestCache:
    """Manifests of deployed revisions by Helm release, decoded once per revision and bounded in
    bytes (least recently used first out): real manifests reach MiBs."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._entries: collections.OrderedDict[ReleaseTarget, tuple[ManifestVersion, str]] = (
            collections.OrderedDict()
        )
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: ReleaseTarget, version: ManifestVersion) -> str | None:
        entry = self._entries.get(key)
        if entry is None or entry[0] != version:
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def put(self, key: ReleaseTarget, version: ManifestVersion, manifest: str) -> None:
        self.evict(key)
        if len(manifest) > self.max_bytes:
            return
        self._entries[key] = (version, manifest)
        self._bytes += len(manifest)
        while self._bytes > self.max_bytes:
            _, (_, dropped) = self._entries.popitem(last=False)
            self._bytes -= len(dropped)

    def evict(self, key: ReleaseTarget) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._bytes -= len(entry[1])


class BodyCache:
    """The newest body seen of each HelmfileRelease, so that a pass reads its object from
    memory rather than asking the API server — what an informer's cache is to a Go controller.
    The watch fills it (`seen`); the answers to our own writes refresh it (`wrote`), so that a
    pass right after a write does not see the object from before it. Kept as compact JSON: a
    parsed body costs several times its JSON in memory, and a pass parses only its own."""

    def __init__(self) -> None:
        self._bodies: dict[tuple[str, str], tuple[int | None, bytes]] = {}

    def __len__(self) -> int:
        return len(self._bodies)

    def seen(self, body: Mapping[str, Any]) -> None:
        """A body from the watch (which delivers every change, in order). The event of our own
        write brings the version `wrote` already keeps: not encoded again."""
        self._store(body, only_newer=False)

    def wrote(self, body: Mapping[str, Any] | None) -> None:
        """Our own write's answer: kept when newer than what the watch brought meanwhile (only
        for objects the watch has delivered: it alone says an object exists)."""
        if body is not None:
            self._store(body, only_newer=True)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        entry = self._bodies.get((namespace, name))
        if entry is None:
            return None
        body: dict[str, Any] = json.loads(entry[1])
        return body

    def evict(self, namespace: str, name: str) -> None:
        self._bodies.pop((namespace, name), None)

    def _store(self, body: Mapping[str, Any], *, only_newer: bool) -> None:
        metadata = body.get("metadata") or {}
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        version = _resource_version(metadata)
        if only_newer:
            entry = self._bodies.get(key)
            if entry is None:
                return
            if version is None:  # cannot tell which is newer: the next pass asks the server
                del self._bodies[key]
                return
            if (entry[0] or 0) >= version:
                return
        elif version is not None and (self._bodies.get(key) or (None,))[0] == version:
            return  # the same version: the same body
        self._bodies[key] = (version, json.dumps(body, separators=(",", ":")).encode())


def _resource_version(metadata: Mapping[str, Any]) -> int | None:
    """etcd's revision behind resourceVersion, to tell which of two answers is newer (None when
    it is not a number: then the copy is dropped and the next pass reads the object)."""
    try:
        return int(str(metadata.get("resourceVersion")))
    except ValueError:
        return None


class ForwardedRequests:
    """A state's reconcile request (`reconcile-requested-at`), passed on to its releases in
    memory rather than written onto each of them: which releases have yet to run a pass for it.
    The state records `lastHandledReconcileAt` once none is left. Lost on a restart, which is
    harmless: the state's first pass then forwards the request again."""

    def __init__(self) -> None:
        self._pending: dict[tuple[str, str], tuple[str, set[str]]] = {}  # state → (request, left)

    def forward(self, namespace: str, state: str, requested: str, releases: Iterable[str]) -> None:
        self._pending[namespace, state] = (requested, set(releases))

    def forwarded(self, namespace: str, state: str, requested: str) -> bool:
        entry = self._pending.get((namespace, state))
        return entry is not None and entry[0] == requested

    def all_handled(self, namespace: str, state: str, requested: str) -> bool:
        entry = self._pending.get((namespace, state))
        return entry is not None and entry[0] == requested and not entry[1]

    def retain(self, namespace: str, state: str, releases: Iterable[str]) -> None:
        """Only these releases are left to wait for (the others are gone or going)."""
        entry = self._pending.get((namespace, state))
        if entry is not None:
            entry[1].intersection_update(releases)

    def of_release(self, namespace: str, state: str | None, release: str) -> str | None:
        """The request this release has yet to handle, if any."""
        entry = self._pending.get((namespace, state)) if state else None
        return entry[0] if entry is not None and release in entry[1] else None

    def handled(self, namespace: str, state: str, release: str) -> bool:
        """The release ran its pass; True when it was the last one (the state may record it)."""
        entry = self._pending.get((namespace, state))
        if entry is None or release not in entry[1]:
            return False
        entry[1].discard(release)
        return not entry[1]

    def forget(self, namespace: str, state: str) -> None:
        self._pending.pop((namespace, state), None)


@dataclass
class Reconciler:
    kube: Kube
    helm: HelmClient
    settings: Settings
    queue: WorkQueue[ObjectKey]
    index: ReleaseIndex = field(default_factory=ReleaseIndex)
    drift: DriftChecker | None = None
    events: EventRecorder = field(default_factory=lambda: EventRecorder(None))
    manifests: ManifestCache = field(default_factory=ManifestCache)
    requests: ForwardedRequests = field(default_factory=ForwardedRequests)
    bodies: BodyCache = field(default_factory=BodyCache)
    metrics: Metrics = field(default_factory=Metrics)
    versions: VersionResolver = field(default_factory=VersionResolver)
    clusters: ClusterPool | None = None  # remote clusters (None: spec.kubeConfig is refused)
    # Renders of states at once: each may use up to its memory budget (render/templates.py).
    render_slots: asyncio.Semaphore = field(default_factory=lambda: asyncio.Semaphore(2))

    def in_shard(self, body: Mapping[str, Any]) -> bool:
        """Whether this operator's shard reconciles the object. The watch delivers only those,
        but an object relabelled during a pass would otherwise be resynced here forever after
        (the pass requeues it): each pass checks what it read."""
        labels = (body.get("metadata") or {}).get("labels") or {}
        return str(labels.get(SHARD_LABEL) or "") == self.settings.shard

    def event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A Kubernetes Event on the object (posted in the background, de-duplicated)."""
        self.events.record(body, type_, reason, message)

    def backoff(self, failures: int, cap: float | None = None) -> float:
        """Jittered exponential backoff; never beyond `cap` (a release's interval)."""
        limit = self.settings.retry_max_seconds
        if cap is not None:
            limit = min(cap, limit)
        return backoff_delay(failures, self.settings.retry_base_seconds, limit)
