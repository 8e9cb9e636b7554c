"""The helm execution layer: a subprocess client, error classification, storage decoding."""

from helmfile_operator.helm.client import (
    HelmClient,
    HelmVersion,
    HistoryRecord,
    ReleaseResult,
    RepositoryCredentials,
)
from helmfile_operator.helm.errors import HelmError, HelmErrorKind, classify
from helmfile_operator.helm.storage import (
    StoredRelease,
    decode_release,
    latest_from_secrets,
    latest_status_from_labels,
)

__all__ = [
    "HelmClient",
    "HelmError",
    "HelmErrorKind",
    "HelmVersion",
    "HistoryRecord",
    "ReleaseResult",
    "RepositoryCredentials",
    "StoredRelease",
    "classify",
    "decode_release",
    "latest_from_secrets",
    "latest_status_from_labels",
]
