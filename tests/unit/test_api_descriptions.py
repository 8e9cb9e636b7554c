"""Every field of both CRDs is described, so that `kubectl explain` answers for each of them."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import BaseModel

from helmfile_operator.api import models
from helmfile_operator.api.crd import custom_resource_definitions, describe_defaults

CRDS = {crd["spec"]["names"]["kind"]: crd for crd in custom_resource_definitions()}


def root_schema(kind: str) -> dict[str, Any]:
    schema: dict[str, Any] = CRDS[kind]["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def properties(node: dict[str, Any], path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path as `kubectl explain` spells it, schema) of every property below `node`."""
    for name, schema in (node.get("properties") or {}).items():
        yield f"{path}.{name}", schema
        yield from properties(schema, f"{path}.{name}")
    for key in ("items", "additionalProperties"):  # list items and map values explain as such
        if isinstance(node.get(key), dict):
            yield from properties(node[key], path)


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_every_property_has_a_description(kind: str) -> None:
    found = list(properties(root_schema(kind), kind.lower()))
    assert len(found) > 40, "the walk must reach the nested fields"
    # The API server refuses a description of `metadata` and publishes ObjectMeta's own.
    missing = [
        path
        for path, schema in found
        if not (schema.get("description") or "").strip() and path != f"{kind.lower()}.metadata"
    ]
    assert not missing, f"{kind}: fields without a description: {missing}"


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_metadata_declares_nothing_the_api_server_refuses(kind: str) -> None:
    """Only `name`/`generateName` may be declared there, and no description of `metadata`."""
    metadata = root_schema(kind)["properties"]["metadata"]
    assert set(metadata) == {"type", "properties"}
    assert set(metadata["properties"]) <= {"name", "generateName"}


@pytest.mark.parametrize("kind", sorted(CRDS))
def test_nested_fields_of_spec_and_status_are_reached(kind: str) -> None:
    paths = {path for path, _ in properties(root_schema(kind), kind.lower())}
    expected = {
        "HelmfileState": [
            "helmfilestate.spec.releases.helm.timeout",
            "helmfilestate.spec.releases.valuesFrom.key",
            "helmfilestate.spec.releases.driftDetection.ignore.target.labels",
            "helmfilestate.spec.environments.valuesFrom.optional",
            "helmfilestate.spec.repositories.caSecretRef",
            "helmfilestate.status.counts.disabled",
            "helmfilestate.status.releases.chartVersion",
            "helmfilestate.status.conditions.lastTransitionTime",
        ],
        "HelmfileRelease": [
            "helmfilerelease.spec.chart.repository.insecureSkipTlsVerify",
            "helmfilerelease.spec.set.value",
            "helmfilerelease.status.inProgress.revisionBefore",
            "helmfilerelease.status.lastAttempted.durationSeconds",
            "helmfilerelease.status.history.digest",
            "helmfilerelease.status.inventory.apiVersion",
            "helmfilerelease.status.drift.objects.paths",
        ],
    }[kind]
    assert set(expected) <= paths, set(expected) - paths


def spec_models() -> list[type[BaseModel]]:
    """Every model reachable from the two specs (what users write)."""
    seen: list[type[BaseModel]] = []
    todo: list[type[BaseModel]] = [models.HelmfileStateSpec, models.HelmfileReleaseSpec]
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.append(model)
        for field in model.model_fields.values():
            todo += [t for t in _model_types(field.annotation) if t not in seen]
    return seen


def _model_types(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [t for arg in getattr(annotation, "__args__", ()) for t in _model_types(arg)]


def test_spec_models_are_all_walked() -> None:
    names = {model.__name__ for model in spec_models()}
    assert {"HelmOptions", "DriftIgnoreTarget", "EnvironmentValuesReference", "SetValue"} <= names


def test_the_crd_states_every_scalar_default_of_the_specs() -> None:
    """The API server applies these defaults, and `kubectl explain` shows only descriptions."""
    described = {
        schema.get("description")
        for kind in CRDS
        for _, schema in properties(root_schema(kind)["properties"]["spec"], "spec")
    }
    checked = 0
    for model in spec_models():
        for name, field in model.model_fields.items():
            default = field.default
            if field.is_required() or default in (None, "") or field.default_factory is not None:
                continue
            value = getattr(default, "value", default)
            written = str(value).lower() if isinstance(value, bool) else str(value)
            sentence = f"{field.description} Default: `{written}`."
            assert sentence in described, f"{model.__name__}.{name}"
            checked += 1
    assert checked >= 10


@pytest.mark.parametrize("name", sorted(models.HelmOptions.model_fields))
def test_helm_options_state_the_defaults_that_apply_when_unset(name: str) -> None:
    """Unset helm options fall through to DEFAULT_HELM_OPTIONS: the text must say what that is."""
    field = models.HelmOptions.model_fields[name]
    value = getattr(models.DEFAULT_HELM_OPTIONS, name)
    assert f"Default: `{_written(value)}`." in (field.description or ""), name


def _written(value: object) -> str:
    """`true`, `300s`, `{install: Create, upgrade: Skip}`: a default as the docs spell it."""
    if isinstance(value, models.Model):
        return "{" + ", ".join(f"{k}: {_written(v)}" for k, v in value.to_wire().items()) + "}"
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_describe_defaults_leaves_empty_and_already_described_defaults_alone() -> None:
    schema = {
        "properties": {
            "a": {"type": "boolean", "default": False, "description": "A."},
            "b": {"type": "array", "default": [], "description": "B."},
            "c": {"type": "string", "default": "x", "description": "C. Default: the other one."},
            "d": {"type": "integer", "default": 3},
        }
    }
    described = describe_defaults(schema)["properties"]
    assert described["a"]["description"] == "A. Default: `false`."
    assert described["b"]["description"] == "B."
    assert described["c"]["description"] == "C. Default: the other one."
    assert "description" not in described["d"]
