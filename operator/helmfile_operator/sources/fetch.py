"""Read the versions a repository publishes: an http(s) repository's `index.yaml`, or an OCI
registry's tags (`/v2/<path>/<chart>/tags/list`, with the registry's Basic or Bearer-token
challenge). Credentials go in headers, never in a URL or a message; every request is bounded in
time and size. Failures are `ChartSourceError`s, classified like helm's own errors so that the
release state machine retries what is transient and stalls on what is not.
"""

from __future__ import annotations

import asyncio
import json
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from helmfile_operator import goyaml
from helmfile_operator.helm.errors import HINTS, HelmErrorKind, redact_text

# A public index of many charts is tens of MiB; this bounds memory, not what is normal.
MAX_INDEX_BYTES = 64 << 20
INDEX_LIMITS = goyaml.Limits(MAX_INDEX_BYTES, 8_000_000, 64)
MAX_TAG_PAGES = 100
DEFAULT_TIMEOUT_SECONDS = 60.0


@dataclass(frozen=True)
class Access:
    """How to reach one repository: credentials and trust, read from the tenant's Secrets."""

    username: str | None = None
    password: str | None = field(default=None, repr=False)
    ca_pem: str | None = field(default=None, repr=False)
    insecure_skip_tls_verify: bool = False

    @property
    def basic_auth(self) -> aiohttp.BasicAuth | None:
        if self.username is None:
            return None
        return aiohttp.BasicAuth(self.username, self.password or "")

    def ssl_context(self) -> ssl.SSLContext | bool:
        if self.insecure_skip_tls_verify:
            return False
        context = ssl.create_default_context()
        if self.ca_pem:
            context.load_verify_locations(cadata=self.ca_pem)
        return context


class ChartSourceError(Exception):
    """A repository or registry did not say which versions exist; `message` is safe to show."""

    def __init__(self, kind: HelmErrorKind, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = f"{message} ({HINTS[kind]})"

    @property
    def retryable(self) -> bool:
        return self.kind is HelmErrorKind.REPOSITORY_UNREACHABLE

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


async def index_versions(
    url: str, access: Access, *, time_limit: float = DEFAULT_TIMEOUT_SECONDS
) -> dict[str, list[str]]:
    """Every chart of an http(s) repository and its versions, from its index.yaml."""
    where = f"repository {url}"
    index_url = f"{url.rstrip('/')}/index.yaml"
    async with _session(access, time_limit) as session:
        body = await _get(session, index_url, where, access, auth=access.basic_auth)
    text = body.decode("utf-8", errors="replace")
    try:
        index = await asyncio.to_thread(
            goyaml.load_values, text, f"{where}: index.yaml", INDEX_LIMITS
        )
    except ValueError as error:
        raise ChartSourceError(
            HelmErrorKind.REPOSITORY_UNREACHABLE, f"{where}: index.yaml is not readable: {error}"
        ) from None
    entries = index.get("entries")
    if not isinstance(entries, Mapping):
        raise ChartSourceError(
            HelmErrorKind.REPOSITORY_UNREACHABLE, f"{where}: index.yaml has no `entries`"
        )
    return {
        str(name): [
            str(item["version"])
            for item in items
            if isinstance(item, Mapping) and item.get("version") is not None
        ]
        for name, items in entries.items()
        if isinstance(items, list)
    }


async def registry_tags(
    url: str, chart: str, access: Access, *, time_limit: float = DEFAULT_TIMEOUT_SECONDS
) -> list[str]:
    """The tags of `oci://host/path/chart`, as chart versions (OCI tags spell `+` as `_`)."""
    host, _, path = url.removeprefix("oci://").rstrip("/").partition("/")
    repository = f"{path}/{chart}" if path else chart
    where = f"registry {url}"
    next_url: str | None = f"https://{host}/v2/{repository}/tags/list?n=1000"
    tags: list[str] = []
    async with _session(access, time_limit) as session:
        headers: dict[str, str] = {}
        for _ in range(MAX_TAG_PAGES):
            if next_url is None:
                break
            response, body = await _request(session, next_url, where, access, headers=headers)
            if response.status == 401 and not headers:
                headers = await _authorize(session, response, repository, where, access)
                response, body = await _request(session, next_url, where, access, headers=headers)
            _check(
                response.status, where, access, not_found=f"chart {chart!r} not found in {where}"
            )
            try:
                page = json.loads(body)
            except ValueError:
                raise ChartSourceError(
                    HelmErrorKind.REPOSITORY_UNREACHABLE, f"{where}: the tag list is not JSON"
                ) from None
            tags += [str(tag).replace("_", "+") for tag in page.get("tags") or []]
            next_url = _next_link(next_url, response.headers.get("Link"))
    return tags


# --- internals ----------------------------------------------------------------------------------


def _session(access: Access, timeout: float) -> aiohttp.ClientSession:
    try:
        ssl_context = access.ssl_context()
    except ssl.SSLError as error:
        raise ChartSourceError(
            HelmErrorKind.REPOSITORY_UNREACHABLE, f"caSecretRef holds no usable CA: {error}"
        ) from None
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=timeout),
        connector=aiohttp.TCPConnector(ssl=ssl_context, limit=4),
        trust_env=True,
    )


async def _request(
    session: aiohttp.ClientSession,
    url: str,
    where: str,
    access: Access,
    *,
    headers: Mapping[str, str] | None = None,
    auth: aiohttp.BasicAuth | None = None,
) -> tuple[aiohttp.ClientResponse, bytes]:
    try:
        async with session.get(url, headers=headers, auth=auth, allow_redirects=True) as response:
            body = await _read_bounded(response, where)
            return response, body
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        reason = redact_text(str(error) or type(error).__name__, _secrets(access))
        raise ChartSourceError(
            HelmErrorKind.REPOSITORY_UNREACHABLE, f"{where} is unreachable: {reason}"
        ) from None


async def _get(
    session: aiohttp.ClientSession,
    url: str,
    where: str,
    access: Access,
    *,
    auth: aiohttp.BasicAuth | None,
) -> bytes:
    response, body = await _request(session, url, where, access, auth=auth)
    _check(response.status, where, access, not_found=f"{where}: no index.yaml at {url}")
    return body


async def _read_bounded(response: aiohttp.ClientResponse, where: str) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > MAX_INDEX_BYTES:
            raise ChartSourceError(
                HelmErrorKind.REPOSITORY_UNREACHABLE,
                f"{where}: the response is larger than {MAX_INDEX_BYTES >> 20} MiB",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _check(status: int, where: str, access: Access, *, not_found: str) -> None:
    if status < 300:
        return
    if status in (401, 403):
        given = "the credentials of secretRef" if access.username else "anonymous access"
        raise ChartSourceError(
            HelmErrorKind.REPOSITORY_AUTH_FAILED, f"{where} refused {given} (HTTP {status})"
        )
    if status == 404:
        raise ChartSourceError(HelmErrorKind.CHART_NOT_FOUND, not_found)
    raise ChartSourceError(HelmErrorKind.REPOSITORY_UNREACHABLE, f"{where} answered HTTP {status}")


_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


async def _authorize(
    session: aiohttp.ClientSession,
    response: aiohttp.ClientResponse,
    repository: str,
    where: str,
    access: Access,
) -> dict[str, str]:
    """Answer a registry's 401 challenge: Basic (send the credentials) or Bearer (trade them, or
    nothing for anonymous pulls, for a token at the realm the registry names)."""
    challenge = response.headers.get("WWW-Authenticate", "")
    scheme, _, params_text = challenge.partition(" ")
    if scheme.lower() == "basic":
        auth = access.basic_auth
        return {"Authorization": auth.encode()} if auth is not None else {}
    if scheme.lower() != "bearer":
        return {}
    params = dict(_CHALLENGE_PARAM.findall(params_text))
    realm = params.get("realm")
    if not realm:
        return {}
    query = {"scope": params.get("scope") or f"repository:{repository}:pull"}
    if params.get("service"):
        query["service"] = params["service"]
    token_url = f"{realm}{'&' if '?' in realm else '?'}{urllib.parse.urlencode(query)}"
    token_response, body = await _request(session, token_url, where, access, auth=access.basic_auth)
    _check(token_response.status, where, access, not_found=f"{where}: no token service")
    try:
        token: Any = json.loads(body)
        value = token.get("token") or token.get("access_token")
    except (ValueError, AttributeError):
        value = None
    if not value:
        raise ChartSourceError(
            HelmErrorKind.REPOSITORY_AUTH_FAILED, f"{where}: its token service gave no token"
        )
    return {"Authorization": f"Bearer {value}"}


def _next_link(current: str, link: str | None) -> str | None:
    """`Link: </v2/x/tags/list?last=t&n=1000>; rel="next"` (relative to the current URL)."""
    if not link or 'rel="next"' not in link:
        return None
    target = link.split(";", 1)[0].strip().strip("<>")
    return urllib.parse.urljoin(current, target)


def _secrets(access: Access) -> list[str]:
    return [access.password] if access.password else []
