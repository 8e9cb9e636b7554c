"""Everything one pass of the release state machine knows, shared by the actions."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from helmfile_operator.api.models import (
    HelmfileReleaseSpec,
    HelmfileReleaseStatus,
    HelmOptions,
    duration_seconds,
)
from helmfile_operator.reconcile.context import ObjectKey, Reconciler

LOCKED_STATUSES = frozenset({"pending-install", "pending-upgrade", "pending-rollback"})


@dataclass(frozen=True)
class StorageHead:
    """The newest revision in Helm's storage, read from Secret labels (no helm process)."""

    revision: int
    status: str


@dataclass
class ReleaseContext:
    reconciler: Reconciler
    key: ObjectKey
    body: dict[str, Any]
    spec: HelmfileReleaseSpec
    status: HelmfileReleaseStatus  # actions update it; the pass writes it back once, if changed
    storage: StorageHead | None = None
    values: dict[str, Any] | None = None  # final values (may hold Secret data: memory only)
    secret_strings: list[str] = field(default_factory=list)  # scrubbed from helm's errors
    digest: str | None = None
    requeue_after: float | None = None

    @property
    def generation(self) -> int | None:
        generation = self.body["metadata"].get("generation")
        return int(generation) if generation is not None else None

    @property
    def options(self) -> HelmOptions:
        return self.spec.helm_options()

    @property
    def timeout_seconds(self) -> float:
        return duration_seconds(self.options.timeout or "300s")

    @property
    def impersonate(self) -> str | None:
        """helm runs as the ServiceAccount named in the spec (in the release object's namespace)."""
        account = self.spec.service_account_name
        return f"system:serviceaccount:{self.key.namespace}:{account}" if account else None

    async def helm_uninstall(self, timeout_seconds: float | None = None) -> None:
        """Uninstall this release (absent is fine); raises HelmError."""
        await self.reconciler.helm.uninstall(
            release=self.spec.release_name,
            namespace=self.spec.target_namespace,
            timeout_seconds=timeout_seconds or self.timeout_seconds,
            impersonate=self.impersonate,
            ignore_not_found=True,
        )

    async def helm_rollback(self, revision: int | None, wait: bool) -> None:
        """Roll this release back (None: to the previous revision); raises HelmError."""
        await self.reconciler.helm.rollback(
            release=self.spec.release_name,
            namespace=self.spec.target_namespace,
            revision=revision,
            timeout_seconds=self.timeout_seconds,
            wait=wait,
            impersonate=self.impersonate,
        )

    def event(self, type_: str, reason: str, message: str) -> None:
        self.reconciler.event(self.body, type_, reason, message)

    def requeue(self, seconds: float) -> None:
        """Ask for another pass after `seconds` (the earliest request wins)."""
        if self.requeue_after is None or seconds < self.requeue_after:
            self.requeue_after = seconds


def parse_time(value: str) -> datetime.datetime:
    return datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.UTC)


def seconds_since(value: str) -> float:
    return (datetime.datetime.now(datetime.UTC) - parse_time(value)).total_seconds()
