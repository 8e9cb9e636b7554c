"""What helm says about releases, parsed: its JSON output and the release objects it stores.

helm's `--output json` release and the JSON in Helm's storage Secrets are the same object; both
become a `ReleaseInfo`. That object holds the release's values (`config`), which are never kept,
and its manifest, which may carry secrets and is kept out of the repr.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class HelmVersion:
    major: int
    minor: int
    patch: int
    raw: str

    @classmethod
    def parse(cls, text: str) -> HelmVersion:
        """`v4.3.1`, `v3.16.2+g13654a5`, `v3.17.0-rc.1` (from `--template` or `--short`)."""
        match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
        if match is None:
            raise ValueError(f"not a helm version: {text.strip()[:80]!r}")
        major, minor, patch = (int(part) for part in match.groups())
        return cls(major, minor, patch, text.strip())


@dataclass(frozen=True, kw_only=True)
class ReleaseInfo:
    """One revision of a release. `manifest` is only filled from Helm's storage ("" otherwise)."""

    name: str
    namespace: str
    revision: int
    status: str
    chart_name: str
    chart_version: str
    app_version: str
    description: str = ""
    last_deployed: str | None = None
    manifest: str = field(default="", repr=False)


@dataclass(frozen=True)
class HistoryRecord:
    revision: int
    status: str
    chart: str
    app_version: str
    updated: str | None
    description: str


def release_info(release: Mapping[str, Any], *, with_manifest: bool = False) -> ReleaseInfo:
    """The summary of a release object; missing fields are empty.

    Raises ValueError or TypeError when `version` (the revision) is not a number.
    """
    info = _object(release.get("info"))
    metadata = _object(_object(release.get("chart")).get("metadata"))
    last_deployed = info.get("last_deployed")
    return ReleaseInfo(
        name=str(release.get("name") or ""),
        namespace=str(release.get("namespace") or ""),
        revision=int(release.get("version") or 0),
        status=str(info.get("status") or ""),
        chart_name=str(metadata.get("name") or ""),
        chart_version=str(metadata.get("version") or ""),
        app_version=str(metadata.get("appVersion") or ""),
        description=str(info.get("description") or ""),
        last_deployed=str(last_deployed) if last_deployed else None,
        manifest=str(release.get("manifest") or "") if with_manifest else "",
    )


def parse_release(stdout: str, *, with_manifest: bool = False) -> ReleaseInfo:
    """The release object helm prints with `--output json` (upgrade), without its manifest
    unless asked (a dry run: the manifest is what it would apply)."""
    release = _json_document(stdout)
    if not isinstance(release, dict):
        raise ValueError("helm's output is not a release object")
    return release_info(release, with_manifest=with_manifest)


def parse_history(stdout: str) -> list[HistoryRecord]:
    """`helm history --output json`: oldest first, as helm prints it."""
    if not stdout.strip():
        return []
    entries = _json_document(stdout)
    if not isinstance(entries, list):
        raise ValueError("helm's history output is not a list")
    return [
        HistoryRecord(
            revision=int(entry.get("revision") or 0),
            status=str(entry.get("status") or ""),
            chart=str(entry.get("chart") or ""),
            app_version=str(entry.get("app_version") or ""),
            updated=str(entry["updated"]) if entry.get("updated") else None,
            description=str(entry.get("description") or ""),
        )
        for entry in entries
        if isinstance(entry, dict)
    ]


def _json_document(stdout: str) -> Any:
    """helm's JSON output, tolerating stray lines before it."""
    try:
        return json.loads(stdout)
    except ValueError:
        pass
    match = re.search(r"^[\[{]", stdout, re.MULTILINE)
    if match is None:
        raise ValueError("no JSON document in helm's output")
    return json.loads(stdout[match.start() :])


def _object(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}
