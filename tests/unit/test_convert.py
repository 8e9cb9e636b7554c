"""`convert`: helmfile.yaml → HelmfileState, construct by construct."""

from __future__ import annotations

import os
import stat
import textwrap
from pathlib import Path
from typing import Any

import pytest

from helmfile_operator.api.models import HelmfileStateSpec
from helmfile_operator.convert import (
    INLINE_VALUES_MAX_BYTES,
    ConversionError,
    ConversionResult,
    Dropped,
    convert_file,
)
from helmfile_operator.goyaml import load_manifest
from helmfile_operator.render.state import StateMeta, render_state

REPOS = """\
repositories:
  - name: bitnami
    url: https://charts.bitnami.com/bitnami
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


def convert(tmp_path: Path, text: str, **kwargs: Any) -> ConversionResult:
    return convert_file(write(tmp_path, "helmfile.yaml", text), **kwargs)


def spec(result: ConversionResult) -> dict[str, Any]:
    return result.state["spec"]  # type: ignore[no-any-return]


def release(result: ConversionResult, index: int = 0) -> dict[str, Any]:
    return spec(result)["releases"][index]  # type: ignore[no-any-return]


def fields(result: ConversionResult) -> list[str]:
    return [d.field for d in result.dropped]


# --- the result -------------------------------------------------------------------------------


def test_minimal_state_document(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        REPOS + "releases:\n  - {name: redis, chart: bitnami/redis, version: 19.0.1}\n",
        name="shop",
        namespace="shop",
    )
    assert result.state == {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": "shop", "namespace": "shop"},
        "spec": {
            "environment": "default",
            "repositories": [{"name": "bitnami", "url": "https://charts.bitnami.com/bitnami"}],
            "releases": [{"name": "redis", "chart": "bitnami/redis", "version": "19.0.1"}],
        },
    }
    assert result.dropped == []
    HelmfileStateSpec.model_validate(result.state["spec"])
    # to_yaml reads back as the same documents
    assert load_manifest(result.to_yaml(), "out") == result.documents


def test_name_from_directory_and_file(tmp_path: Path) -> None:
    text = REPOS + "releases:\n  - {name: a, chart: bitnami/redis}\n"
    assert convert_file(write(tmp_path / "My_Apps", "helmfile.yaml", text)).state["metadata"] == {
        "name": "my-apps"
    }
    assert convert_file(write(tmp_path, "platform.yaml", text)).state["metadata"]["name"] == (
        "platform"
    )


# --- releases ---------------------------------------------------------------------------------


def test_release_fields(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        REPOS
        + """\
environments:
  default:
    values: [{redis: {enabled: true}}]
releases:
  - name: redis
    namespace: cache
    chart: bitnami/redis
    version: "~19.0"
    installed: false
    condition: redis.enabled
    labels: {tier: backend, replicas: 3}
    values:
      - architecture: standalone
    wait: true
    waitForJobs: true
    timeout: 600
    atomic: false
    createNamespace: false
    historyMax: 5
""",
    )
    assert release(result) == {
        "name": "redis",
        "namespace": "cache",
        "chart": "bitnami/redis",
        "version": "~19.0",
        "condition": "redis.enabled",
        "labels": {"tier": "backend", "replicas": "3"},
        "values": [{"architecture": "standalone"}],
        "installed": False,
        "helm": {
            "wait": True,
            "waitForJobs": True,
            "timeout": "600s",
            "atomic": False,
            "createNamespace": False,
            "historyMax": 5,
        },
    }
    assert result.dropped == []


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ("{name: a, value: 'true'}", True),
        ("{name: a, value: 123}", 123),
        ("{name: a, value: '123'}", 123),  # helm --set reads it as a number, as helmfile passes it
        ("{name: a, value: '0123'}", "0123"),
        ("{name: a, value: '1.5'}", "1.5"),
        ("{name: a, value: 'null'}", None),
        ("{name: a, value: 'a,b'}", "a,b"),  # helmfile escapes commas
        ("{name: a, values: [x, 2]}", ["x", 2]),
    ],
)
def test_set_values_are_typed_as_helm_set_reads_them(
    tmp_path: Path, entry: str, expected: Any
) -> None:
    result = convert(
        tmp_path, REPOS + f"releases:\n  - name: r\n    chart: bitnami/x\n    set: [{entry}]\n"
    )
    assert release(result)["set"] == [{"name": "a", "value": expected}]


def test_set_string_stays_string_and_follows_set(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        REPOS
        + """\
releases:
  - name: r
    chart: bitnami/x
    setString: [{name: b, value: 123}, {name: c, values: [1, true]}]
    set: [{name: a, value: 1}, {name: skipped, value: ""}]
""",
    )
    assert release(result)["set"] == [
        {"name": "a", "value": 1},
        {"name": "b", "value": "123"},
        {"name": "c", "value": ["1", "true"]},
    ]


def test_set_file_is_dropped(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        REPOS + "releases:\n  - {name: r, chart: bitnami/x, set: [{name: a, file: cert.pem}]}\n",
    )
    assert fields(result) == ["releases[0].set[0]"]
    assert "set" not in release(result)


def test_needs(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        REPOS
        + """\
releases:
  - {name: db, namespace: data, chart: bitnami/postgresql}
  - {name: cache, chart: bitnami/redis}
  - name: api
    chart: bitnami/nginx
    needs: [data/db, cache, prod-cluster/data/db]
""",
    )
    assert release(result, 2)["needs"] == ["data/db", "cache"]
    assert fields(result) == ["releases[2].needs[2]"]
    assert "kube context 'prod-cluster'" in result.dropped[0].why


def test_need_of_a_dropped_release_is_dropped(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        REPOS
        + """\
releases:
  - {name: local, chart: ./charts/local}
  - {name: api, chart: bitnami/nginx, needs: [local]}
""",
    )
    assert fields(result) == ["releases[0]", "releases[1].needs[0]"]
    assert "needs" not in release(result)
    assert "local path" in result.dropped[0].why


def test_duplicate_release_names_are_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="'web' is defined twice"):
        convert(
            tmp_path,
            REPOS + "releases:\n"
            "  - {name: web, namespace: a, chart: bitnami/nginx}\n"
            "  - {name: web, namespace: b, chart: bitnami/nginx}\n",
        )


def test_top_level_namespace_and_common_labels(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        REPOS
        + """\
namespace: shop
commonLabels: {team: payments}
releases:
  - {name: a, namespace: other, chart: bitnami/nginx, labels: {team: x, app: a}}
""",
    )
    assert release(result)["namespace"] == "shop"
    assert release(result)["labels"] == {"team": "payments", "app": "a"}


# --- timeouts and helmDefaults ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeout", "expected", "dropped"),
    [
        (300, "300s", []),
        (1, "1s", []),
        (86400, "86400s", []),
        (90000, "24h", ["helmDefaults.timeout"]),
    ],
)
def test_timeouts(tmp_path: Path, timeout: int, expected: str, dropped: list[str]) -> None:
    result = convert(
        tmp_path,
        REPOS
        + f"helmDefaults: {{timeout: {timeout}}}\nreleases:\n  - {{name: a, chart: bitnami/x}}\n",
    )
    assert spec(result)["helmDefaults"] == {"timeout": expected}
    assert fields(result) == dropped


def test_timeout_must_be_seconds(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="number of seconds"):
        convert(
            tmp_path,
            REPOS + "helmDefaults: {timeout: 5m}\nreleases: [{name: a, chart: bitnami/x}]\n",
        )


def test_helm_defaults(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        REPOS
        + """\
helmDefaults:
  wait: true
  atomic: true
  createNamespace: false
  historyMax: 3
  kubeContext: prod
  recreatePods: true
  args: [--debug]
releases: [{name: a, chart: bitnami/x}]
""",
    )
    assert spec(result)["helmDefaults"] == {
        "wait": True,
        "atomic": True,
        "createNamespace": False,
        "historyMax": 3,
    }
    assert fields(result) == [
        "helmDefaults.kubeContext",
        "helmDefaults.recreatePods",
        "helmDefaults.args",
    ]


def test_default_differences_are_noted(tmp_path: Path) -> None:
    result = convert(tmp_path, REPOS + "releases: [{name: a, chart: bitnami/x}]\n")
    assert any("wait: false and atomic: false" in n for n in result.notes)


# --- repositories -------------------------------------------------------------------------------


def test_credentials_are_never_copied(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        """\
repositories:
  - name: private
    url: https://charts.example.com
    username: alice
    password: s3cr3t-p4ss
    caFile: ca.pem
    skipTLSVerify: true
releases: [{name: a, chart: private/app}]
""",
    )
    assert spec(result)["repositories"] == [
        {
            "name": "private",
            "url": "https://charts.example.com",
            "secretRef": "helmfile-repo-private",
            "caSecretRef": "helmfile-repo-private-ca",
            "insecureSkipTlsVerify": True,
        }
    ]
    text = result.to_yaml() + repr(result.notes) + repr(result.dropped)
    assert "s3cr3t-p4ss" not in text
    assert "alice" not in text
    assert [d for d in result.documents if d.get("kind") == "Secret"] == []
    assert any("create Secret 'helmfile-repo-private'" in n for n in result.notes)


def test_oci_repository_becomes_oci_chart(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        """\
repositories:
  - {name: docker, url: registry-1.docker.io, oci: true}
releases:
  - {name: nginx, chart: docker/bitnamicharts/nginx, version: 18.2.5}
""",
    )
    assert release(result) == {
        "name": "nginx",
        "chart": "oci://registry-1.docker.io/bitnamicharts/nginx",
        "version": "18.2.5",
    }
    assert "repositories" not in spec(result)


def test_oci_repository_with_credentials_keeps_a_repository(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        """\
repositories:
  - {name: ghcr, url: ghcr.io, oci: true, username: u, password: p}
releases:
  - {name: app, chart: ghcr/org/charts/app, version: 1.0.0}
""",
    )
    assert spec(result)["repositories"] == [
        {
            "name": "ghcr-org-charts",
            "url": "oci://ghcr.io/org/charts",
            "secretRef": "helmfile-repo-ghcr",
        }
    ]
    assert release(result)["chart"] == "ghcr-org-charts/app"


@pytest.mark.parametrize(
    ("chart", "version", "expected_chart", "expected_version", "dropped"),
    [
        ("oci://r.example.com/c/app:2.0.0", None, "oci://r.example.com/c/app", "2.0.0", []),
        (
            "oci://r.example.com/c/app@sha256:ab",
            "1.0.0",
            "oci://r.example.com/c/app",
            "1.0.0",
            ["releases[0].chart"],
        ),
        (
            "oci://r.example.com/c/app",
            "1.0.0@sha256:ab",
            "oci://r.example.com/c/app",
            "1.0.0",
            ["releases[0].version"],
        ),
    ],
)
def test_oci_tags_and_digests(
    tmp_path: Path,
    chart: str,
    version: str | None,
    expected_chart: str,
    expected_version: str,
    dropped: list[str],
) -> None:
    version_line = f"    version: '{version}'\n" if version else ""
    result = convert(tmp_path, f"releases:\n  - name: a\n    chart: '{chart}'\n{version_line}")
    assert (release(result)["chart"], release(result)["version"]) == (
        expected_chart,
        expected_version,
    )
    assert fields(result) == dropped


def test_repository_name_made_a_dns_label(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        "repositories: [{name: My_Repo, url: 'https://x.example.com'}]\n"
        "releases: [{name: a, chart: My_Repo/app}]\n",
    )
    assert spec(result)["repositories"][0]["name"] == "my-repo"
    assert release(result)["chart"] == "my-repo/app"


def test_git_repository_is_dropped_with_its_releases(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="none of its releases"):
        convert(
            tmp_path,
            "repositories: [{name: g, url: 'git+https://github.com/x/y@charts?ref=main'}]\n"
            "releases: [{name: a, chart: g/app}]\n",
        )


# --- environments and values files -------------------------------------------------------------


def test_environments_and_values_files(tmp_path: Path) -> None:
    write(tmp_path, "env/prod.yaml", "replicas: 3\nsign: =\n")
    write(tmp_path, "values/redis.yaml", "architecture: replication\n")
    result = convert(
        tmp_path,
        REPOS
        + """\
values:
  - {common: true}
environments:
  dev:
    values: [{replicas: 1}]
  prod:
    values: [env/prod.yaml]
releases:
  - name: redis
    chart: bitnami/redis
    values: [values/redis.yaml, {auth: {enabled: false}}]
""",
        environment="prod",
    )
    assert spec(result)["environment"] == "prod"
    assert spec(result)["environments"] == {
        "default": {"values": [{"common": True}]},  # top-level values: every environment's
        "dev": {"values": [{"common": True}, {"replicas": 1}]},
        "prod": {"values": [{"common": True}, {"replicas": 3, "sign": "="}]},
    }
    assert release(result)["values"] == [
        {"architecture": "replication"},
        {"auth": {"enabled": False}},
    ]


def test_unknown_environment_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="environment 'prod' is not defined"):
        convert(tmp_path, REPOS + "releases: [{name: a, chart: bitnami/x}]\n", environment="prod")


def test_large_values_file_becomes_a_config_map(tmp_path: Path) -> None:
    big = "items:\n" + "".join(f"  - key-{i}-{'x' * 40}\n" for i in range(7000))
    assert len(big) > INLINE_VALUES_MAX_BYTES
    write(tmp_path, "big.yaml", big)
    write(tmp_path, "envbig.yaml", big)
    result = convert(
        tmp_path,
        REPOS
        + """\
environments:
  default:
    values: [envbig.yaml]
releases:
  - {name: app, chart: bitnami/nginx, values: [{small: 1}, big.yaml]}
""",
        name="shop",
        namespace="shop",
    )
    assert release(result)["values"] == [{"small": 1}]
    assert release(result)["valuesFrom"] == [{"kind": "ConfigMap", "name": "shop-app-values-1"}]
    assert spec(result)["environments"]["default"]["valuesFrom"] == [
        {"kind": "ConfigMap", "name": "shop-env-default-0"}
    ]
    maps = result.documents[1:]
    assert [m["metadata"]["name"] for m in maps] == ["shop-env-default-0", "shop-app-values-1"]
    assert all(m["kind"] == "ConfigMap" and m["data"]["values.yaml"] == big for m in maps)
    assert all(m["metadata"]["namespace"] == "shop" for m in maps)


def test_missing_values_file(tmp_path: Path) -> None:
    text = REPOS + "releases: [{name: a, chart: bitnami/x, values: [nope.yaml]}]\n"
    with pytest.raises(ConversionError, match=r"'nope\.yaml', which does not exist"):
        convert(tmp_path, text)
    result = convert(
        tmp_path,
        REPOS + "releases: [{name: a, chart: bitnami/x, missingFileHandler: Warn, "
        "values: [nope.yaml]}]\n",
    )
    assert "values" not in release(result)
    assert fields(result) == ["releases[0].missingFileHandler"]
    assert any("does not exist and is skipped" in n for n in result.notes)


def test_gotmpl_values_without_binary_are_dropped(tmp_path: Path) -> None:
    write(tmp_path, "v.yaml.gotmpl", "x: {{ .Values.x }}\n")
    result = convert(
        tmp_path,
        REPOS + "releases: [{name: a, chart: bitnami/x, values: [v.yaml.gotmpl, {z: 1}]}]\n",
        helmfile_binary=str(tmp_path / "no-such-helmfile"),
    )
    assert fields(result) == ["releases[0].values[0]"]
    assert release(result)["values"] == [{"z": 1}]


def test_literal_braces_in_inline_values_are_kept(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        REPOS
        + "releases: [{name: a, chart: bitnami/x, values: [{host: '{{ .Release.Name }}.x'}]}]\n",
    )
    assert release(result)["values"] == [{"host": "{{ .Release.Name }}.x"}]
    assert any("tpl" in n for n in result.notes)


# --- conditions -------------------------------------------------------------------------------


def test_condition_missing_enabled_becomes_false(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        REPOS
        + """\
environments:
  default:
    values: [{redis: {}}]
releases: [{name: a, chart: bitnami/x, condition: redis.enabled}]
""",
    )
    assert spec(result)["environments"]["default"]["values"][-1] == {"redis": {"enabled": False}}
    rendered = render_state(
        StateMeta("s", "default", {}, {}), HelmfileStateSpec.model_validate(spec(result))
    )
    assert rendered.releases[0].spec.installed is False


def test_condition_with_missing_parent_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="not a map in the values"):
        convert(
            tmp_path, REPOS + "releases: [{name: a, chart: bitnami/x, condition: redis.enabled}]\n"
        )


# --- Dropped kinds --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "field"),
    [
        ("hooks: [{events: [presync], command: echo}]", "releases[0].hooks"),
        ("secrets: [secrets.yaml]", "releases[0].secrets"),
        ("kubeContext: prod", "releases[0].kubeContext"),
        ("missingFileHandler: Warn", "releases[0].missingFileHandler"),
        ("postRenderer: ./pr.sh", "releases[0].postRenderer"),
        ("strategicMergePatches: [{kind: ConfigMap}]", "releases[0].strategicMergePatches"),
        ("jsonPatches: [{target: {kind: x}}]", "releases[0].jsonPatches"),
        ("transformers: [{kind: x}]", "releases[0].transformers"),
        ("valuesTemplate: [{a: b}]", "releases[0].valuesTemplate"),
        ("recreatePods: true", "releases[0].recreatePods"),
        ("frobnicate: 3", "releases[0].frobnicate"),
    ],
)
def test_dropped_release_fields(tmp_path: Path, line: str, field: str) -> None:
    result = convert(
        tmp_path, REPOS + f"releases:\n  - name: a\n    chart: bitnami/x\n    {line}\n"
    )
    assert fields(result) == [field]
    dropped = result.dropped[0]
    assert isinstance(dropped, Dropped) and dropped.why and dropped.instead


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("hooks: [{events: [prepare], command: echo}]\n", "hooks"),
        ("kubeContext: prod\n", "kubeContext"),
        ("missingFileHandler: Warn\n", "missingFileHandler"),
        ("apiVersions: [x/v1]\n", "apiVersions"),
        ("mystery: 1\n", "mystery"),
        (
            "environments:\n  default:\n    secrets: [s.yaml]\n    kubeContext: c\n",
            "environments.default.secrets",
        ),
    ],
)
def test_dropped_top_level_fields(tmp_path: Path, text: str, field: str) -> None:
    result = convert(tmp_path, REPOS + text + "releases: [{name: a, chart: bitnami/x}]\n")
    assert fields(result)[0] == field


def test_zero_valued_unsupported_fields_are_not_reported(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        REPOS + "releases: [{name: a, chart: bitnami/x, recreatePods: false, hooks: []}]\n",
    )
    assert result.dropped == []


# --- layering: parts, bases, templates, helmfiles ---------------------------------------------


def test_multi_document_layering(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        REPOS
        + """\
environments:
  default:
    values: [{a: 1}]
releases: [{name: old, chart: bitnami/x}]
---
helmDefaults: {wait: true}
---
releases: [{name: new, chart: bitnami/y}]
""",
    )
    assert [r["name"] for r in spec(result)["releases"]] == ["new"]  # later lists replace
    assert spec(result)["helmDefaults"] == {"wait": True}
    assert spec(result)["environments"] == {"default": {"values": [{"a": 1}]}}


def test_bases_are_layered_under_the_file(tmp_path: Path) -> None:
    write(tmp_path, "common/repos.yaml", REPOS + "releases: [{name: base, chart: bitnami/x}]\n")
    write(
        tmp_path,
        "common/envs.yaml",
        "environments:\n  prod:\n    values: [{tier: 1}]\n",
    )
    result = convert(
        tmp_path,
        """\
bases: [common/repos.yaml, common/envs.yaml]
environments:
  prod:
    values: [{tier: 2}]
releases: [{name: app, chart: bitnami/nginx}]
""",
        environment="prod",
    )
    assert [r["name"] for r in spec(result)["releases"]] == ["base", "app"]  # appended
    assert spec(result)["environments"]["prod"] == {"values": [{"tier": 1}, {"tier": 2}]}


def test_anchors_and_inherit(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        REPOS
        + """\
templates:
  default: &default
    namespace: apps
    values: [{common: true}]
    labels: {team: a}
  strict:
    wait: true
    timeout: 60
releases:
  - name: one
    chart: bitnami/x
    <<: *default
  - name: two
    chart: bitnami/y
    values: [{own: 1}]
    inherit:
      - template: default
        except: [labels]
      - template: strict
""",
    )
    one, two = spec(result)["releases"]
    assert one == {
        "name": "one",
        "namespace": "apps",
        "chart": "bitnami/x",
        "labels": {"team": "a"},
        "values": [{"common": True}],
    }
    assert two["namespace"] == "apps"
    assert "labels" not in two
    assert two["values"] == [{"common": True}, {"own": 1}]
    assert two["helm"] == {"wait": True, "timeout": "60s"}


def test_default_inherit(tmp_path: Path) -> None:
    result = convert(
        tmp_path,
        REPOS + "templates: {d: {namespace: ns1}}\ndefaultInherit: d\n"
        "releases: [{name: a, chart: bitnami/x}]\n",
    )
    assert release(result)["namespace"] == "ns1"


def test_unknown_template_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConversionError, match="template 'nope'"):
        convert(
            tmp_path,
            REPOS + "releases: [{name: a, chart: bitnami/x, inherit: [{template: nope}]}]\n",
        )


def test_nested_helmfiles(tmp_path: Path) -> None:
    write(tmp_path, "apps/values/web.yaml", "replicas: 2\n")
    write(
        tmp_path,
        "apps/helmfile.yaml",
        REPOS
        + """\
helmDefaults: {timeout: 120}
releases:
  - {name: web, chart: bitnami/nginx, values: [values/web.yaml], labels: {tier: web}, needs: [db]}
  - {name: db, chart: bitnami/postgresql, labels: {tier: db}}
  - {name: skipped, chart: bitnami/x, labels: {tier: other}}
  - {name: hooked, chart: bitnami/x, labels: {tier: web}, hooks: [{command: echo}]}
""",
    )
    result = convert(
        tmp_path,
        """\
helmfiles:
  - path: apps/helmfile.yaml
    selectors: [tier=web, tier=db]
    values: [{from_parent: true}]
  - path: git::https://github.com/x/y.git@helmfile.yaml
releases: []
""",
    )
    names = [r["name"] for r in spec(result)["releases"]]
    assert names == ["web", "db", "hooked"]
    web = release(result)
    assert web["values"] == [{"replicas": 2}]  # relative to the sub-helmfile
    assert web["needs"] == ["db"]
    assert web["helm"] == {"timeout": "120s"}  # the sub-helmfile's helmDefaults
    assert spec(result)["environments"]["default"]["values"] == [{"from_parent": True}]
    assert fields(result) == ["helmfiles[1]", "apps/helmfile.yaml: releases[3].hooks"]


# --- Go templates ---------------------------------------------------------------------------------


def test_templated_file_without_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    path = write(
        tmp_path, "helmfile.yaml.gotmpl", REPOS + "releases: [{name: a, chart: bitnami/x}]\n"
    )
    with pytest.raises(ConversionError, match="helmfile binary is needed") as error:
        convert_file(path)
    assert "helmfile.yaml.gotmpl" in str(error.value)
    with pytest.raises(ConversionError, match=r"release field `version` holds `\{\{ \}\}`"):
        convert(
            tmp_path,
            REPOS
            + "releases:\n  - name: a\n    chart: bitnami/x\n    version: '{{ .Values.v }}'\n",
        )
    with pytest.raises(ConversionError, match="Go template expressions"):
        convert(
            tmp_path,
            REPOS
            + "releases:\n  - name: a\n    chart: bitnami/x\n    installed: {{ .Values.on }}\n",
        )


FAKE_HELMFILE = """\
#!/bin/sh
# a stand-in for `helmfile -f FILE -e ENV build --embed-values`
echo "$@" > "$(dirname "$0")/argv"
cat <<EOF
---
#  Source: $2

filepath: helmfile.yaml.gotmpl
helmBinary: helm
repositories:
- name: bitnami
  url: https://charts.bitnami.com/bitnami
helmDefaults:
  wait: false
  timeout: 0
  verify: false
releases:
- chart: bitnami/redis
  version: 19.0.1
  name: redis-$4
  namespace: cache
  labels:
    chart: redis
    name: redis-$4
    namespace: cache
    tier: db
  values:
  - replicas: 3
  - template: "{{ literal }}"
renderedvalues: {}
EOF
"""


def test_templated_file_with_binary(tmp_path: Path) -> None:
    binary = tmp_path / "bin" / "helmfile"
    binary.parent.mkdir()
    binary.write_text(FAKE_HELMFILE)
    binary.chmod(binary.stat().st_mode | stat.S_IXUSR)
    write(tmp_path, "helmfile.yaml.gotmpl", 'releases: {{ exec "gen" (list) }}\n')
    path = tmp_path / "helmfile.yaml.gotmpl"
    result = convert_file(path, environment="default", helmfile_binary=str(binary))
    argv = (tmp_path / "bin" / "argv").read_text().split()
    assert argv == ["-f", str(path.resolve()), "-e", "default", "build", "--embed-values"]
    assert release(result) == {
        "name": "redis-default",
        "namespace": "cache",
        "chart": "bitnami/redis",
        "version": "19.0.1",
        "labels": {"tier": "db"},
        "values": [{"replicas": 3}, {"template": "{{ literal }}"}],
    }
    assert spec(result)["helmDefaults"] == {"wait": False}
    assert fields(result) == ["exec"]
    assert "helmfile" in result.notes[0] and "build --embed-values" in result.notes[0]


def test_templated_file_with_binary_on_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = tmp_path / "bin" / "helmfile"
    binary.parent.mkdir()
    binary.write_text(FAKE_HELMFILE)
    binary.chmod(0o755)
    monkeypatch.setenv("PATH", f"{binary.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    path = write(tmp_path, "helmfile.yaml.gotmpl", "releases: []\n")
    assert release(convert_file(path))["name"] == "redis-default"


def test_failing_binary_is_a_conversion_error(tmp_path: Path) -> None:
    binary = tmp_path / "helmfile"
    binary.write_text("#!/bin/sh\necho 'in ./helmfile.yaml: template: bad' >&2\nexit 1\n")
    binary.chmod(0o755)
    path = write(tmp_path, "helmfile.yaml.gotmpl", "releases: []\n")
    with pytest.raises(ConversionError, match="template: bad"):
        convert_file(path, helmfile_binary=str(binary))


def test_string_fields_keep_their_text(tmp_path: Path) -> None:
    """go-yaml keeps the text of Go string fields: `name: off` is the release "off"."""
    result = convert(
        tmp_path,
        REPOS
        + """\
templates:
  t: &t {namespace: "on"}
releases:
  - name: off
    chart: bitnami/x
    version: 1.10
    labels: {enabled: yes}
    set: [{name: a, value: 1.50}, {name: b, value: yes}]
    <<: *t
""",
    )
    assert release(result) == {
        "name": "off",
        "namespace": "on",
        "chart": "bitnami/x",
        "version": "1.10",
        "labels": {"enabled": "yes"},
        "set": [{"name": "a", "value": "1.50"}, {"name": "b", "value": "yes"}],
    }
