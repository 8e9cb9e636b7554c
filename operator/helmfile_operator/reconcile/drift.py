"""Drift: do the live objects still match the release manifest in Helm's storage?

For each object of the manifest, a **server-side-apply dry run** asks the API server what applying
the manifest now would change; the JSON pointers where that answer differs from the live object are
the drift. Because only the manifest's own fields are applied:
- fields set by other field managers and absent from the chart (an HPA's `replicas`, injected
  sidecars and annotations) are left as they are — not drift;
- defaulted fields (`imagePullPolicy`, `revisionHistoryLimit`, …) are defaulted identically on
  both sides — not drift;
- `status` and bookkeeping metadata are never compared.
Cost: two API calls per object (GET, dry-run PATCH), no helm process. Values are never recorded:
only paths, Secrets included.
"""

from __future__ import annotations

import asyncio
import fnmatch
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import urllib3
from kubernetes.client.api_client import ApiClient
from kubernetes.client.configuration import Configuration
from kubernetes.client.exceptions import ApiException
from kubernetes.dynamic import DynamicClient
from kubernetes.dynamic.exceptions import ResourceNotFoundError

from helmfile_operator import goyaml
from helmfile_operator.api.models import DriftedObject, DriftIgnoreRule
from helmfile_operator.kube import APPLY_PATCH, REQUEST_TIMEOUT, ApiUnreachable, send_json

DRIFT_OPT_OUT = "helmfile.dev/drift-detection"  # "disabled" on a live object: never drift
FIELD_MANAGER = "helmfile-operator-drift"
HELM_FIELD_MANAGER = "helm"  # a plan's dry run applies as helm itself would
TIMEOUT = REQUEST_TIMEOUT
_T = TypeVar("_T")

# Paths the API server owns or that change on every write.
_IGNORED_PREFIXES = (
    "/status",
    "/metadata/managedFields",
    "/metadata/resourceVersion",
    "/metadata/generation",
    "/metadata/creationTimestamp",
    "/metadata/uid",
    "/metadata/selfLink",
    "/metadata/annotations/deployment.kubernetes.io~1revision",
    "/metadata/annotations/kubectl.kubernetes.io~1last-applied-configuration",
)


@dataclass(frozen=True)
class Comparison:
    """One manifest object against the cluster: missing, or the paths an apply would change."""

    obj: dict[str, Any] = field(repr=False)
    namespace: str | None
    missing: bool = False
    opted_out: bool = False  # the live object carries `helmfile.dev/drift-detection: disabled`
    paths: list[str] = field(default_factory=list)


class DriftCheckError(Exception):
    """The check itself failed (e.g. forbidden): the message names the object and the cause."""


@dataclass
class DriftReport:
    objects: list[DriftedObject] = field(default_factory=list)

    @property
    def drifted(self) -> bool:
        return bool(self.objects)


def manifest_objects(manifest: str, where: str = "the release manifest") -> list[dict[str, Any]]:
    """The objects of a manifest (maps with a kind and a name), read as helm reads it. Raises
    goyaml.GoYAMLError (a ValueError) naming `where` and the line, never the content."""
    return [
        doc
        for doc in goyaml.load_manifest(manifest or "", where)
        if doc.get("kind") and isinstance(doc.get("metadata"), dict) and doc["metadata"].get("name")
    ]


def _objects(manifest: str) -> list[dict[str, Any]]:
    try:
        return manifest_objects(manifest)
    except goyaml.GoYAMLError as error:
        raise DriftCheckError(f"drift check: {error}") from None


def _escape(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def diff_paths(live: Any, desired: Any, prefix: str = "") -> list[str]:
    """JSON pointers where `desired` differs from `live` (leaves; lists compared by index)."""
    if isinstance(live, Mapping) and isinstance(desired, Mapping):
        paths = []
        for key in sorted(set(live) | set(desired), key=str):
            path = f"{prefix}/{_escape(str(key))}"
            if key not in live or key not in desired:
                paths.append(path)
            else:
                paths.extend(diff_paths(live[key], desired[key], path))
        return paths
    if isinstance(live, list) and isinstance(desired, list) and len(live) == len(desired):
        paths = []
        for index, (a, b) in enumerate(zip(live, desired, strict=True)):
            paths.extend(diff_paths(a, b, f"{prefix}/{index}"))
        return paths
    return [] if live == desired else [prefix or "/"]


def _target_matches(rule: DriftIgnoreRule, obj: Mapping[str, Any], namespace: str | None) -> bool:
    target = rule.target
    if target is None:
        return True
    metadata = obj.get("metadata") or {}
    if target.kind and target.kind != obj.get("kind"):
        return False
    if target.name and not fnmatch.fnmatchcase(str(metadata.get("name")), target.name):
        return False
    if target.namespace and target.namespace != namespace:
        return False
    labels = metadata.get("labels") or {}
    return all(labels.get(k) == v for k, v in (target.labels or {}).items())


def relevant_paths(
    paths: Iterable[str],
    obj: Mapping[str, Any],
    namespace: str | None,
    ignore: Sequence[DriftIgnoreRule],
) -> list[str]:
    """Drop the server's own paths and those covered by ignore rules matching the object."""
    ignored = list(_IGNORED_PREFIXES)
    for rule in ignore:
        if _target_matches(rule, obj, namespace):
            ignored.extend(p.rstrip("/") for p in rule.paths)
    return [
        path
        for path in paths
        if not any(path == prefix or path.startswith(prefix + "/") for prefix in ignored)
    ]


@dataclass(frozen=True)
class _Client:
    """The shared dynamic client (for discovery), acting as one identity (None: the client's
    own). Objects are read and applied as plain JSON (`send_json`): the dynamic client's
    `ResourceInstance` wrapping of every answer was most of a check's CPU."""

    dynamic: Any
    impersonate: str | None

    def get(self, resource: Any, name: str, namespace: str | None) -> dict[str, Any] | None:
        """The live object (None: not found)."""
        try:
            live: dict[str, Any] = self._send("GET", resource.path(name=name, namespace=namespace))
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return live

    def apply(
        self,
        resource: Any,
        body: dict[str, Any],
        namespace: str | None,
        field_manager: str,
        *,
        dry_run: bool,
    ) -> dict[str, Any]:
        """Server-side apply (forcing conflicts); `dry_run`: what it would make of the object."""
        query = {"fieldManager": field_manager, "force": "true"}
        if dry_run:
            query["dryRun"] = "All"
        path = resource.path(name=body["metadata"]["name"], namespace=namespace)
        applied: dict[str, Any] = self._send(
            "PATCH", path, query=query, body=body, content_type=APPLY_PATCH
        )
        return applied

    def _send(self, method: str, path: str, **kwargs: Any) -> Any:
        headers = {"Impersonate-User": self.impersonate} if self.impersonate else {}
        return send_json(
            self.dynamic.client, method, path, headers=headers, timeout=TIMEOUT, **kwargs
        )


class DriftChecker:
    """Runs checks with the operator's credentials, or impersonating a ServiceAccount."""

    def __init__(self, configuration: Configuration, cache_dir: Path | None = None) -> None:
        self._configuration = configuration
        # The client's discovery cache: private (a shared temp file keyed by host name alone
        # could be written by anyone, e.g. a tenant's cluster of the same host name).
        self._cache_file = str(cache_dir / "discovery.json") if cache_dir is not None else None
        # One dynamic client, so one discovery, for every identity: each request carries the
        # identity it acts as (Impersonate-User). Discovery itself is the operator's (every
        # authenticated user may read it). Untyped: Any keeps mypy --strict honest there.
        self._dynamic: Any = None

    def _client(self, impersonate: str | None) -> _Client:
        if self._dynamic is None:
            self._dynamic = DynamicClient(  # type: ignore[no-untyped-call]
                ApiClient(self._configuration), cache_file=self._cache_file
            )
        return _Client(self._dynamic, impersonate)

    async def check(
        self,
        manifest: str,
        namespace: str,
        ignore: Sequence[DriftIgnoreRule],
        impersonate: str | None = None,
    ) -> DriftReport:
        return await self._in_thread(self._check, manifest, namespace, ignore, impersonate)

    async def correct(
        self, manifest: str, release: str, namespace: str, impersonate: str | None
    ) -> None:
        """Re-apply every object of the manifest (recreates missing ones, restores changed ones)."""
        await self._in_thread(self._correct, manifest, release, namespace, impersonate)

    async def _in_thread(self, function: Callable[..., _T], *args: Any) -> _T:
        """Run a check in a worker thread; an API server that does not answer is the check's
        failure (DriftCheckError), like a refused request."""
        try:
            return await asyncio.to_thread(function, *args)
        except (urllib3.exceptions.HTTPError, ApiUnreachable):
            raise DriftCheckError(
                f"drift check: the API server {self._configuration.host} did not answer"
            ) from None
        except ApiException as error:  # discovery: per-object errors are mapped where raised
            raise DriftCheckError(
                f"drift check: discovery of {self._configuration.host} failed "
                f"(HTTP {error.status} {error.reason or ''})".rstrip()
            ) from None

    def close(self) -> None:
        if self._dynamic is not None:
            self._dynamic.client.close()
            self._dynamic = None

    def _resource(self, client: _Client, obj: Mapping[str, Any]) -> Any:
        try:
            return client.dynamic.resources.get(api_version=obj["apiVersion"], kind=obj["kind"])
        except ResourceNotFoundError:
            raise DriftCheckError(
                f"{obj['kind']} ({obj['apiVersion']}) is not served by the cluster"
            ) from None

    async def compare(
        self, manifest: str, release: str, namespace: str, impersonate: str | None = None
    ) -> list[Comparison]:
        """What helm applying each object of `manifest` for `release` would change in the live
        objects (a plan's view: no ignore rules, no opt-out)."""
        return await self._in_thread(self._compare_all, manifest, release, namespace, impersonate)

    def _compare_all(
        self, manifest: str, release: str, namespace: str, impersonate: str | None
    ) -> list[Comparison]:
        client = self._client(impersonate)
        return [
            self._compare(client, obj, namespace, HELM_FIELD_MANAGER, owner=release)
            for obj in _objects(manifest)
        ]

    def _compare(
        self,
        client: _Client,
        obj: dict[str, Any],
        namespace: str,
        field_manager: str,
        ignore: Sequence[DriftIgnoreRule] = (),
        *,
        honour_opt_out: bool = False,
        owner: str | None = None,
    ) -> Comparison:
        """One object: GET the live one, then a server-side-apply dry run of the manifest's
        (with `owner`: carrying the ownership marks helm adds for that release)."""
        resource = self._resource(client, obj)
        object_namespace = (
            (obj["metadata"].get("namespace") or namespace) if resource.namespaced else None
        )
        name = obj["metadata"]["name"]
        try:
            live = client.get(resource, name, object_namespace)
        except ApiException as error:
            raise _check_error(error, obj, object_namespace) from None
        if live is None:
            return Comparison(obj, object_namespace, missing=True)
        annotations = (live.get("metadata") or {}).get("annotations") or {}
        if honour_opt_out and annotations.get(DRIFT_OPT_OUT) == "disabled":
            return Comparison(obj, object_namespace, opted_out=True)
        body = _with_namespace(obj, object_namespace)
        try:
            desired = client.apply(
                resource,
                _helm_owned(body, owner, namespace) if owner else body,
                object_namespace,
                field_manager,
                dry_run=True,
            )
        except ApiException as error:
            raise _check_error(error, obj, object_namespace) from None
        paths = relevant_paths(diff_paths(live, desired), live, object_namespace, ignore)
        return Comparison(obj, object_namespace, paths=paths)

    def _check(
        self,
        manifest: str,
        namespace: str,
        ignore: Sequence[DriftIgnoreRule],
        impersonate: str | None,
    ) -> DriftReport:
        client = self._client(impersonate)
        report = DriftReport()
        for obj in _objects(manifest):
            found = self._compare(
                client, obj, namespace, FIELD_MANAGER, ignore, honour_opt_out=True
            )
            if found.opted_out or not (found.missing or found.paths):
                continue
            report.objects.append(
                DriftedObject(
                    api_version=obj["apiVersion"],
                    kind=obj["kind"],
                    name=obj["metadata"]["name"],
                    namespace=found.namespace,
                    missing=found.missing,
                    paths=found.paths,
                )
            )
        return report

    def _correct(
        self, manifest: str, release: str, namespace: str, impersonate: str | None
    ) -> None:
        client = self._client(impersonate)
        for obj in _objects(manifest):
            resource = self._resource(client, obj)
            object_namespace = (
                (obj["metadata"].get("namespace") or namespace) if resource.namespaced else None
            )
            try:
                # Applied as helm's field manager, with the ownership marks helm adds itself:
                # the fields return to helm, and its next upgrade sees no conflict.
                client.apply(
                    resource,
                    _helm_owned(_with_namespace(obj, object_namespace), release, namespace),
                    object_namespace,
                    "helm",
                    dry_run=False,
                )
            except ApiException as error:
                raise _check_error(error, obj, object_namespace) from None


def _with_namespace(obj: Mapping[str, Any], namespace: str | None) -> dict[str, Any]:
    body = dict(obj)
    if namespace:
        body["metadata"] = {**obj["metadata"], "namespace": namespace}
    return body


def _helm_owned(body: dict[str, Any], release: str, namespace: str) -> dict[str, Any]:
    metadata = dict(body["metadata"])
    metadata["labels"] = {**(metadata.get("labels") or {}), "app.kubernetes.io/managed-by": "Helm"}
    metadata["annotations"] = {
        **(metadata.get("annotations") or {}),
        "meta.helm.sh/release-name": release,
        "meta.helm.sh/release-namespace": namespace,
    }
    return {**body, "metadata": metadata}


def _check_error(
    error: ApiException, obj: Mapping[str, Any], namespace: str | None
) -> DriftCheckError:
    where = f"{obj['kind']} {namespace + '/' if namespace else ''}{obj['metadata']['name']}"
    reason = "forbidden" if error.status == 403 else f"HTTP {error.status} {error.reason}"
    return DriftCheckError(f"drift check of {where}: {reason}")
