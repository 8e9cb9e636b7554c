"""The per-object comparison a plan makes: what it asks the API server, and what it concludes.
The API is replaced by a recorder (pure logic; the real dry runs are exercised by
tests/integration/test_plans.py)."""

from __future__ import annotations

import asyncio
import copy
from typing import Any

import pytest
from kubernetes.client.configuration import Configuration
from kubernetes.client.exceptions import ApiException

from helmfile_operator.reconcile import drift as drift_module
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


class _Resource:
    namespaced = True

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def path(self, name: str | None = None, namespace: str | None = None) -> str:
        return f"/{self.kind}/{namespace}/{name}"


class _Resources:
    def get(self, api_version: str, kind: str) -> _Resource:
        return _Resource(kind)


class RecordingApi:
    """Live objects by (kind, name); answers the checker's requests (`send_json`) and records
    every one. Stands in for the dynamic client too (discovery: `resources`)."""

    def __init__(self, live: dict[tuple[str, str], dict[str, Any]]) -> None:
        self.live = live
        self.requests: list[tuple[str, str, dict[str, Any]]] = []
        self.resources = _Resources()
        self.client = None

    def send(self, api_client: Any, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        _, kind, _, name = path.split("/")
        verb = "GET" if method == "GET" else "APPLY"
        self.requests.append((verb, name, kwargs))
        live = self.live.get((kind, name))
        if method == "GET":
            if live is None:
                raise ApiException(status=404, reason="Not Found")
            return copy.deepcopy(live)
        assert live is not None
        merged = copy.deepcopy(live)
        for key, value in kwargs["body"].items():
            if isinstance(value, dict) and isinstance(merged.get(key), dict):
                merged[key] = {**merged[key], **value}
            else:
                merged[key] = value
        return merged


# What helm puts on every object it applies (the live objects carry them).
HELM_MARKS = {
    "labels": {"app.kubernetes.io/managed-by": "Helm"},
    "annotations": {"meta.helm.sh/release-name": "web", "meta.helm.sh/release-namespace": "apps"},
}


@pytest.fixture
def checker(monkeypatch: pytest.MonkeyPatch) -> tuple[DriftChecker, RecordingApi]:
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
    api = RecordingApi(live)
    monkeypatch.setattr(drift_module, "send_json", api.send)
    drift = DriftChecker(Configuration())
    drift._dynamic = api
    return drift, api


def test_two_requests_per_existing_object_one_per_missing_one(
    checker: tuple[DriftChecker, RecordingApi],
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
    checker: tuple[DriftChecker, RecordingApi],
) -> None:
    drift, dynamic = checker
    asyncio.run(drift.compare(MANIFEST, "web", "apps"))

    applies = [kwargs for verb, _, kwargs in dynamic.requests if verb == "APPLY"]
    assert applies
    for kwargs in applies:
        assert kwargs["query"]["dryRun"] == "All"
        assert kwargs["query"]["fieldManager"] == HELM_FIELD_MANAGER
        metadata = kwargs["body"]["metadata"]
        assert metadata["namespace"] == "apps"
        assert metadata["annotations"]["meta.helm.sh/release-name"] == "web"
        assert metadata["annotations"]["meta.helm.sh/release-namespace"] == "apps"
        assert metadata["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_every_identity_shares_one_client_and_names_itself_on_each_request(
    checker: tuple[DriftChecker, RecordingApi],
) -> None:
    drift, dynamic = checker
    tenant = "system:serviceaccount:apps:deployer"
    asyncio.run(drift.compare(MANIFEST, "web", "apps", tenant))
    asyncio.run(drift.compare(MANIFEST, "web", "apps"))
    assert drift._dynamic is dynamic, "one client (one discovery) for both identities"
    half = len(dynamic.requests) // 2
    assert all(
        kwargs["headers"] == {"Impersonate-User": tenant}
        for _, _, kwargs in dynamic.requests[:half]
    )
    assert all(kwargs["headers"] == {} for _, _, kwargs in dynamic.requests[half:])
