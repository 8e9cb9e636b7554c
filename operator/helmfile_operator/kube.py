"""Kubernetes API access used by the reconcilers: raw JSON over the official client's
`ApiClient` (its TLS, auth and token refresh), run in worker threads.

No generated API classes: `client.CoreV1Api` and friends pull in the client's model modules,
~90 MiB of memory for nothing — the reconcilers parse objects through the pydantic models.
Requests are built from paths here, so one method is one readable URL.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import concurrent.futures
import functools
import json
import urllib.parse
from typing import Any

import urllib3
from kubernetes import config
from kubernetes.client.api_client import ApiClient
from kubernetes.client.configuration import Configuration
from kubernetes.client.exceptions import ApiException

from helmfile_operator.api.models import GROUP, VERSION
from helmfile_operator.helm.storage import label_selector as storage_selector
from helmfile_operator.helm.storage import secret_name as storage_secret_name

FIELD_MANAGER = "helmfile-operator"
# (connect, read) seconds for every request: a half-open connection must end in an error that the
# queue retries, never hang a worker. Lists of Helm storage can be large: the read bound is wide.
REQUEST_TIMEOUT = (10.0, 60.0)
STATES = "helmfilestates"
RELEASES = "helmfilereleases"
JSON = "application/json"
# Objects without their content (no Secret data): a list of Helm's storage reads its labels only.
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1, application/json"
MERGE_PATCH = "application/merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

Body = dict[str, Any]


class FinalizerConflict(Exception):
    """The object's finalizers changed since it was read: read it again and retry."""


class ApiUnreachable(Exception):
    """The API server did not answer (refused, reset, timed out): the message names the server."""


class AccessDenied(Exception):
    """A read made as a tenant's identity was refused: the message names who, what and the fix."""


# Identities with a cached client: one per tenant ServiceAccount in use, least recent out.
MAX_IDENTITIES = 256


class Kube:
    def __init__(
        self, api_client: ApiClient, identity: str | None = None, cluster: str | None = None
    ) -> None:
        self.api_client = api_client
        self.identity = identity  # the user this client impersonates (None: the operator)
        self.cluster = cluster  # a remote cluster's server URL (None: the operator's own)
        self._as: collections.OrderedDict[str, Kube] = collections.OrderedDict()
        self._lease_thread: concurrent.futures.ThreadPoolExecutor | None = None

    def impersonating(self, identity: str | None) -> Kube:
        """The same API, as `identity` (e.g. `system:serviceaccount:ns:name`): its RBAC, not the
        operator's, decides what it may read. None: the operator's own identity."""
        if identity is None:
            return self
        kube = self._as.get(identity)
        if kube is None:
            api_client = ApiClient(self.api_client.configuration)
            api_client.set_default_header("Impersonate-User", identity)  # type: ignore[no-untyped-call]
            kube = self._as[identity] = Kube(api_client, identity, self.cluster)
            while len(self._as) > MAX_IDENTITIES:
                self._as.popitem(last=False)
        self._as.move_to_end(identity)
        return kube

    @property
    def _account(self) -> str:
        """`namespace/name` of the impersonated ServiceAccount, as messages name it."""
        identity = self.identity or ""
        return identity.removeprefix("system:serviceaccount:").replace(":", "/", 1)

    def close(self) -> None:
        """Close the connection pools of this client and of its impersonating ones."""
        for kube in [self, *self._as.values()]:
            kube.api_client.close()  # type: ignore[no-untyped-call]
        self._as.clear()

    def _denied(self, error: ApiException, verb: str, resource: str, namespace: str) -> Exception:
        if self.cluster is not None and error.status in (401, 403):
            return self._remote_denied(error, verb, resource, namespace)
        if error.status != 403 or self.identity is None:
            return error
        if "cannot impersonate" in str(error.body or ""):
            return AccessDenied(
                f"forbidden: the operator may not impersonate {self.identity}; grant its "
                "ServiceAccount `impersonate` on serviceaccounts"
            )
        return AccessDenied(
            f"forbidden: {self.identity} may not {verb} {resource} in namespace {namespace}; "
            f"grant ServiceAccount {self._account} `{verb}` on {resource} there (Role and "
            "RoleBinding)"
        )

    @classmethod
    def from_environment(cls, *, kubeconfig_first: bool = False) -> Kube:
        """In-cluster credentials when running in a pod, else KUBECONFIG / ~/.kube/config.
        `kubeconfig_first` (a user's command, as kubectl chooses): a kubeconfig wins over the
        pod's ServiceAccount."""
        first, then = (cls._load_in_cluster, cls._load_kubeconfig)
        if kubeconfig_first:
            first, then = then, first
        try:
            configuration = first()
        except config.ConfigException:
            configuration = then()
        configuration.connection_pool_maxsize = 64
        return cls(ApiClient(configuration))

    def _remote_denied(
        self, error: ApiException, verb: str, resource: str, namespace: str
    ) -> AccessDenied:
        """A remote cluster refused: its kubeconfig's credentials (never the response's body,
        which is the remote server's to choose)."""
        if error.status == 401:
            return AccessDenied(
                f"unauthorized: {self.cluster} refused the kubeconfig's credentials (an expired "
                "or revoked token?); put valid ones into the kubeconfig Secret"
            )
        who = self.identity or "the kubeconfig's identity"
        return AccessDenied(
            f"forbidden: {who} may not {verb} {resource} in namespace {namespace} of "
            f"{self.cluster}; grant it there"
        )

    @classmethod
    def from_configuration(cls, configuration: Configuration, cluster: str | None = None) -> Kube:
        """A client of `configuration`; `cluster` names a remote cluster in messages."""
        return cls(ApiClient(configuration), cluster=cluster)

    @staticmethod
    def _load_in_cluster() -> Configuration:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
        return Configuration.get_default_copy()

    @staticmethod
    def _load_kubeconfig() -> Configuration:
        configuration = Configuration()
        config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        return configuration

    # --- requests ---------------------------------------------------------------------------

    async def _request(
        self,
        method: str,
        path: str,
        *,
        query: dict[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON,
        request_timeout: tuple[float, float] = REQUEST_TIMEOUT,
        executor: concurrent.futures.Executor | None = None,
        accept: str = JSON,
    ) -> Any:
        """One request, in a worker thread: the parsed JSON answer, or ApiException."""
        call = functools.partial(
            send_json,
            self.api_client,
            method,
            path,
            query=query,
            body=body,
            content_type=content_type,
            timeout=request_timeout,
            accept=accept,
            remote=self.cluster is not None,
        )
        return await asyncio.get_running_loop().run_in_executor(executor, call)

    async def _maybe(self, method: str, path: str, *, none_on: int = 404, **kwargs: Any) -> Any:
        """The answer, or None when the API server answers `none_on` (404: no such object)."""
        try:
            return await self._request(method, path, **kwargs)
        except ApiException as error:
            if error.status == none_on:
                return None
            raise

    @staticmethod
    def _custom(plural: str, namespace: str | None, name: str | None = None) -> str:
        scope = f"/namespaces/{_q(namespace)}" if namespace is not None else ""
        path = f"/apis/{GROUP}/{VERSION}{scope}/{plural}"
        return f"{path}/{_q(name)}" if name is not None else path

    @staticmethod
    def _core(resource: str, namespace: str, name: str | None = None) -> str:
        path = f"/api/v1/namespaces/{_q(namespace)}/{resource}"
        return f"{path}/{_q(name)}" if name is not None else path

    # --- custom resources ---

    async def get(self, plural: str, namespace: str, name: str) -> Body | None:
        result: Body | None = await self._maybe("GET", self._custom(plural, namespace, name))
        return result

    async def list_objects(
        self, plural: str, namespace: str, label_selector: str = ""
    ) -> list[Body]:
        query = {"labelSelector": label_selector} if label_selector else None
        result = await self._request("GET", self._custom(plural, namespace), query=query)
        items: list[Body] = result["items"]
        return items

    async def list_all(self, plural: str, namespace: str | None = None) -> list[Body]:
        """Every object of the kind (in one namespace, or cluster-wide)."""
        result = await self._request("GET", self._custom(plural, namespace))
        items: list[Body] = result["items"]
        return items

    async def apply(self, plural: str, namespace: str, body: Body) -> Body:
        """Server-side apply: we own the fields we set, and only those."""
        result: Body = await self._request(
            "PATCH",
            self._custom(plural, namespace, body["metadata"]["name"]),
            query={"fieldManager": FIELD_MANAGER, "force": "true"},
            body=body,
            content_type=APPLY_PATCH,
        )
        return result

    # --- CustomResourceDefinitions of charts (cluster-scoped, written as the tenant) ---

    async def apply_crd(self, crd: Body) -> None:
        """Server-side apply of a chart's CRD, taking over the fields it sets (CreateReplace)."""
        name = str(crd["metadata"]["name"])
        try:
            await self._request(
                "PATCH",
                f"{_CRDS}/{_q(name)}",
                query={"fieldManager": FIELD_MANAGER, "force": "true"},
                body=crd,
                content_type=APPLY_PATCH,
            )
        except ApiException as error:
            raise self._denied_cluster(error, "patch", name) from None

    async def create_crd(self, crd: Body) -> bool:
        """Create a chart's CRD unless one of that name exists (Create); True when created."""
        name = str(crd["metadata"]["name"])
        try:
            await self._request("POST", _CRDS, query={"fieldManager": FIELD_MANAGER}, body=crd)
        except ApiException as error:
            if error.status == 409:
                return False
            raise self._denied_cluster(error, "create", name) from None
        return True

    def _denied_cluster(self, error: ApiException, verb: str, name: str) -> Exception:
        if error.status != 403 or self.identity is None:
            return error
        return AccessDenied(
            f"forbidden: {self.identity} may not {verb} customresourcedefinitions ({name}); "
            f"grant ServiceAccount {self._account} `create`, `get` and `patch` on "
            "customresourcedefinitions (a ClusterRole and ClusterRoleBinding), or use `Skip`"
        )

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Body
    ) -> Body | None:
        """The object as written (None when it is gone)."""
        result: Body | None = await self._maybe(
            "PATCH",
            self._custom(plural, namespace, name) + "/status",
            body={"status": status},
            content_type=MERGE_PATCH,
        )
        return result

    async def patch_metadata(self, plural: str, namespace: str, name: str, metadata: Body) -> None:
        await self._maybe(
            "PATCH",
            self._custom(plural, namespace, name),
            body={"metadata": metadata},
            content_type=MERGE_PATCH,
        )

    async def patch(self, plural: str, namespace: str, name: str, body: Body) -> Body | None:
        """A JSON merge patch of the object (None when it is gone)."""
        result: Body | None = await self._maybe(
            "PATCH",
            self._custom(plural, namespace, name),
            body=body,
            content_type=MERGE_PATCH,
        )
        return result

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
        await self._maybe("DELETE", self._custom(plural, namespace, name))

    async def create_event(self, namespace: str, body: Body) -> None:
        await self._request("POST", self._core("events", namespace), body=body)

    # --- Leases (leader election; `timeout` is bounded by the renew deadline) ---

    def _lease_executor(self) -> concurrent.futures.ThreadPoolExecutor:
        """A thread of their own: reconcile threads all busy must not delay a renewal."""
        if self._lease_thread is None:
            self._lease_thread = concurrent.futures.ThreadPoolExecutor(1, "lease")
        return self._lease_thread

    async def get_lease(
        self, namespace: str, name: str, request_timeout: tuple[float, float] = REQUEST_TIMEOUT
    ) -> Body | None:
        result: Body | None = await self._maybe(
            "GET",
            _lease(namespace, name),
            request_timeout=request_timeout,
            executor=self._lease_executor(),
        )
        return result

    async def create_lease(
        self, namespace: str, body: Body, request_timeout: tuple[float, float] = REQUEST_TIMEOUT
    ) -> Body | None:
        """The Lease as created, or None when one of that name exists (409)."""
        result: Body | None = await self._maybe(
            "POST",
            _lease(namespace, None),
            none_on=409,
            body=body,
            request_timeout=request_timeout,
            executor=self._lease_executor(),
        )
        return result

    async def replace_lease(
        self, namespace: str, body: Body, request_timeout: tuple[float, float] = REQUEST_TIMEOUT
    ) -> Body | None:
        """PUT with the body's resourceVersion: the Lease as written, or None when someone else
        wrote it since it was read (409) — optimistic concurrency, as client-go's lock."""
        result: Body | None = await self._maybe(
            "PUT",
            _lease(namespace, body["metadata"]["name"]),
            none_on=409,
            body=body,
            request_timeout=request_timeout,
            executor=self._lease_executor(),
        )
        return result

    # --- core objects (tenant data: read through `impersonating`) ---

    async def get_secret(self, namespace: str, name: str) -> Body | None:
        try:
            result: Body | None = await self._maybe("GET", self._core("secrets", namespace, name))
        except ApiException as error:
            raise self._denied(error, "get", "secrets", namespace) from None
        return result

    async def get_config_map(self, namespace: str, name: str) -> Body | None:
        try:
            result: Body | None = await self._maybe(
                "GET", self._core("configmaps", namespace, name)
            )
        except ApiException as error:
            raise self._denied(error, "get", "configmaps", namespace) from None
        return result

    async def apply_secret(self, namespace: str, body: Body) -> None:
        """Server-side apply of a Secret the operator owns (a plan's text diff)."""
        try:
            await self._request(
                "PATCH",
                self._core("secrets", namespace, body["metadata"]["name"]),
                query={"fieldManager": FIELD_MANAGER, "force": "true"},
                body=body,
                content_type=APPLY_PATCH,
            )
        except ApiException as error:
            raise self._denied(error, "patch", "secrets", namespace) from None

    async def helm_storage(self, namespace: str, release: str) -> list[Body]:
        """Helm's release Secrets (one per revision) of a release, as metadata only: their
        labels say revision and status; no Secret data crosses the wire."""
        try:
            result = await self._request(
                "GET",
                self._core("secrets", namespace),
                query={"labelSelector": storage_selector(release)},
                accept=METADATA_LIST,
            )
        except ApiException as error:
            raise self._denied(error, "list", "secrets", namespace) from None
        items: list[Body] = result.get("items") or []  # a metadata list of nothing: null
        return items

    async def helm_revision(self, namespace: str, release: str, revision: int) -> Body | None:
        """One revision's storage Secret, whole (values and manifest: memory only)."""
        return await self.get_secret(namespace, storage_secret_name(release, revision))


_CRDS = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"


def send_json(
    api_client: ApiClient,
    method: str,
    path: str,
    *,
    query: dict[str, str] | None = None,
    body: Any = None,
    content_type: str = JSON,
    timeout: tuple[float, float] = REQUEST_TIMEOUT,
    accept: str = JSON,
    headers: dict[str, str] | None = None,
    remote: bool = False,
) -> Any:
    """One request through the client's `ApiClient` (its TLS, auth, token refresh) and nothing
    of its generated models: the parsed JSON answer, ApiException for an error status, or
    ApiUnreachable. `remote`: a remote server's 401/403 body is not kept (not ours to log)."""
    headers = {**(headers or {}), "Accept": accept}
    if body is not None:
        headers["Content-Type"] = content_type
    if query:
        path = f"{path}?{urllib.parse.urlencode(query)}"
    method, url, headers, body, _ = api_client.param_serialize(
        method, path, header_params=headers, body=body, auth_settings=["BearerToken"]
    )
    host = api_client.configuration.host
    try:
        response = api_client.call_api(
            method, url, header_params=headers, body=body, _request_timeout=timeout
        )
    except urllib3.exceptions.HTTPError as error:  # never with a body: no data to leak
        raise ApiUnreachable(f"{host} unreachable: {_cause(error)}") from None
    except ValueError:  # http.client's "invalid header value" quotes the header
        raise ApiUnreachable(f"{host}: the request could not be sent") from None
    data: bytes = response.read()  # type: ignore[no-untyped-call]
    if not 200 <= response.status < 300:
        if remote and response.status in (401, 403):
            raise ApiException(status=response.status, reason=response.reason)
        text = data.decode("utf-8", "replace") if data else None
        raise ApiException.from_response(http_resp=response, body=text, data=None)
    try:
        return json.loads(data) if data else None
    except ValueError:
        raise ApiUnreachable(f"{host} answered with something that is not JSON") from None


def describe(error: Exception) -> str:
    """An error as it may be shown (an Event, a condition): an API error by its status only,
    since its body and headers are the server's to choose (a remote cluster's, too)."""
    if isinstance(error, ApiException):
        return f"HTTP {error.status} {error.reason or ''}".strip()
    return str(error)


def secret_text(secret: Body, key: str) -> str | None:
    """The text under `key` of a Secret as read (base64 `data`), None when absent; ValueError
    (with no content in its message) when it is not base64 of UTF-8."""
    raw = (secret.get("data") or {}).get(key)
    if raw is None:
        return None
    try:
        return base64.b64decode(raw).decode()
    except ValueError:  # binascii.Error, UnicodeDecodeError: their messages quote the bytes
        raise ValueError(f"key {key!r} is not UTF-8 text") from None


def _lease(namespace: str, name: str | None) -> str:
    path = f"/apis/coordination.k8s.io/v1/namespaces/{_q(namespace)}/leases"
    return f"{path}/{_q(name)}" if name is not None else path


def merge_patch_between(before: Body, after: Body) -> Body:
    """The JSON merge patch (RFC 7386) that turns `before` into `after`: changed keys, nested
    maps recursively, and null for every key `after` no longer has (at any depth)."""
    patch: Body = {key: None for key in before if key not in after}
    for key, value in after.items():
        old = before.get(key)
        if isinstance(value, dict) and isinstance(old, dict):
            nested = merge_patch_between(old, value)
            if nested:
                patch[key] = nested
        elif key not in before or old != value:
            patch[key] = value
    return patch


def _cause(error: Exception) -> str:
    """The innermost reason of a urllib3 failure, e.g. `Connection refused`."""
    reason: Any = getattr(error, "reason", None) or error
    text = str(reason)
    # urllib3 wraps as "<HTTPSConnection(...)>: Failed to establish a new connection: [Errno 111]
    # Connection refused": keep the part after the last colon that carries an errno.
    if "]" in text:
        text = text.rsplit("]", 1)[1].strip()
    return text or type(error).__name__


def _q(segment: str) -> str:
    """A path segment, escaped (names are validated, but never trust a path built from data)."""
    return urllib.parse.quote(segment, safe="")
