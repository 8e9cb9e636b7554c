"""Final values of a release: rendered values, then `valuesFrom` (read now), then `set`.

Secret content lives only in memory here: it is hashed into the values digest and written to
helm's private values file, never into a status, an event, a log line or an exception message.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from kubernetes.client.exceptions import ApiException

from helmfile_operator import goyaml
from helmfile_operator.api.models import ChartRepository, HelmfileReleaseSpec, ValuesReference
from helmfile_operator.helm import HelmErrorKind, RepositoryCredentials
from helmfile_operator.kube import AccessDenied, Kube, secret_text
from helmfile_operator.render.values import apply_set, deep_merge
from helmfile_operator.sources import ChartSourceError
from helmfile_operator.sources.fetch import Access


class ValuesSourceError(Exception):
    """A `valuesFrom` entry cannot be read; the message names the field and the fix."""


class ObjectSource(Protocol):
    """Where `valuesFrom` objects are read: the API (`Kube`, as the tenant), or files (the CLI's
    offline render)."""

    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def get_config_map(self, namespace: str, name: str) -> dict[str, Any] | None: ...


async def read_reference(
    kube: ObjectSource, namespace: str, reference: ValuesReference, field: str
) -> dict[str, Any] | None:
    """The values under `reference.key`, read as `helm -f` reads a file (goyaml.load_values), or
    None when the entry is optional and missing."""
    getter = kube.get_secret if reference.kind == "Secret" else kube.get_config_map
    where = f"{field}: {reference.kind} {namespace}/{reference.name}"
    try:
        obj = await getter(namespace, reference.name)
    except AccessDenied as error:
        raise ValuesSourceError(f"{where}: {error}") from None
    except ApiException as error:
        if error.status == 403:
            raise ValuesSourceError(
                f"{where}: forbidden: the operator's ServiceAccount may not read it; grant it "
                f"`get` on {reference.kind.lower()}s in {namespace}"
            ) from None
        raise
    if obj is None:
        if reference.optional:
            return None
        raise ValuesSourceError(
            f"{where} not found; create it, or set `optional: true` on this entry"
        )
    data = obj.get("data") or {}
    if reference.key not in data:
        if reference.optional:
            return None
        raise ValuesSourceError(
            f"{where} has no key {reference.key!r} (keys: {', '.join(sorted(data)) or 'none'}); "
            "fix `key`, or set `optional: true`"
        )
    where = f"{where} key {reference.key!r}"
    text: str = data[reference.key]
    if reference.kind == "Secret":
        try:
            text = secret_text(obj, reference.key) or ""  # the key is there: checked above
        except ValueError:  # secret_text's message names no content; ours names the field
            raise ValuesSourceError(f"{where} is not UTF-8 text") from None
    try:
        # helm's reading (goyaml): the message names `where` and the line, never the content.
        return goyaml.load_values(text, where)
    except goyaml.GoYAMLError as error:
        raise ValuesSourceError(str(error)) from None


async def resolve_values_from(
    kube: ObjectSource, namespace: str, references: Sequence[ValuesReference], field: str
) -> list[dict[str, Any]]:
    layers = []
    for index, reference in enumerate(references):
        layer = await read_reference(kube, namespace, reference, f"{field}[{index}]")
        if layer is not None:
            layers.append(layer)
    return layers


@dataclass
class ResolvedValues:
    values: dict[str, Any]
    # Strings read from Secrets: helm's error messages are scrubbed of them.
    secret_strings: list[str] = field(default_factory=list)
    # Where Secret layers put values: a plan also scrubs what the deployed revision held there
    # (a rotated secret's old value is in the deployed manifest).
    secret_paths: list[tuple[Any, ...]] = field(default_factory=list)


def leaf_keys(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The key paths of every leaf of a values map."""
    if isinstance(node, dict) and node:
        return [p for key, value in node.items() for p in leaf_keys(value, (*prefix, key))]
    return [prefix] if prefix else []


def strings_at(values: Any, paths: Sequence[tuple[Any, ...]]) -> list[str]:
    """Every string (of 4 characters or more) found at or below `paths` in `values`."""
    found: list[str] = []
    for path in paths:
        node = values
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not None:
            found += _strings(node)
    return found


def _strings(node: Any) -> list[str]:
    if isinstance(node, dict):
        return [s for value in node.values() for s in _strings(value)]
    if isinstance(node, list):
        return [s for value in node for s in _strings(value)]
    text = str(node) if node is not None and not isinstance(node, bool) else ""
    return [text] if len(text) >= 4 else []  # shorter ones would scrub ordinary words


async def final_values(kube: Kube, namespace: str, spec: HelmfileReleaseSpec) -> ResolvedValues:
    resolved = ResolvedValues(spec.values)
    for index, reference in enumerate(spec.values_from):
        layer = await read_reference(kube, namespace, reference, f"spec.valuesFrom[{index}]")
        if layer is None:
            continue
        resolved.values = deep_merge(resolved.values, layer)
        if reference.kind == "Secret":
            resolved.secret_strings += _strings(layer)
            resolved.secret_paths += leaf_keys(layer)
    resolved.values = apply_set(resolved.values, spec.set)
    return resolved


async def repository_access(
    kube: Kube, namespace: str, repository: ChartRepository
) -> tuple[RepositoryCredentials | None, str | None]:
    """Credentials (`secretRef`: keys `username`, `password`) and CA (`caSecretRef`: `ca.crt`)."""
    credentials = ca_pem = None
    if repository.secret_ref:
        data = await _secret_data(
            kube, namespace, repository.secret_ref, ("username", "password"), "secretRef"
        )
        credentials = RepositoryCredentials(data["username"], data["password"])
    if repository.ca_secret_ref:
        data = await _secret_data(
            kube, namespace, repository.ca_secret_ref, ("ca.crt",), "caSecretRef"
        )
        ca_pem = data["ca.crt"]
    return credentials, ca_pem


async def _secret_data(
    kube: Kube, namespace: str, name: str, keys: tuple[str, ...], field_name: str
) -> dict[str, str]:
    where = f"spec.chart.repository.{field_name}: Secret {namespace}/{name}"
    try:
        secret = await kube.get_secret(namespace, name)
    except AccessDenied as error:
        raise ValuesSourceError(f"{where}: {error}") from None
    except ApiException as error:
        if error.status == 403:
            raise ValuesSourceError(f"{where}: forbidden for the operator") from None
        raise
    if secret is None:
        raise ValuesSourceError(f"{where} not found; create it with keys {', '.join(keys)}")
    data = secret.get("data") or {}
    missing = [key for key in keys if key not in data]
    if missing:
        raise ValuesSourceError(f"{where} lacks key(s) {', '.join(missing)}")
    return {key: base64.b64decode(data[key]).decode() for key in keys}


async def source_access(kube: Kube, namespace: str, repository: ChartRepository) -> Access:
    """The repository's credentials and CA for a version lookup (sources/), read through `kube`;
    an unreadable Secret is the lookup's failure."""
    try:
        credentials, ca_pem = await repository_access(kube, namespace, repository)
    except ValuesSourceError as error:
        raise ChartSourceError(HelmErrorKind.REPOSITORY_AUTH_FAILED, str(error)) from None
    return Access(
        username=credentials.username if credentials else None,
        password=credentials.password if credentials else None,
        ca_pem=ca_pem,
        insecure_skip_tls_verify=repository.insecure_skip_tls_verify,
    )
