"""Where chart versions come from: a repository's index or an OCI registry's tags, fetched at
most once per repository and interval, and the version a range resolves to among them."""

from helmfile_operator.sources.resolver import ChartSourceError, VersionResolver
from helmfile_operator.sources.versions import is_exact, select_version

__all__ = ["ChartSourceError", "VersionResolver", "is_exact", "select_version"]
