"""Reading Helm's release storage (the default Secret driver) without running helm.

Helm 3 and Helm 4 store every revision of a release in a Secret named
`sh.helm.release.v1.<release>.v<revision>` of type `helm.sh/release.v1`, labelled
`owner=helm`, `name=<release>`, `version=<revision>`, `status=<status>`. Its `release` key holds
base64(gzip(JSON of the release)); the Kubernetes API adds its own base64 around `.data` values.

The decoded JSON holds the release's values (`config`) and manifest, which may carry secrets:
the `ReleaseInfo` it becomes keeps the manifest out of its repr and drops the values altogether.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import json
import zlib
from collections.abc import Iterable, Mapping
from typing import Any

from helmfile_operator.helm.output import ReleaseInfo, release_info

HELM_SECRET_TYPE = "helm.sh/release.v1"  # noqa: S105 - a Secret type, not a password
OWNER_LABEL_VALUE = "helm"
_GZIP_MAGIC = b"\x1f\x8b\x08"


class StorageDecodeError(ValueError):
    """A Helm storage Secret whose content is not a Helm release."""


def secret_name(release: str, revision: int) -> str:
    return f"sh.helm.release.v1.{release}.v{revision}"


def label_selector(release: str) -> str:
    """The label selector of a release's storage Secrets."""
    return f"owner={OWNER_LABEL_VALUE},name={release}"


def decode_release_json(data_release_b64: str) -> dict[str, Any]:
    """The release JSON (values included: handle with care) from a Secret's `.data.release`."""
    try:
        helm_encoded = base64.b64decode(data_release_b64, validate=True)
        raw = base64.b64decode(helm_encoded, validate=True)
    except (binascii.Error, ValueError) as error:
        raise StorageDecodeError(f"release data is not base64: {error}") from None
    if raw[:3] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise StorageDecodeError(f"release data is not valid gzip: {error}") from None
    try:
        release = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        raise StorageDecodeError("release data is not JSON") from None
    if not isinstance(release, dict):
        raise StorageDecodeError("release data is not a JSON object")
    return release


def decode_release(data_release_b64: str) -> ReleaseInfo:
    """The summary and manifest of a release from a Secret's `.data.release` (Kubernetes base64)."""
    release = decode_release_json(data_release_b64)
    try:
        return release_info(release, with_manifest=True)
    except (TypeError, ValueError):
        raise StorageDecodeError("release version is not a number") from None


def latest_from_secrets(
    secrets: Iterable[Mapping[str, Any]], *, release_name: str | None = None
) -> ReleaseInfo | None:
    """The highest revision among storage Secrets (Kubernetes JSON objects), decoding only it."""
    release = latest_release_json(secrets, release_name=release_name)
    if release is None:
        return None
    try:
        return release_info(release, with_manifest=True)
    except (TypeError, ValueError):
        raise StorageDecodeError("release version is not a number") from None


def latest_release_json(
    secrets: Iterable[Mapping[str, Any]], *, release_name: str | None = None
) -> dict[str, Any] | None:
    """The whole release object of the highest revision (values included: memory only)."""
    latest = _latest(secrets, release_name)
    if latest is None:
        return None
    data = _mapping(latest[2].get("data")).get("release")
    if not isinstance(data, str):
        raise StorageDecodeError(f"storage Secret of revision {latest[0]} has no release data")
    return decode_release_json(data)


def latest_status_from_labels(
    secrets: Iterable[Mapping[str, Any]], *, release_name: str | None = None
) -> tuple[int, str] | None:
    """(revision, status) of the highest revision, from labels alone: nothing is decoded."""
    latest = _latest(secrets, release_name)
    return None if latest is None else (latest[0], latest[1])


def _latest(
    secrets: Iterable[Mapping[str, Any]], release_name: str | None
) -> tuple[int, str, Mapping[str, Any]] | None:
    best: tuple[int, str, Mapping[str, Any]] | None = None
    for secret in secrets:
        secret_type = secret.get("type")
        if secret_type is not None and secret_type != HELM_SECRET_TYPE:
            continue
        labels = _mapping(_mapping(secret.get("metadata")).get("labels"))
        if labels.get("owner") != OWNER_LABEL_VALUE:
            continue
        if release_name is not None and labels.get("name") != release_name:
            continue
        try:
            revision = int(str(labels.get("version")))
        except ValueError:
            continue
        if best is None or revision > best[0]:
            best = (revision, str(labels.get("status") or ""), secret)
    return best


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
