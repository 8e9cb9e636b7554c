"""Bounds of the API that keep helm on its rails: chart names that cannot name a path, service
account names that are names, helm timeouts of at most 24h (in the models and as CRD rules)."""

from __future__ import annotations

import re
from typing import Any

import pytest
from pydantic import ValidationError

from helmfile_operator.api.crd import custom_resource_definitions, validation_messages
from helmfile_operator.api.models import (
    CHART_NAME,
    DNS_SUBDOMAIN,
    MAX_HELM_TIMEOUT_MESSAGE,
    ChartReference,
    HelmfileReleaseSpec,
    HelmfileStateSpec,
    HelmOptions,
)

TIMEOUT_RULE = {
    "rule": "duration(self) <= duration('24h')",
    "message": MAX_HELM_TIMEOUT_MESSAGE,
    "reason": "FieldValueInvalid",
}


def _chart(name: str) -> ChartReference:
    return ChartReference.model_validate(
        {"repository": {"url": "https://charts.example.com"}, "name": name}
    )


def _release(**spec: Any) -> HelmfileReleaseSpec:
    base: dict[str, Any] = {
        "releaseName": "demo",
        "targetNamespace": "apps",
        "chart": {"repository": {"url": "https://charts.example.com"}, "name": "demo"},
    }
    return HelmfileReleaseSpec.model_validate({**base, **spec})


# --- chart names ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["demo-app", "Demo_App", "app.v2", "a..b", "0chart", "x" * 250], ids=str.__len__
)
def test_chart_names_accepted(name: str) -> None:
    assert _chart(name).name == name


@pytest.mark.parametrize(
    "name",
    [
        "",
        "..",
        "../etc",
        "./chart",
        ".hidden",
        "/etc/passwd",
        "a/b",
        "file:///etc",
        "file://chart",
        "https://x/y.tgz",
        "--post-renderer=/bin/sh",
        "-chart",
        "chart\n",
        "chart name",
        "chart:1.0",
        "chart@sha256",
        "x" * 251,
    ],
)
def test_chart_names_that_could_be_a_path_or_a_location_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        _chart(name)


def test_chart_name_pattern_in_the_crd() -> None:
    release = next(
        c for c in custom_resource_definitions() if c["spec"]["names"]["kind"] == "HelmfileRelease"
    )
    spec = release["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    name = spec["properties"]["chart"]["properties"]["name"]
    assert name["pattern"] == CHART_NAME
    assert name["maxLength"] == 250


# --- service account names ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["deployer", "ci.deployer", "a", "a-b.c-d", "x" * 253])
def test_service_account_names_accepted(name: str) -> None:
    assert _release(serviceAccountName=name).service_account_name == name
    state = HelmfileStateSpec.model_validate({"serviceAccountName": name})
    assert state.service_account_name == name


@pytest.mark.parametrize(
    "name",
    ["", "Deployer", "de_ployer", "-x", "x-", "a..b", ".a", "a/b", "system:sa:x:y", "x" * 254],
)
def test_service_account_names_that_are_no_names_are_refused(name: str) -> None:
    with pytest.raises(ValidationError):
        _release(serviceAccountName=name)
    with pytest.raises(ValidationError):
        HelmfileStateSpec.model_validate({"serviceAccountName": name})


def test_dns_subdomain_pattern() -> None:
    assert re.fullmatch(DNS_SUBDOMAIN, "a.b.c")
    assert not re.fullmatch(DNS_SUBDOMAIN, "a.b.")


# --- helm timeouts --------------------------------------------------------------------------------


@pytest.mark.parametrize("timeout", ["24h", "23h59m59s", "86400s", "1440m", "300s", "1.5h"])
def test_timeouts_up_to_a_day(timeout: str) -> None:
    assert HelmOptions(timeout=timeout).timeout == timeout


@pytest.mark.parametrize("timeout", ["25h", "24h1s", "86401s", "2000m", "1000h"])
def test_timeouts_over_a_day_are_refused(timeout: str) -> None:
    with pytest.raises(ValidationError, match="at most 24h"):
        HelmOptions(timeout=timeout)
    with pytest.raises(ValidationError, match="at most 24h"):
        _release(helm={"timeout": timeout})
    for state in (
        {"helmDefaults": {"timeout": timeout}},
        {"releases": [{"name": "a", "chart": "r/a", "helm": {"timeout": timeout}}]},
    ):
        with pytest.raises(ValidationError, match="at most 24h"):
            HelmfileStateSpec.model_validate(state)


def _rules_at_timeouts(node: Any, path: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    if isinstance(node, dict):
        for key, value in node.get("properties", {}).items():
            if key == "timeout":
                found[f"{path}.{key}"] = value.get("x-kubernetes-validations")
            found |= _rules_at_timeouts(value, f"{path}.{key}")
        if "items" in node:
            found |= _rules_at_timeouts(node["items"], f"{path}[]")
    return found


def test_every_helm_timeout_has_the_crd_rule() -> None:
    places = {}
    for crd in custom_resource_definitions():
        schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
        for path, rules in _rules_at_timeouts(schema).items():
            places[f"{crd['spec']['names']['kind']}{path}"] = rules
    assert places == {
        "HelmfileState.spec.helmDefaults.timeout": [TIMEOUT_RULE],
        "HelmfileState.spec.releases[].helm.timeout": [TIMEOUT_RULE],
        "HelmfileRelease.spec.helm.timeout": [TIMEOUT_RULE],
        "HelmfileState.spec.helmDefaults.test.timeout": [TIMEOUT_RULE],
        "HelmfileState.spec.releases[].helm.test.timeout": [TIMEOUT_RULE],
        "HelmfileRelease.spec.helm.test.timeout": [TIMEOUT_RULE],
    }


def test_rule_messages_are_listed_once() -> None:
    messages = validation_messages()
    assert messages["HelmfileState"].count(MAX_HELM_TIMEOUT_MESSAGE) == 1
    assert messages["HelmfileRelease"].count(MAX_HELM_TIMEOUT_MESSAGE) == 1
