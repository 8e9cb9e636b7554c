"""What the cluster commands share: the user's own credentials (KUBECONFIG, the current
context's namespace), object references like `hfs/NAME`, and reads of states with their
releases."""

from __future__ import annotations

import asyncio
import datetime
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from helmfile_operator.kube import RELEASES, STATES, Kube
from helmfile_operator.reconcile.context import STATE_LABEL

T = TypeVar("T")

_KINDS = {
    **dict.fromkeys(("hfs", "helmfilestate", "helmfilestates"), STATES),
    **dict.fromkeys(("hfr", "helmfilerelease", "helmfilereleases"), RELEASES),
}


@dataclass(frozen=True)
class Ref:
    """`hfs/NAME` or `hfr/NAME` (a bare NAME is a HelmfileState)."""

    plural: str
    name: str

    @property
    def kind(self) -> str:
        return "HelmfileState" if self.plural == STATES else "HelmfileRelease"

    @property
    def short(self) -> str:
        return f"{'hfs' if self.plural == STATES else 'hfr'}/{self.name}"


def parse_ref(text: str) -> Ref:
    kind, _, name = text.rpartition("/")
    plural = _KINDS.get(kind.lower() or "hfs")
    if plural is None or not name:
        raise click.BadParameter(f"{text!r}: use hfs/NAME or hfr/NAME")
    return Ref(plural, name)


def ref_argument(ctx: click.Context, param: click.Parameter, value: str | None) -> Ref | None:
    """click callback: `hfs/NAME` → Ref."""
    return parse_ref(value) if value is not None else None


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def connect() -> Kube:
    """The API with the user's own credentials: KUBECONFIG or ~/.kube/config, as kubectl
    chooses (in a pod, its ServiceAccount only when there is no kubeconfig)."""
    try:
        return Kube.from_environment(kubeconfig_first=True)
    except Exception as error:  # the client's config errors carry no common base class
        raise click.ClickException(f"cannot reach a cluster: {error}") from None


def default_namespace(namespace: str | None) -> str:
    """`-n`, else the current context's namespace, else `default` (as kubectl chooses)."""
    if namespace:
        return namespace
    from kubernetes import config

    try:
        _, active = config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
    except Exception:  # no kubeconfig (in a pod): kubectl's default
        return "default"
    return str((active or {}).get("context", {}).get("namespace") or "default")


async def get(kube: Kube, ref: Ref, namespace: str) -> dict[str, Any]:
    body = await kube.get(ref.plural, namespace, ref.name)
    if body is None:
        raise click.ClickException(f"{ref.kind} {namespace}/{ref.name} not found")
    return body


async def releases_of(kube: Kube, state: dict[str, Any]) -> list[dict[str, Any]]:
    """The state's HelmfileReleases in `needs` order (status.order), the rest after them."""
    metadata = state["metadata"]
    children = await kube.list_objects(
        RELEASES, metadata["namespace"], f"{STATE_LABEL}={metadata['name']}"
    )
    return in_order(children, (state.get("status") or {}).get("order") or [])


def in_order(children: list[dict[str, Any]], order: list[list[str]]) -> list[dict[str, Any]]:
    position = {rid: k for k, rid in enumerate(rid for group in order for rid in group)}

    def key(child: dict[str, Any]) -> tuple[int, str]:
        spec = child.get("spec") or {}
        rid = f"{spec.get('targetNamespace')}/{spec.get('releaseName')}"
        return position.get(rid, len(position)), child["metadata"]["name"]

    return sorted(children, key=key)


def condition(body: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for item in (body.get("status") or {}).get("conditions") or []:
        if item.get("type") == type_:
            return dict(item)
    return None


def is_current(body: dict[str, Any]) -> bool:
    """The status was written for the object's current spec."""
    status = body.get("status") or {}
    return bool(status.get("observedGeneration") == body["metadata"].get("generation"))


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
