"""What every reconciler needs: API access, helm, settings, the release index and the queue."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import kopf

from helmfile_operator.helm.client import HelmClient
from helmfile_operator.kube import Kube
from helmfile_operator.reconcile.drift import DriftChecker
from helmfile_operator.reconcile.workqueue import WorkQueue
from helmfile_operator.settings import Settings

logger = logging.getLogger("helmfile_operator")

STATE_LABEL = "helmfile.dev/state"
FINALIZER = "helmfile.dev/finalizer"
RECONCILE_REQUEST = "helmfile.dev/reconcile-requested-at"
KEEP_RELEASE = "helmfile.dev/keep-release"


class ObjectKey(NamedTuple):
    kind: Literal["HelmfileState", "HelmfileRelease"]
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.namespace}/{self.name}"


@dataclass
class IndexedRelease:
    """What the watch told us last about a HelmfileRelease: enough to gate and wake `needs`."""

    ready: bool
    needs: tuple[str, ...]
    state: str | None
    drifted: bool = False


@dataclass
class ReleaseIndex:
    """HelmfileReleases by namespace and name, fed by the watch (a cache, like an informer's)."""

    releases: dict[tuple[str, str], IndexedRelease] = field(default_factory=dict)

    def get(self, namespace: str, name: str) -> IndexedRelease | None:
        return self.releases.get((namespace, name))

    def dependents(self, namespace: str, name: str) -> list[str]:
        return [
            other
            for (ns, other), entry in self.releases.items()
            if ns == namespace and name in entry.needs
        ]


@dataclass
class Reconciler:
    kube: Kube
    helm: HelmClient
    settings: Settings
    queue: WorkQueue[ObjectKey]
    index: ReleaseIndex = field(default_factory=ReleaseIndex)
    drift: DriftChecker | None = None
    # Manifest of the deployed revision per (namespace, release): decoded once per revision.
    manifests: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)

    def event(self, body: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        """A Kubernetes Event on the object (posted by kopf in the background, de-duplicated)."""
        metadata = body.get("metadata") or {}
        where = f"{body.get('kind')}/{metadata.get('namespace')}/{metadata.get('name')}"
        log = logger.warning if type_ == "Warning" else logger.info
        log("%s: %s: %s", where, reason, message)
        # Outside kopf's context (unit tests) there is no poster: the log line is all.
        with contextlib.suppress(LookupError):
            kopf.event(dict(body), type=type_, reason=reason, message=message[:1000])  # type: ignore[arg-type]

    def backoff(self, failures: int) -> float:
        delay = self.settings.retry_base_seconds * (2 ** max(failures - 1, 0))
        return float(min(delay, self.settings.retry_max_seconds))
