"""Final values of a release: rendered values, then `valuesFrom` (read now), then `set`.

Secret content lives only in memory here: it is hashed into the values digest and written to
helm's private values file, never into a status, an event, a log line or an exception message.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import yaml
from kubernetes.client.exceptions import ApiException

from helmfile_operator.api.models import HelmfileReleaseSpec, ValuesReference
from helmfile_operator.kube import Kube
from helmfile_operator.render.values import apply_set, deep_merge


class ValuesSourceError(Exception):
    """A `valuesFrom` entry cannot be read; the message names the field and the fix."""


async def read_reference(
    kube: Kube, namespace: str, reference: ValuesReference, field: str
) -> dict[str, Any] | None:
    """The YAML map under `reference.key`, or None when it is optional and missing."""
    getter = kube.get_secret if reference.kind == "Secret" else kube.get_config_map
    where = f"{field}: {reference.kind} {namespace}/{reference.name}"
    try:
        obj = await getter(namespace, reference.name)
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
    raw = data[reference.key]
    text = base64.b64decode(raw).decode() if reference.kind == "Secret" else raw
    try:
        parsed = yaml.safe_load(text)
    except yaml.YAMLError as error:
        line = getattr(getattr(error, "problem_mark", None), "line", None)
        at = f" at line {line + 1}" if line is not None else ""
        # The YAML error text may quote the content: never pass it on.
        raise ValuesSourceError(f"{where} key {reference.key!r} is not valid YAML{at}") from None
    if parsed is None:
        return {}
    if not isinstance(parsed, dict):
        raise ValuesSourceError(
            f"{where} key {reference.key!r} holds a {type(parsed).__name__}, not a YAML map"
        )
    return parsed


async def resolve_values_from(
    kube: Kube, namespace: str, references: Sequence[ValuesReference], field: str
) -> list[dict[str, Any]]:
    layers = []
    for index, reference in enumerate(references):
        layer = await read_reference(kube, namespace, reference, f"{field}[{index}]")
        if layer is not None:
            layers.append(layer)
    return layers


async def final_values(kube: Kube, namespace: str, spec: HelmfileReleaseSpec) -> dict[str, Any]:
    values = spec.values
    for layer in await resolve_values_from(kube, namespace, spec.values_from, "spec.valuesFrom"):
        values = deep_merge(values, layer)
    return apply_set(values, spec.set)
