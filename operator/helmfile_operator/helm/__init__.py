"""The helm execution layer: running helm, classifying its failures, reading Helm's storage.

Import from here; the modules are `client` (the verbs), `argv` (their command lines), `files`
(private files and environment), `runner` (the bounded subprocess), `output` (helm's output and
release objects, parsed), `errors` (failure classification) and `storage` (release Secrets).
"""

from helmfile_operator.helm.client import HelmClient, RepositoryCredentials
from helmfile_operator.helm.errors import HelmError, HelmErrorKind, classify
from helmfile_operator.helm.output import HelmVersion, HistoryRecord, ReleaseInfo
from helmfile_operator.helm.storage import (
    StorageDecodeError,
    decode_release,
    secret_release,
)

__all__ = [
    "HelmClient",
    "HelmError",
    "HelmErrorKind",
    "HelmVersion",
    "HistoryRecord",
    "ReleaseInfo",
    "RepositoryCredentials",
    "StorageDecodeError",
    "classify",
    "decode_release",
    "secret_release",
]
