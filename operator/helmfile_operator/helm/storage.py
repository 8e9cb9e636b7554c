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
from collections.abc import Mapping
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


def secret_release_json(secret: Mapping[str, Any]) -> dict[str, Any]:
    """The whole release object of one storage Secret (values included: memory only)."""
    data = _mapping(secret.get("data")).get("release")
    if not isinstance(data, str):
        name = _mapping(secret.get("metadata")).get("name")
        raise StorageDecodeError(f"storage Secret {name} has no release data")
    return decode_release_json(data)


def secret_release(secret: Mapping[str, Any]) -> ReleaseInfo:
    """The summary and manifest of the release in one storage Secret (a Kubernetes object)."""
    release = secret_release_json(secret)
    try:
        return release_info(release, with_manifest=True)
    except (TypeError, ValueError):
        raise StorageDecodeError("release version is not a number") from None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
