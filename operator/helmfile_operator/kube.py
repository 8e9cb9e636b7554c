"""Kubernetes API access used by the reconcilers (the official client, run in worker threads).

Raw JSON in and out (`_preload_content=False`): the reconcilers parse objects through the pydantic
models, and skipping the client's model classes is both simpler and much cheaper.
"""

from __future__ import annotations

import asyncio
import collections
import json
from collections.abc import Callable
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from helmfile_operator.api.models import GROUP, VERSION

FIELD_MANAGER = "helmfile-operator"
# (connect, read) seconds for every request: a half-open connection must end in an error that the
# queue retries, never hang a worker. Lists of Helm storage can be large: the read bound is wide.
REQUEST_TIMEOUT = (10.0, 60.0)
STATES = "helmfilestates"
RELEASES = "helmfilereleases"

Body = dict[str, Any]
T = TypeVar("T")


class FinalizerConflict(Exception):
    """The object's finalizers changed since it was read: read it again and retry."""


class AccessDenied(Exception):
    """A read made as a tenant's identity was refused: the message names who, what and the fix."""


# Identities with a cached client: one per tenant ServiceAccount in use, least recent out.
MAX_IDENTITIES = 256


class Kube:
    def __init__(self, api_client: client.ApiClient, identity: str | None = None) -> None:
        self.api_client = api_client
        self.identity = identity  # the user this client impersonates (None: the operator)
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self._as: collections.OrderedDict[str, Kube] = collections.OrderedDict()

    def impersonating(self, identity: str | None) -> Kube:
        """The same API, as `identity` (e.g. `system:serviceaccount:ns:name`): its RBAC, not the
        operator's, decides what it may read. None: the operator's own identity."""
        if identity is None:
            return self
        kube = self._as.get(identity)
        if kube is None:
            api_client = client.ApiClient(self.api_client.configuration)
            api_client.set_default_header("Impersonate-User", identity)  # type: ignore[no-untyped-call]
            kube = self._as[identity] = Kube(api_client, identity)
            while len(self._as) > MAX_IDENTITIES:
                self._as.popitem(last=False)
        self._as.move_to_end(identity)
        return kube

    def _denied(self, error: ApiException, verb: str, resource: str, namespace: str) -> Exception:
        if error.status != 403 or self.identity is None:
            return error
        if "cannot impersonate" in str(error.body or ""):
            return AccessDenied(
                f"forbidden: the operator may not impersonate {self.identity}; grant its "
                "ServiceAccount `impersonate` on serviceaccounts"
            )
        account = self.identity.removeprefix("system:serviceaccount:").replace(":", "/", 1)
        return AccessDenied(
            f"forbidden: {self.identity} may not {verb} {resource} in namespace {namespace}; "
            f"grant ServiceAccount {account} `{verb}` on {resource} there (Role and RoleBinding)"
        )

    @classmethod
    def from_environment(cls) -> Kube:
        """In-cluster credentials when running in a pod, else KUBECONFIG / ~/.kube/config."""
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call]
            configuration = client.Configuration.get_default_copy()
        except config.ConfigException:
            configuration = client.Configuration()
            config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        configuration.connection_pool_maxsize = 64
        return cls(client.ApiClient(configuration))

    async def _call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        def call() -> Any:
            response = fn(*args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs)
            data = response.data
            return json.loads(data) if data else None

        return await asyncio.to_thread(call)

    async def _maybe(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The object, or None on 404."""
        try:
            return await self._call(fn, *args, **kwargs)
        except ApiException as error:
            if error.status == 404:
                return None
            raise

    # --- custom resources ---

    async def get(self, plural: str, namespace: str, name: str) -> Body | None:
        result: Body | None = await self._maybe(
            self.custom.get_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
        )
        return result

    async def list_objects(
        self, plural: str, namespace: str, label_selector: str = ""
    ) -> list[Body]:
        result = await self._call(
            self.custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            plural,
            label_selector=label_selector,
        )
        items: list[Body] = result["items"]
        return items

    async def apply(self, plural: str, namespace: str, body: Body) -> Body:
        """Server-side apply: we own the fields we set, and only those."""
        result: Body = await self._call(
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            plural,
            body["metadata"]["name"],
            body,
            field_manager=FIELD_MANAGER,
            force=True,
            _content_type="application/apply-patch+yaml",
        )
        return result

    async def patch_status(self, plural: str, namespace: str, name: str, status: Body) -> None:
        await self._maybe(
            self.custom.patch_namespaced_custom_object_status,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            {"status": status},
            _content_type="application/merge-patch+json",
        )

    async def patch_metadata(self, plural: str, namespace: str, name: str, metadata: Body) -> None:
        await self._maybe(
            self.custom.patch_namespaced_custom_object,
            GROUP,
            VERSION,
            namespace,
            plural,
            name,
            {"metadata": metadata},
            _content_type="application/merge-patch+json",
        )

    async def set_finalizers(
        self, plural: str, namespace: str, name: str, resource_version: str, wanted: list[str]
    ) -> None:
        """Write the finalizers only if the object is still at `resource_version` (optimistic
        concurrency): a stale read can never drop a finalizer another controller added."""
        metadata = {"finalizers": wanted or None, "resourceVersion": resource_version}
        try:
            await self.patch_metadata(plural, namespace, name, metadata)
        except ApiException as error:
            if error.status == 409:
                raise FinalizerConflict(f"{plural} {namespace}/{name} changed meanwhile") from None
            raise

    async def delete(self, plural: str, namespace: str, name: str) -> None:
        await self._maybe(
            self.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, plural, name
        )

    async def list_all(self, plural: str, namespace: str | None = None) -> list[Body]:
        """Every object of the kind (in one namespace, or cluster-wide)."""
        if namespace is None:
            result = await self._call(
                self.custom.list_cluster_custom_object, GROUP, VERSION, plural
            )
        else:
            result = await self._call(
                self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, plural
            )
        items: list[Body] = result["items"]
        return items

    async def create_event(self, namespace: str, body: Body) -> None:
        await self._call(self.core.create_namespaced_event, namespace, body)

    # --- core objects ---

    async def get_secret(self, namespace: str, name: str) -> Body | None:
        try:
            result: Body | None = await self._maybe(
                self.core.read_namespaced_secret, name, namespace
            )
        except ApiException as error:
            raise self._denied(error, "get", "secrets", namespace) from None
        return result

    async def get_config_map(self, namespace: str, name: str) -> Body | None:
        try:
            result: Body | None = await self._maybe(
                self.core.read_namespaced_config_map, name, namespace
            )
        except ApiException as error:
            raise self._denied(error, "get", "configmaps", namespace) from None
        return result

    async def helm_storage(self, namespace: str, release: str) -> list[Body]:
        """Helm's release Secrets (one per revision) of a release."""
        try:
            result = await self._call(
                self.core.list_namespaced_secret,
                namespace,
                label_selector=f"owner=helm,name={release}",
            )
        except ApiException as error:
            raise self._denied(error, "list", "secrets", namespace) from None
        items: list[Body] = result["items"]
        return items
