"""`VersionResolver`: the version a chart's range (or "latest") stands for now, from a cache of
what each repository publishes — fetched at most once per interval per repository (per chart for
OCI, whose tags are per chart), however many releases use it. Held by the operator's runtime.

The cache is keyed by the tenant (the object's namespace) and by the Secrets it reads access
with: a tenant never gets an answer fetched with another tenant's credentials, nor one fetched
with a Secret it did not name.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from helmfile_operator.api.models import ChartReference
from helmfile_operator.helm.errors import HelmErrorKind
from helmfile_operator.sources.fetch import (
    DEFAULT_TIMEOUT_SECONDS,
    Access,
    ChartSourceError,
    index_versions,
    registry_tags,
)
from helmfile_operator.sources.versions import InvalidConstraint, newest_first, select_version

__all__ = ["Access", "ChartSourceError", "VersionResolver"]

# Requests for a fresh answer (a reconcile request) within this many seconds share one fetch.
COALESCE_SECONDS = 5.0


@dataclass(frozen=True)
class SourceKey:
    tenant: str
    url: str
    chart: str | None  # OCI: the chart (its own repository of tags); http: None (one index)
    secret_ref: str | None
    ca_secret_ref: str | None
    insecure: bool


@dataclass(frozen=True)
class _Entry:
    fetched_at: float  # time.monotonic()
    versions: dict[str, list[str]]  # chart name -> versions


Fetch = Callable[[SourceKey, Access], Awaitable[dict[str, list[str]]]]
AccessReader = Callable[[], Awaitable[Access]]


class VersionResolver:
    """At most `max_entries` repositories are remembered (least recently used go first)."""

    def __init__(
        self,
        *,
        max_entries: int = 256,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        fetch: Fetch | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_entries = max_entries
        self.timeout_seconds = timeout_seconds
        self.fetches = 0  # repository requests made (the benchmarks and tests read it)
        self._fetch = fetch or self._fetch_remote
        self._clock = clock
        self._entries: OrderedDict[SourceKey, _Entry] = OrderedDict()
        self._locks: dict[SourceKey, asyncio.Lock] = {}

    async def resolve(
        self,
        chart: ChartReference,
        *,
        tenant: str,
        max_age_seconds: float,
        refresh: bool,
        access: AccessReader,
    ) -> str:
        """The version helm would pick for `chart.version` now. `access` is only called when
        the repository must be fetched. Raises ChartSourceError."""
        repository = chart.repository
        key = SourceKey(
            tenant=tenant,
            url=repository.url.rstrip("/"),
            chart=chart.name if repository.url.startswith("oci://") else None,
            secret_ref=repository.secret_ref,
            ca_secret_ref=repository.ca_secret_ref,
            insecure=repository.insecure_skip_tls_verify,
        )
        max_age = min(max_age_seconds, COALESCE_SECONDS) if refresh else max_age_seconds
        entry = await self._entry(key, max_age, access)
        available = entry.versions.get(chart.name)
        where = f"{'registry' if key.chart else 'repository'} {repository.url}"
        if not available:
            raise ChartSourceError(
                HelmErrorKind.CHART_NOT_FOUND, f"chart {chart.name!r} not found in {where}"
            )
        try:
            version = select_version(chart.version, available)
        except InvalidConstraint as error:
            raise ChartSourceError(
                HelmErrorKind.VERSION_NOT_FOUND, f"spec.chart.version: {error}"
            ) from None
        if version is None:
            wanted = f"matching {chart.version!r}" if chart.version else "without a prerelease"
            raise ChartSourceError(
                HelmErrorKind.VERSION_NOT_FOUND,
                f"{where} has no version of {chart.name} {wanted} "
                f"(newest published: {', '.join(_newest(available))})",
            )
        return version

    def forget(self, tenant: str) -> None:
        """Drop what was fetched for a tenant (its namespace is gone)."""
        for key in [k for k in self._entries if k.tenant == tenant]:
            del self._entries[key]
            self._locks.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)

    async def _entry(self, key: SourceKey, max_age: float, access: AccessReader) -> _Entry:
        entry = self._fresh(key, max_age)
        if entry is not None:
            return entry
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:  # one fetch for every release that asks at once
            entry = self._fresh(key, max_age)
            if entry is not None:
                return entry
            self.fetches += 1
            versions = await self._fetch(key, await access())
            entry = _Entry(self._clock(), versions)
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                old, _ = self._entries.popitem(last=False)
                self._locks.pop(old, None)
            return entry

    def _fresh(self, key: SourceKey, max_age: float) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None or self._clock() - entry.fetched_at > max_age:
            return None
        self._entries.move_to_end(key)
        return entry

    async def _fetch_remote(self, key: SourceKey, access: Access) -> dict[str, list[str]]:
        if key.chart is not None:
            tags = await registry_tags(key.url, key.chart, access, time_limit=self.timeout_seconds)
            return {key.chart: tags}
        return await index_versions(key.url, access, time_limit=self.timeout_seconds)


def _newest(versions: list[str], count: int = 3) -> list[str]:
    return newest_first(versions)[:count] or ["none"]
