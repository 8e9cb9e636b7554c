"""The resolver's cache: one fetch per repository and interval, per tenant and Secret."""

from __future__ import annotations

import asyncio

import pytest

from helmfile_operator.api.models import ChartReference, ChartRepository
from helmfile_operator.helm import HelmErrorKind
from helmfile_operator.sources import ChartSourceError, VersionResolver
from helmfile_operator.sources.fetch import Access
from helmfile_operator.sources.resolver import SourceKey


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Repository:
    def __init__(self, versions: dict[str, list[str]]) -> None:
        self.versions = versions
        self.keys: list[SourceKey] = []
        self.access: list[Access] = []

    async def __call__(self, key: SourceKey, access: Access) -> dict[str, list[str]]:
        await asyncio.sleep(0)
        self.keys.append(key)
        self.access.append(access)
        return {name: list(v) for name, v in self.versions.items()}


def chart(name: str = "app", version: str | None = "1.0.x", **repo: object) -> ChartReference:
    repository = ChartRepository.model_validate({"url": "https://charts.example", **repo})
    return ChartReference(repository=repository, name=name, version=version)


async def no_access() -> Access:
    return Access()


async def resolve(resolver: VersionResolver, ref: ChartReference, **kw: object) -> str:
    options: dict[str, object] = {"tenant": "team-a", "max_age_seconds": 600, "refresh": False}
    options |= kw
    return await resolver.resolve(ref, access=no_access, **options)  # type: ignore[arg-type]


async def test_one_fetch_per_repository_per_interval_for_every_release() -> None:
    clock, repo = Clock(), Repository({"app": ["1.0.0"], "db": ["2.0.0"]})
    resolver = VersionResolver(fetch=repo, clock=clock)
    results = await asyncio.gather(
        *(resolve(resolver, chart()) for _ in range(50)), resolve(resolver, chart("db", "2.x"))
    )
    assert set(results) == {"1.0.0", "2.0.0"}
    assert resolver.fetches == 1
    repo.versions["app"].append("1.0.1")
    clock.now += 599
    assert await resolve(resolver, chart()) == "1.0.0"  # still within the interval
    clock.now += 2
    assert await resolve(resolver, chart()) == "1.0.1"
    assert resolver.fetches == 2


async def test_a_reconcile_request_asks_again_but_shares_one_fetch() -> None:
    clock, repo = Clock(), Repository({"app": ["1.0.0"]})
    resolver = VersionResolver(fetch=repo, clock=clock)
    await resolve(resolver, chart())
    clock.now += 10
    repo.versions["app"].append("1.0.1")
    first = await resolve(resolver, chart(), refresh=True)
    second = await resolve(resolver, chart(), refresh=True)
    assert (first, second, resolver.fetches) == ("1.0.1", "1.0.1", 2)


async def test_tenants_and_secrets_never_share_an_answer() -> None:
    repo = Repository({"app": ["1.0.0"]})
    resolver = VersionResolver(fetch=repo)
    await resolve(resolver, chart(secretRef="creds"), tenant="team-a")
    await resolve(resolver, chart(secretRef="creds"), tenant="team-b")
    await resolve(resolver, chart(secretRef="other-creds"), tenant="team-a")
    await resolve(resolver, chart(secretRef="creds"), tenant="team-a")
    assert resolver.fetches == 3


async def test_oci_tags_are_fetched_per_chart() -> None:
    repo = Repository({"app": ["1.0.0"]})
    resolver = VersionResolver(fetch=repo)
    ref = ChartReference(
        repository=ChartRepository(url="oci://registry.example/charts"), name="app", version="1.x"
    )
    assert await resolve(resolver, ref) == "1.0.0"
    assert repo.keys[0].chart == "app"


async def test_no_matching_version_names_the_newest_published() -> None:
    resolver = VersionResolver(fetch=Repository({"app": ["1.0.0", "1.1.0"]}))
    with pytest.raises(ChartSourceError) as caught:
        await resolve(resolver, chart(version="2.x"))
    assert caught.value.kind is HelmErrorKind.VERSION_NOT_FOUND
    assert "no version of app matching '2.x'" in caught.value.message
    assert "newest published: 1.1.0, 1.0.0" in caught.value.message
    assert not caught.value.retryable


async def test_an_unknown_chart_is_named() -> None:
    resolver = VersionResolver(fetch=Repository({"app": ["1.0.0"]}))
    with pytest.raises(
        ChartSourceError, match=r"chart 'nope' not found in repository https://charts\.example"
    ):
        await resolve(resolver, chart("nope"))


async def test_failures_are_not_cached_and_the_cache_is_bounded() -> None:
    calls = 0

    async def flaky(key: SourceKey, access: Access) -> dict[str, list[str]]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ChartSourceError(HelmErrorKind.REPOSITORY_UNREACHABLE, "down")
        return {"app": ["1.0.0"]}

    resolver = VersionResolver(fetch=flaky, max_entries=2)
    with pytest.raises(ChartSourceError):
        await resolve(resolver, chart())
    assert await resolve(resolver, chart()) == "1.0.0"
    for tenant in ("b", "c", "d"):
        await resolve(resolver, chart(), tenant=tenant)
    assert len(resolver) == 2
    resolver.forget("d")
    assert len(resolver) == 1
