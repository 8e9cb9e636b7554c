"""Parsing helm's output: releases, history, versions."""

from __future__ import annotations

import json

import pytest

from helmfile_operator.helm.output import HelmVersion, parse_history, parse_release

SECRET = "s3cr3t-value-nobody-may-see"

# `helm install --dry-run=client -o json` of the test chart, helm 4.3.1 (chart files trimmed).
HELM4_RELEASE_JSON = json.dumps(
    {
        "name": "x",
        "info": {
            "first_deployed": "2026-11-21T12:04:06.497599981Z",
            "last_deployed": "2026-11-21T12:04:06.497599981Z",
            "description": "Install complete",
            "status": "deployed",
        },
        "chart": {
            "metadata": {
                "name": "demo-app",
                "version": "0.1.0",
                "apiVersion": "v2",
                "appVersion": "1.0.0",
                "type": "application",
            },
            "templates": [],
        },
        "config": {"secretv": SECRET},
        "manifest": "---\n",
        "version": 1,
        "namespace": "ns1",
        "apply_method": "ssa",
    }
)


def test_parse_release() -> None:
    result = parse_release(HELM4_RELEASE_JSON)
    assert (result.name, result.namespace, result.revision, result.status) == (
        "x",
        "ns1",
        1,
        "deployed",
    )
    assert (result.chart_name, result.chart_version, result.app_version) == (
        "demo-app",
        "0.1.0",
        "1.0.0",
    )
    assert result.last_deployed == "2026-11-21T12:04:06.497599981Z"
    assert result.manifest == ""  # only Helm's storage is read for manifests
    assert SECRET not in repr(result)


def test_parse_release_after_noise() -> None:
    assert parse_release("some warning\n" + HELM4_RELEASE_JSON).revision == 1
    with pytest.raises(ValueError, match="JSON"):
        parse_release("no json here")


def test_parse_history() -> None:
    stdout = json.dumps(
        [
            {
                "revision": 1,
                "updated": "2026-01-01T00:00:00Z",
                "status": "superseded",
                "chart": "demo-app-0.1.0",
                "app_version": "1.0.0",
                "description": "Install complete",
            },
            {
                "revision": 2,
                "status": "deployed",
                "chart": "demo-app-0.2.0",
                "app_version": "1.0.0",
                "rollback_revision": 1,
                "description": "Rollback to 1",
            },
        ]
    )
    records = parse_history(stdout)
    assert [(r.revision, r.status, r.chart) for r in records] == [
        (1, "superseded", "demo-app-0.1.0"),
        (2, "deployed", "demo-app-0.2.0"),
    ]
    assert records[0].updated == "2026-01-01T00:00:00Z"
    assert records[1].updated is None
    assert parse_history("") == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v4.3.1", (4, 3, 1)),
        ("v3.16.2+g13654a5\n", (3, 16, 2)),
        ("v3.17.0-rc.1", (3, 17, 0)),
        ('version.BuildInfo{Version:"v3.9.0", GitCommit:""}', (3, 9, 0)),
    ],
)
def test_helm_version_parse(text: str, expected: tuple[int, int, int]) -> None:
    version = HelmVersion.parse(text)
    assert (version.major, version.minor, version.patch) == expected


def test_helm_version_parse_rejects_garbage() -> None:
    with pytest.raises(ValueError, match="not a helm version"):
        HelmVersion.parse("hello")
