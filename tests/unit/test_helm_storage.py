"""Decoding Helm's storage Secrets (helm.sh/release.v1) without helm."""

from __future__ import annotations

import base64
import gzip
import json
from typing import Any

import pytest

from helmfile_operator.helm import ReleaseInfo
from helmfile_operator.helm.storage import (
    HELM_SECRET_TYPE,
    StorageDecodeError,
    decode_release,
    decode_release_json,
    label_selector,
    secret_name,
    secret_release,
)
from helmfile_operator.reconcile.release_context import Storage


def release_json(
    name: str = "demo",
    namespace: str = "apps",
    revision: int = 1,
    status: str = "deployed",
    chart_version: str = "0.1.0",
    config: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """A release object as Helm stores it (only the fields anyone reads, plus values)."""
    return {
        "name": name,
        "namespace": namespace,
        "version": revision,
        "info": {
            "first_deployed": "2026-01-01T00:00:00Z",
            "last_deployed": f"2026-01-0{revision % 9 + 1}T00:00:00Z",
            "description": "Install complete" if revision == 1 else "Upgrade complete",
            "status": status,
        },
        "chart": {
            "metadata": {
                "name": "demo-app",
                "version": chart_version,
                "appVersion": "1.0.0",
                "apiVersion": "v2",
            },
            "templates": [],
        },
        "config": config if config is not None else {"password": "hunter2"},
        "manifest": "---\napiVersion: v1\nkind: Secret\ndata:\n  password: aHVudGVyMg==\n",
    }


def encode_release_data(release: dict[str, Any], *, compress: bool = True) -> str:
    """The `.data.release` value of the storage Secret: base64 (Kubernetes) of base64 (helm) of
    gzip of JSON, as Helm's secrets driver writes it."""
    raw = json.dumps(release).encode()
    if compress:
        raw = gzip.compress(raw)
    helm_encoded = base64.b64encode(raw)
    return base64.b64encode(helm_encoded).decode()


def storage_secret(release: dict[str, Any], *, compress: bool = True) -> dict[str, Any]:
    """A storage Secret as the Kubernetes API returns it (JSON object)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": HELM_SECRET_TYPE,
        "metadata": {
            "name": secret_name(release["name"], release["version"]),
            "namespace": release["namespace"],
            "labels": {
                "owner": "helm",
                "name": release["name"],
                "version": str(release["version"]),
                "status": release["info"]["status"],
                "modifiedAt": "1767225600",
            },
        },
        "data": {"release": encode_release_data(release, compress=compress)},
    }


@pytest.mark.parametrize("compress", [True, False])
def test_decode_round_trip(compress: bool) -> None:
    release = release_json(revision=3, status="failed", chart_version="0.2.0")
    stored = decode_release(encode_release_data(release, compress=compress))
    assert stored == ReleaseInfo(
        name="demo",
        namespace="apps",
        revision=3,
        status="failed",
        chart_name="demo-app",
        chart_version="0.2.0",
        app_version="1.0.0",
        manifest=release["manifest"],
        description="Upgrade complete",
        last_deployed="2026-01-04T00:00:00Z",
    )
    assert decode_release_json(encode_release_data(release, compress=compress)) == release


def test_repr_has_no_manifest_and_no_values() -> None:
    stored = decode_release(encode_release_data(release_json()))
    assert "aHVudGVyMg" not in repr(stored)
    assert "hunter2" not in repr(stored)
    assert not hasattr(stored, "config")


def test_missing_fields_are_empty() -> None:
    stored = decode_release(encode_release_data({"name": "x", "version": 2}))
    assert stored.revision == 2
    assert stored.status == ""
    assert stored.chart_name == ""
    assert stored.last_deployed is None


@pytest.mark.parametrize(
    "data",
    [
        "not base64!",
        base64.b64encode(b"%%%").decode(),  # inner layer is not base64
        base64.b64encode(base64.b64encode(b"\x1f\x8b\x08garbage")).decode(),
        base64.b64encode(base64.b64encode(b"{not json")).decode(),
        base64.b64encode(base64.b64encode(b"[1, 2]")).decode(),
        encode_release_data({"name": "x", "version": "two"}),
    ],
)
def test_malformed_data(data: str) -> None:
    with pytest.raises(StorageDecodeError):
        decode_release(data)


def _metadata_only(secret: dict[str, Any]) -> dict[str, Any]:
    """What a PartialObjectMetadataList item of the Secret holds: no type, no data."""
    return {"metadata": secret["metadata"]}


def test_storage_from_labels_picks_the_highest_version() -> None:
    secrets = [
        _metadata_only(storage_secret(release_json(revision=revision, status=status)))
        for revision, status in [(2, "superseded"), (10, "deployed"), (9, "superseded")]
    ]
    storage = Storage.from_secrets(secrets, "demo")
    assert storage is not None
    assert (storage.revision, storage.status) == (10, "deployed")
    assert [r.number for r in storage.revisions] == [2, 9, 10]


def test_storage_ignores_foreign_secrets() -> None:
    mine = storage_secret(release_json(revision=1))
    other_release = storage_secret(release_json(name="other", revision=7))
    not_helm = storage_secret(release_json(revision=8))
    not_helm["metadata"]["labels"]["owner"] = "someone"
    wrong_type = storage_secret(release_json(revision=9))
    wrong_type["type"] = "Opaque"
    bad_version = storage_secret(release_json(revision=11))
    bad_version["metadata"]["labels"]["version"] = "v11"
    secrets = [mine, other_release, not_helm, wrong_type, bad_version]
    storage = Storage.from_secrets(secrets, "demo")
    assert storage is not None
    assert storage.revision == 1
    assert Storage.from_secrets([], "demo") is None
    assert Storage.from_secrets([{"metadata": {}}], "demo") is None


def test_secret_release_decodes_one_secret() -> None:
    stored = secret_release(storage_secret(release_json(revision=3)))
    assert (stored.revision, stored.status) == (3, "deployed")


def test_secret_without_data_is_an_error() -> None:
    secret = storage_secret(release_json())
    del secret["data"]
    with pytest.raises(StorageDecodeError, match="no release data"):
        secret_release(secret)


def test_names() -> None:
    assert secret_name("demo", 3) == "sh.helm.release.v1.demo.v3"
    assert label_selector("demo") == "owner=helm,name=demo"
