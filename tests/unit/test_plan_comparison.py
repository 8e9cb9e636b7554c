"""The per-object comparison a plan makes: what it asks the API server, and what it concludes.
The dynamic client is replaced by a recorder (pure logic; the real dry runs are exercised by
tests/integration/test_plans.py)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from kubernetes.client.configuration import Configuration
from kubernetes.dynamic.exceptions import NotFoundError

from helmfile_operator.reconcile.drift import HELM_FIELD_MANAGER, DriftChecker

MANIFEST = """
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec: {replicas: 3}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: web}
data: {message: hello}
---
apiVersion: v1
kind: Service
metadata: {name: new}
spec: {ports: [{port: 80}]}
"""


class _Answer:
    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.body)


class _Resource:
    namespaced = True


class _Resources:
    def get(self, api_version: str, kind: str) -> _Resource:
        return _Resource()


class RecordingDynamic:
    """Live objects by (kind, name); records every request."""

    def __init__(self, live: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.live = live
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.resources = _Resources()
        self._kind = ""

    def get(self, resource: Any, name: str, namespace: str | None, **kwargs: Any) -> _Answer:
        self.requests.append(("GET", name, kwargs))
        for (kind, object_name), body in self.live.items():
            if object_name == name and kind == self._kind:
                return _Answer(body)
        raise NotFoundError(_NotFound())

    def server_side_apply(self, resource: Any, body: dict[str, Any], **kwargs: Any) -> _Answer:
        self.requests.append(("APPLY", body["metadata"]["name"], {**kwargs, "body": body}))
        live = self.live[(body["kind"], body["metadata"]["name"])]
        merged = copy.deepcopy(live)
        for key, value in body.items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return _Answer(merged)


class _NotFound:
    status = 404
    reason = "Not Found"
    body = ""
    headers = None


# What helm puts on every object it applies (the live objects carry them).
HELM_MARKS = {
    "labels": {"app.kubernetes.io/managed-by": "Helm"},
    "annotations": {"meta.helm.sh/release-name": "web", "meta.helm.sh/release-namespace": "apps"},
}


@pytest.fixture
def checker() -> tuple[DriftChecker, RecordingDynamic]:
    live = {
        ("Deployment", "web"): {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "apps", **HELM_MARKS},
            "spec": {"replicas": 1},
        },
        ("ConfigMap", "web"): {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web", "namespace": "apps", **HELM_MARKS},
            "data": {"message": "hello"},
        },
    }
    dynamic = RecordingDynamic(live)
    drift = DriftChecker(Configuration())
    original_compare = drift._compare

    def compare(dyn: Any, obj: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        dynamic._kind = obj["kind"]  # which kind the next GET is for
        return original_compare(dyn, obj, *args, **kwargs)

    drift._compare = compare  # type: ignore[method-assign]
    drift._dynamic = dynamic
    return drift, dynamic


def test_two_requests_per_existing_object_one_per_missing_one(
    checker: tuple[DriftChecker, RecordingDynamic],
) -> None:
    drift, dynamic = checker
    found = asyncio.run(drift.compare(MANIFEST, "web", "apps"))

    assert [(c.obj["kind"], c.missing, c.paths) for c in found] == [
        ("Deployment", False, ["/spec/replicas"]),
        ("ConfigMap", False, []),
        ("Service", True, []),
    ]
    verbs = [(verb, name) for verb, name, _ in dynamic.requests]
    assert verbs == [("GET", "web"), ("APPLY", "web"), ("GET", "web"), ("APPLY", "web"),
                     ("GET", "new")]  # fmt: skip


def test_the_dry_run_applies_as_helm_with_its_ownership_marks(
    checker: tuple[DriftChecker, RecordingDynamic],
) -> None:
    drift, dynamic = checker
    asyncio.run(drift.compare(MANIFEST, "web", "apps"))

    applies = [kwargs for verb, _, kwargs in dynamic.requests if verb == "APPLY"]
    assert applies
    for kwargs in applies:
        assert kwargs["dry_run"] == "All"
        assert kwargs["field_manager"] == HELM_FIELD_MANAGER
        metadata = kwargs["body"]["metadata"]
        assert metadata["namespace"] == "apps"
        assert metadata["annotations"]["meta.helm.sh/release-name"] == "web"
        assert metadata["annotations"]["meta.helm.sh/release-namespace"] == "apps"
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_every_identity_shares_one_client_and_names_itself_on_each_request(
    checker: tuple[DriftChecker, RecordingDynamic],
) -> None:
    drift, dynamic = checker
    tenant = "system:serviceaccount:apps:deployer"
    asyncio.run(drift.compare(MANIFEST, "web", "apps", tenant))
    asyncio.run(drift.compare(MANIFEST, "web", "apps"))
    assert drift._dynamic is dynamic, "one client (one discovery) for both identities"
    half = len(dynamic.requests) // 2
    assert all(
        kwargs["header_params"] == {"Impersonate-User": tenant}
        for _, _, kwargs in dynamic.requests[:half]
    )
    assert all(kwargs["header_params"] == {} for _, _, kwargs in dynamic.requests[half:])
