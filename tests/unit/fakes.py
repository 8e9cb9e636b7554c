"""In-memory stand-ins for the Kubernetes API (`Kube`) and helm (`HelmClient`).

`FakeKube` keeps objects in dicts and applies writes the way the API server does where the
reconcilers depend on it: status and metadata writes are JSON merge patches (a key that is left
out stays, `None` deletes it), `delete` of an object with finalizers only sets its
`deletionTimestamp`, dropping the last finalizer of such an object removes it, a spec change
bumps `generation`, and server-side apply drops the labels and annotations the manager applied
before but no longer applies. Every write is recorded.

`FakeHelm` records its calls and keeps helm's storage Secrets (one per revision, labelled
`owner=helm,name=<release>,version=<n>,status=<s>`) in the FakeKube, so that the reconcilers
read revisions and statuses from labels exactly as they do against a cluster.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import gzip
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

from helmfile_operator.api.models import API_VERSION, ChartReference, HelmOptions
from helmfile_operator.helm import HelmError, HelmErrorKind, HistoryRecord, ReleaseInfo
from helmfile_operator.helm.storage import HELM_SECRET_TYPE, secret_name
from helmfile_operator.kube import RELEASES, STATES, FinalizerConflict
from helmfile_operator.reconcile.context import ObjectKey, Reconciler
from helmfile_operator.reconcile.workqueue import WorkQueue

Body = dict[str, Any]

# helm fails these before it writes a release record; other failures leave a `failed` revision.
NO_RECORD_KINDS = frozenset(
    {
        HelmErrorKind.CHART_NOT_FOUND,
        HelmErrorKind.VERSION_NOT_FOUND,
        HelmErrorKind.REPOSITORY_UNREACHABLE,
        HelmErrorKind.INVALID_VALUES,
        HelmErrorKind.RENDER_FAILED,
        HelmErrorKind.FORBIDDEN,
        HelmErrorKind.CONNECTION,
        HelmErrorKind.LOCKED,
        HelmErrorKind.RELEASE_NOT_FOUND,
    }
)
KIND_OF = {STATES: "HelmfileState", RELEASES: "HelmfileRelease"}


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (what `application/merge-patch+json` does)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        name, _, value = term.partition("=")
        if labels.get(name) != value:
            return False
    return True


@dataclass
class Write:
    verb: str  # apply | patch_status | patch_metadata | delete
    plural: str
    namespace: str
    name: str
    payload: Any = None


class FakeLeases:
    """The Lease API of one API server: resourceVersion checked on replace (409 → None), and
    `down` makes every call fail as an unreachable server does."""

    def __init__(self) -> None:
        self.leases: dict[tuple[str, str], Body] = {}
        self.down = False
        self._versions = itertools.count(1)

    def _check(self) -> None:
        if self.down:
            raise ConnectionError("the API server is unreachable")

    async def get_lease(
        self, namespace: str, name: str, request_timeout: Any = None
    ) -> Body | None:
        await asyncio.sleep(0)
        self._check()
        lease = self.leases.get((namespace, name))
        return copy.deepcopy(lease) if lease is not None else None

    async def create_lease(
        self, namespace: str, body: Body, request_timeout: Any = None
    ) -> Body | None:
        await asyncio.sleep(0)
        self._check()
        key = (namespace, body["metadata"]["name"])
        if key in self.leases:
            return None
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        self.leases[key] = body
        return copy.deepcopy(body)

    async def replace_lease(
        self, namespace: str, body: Body, request_timeout: Any = None
    ) -> Body | None:
        await asyncio.sleep(0)
        self._check()
        key = (namespace, body["metadata"]["name"])
        current = self.leases.get(key)
        if current is None or current["metadata"]["resourceVersion"] != body["metadata"].get(
            "resourceVersion"
        ):
            return None
        body = copy.deepcopy(body)
        body["metadata"]["resourceVersion"] = str(next(self._versions))
        self.leases[key] = body
        return copy.deepcopy(body)

    def holder(self, namespace: str, name: str) -> str | None:
        lease = self.leases.get((namespace, name))
        return lease["spec"]["holderIdentity"] if lease is not None else None


class FakeKube(FakeLeases):
    def __init__(self) -> None:
        super().__init__()
        self.objects: dict[tuple[str, str, str], Body] = {}
        self.secrets: dict[tuple[str, str], Body] = {}
        self.config_maps: dict[tuple[str, str], Body] = {}
        self.writes: list[Write] = []
        self.events: list[Body] = []
        self.identities: list[str | None] = []
        self.storage_data_reads: list[str] = []  # names of Helm storage Secrets read whole
        self._applied_keys: dict[tuple[str, str, str], tuple[set[str], set[str]]] = {}
        self._uids = itertools.count(1)
        self._clock = itertools.count(1)

    # --- test helpers (synchronous, not recorded) ---

    def create(self, plural: str, body: Body) -> Body:
        body = copy.deepcopy(body)
        metadata = body.setdefault("metadata", {})
        metadata.setdefault("uid", f"uid-{next(self._uids)}")
        metadata.setdefault("generation", 1)
        body.setdefault("apiVersion", API_VERSION)
        body.setdefault("kind", KIND_OF[plural])
        self.objects[(plural, metadata["namespace"], metadata["name"])] = body
        return copy.deepcopy(body)

    def obj(self, plural: str, namespace: str, name: str) -> Body | None:
        return self.objects.get((plural, namespace, name))

    def update_spec(self, plural: str, namespace: str, name: str, **changes: Any) -> None:
        """Change spec fields (camelCase; None removes one) like `kubectl apply`: generation+1."""
        body = self.objects[(plural, namespace, name)]
        spec = merge_patch(body.get("spec") or {}, changes)
        if spec != body.get("spec"):
            body["spec"] = spec
            body["metadata"]["generation"] += 1

    def annotate(self, plural: str, namespace: str, name: str, **annotations: str) -> None:
        """Metadata only: the generation stays."""
        metadata = self.objects[(plural, namespace, name)]["metadata"]
        metadata.setdefault("annotations", {}).update(annotations)

    def set_status(self, plural: str, namespace: str, name: str, status: Body) -> None:
        self.objects[(plural, namespace, name)]["status"] = copy.deepcopy(status)

    def remove(self, plural: str, namespace: str, name: str) -> None:
        """The object is gone (its finalizers were dropped elsewhere)."""
        self.objects.pop((plural, namespace, name), None)

    def add_secret(self, namespace: str, name: str, data: dict[str, str], **extra: Any) -> None:
        self.secrets[(namespace, name)] = {
            "metadata": {"name": name, "namespace": namespace, **extra.pop("metadata", {})},
            "data": dict(data),
            **extra,
        }

    def add_config_map(self, namespace: str, name: str, data: dict[str, str]) -> None:
        self.config_maps[(namespace, name)] = {
            "metadata": {"name": name, "namespace": namespace},
            "data": dict(data),
        }

    def writes_of(self, verb: str) -> list[Write]:
        return [w for w in self.writes if w.verb == verb]

    # --- the Kube interface ---

    def impersonating(self, identity: str | None) -> FakeKube:
        """Shares the data; records who read (tests assert tenant reads are made as the tenant)."""
        self.identities.append(identity)
        return self

    async def get(self, plural: str, namespace: str, name: str) -> Body | None:
        await asyncio.sleep(0)
        body = self.objects.get((plural, namespace, name))
        return copy.deepcopy(body) if body is not None else None

    async def list_objects(
        self, plural: str, namespace: str, label_selector: str = ""
    ) -> list[Body]:
        await asyncio.sleep(0)
        return [
            copy.deepcopy(body)
            for (p, ns, _), body in sorted(self.objects.items())
            if p == plural
            and ns == namespace
            and _matches(body["metadata"].get("labels") or {}, label_selector)
        ]

    async def apply(self, plural: str, namespace: str, body: Body) -> Body:
        await asyncio.sleep(0)
        name = body["metadata"]["name"]
        self.writes.append(Write("apply", plural, namespace, name, copy.deepcopy(body)))
        key = (plural, namespace, name)
        labels = dict(body["metadata"].get("labels") or {})
        annotations = dict(body["metadata"].get("annotations") or {})
        existing = self.objects.get(key)
        if existing is None:
            created = copy.deepcopy(body)
            created["metadata"].setdefault("uid", f"uid-{next(self._uids)}")
            created["metadata"]["generation"] = 1
            self.objects[key] = created
        else:
            metadata = existing["metadata"]
            # Server-side apply: fields this manager applied before and omits now are removed.
            old_labels, old_annotations = self._applied_keys.get(key, (set(), set()))
            for stale in old_labels - labels.keys():
                (metadata.get("labels") or {}).pop(stale, None)
            for stale in old_annotations - annotations.keys():
                (metadata.get("annotations") or {}).pop(stale, None)
            metadata.setdefault("labels", {}).update(labels)
            metadata.setdefault("annotations", {}).update(annotations)
            if "ownerReferences" in body["metadata"]:
                metadata["ownerReferences"] = copy.deepcopy(body["metadata"]["ownerReferences"])
            if body.get("spec") != existing.get("spec"):
                existing["spec"] = copy.deepcopy(body.get("spec"))
                metadata["generation"] += 1
        self._applied_keys[key] = (set(labels), set(annotations))
        return copy.deepcopy(self.objects[key])

    async def patch_status(
        self, plural: str, namespace: str, name: str, status: Body
    ) -> Body | None:
        await asyncio.sleep(0)
        self.writes.append(Write("patch_status", plural, namespace, name, copy.deepcopy(status)))
        body = self.objects.get((plural, namespace, name))
        if body is None:  # 404 is ignored, like Kube._maybe
            return None
        body["status"] = merge_patch(body.get("status") or {}, status)
        self._bump(body)
        return copy.deepcopy(body)

    @staticmethod
    def _bump(body: Body) -> None:
        """Every write moves the resourceVersion on (only where a test gave it one)."""
        metadata = body["metadata"]
        if "resourceVersion" in metadata:
            metadata["resourceVersion"] = str(int(metadata["resourceVersion"]) + 1)

    async def patch_metadata(self, plural: str, namespace: str, name: str, metadata: Body) -> None:
        await asyncio.sleep(0)
        self.writes.append(
            Write("patch_metadata", plural, namespace, name, copy.deepcopy(metadata))
        )
        key = (plural, namespace, name)
        body = self.objects.get(key)
        if body is None:
            return
        body["metadata"] = merge_patch(body["metadata"], metadata)
        if body["metadata"].get("deletionTimestamp") and not body["metadata"].get("finalizers"):
            del self.objects[key]

    async def set_finalizers(
        self, plural: str, namespace: str, name: str, resource_version: str, wanted: list[str]
    ) -> None:
        """Like the API server with a resourceVersion precondition: 409 when it moved on."""
        await asyncio.sleep(0)
        body = self.objects.get((plural, namespace, name))
        if body is None:
            return
        current = body["metadata"].get("resourceVersion")
        if resource_version and current is not None and current != resource_version:
            raise FinalizerConflict(f"{plural} {namespace}/{name} changed meanwhile")
        await self.patch_metadata(plural, namespace, name, {"finalizers": wanted or None})

    async def list_all(self, plural: str, namespace: str | None = None) -> list[Body]:
        await asyncio.sleep(0)
        return [
            copy.deepcopy(body)
            for (p, ns, _), body in sorted(self.objects.items())
            if p == plural and (namespace is None or ns == namespace)
        ]

    async def create_event(self, namespace: str, body: Body) -> None:
        await asyncio.sleep(0)
        self.events.append(copy.deepcopy(body))

    async def delete(self, plural: str, namespace: str, name: str) -> None:
        await asyncio.sleep(0)
        self.writes.append(Write("delete", plural, namespace, name))
        key = (plural, namespace, name)
        body = self.objects.get(key)
        if body is None:
            return
        if body["metadata"].get("finalizers"):
            body["metadata"].setdefault(
                "deletionTimestamp", f"2030-01-01T00:00:{next(self._clock) % 60:02d}Z"
            )
        else:
            del self.objects[key]

    async def get_secret(self, namespace: str, name: str) -> Body | None:
        await asyncio.sleep(0)
        secret = self.secrets.get((namespace, name))
        return copy.deepcopy(secret) if secret is not None else None

    async def get_config_map(self, namespace: str, name: str) -> Body | None:
        await asyncio.sleep(0)
        config_map = self.config_maps.get((namespace, name))
        return copy.deepcopy(config_map) if config_map is not None else None

    async def apply_secret(self, namespace: str, body: Body) -> None:
        await asyncio.sleep(0)
        self.writes.append(Write("apply_secret", "secrets", namespace, body["metadata"]["name"]))
        self.secrets[(namespace, body["metadata"]["name"])] = copy.deepcopy(body)

    async def helm_storage(self, namespace: str, release: str) -> list[Body]:
        """As the API server answers a PartialObjectMetadataList: metadata only."""
        await asyncio.sleep(0)
        return [
            {"metadata": copy.deepcopy(secret["metadata"])}
            for (ns, _), secret in self.secrets.items()
            if ns == namespace
            and _matches(secret["metadata"].get("labels") or {}, f"owner=helm,name={release}")
        ]

    async def helm_revision(self, namespace: str, release: str, revision: int) -> Body | None:
        name = secret_name(release, revision)
        self.storage_data_reads.append(name)
        return await self.get_secret(namespace, name)

    # --- helm storage (what helm's Secret driver writes) ---

    def storage(self, namespace: str, release: str) -> dict[int, str]:
        """revision → status of a release's storage Secrets."""
        revisions = {}
        for (ns, _), secret in self.secrets.items():
            labels = secret["metadata"].get("labels") or {}
            if ns == namespace and labels.get("owner") == "helm" and labels["name"] == release:
                revisions[int(labels["version"])] = labels["status"]
        return dict(sorted(revisions.items()))

    def put_revision(
        self,
        namespace: str,
        release: str,
        revision: int,
        status: str,
        *,
        config: dict[str, Any] | None = None,
        manifest: str = "",
        created: str = "2020-01-01T00:00:00Z",
    ) -> None:
        """A storage Secret as helm's Secret driver writes it: base64(gzip(JSON)) of the release
        (values in `config`, as helm keeps them), labelled with revision and status."""
        release_json = {
            "name": release,
            "namespace": namespace,
            "version": revision,
            "info": {"status": status, "description": ""},
            "chart": {"metadata": {"name": "app", "version": "1.2.3", "appVersion": "1.0"}},
            "config": config or {},
            "manifest": manifest,
        }
        helm_encoded = base64.b64encode(gzip.compress(json.dumps(release_json).encode()))
        name = secret_name(release, revision)
        self.secrets[(namespace, name)] = {
            "metadata": {
                "name": name,
                "namespace": namespace,
                "creationTimestamp": created,
                "labels": {
                    "owner": "helm",
                    "name": release,
                    "version": str(revision),
                    "status": status,
                },
            },
            "type": HELM_SECRET_TYPE,
            "data": {"release": base64.b64encode(helm_encoded).decode()},
        }

    def set_revision_status(self, namespace: str, release: str, revision: int, status: str) -> None:
        secret = self.secrets[(namespace, secret_name(release, revision))]
        secret["metadata"]["labels"]["status"] = status

    def drop_release(self, namespace: str, release: str) -> None:
        for revision in self.storage(namespace, release):
            self.secrets.pop((namespace, secret_name(release, revision)), None)


def render_manifest(release: str, values: dict[str, Any]) -> str:
    """What the fake chart renders: a Deployment, and a Secret when values carry a `db` map."""
    manifest = (
        "---\n# Source: app/templates/deployment.yaml\n"
        f"apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {release}\n"
        f"spec:\n  replicas: {int(values.get('replicas', 1))}\n"
    )
    if isinstance(values.get("db"), dict):
        password = base64.b64encode(str(values["db"].get("password", "")).encode()).decode()
        manifest += (
            "---\n# Source: app/templates/secret.yaml\n"
            f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: {release}-db\n"
            f"data:\n  password: {password}\n"
        )
    return manifest


@dataclass
class HelmCall:
    verb: str  # upgrade_install | uninstall | rollback | history
    release: str
    namespace: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def values(self) -> dict[str, Any] | None:
        values: dict[str, Any] | None = self.kwargs.get("values")
        return values


class FakeRunner:
    """What the Controller touches of helm's process runner: the leadership gate and the kill."""

    def __init__(self) -> None:
        self.may_start: Any = None
        self.killed = 0

    def kill_all(self) -> int:
        self.killed += 1
        return 0


class FakeHelm:
    """Records calls; `fail(verb, kind)` makes that verb raise until `heal(verb)`."""

    def __init__(self, kube: FakeKube) -> None:
        self.kube = kube
        self.runner = FakeRunner()
        self.calls: list[HelmCall] = []
        self.dry_runs: list[HelmCall] = []  # plans: `upgrade --install --dry-run=server`
        self.failures: dict[str, HelmError] = {}
        self.in_flight = 0

    def fail(self, verb: str, kind: HelmErrorKind, message: str = "it broke") -> None:
        command = "upgrade" if verb == "upgrade_install" else verb
        self.failures[verb] = HelmError(kind, command, message)

    def heal(self, verb: str | None = None) -> None:
        if verb is None:
            self.failures.clear()
        else:
            self.failures.pop(verb, None)

    @property
    def verbs(self) -> list[str]:
        return [call.verb for call in self.calls]

    def _record(self, verb: str, release: str, namespace: str, **kwargs: Any) -> None:
        self.calls.append(HelmCall(verb, release, namespace, copy.deepcopy(kwargs)))

    def _supersede(self, namespace: str, release: str) -> None:
        for revision, status in self.kube.storage(namespace, release).items():
            if status == "deployed":
                self.kube.set_revision_status(namespace, release, revision, "superseded")

    def _next_revision(self, namespace: str, release: str) -> int:
        return max(self.kube.storage(namespace, release), default=0) + 1

    async def upgrade_install(
        self,
        *,
        release: str,
        namespace: str,
        chart: ChartReference,
        values: dict[str, Any],
        options: HelmOptions,
        impersonate: str | None = None,
        dry_run: bool = False,
        **extra: Any,
    ) -> ReleaseInfo:
        if dry_run:
            return await self._dry_run(release, namespace, chart, values, impersonate)
        self._record(
            "upgrade_install",
            release,
            namespace,
            chart=chart.model_dump(),
            values=values,
            options=options.model_dump(),
            impersonate=impersonate,
            **extra,
        )
        await asyncio.sleep(0)
        revision = self._next_revision(namespace, release)
        error = self.failures.get("upgrade_install")
        manifest = render_manifest(release, values)
        if error is not None:
            if error.kind not in NO_RECORD_KINDS:
                self.kube.put_revision(
                    namespace, release, revision, "failed", config=values, manifest=manifest
                )
            raise error
        self._supersede(namespace, release)
        self.kube.put_revision(
            namespace, release, revision, "deployed", config=values, manifest=manifest
        )
        return ReleaseInfo(
            name=release,
            namespace=namespace,
            revision=revision,
            status="deployed",
            chart_name=chart.name,
            chart_version=chart.version or "1.0.0",
            app_version="1.0",
            manifest=manifest,  # helm's --output json carries it
        )

    async def _dry_run(
        self,
        release: str,
        namespace: str,
        chart: ChartReference,
        values: dict[str, Any],
        impersonate: str | None,
    ) -> ReleaseInfo:
        """`--dry-run=server`: recorded apart from the actions (`dry_runs`), stores nothing."""
        self.dry_runs.append(
            HelmCall("dry_run", release, namespace, {"impersonate": impersonate, "values": values})
        )
        await asyncio.sleep(0)
        error = self.failures.get("dry_run")
        if error is not None:
            raise error
        return ReleaseInfo(
            name=release,
            namespace=namespace,
            revision=self._next_revision(namespace, release),
            status="pending-upgrade",
            chart_name=chart.name,
            chart_version=chart.version or "1.0.0",
            app_version="1.0",
            manifest=render_manifest(release, values),
        )

    async def uninstall(
        self,
        *,
        release: str,
        namespace: str,
        timeout_seconds: float,
        wait: bool = True,
        impersonate: str | None = None,
        ignore_not_found: bool = False,
        tenant: str | None = None,
        kubeconfig: str | None = None,
    ) -> None:
        self._record(
            "uninstall",
            release,
            namespace,
            timeout_seconds=timeout_seconds,
            wait=wait,
            impersonate=impersonate,
            ignore_not_found=ignore_not_found,
        )
        await asyncio.sleep(0)
        error = self.failures.get("uninstall")
        if error is not None:
            raise error
        if not self.kube.storage(namespace, release) and not ignore_not_found:
            raise HelmError(HelmErrorKind.RELEASE_NOT_FOUND, "uninstall", "release: not found")
        self.kube.drop_release(namespace, release)

    async def rollback(
        self,
        *,
        release: str,
        namespace: str,
        revision: int | None,
        timeout_seconds: float,
        wait: bool,
        impersonate: str | None = None,
        **extra: Any,
    ) -> None:
        self._record(
            "rollback",
            release,
            namespace,
            revision=revision,
            timeout_seconds=timeout_seconds,
            wait=wait,
            impersonate=impersonate,
            **extra,
        )
        await asyncio.sleep(0)
        error = self.failures.get("rollback")
        if error is not None:
            raise error
        storage = self.kube.storage(namespace, release)
        if not storage:
            raise HelmError(HelmErrorKind.RELEASE_NOT_FOUND, "rollback", "release: not found")
        target = revision or max(storage) - 1
        if target not in storage:
            raise HelmError(HelmErrorKind.RELEASE_NOT_FOUND, "rollback", "no such revision")
        new = max(storage) + 1
        self._supersede(namespace, release)
        for old, status in storage.items():
            if status.startswith("pending-"):
                self.kube.set_revision_status(namespace, release, old, "failed")
        source = self.kube.secrets[(namespace, secret_name(release, target))]
        self.kube.put_revision(namespace, release, new, "deployed")
        self.kube.secrets[(namespace, secret_name(release, new))]["data"] = copy.deepcopy(
            source["data"]
        )

    async def history(
        self,
        *,
        release: str,
        namespace: str,
        max: int = 10,
        impersonate: str | None = None,
    ) -> list[HistoryRecord]:
        self._record("history", release, namespace, max=max, impersonate=impersonate)
        await asyncio.sleep(0)
        error = self.failures.get("history")
        if error is not None:
            raise error
        return [
            HistoryRecord(
                revision=revision,
                status=status,
                chart="app-1.0.0",
                app_version="1.0",
                updated=None,
                description="",
            )
            for revision, status in self.kube.storage(namespace, release).items()
        ][-max:]


# --- objects ------------------------------------------------------------------------------------

NAMESPACE = "apps"
CHART = {
    "repository": {"url": "https://charts.example.com"},
    "name": "app",
    "version": "1.2.3",
}


def release_body(name: str = "web", namespace: str = NAMESPACE, **spec: Any) -> Body:
    """A HelmfileRelease as the API server stores it; spec fields in camelCase."""
    return {
        "apiVersion": API_VERSION,
        "kind": "HelmfileRelease",
        "metadata": {"name": name, "namespace": namespace, "generation": 1},
        "spec": {
            "releaseName": name,
            "targetNamespace": "target",
            "chart": copy.deepcopy(CHART),
            "values": {"replicas": 1},
            **spec,
        },
    }


def condition(body: Body | None, type_: str) -> Body | None:
    """The condition of `type_` in an object's (or a status payload's) conditions."""
    if body is None:
        return None
    status = body.get("status", body)
    return next((c for c in status.get("conditions") or [] if c["type"] == type_), None)


@dataclass
class World:
    """A Reconciler over the fakes, with a real WorkQueue (create it inside the test's loop)."""

    kube: FakeKube
    helm: FakeHelm
    queue: WorkQueue[ObjectKey]
    reconciler: Reconciler

    def pending_delay(self, key: ObjectKey) -> float | None:
        """Seconds until the queue's delayed add of `key` fires; None when none is pending."""
        timer = self.queue._timers.get(key)
        if timer is None:
            return None
        return timer.when() - asyncio.get_running_loop().time()
