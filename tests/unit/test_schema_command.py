"""`helmfile-operator schema`: JSON Schemas of both kinds, committed in schemas/, that accept the
examples and refuse what the API would refuse (or silently prune)."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from helmfile_operator.api.crd import custom_resource_definitions
from helmfile_operator.api.models import HelmfileReleaseSpec, HelmfileStateSpec
from helmfile_operator.api.schema import DIALECT, json_schemas, schema_files
from helmfile_operator.cli import main

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(REPO_ROOT.glob("examples/*/state.yaml"))
SCHEMAS = json_schemas()
KINDS = {"HelmfileState": "helmfilestate.json", "HelmfileRelease": "helmfilerelease.json"}
FIX = "regenerate with `helmfile-operator schema --output-dir schemas`"


def test_schemas_directory_matches_the_models() -> None:
    committed = {path.name: path.read_text() for path in (REPO_ROOT / "schemas").glob("*.json")}
    assert committed == schema_files(), f"schemas/ is stale: {FIX}"


def test_the_command_writes_both_files(tmp_path: Path) -> None:
    assert main(["schema", "--output-dir", str(tmp_path / "out")]) == 0
    written = {path.name: path.read_text() for path in (tmp_path / "out").iterdir()}
    assert written == schema_files()
    assert set(written) == set(KINDS.values())


def test_the_command_prints_a_stream_of_both_documents(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["schema"]) == 0
    text, documents, decoder = capsys.readouterr().out, [], json.JSONDecoder()
    position = 0
    while text[position:].strip():
        document, end = decoder.raw_decode(text, position)
        documents.append(document)
        position = end + 1
    assert documents == list(SCHEMAS.values())


# --- structure ----------------------------------------------------------------------------------

# The keywords the schemas use: the validator below implements every assertion among them.
ASSERTIONS = {
    "$ref", "anyOf", "type", "const", "enum", "properties", "required", "additionalProperties",
    "items", "pattern", "minLength", "maxLength", "minimum", "minItems", "maxItems",
}  # fmt: skip
ANNOTATIONS = {"$schema", "$defs", "title", "description", "default", "examples", "readOnly"}


def schemas_in(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """`node` and every schema nested in it."""
    yield node
    for key in ("properties", "$defs"):
        for child in (node.get(key) or {}).values():
            yield from schemas_in(child)
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from schemas_in(node[key])
    for child in node.get("anyOf", []):
        yield from schemas_in(child)


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_draft_2020_12_with_known_keywords_and_resolvable_refs(kind: str) -> None:
    schema = SCHEMAS[KINDS[kind]]
    assert schema["$schema"] == DIALECT == "https://json-schema.org/draft/2020-12/schema"
    assert schema["properties"]["kind"]["const"] == kind
    assert schema["properties"]["apiVersion"]["const"] == "helmfile.dev/v1alpha1"
    assert set(schema["required"]) == {"apiVersion", "kind", "metadata", "spec"}
    for node in schemas_in(schema):
        unknown = set(node) - ASSERTIONS - ANNOTATIONS
        assert not unknown, f"{kind}: keywords the tests do not know: {unknown}"
        if "$ref" in node:
            assert node["$ref"].startswith("#/$defs/")
            assert node["$ref"].removeprefix("#/$defs/") in schema["$defs"], node["$ref"]
        if node is not schema:
            assert "title" not in node, "generated titles are noise in an editor's hover"


@pytest.mark.parametrize("kind", KINDS)
def test_every_property_has_a_description(kind: str) -> None:
    missing = [
        name
        for node in schemas_in(SCHEMAS[KINDS[kind]])
        for name, prop in (node.get("properties") or {}).items()
        if not prop.get("description")
    ]
    assert not missing, missing


def resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = schema["$defs"][node["$ref"].removeprefix("#/$defs/")]
    for option in node.get("anyOf", []):  # optional fields: the non-null branch
        if option.get("type") != "null":
            return resolve(schema, option)
    return node


def json_paths(schema: dict[str, Any], node: dict[str, Any], path: str, depth: int = 0) -> set[str]:
    node = resolve(schema, node)
    found: set[str] = set()
    for name, prop in (node.get("properties") or {}).items():
        found |= {f"{path}.{name}", *json_paths(schema, prop, f"{path}.{name}", depth + 1)}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict) and depth < 20:
            found |= json_paths(schema, node[key], path, depth + 1)
    return found


def crd_paths(node: dict[str, Any], path: str) -> set[str]:
    found: set[str] = set()
    for name, prop in (node.get("properties") or {}).items():
        found |= {f"{path}.{name}", *crd_paths(prop, f"{path}.{name}")}
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            found |= crd_paths(node[key], path)
    return found


@pytest.mark.parametrize("kind", KINDS)
def test_spec_and_status_have_the_fields_of_the_crd(kind: str) -> None:
    schema = SCHEMAS[KINDS[kind]]
    (crd,) = [c for c in custom_resource_definitions() if c["spec"]["names"]["kind"] == kind]
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for part in ("spec", "status"):
        expected = crd_paths(root["properties"][part], part)
        assert json_paths(schema, schema["properties"][part], part) == expected


# --- validation ---------------------------------------------------------------------------------

TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
}


def _has_type(instance: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(instance, int) and not isinstance(instance, bool)
    if name == "number":
        return isinstance(instance, int | float) and not isinstance(instance, bool)
    return isinstance(instance, TYPES[name])


def errors(root: dict[str, Any], node: dict[str, Any], instance: Any, path: str) -> list[str]:
    """What of `instance` does not match `node`: the JSON Schema assertions listed in
    ASSERTIONS, as draft 2020-12 defines them (jsonschema is not a dependency)."""
    found: list[str] = []
    if "$ref" in node:
        target = root["$defs"][node["$ref"].removeprefix("#/$defs/")]
        found += errors(root, target, instance, path)
    if "anyOf" in node and all(errors(root, o, instance, path) for o in node["anyOf"]):
        found.append(f"{path}: matches none of anyOf")
    if "const" in node and instance != node["const"]:
        found.append(f"{path}: must be {node['const']!r}")
    if "enum" in node and instance not in node["enum"]:
        found.append(f"{path}: must be one of {node['enum']}")
    if "type" in node:
        names = node["type"] if isinstance(node["type"], list) else [node["type"]]
        if not any(_has_type(instance, name) for name in names):
            return [*found, f"{path}: must be {node['type']}"]
    if isinstance(instance, dict):
        properties = node.get("properties", {})
        found += [
            f"{path}.{key}: required" for key in node.get("required", []) if key not in instance
        ]
        for key, value in instance.items():
            if key in properties:
                found += errors(root, properties[key], value, f"{path}.{key}")
            elif node.get("additionalProperties") is False:
                found.append(f"{path}.{key}: unknown field")
            elif isinstance(node.get("additionalProperties"), dict):
                found += errors(root, node["additionalProperties"], value, f"{path}.{key}")
    if isinstance(instance, list):
        if len(instance) < node.get("minItems", 0) or len(instance) > node.get("maxItems", 1e9):
            found.append(f"{path}: wrong number of items")
        if "items" in node:
            for index, item in enumerate(instance):
                found += errors(root, node["items"], item, f"{path}[{index}]")
    if isinstance(instance, str):
        if "pattern" in node and not re.search(node["pattern"], instance):
            found.append(f"{path}: does not match {node['pattern']}")
        if not node.get("minLength", 0) <= len(instance) <= node.get("maxLength", 1e9):
            found.append(f"{path}: wrong length")
    if _has_type(instance, "number") and instance < node.get("minimum", instance):
        found.append(f"{path}: below {node['minimum']}")
    return found


def validate(document: dict[str, Any]) -> list[str]:
    schema = SCHEMAS[KINDS[document.get("kind", "HelmfileState")]]
    return errors(schema, schema, document, "")


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_examples_validate_against_the_schema(path: Path) -> None:
    document = yaml.safe_load(path.read_text())
    assert document["kind"] == "HelmfileState"
    assert validate(document) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.parent.name for p in EXAMPLES])
def test_examples_round_trip_through_the_models(path: Path) -> None:
    spec = yaml.safe_load(path.read_text())["spec"]
    parsed = HelmfileStateSpec.model_validate(spec)
    assert parsed.model_dump(mode="json", by_alias=True, exclude_unset=True) == spec


def test_examples_exist() -> None:
    assert EXAMPLES


def test_a_rendered_release_validates() -> None:
    spec = HelmfileReleaseSpec.model_validate(
        {
            "releaseName": "redis",
            "targetNamespace": "ml-serving",
            "chart": {"repository": {"url": "oci://registry.example/charts"}, "name": "redis"},
            "helm": {"timeout": "120s", "retries": 1},
            "needs": ["ml-serving-stack-proxy"],
        }
    )
    document = {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileRelease",
        "metadata": {"name": "ml-serving-stack-redis", "namespace": "ml-serving"},
        "spec": spec.to_wire(),
        "status": {"revision": 2, "conditions": [], "failures": 0},
    }
    assert validate(document) == []


VALID: dict[str, Any] = {
    "apiVersion": "helmfile.dev/v1alpha1",
    "kind": "HelmfileState",
    "metadata": {"name": "stack", "namespace": "apps"},
    "spec": {
        "environment": "dev",
        "environments": {"dev": {"values": [{"replicas": 1}]}},
        "repositories": [{"name": "charts", "url": "https://charts.example"}],
        "releases": [{"name": "web", "chart": "charts/web", "valuesFrom": []}],
    },
}


def test_the_unbroken_document_validates() -> None:
    assert validate(VALID) == []


def _broken(change: str) -> dict[str, Any]:
    document = copy.deepcopy(VALID)
    release = document["spec"]["releases"][0]
    if change == "misspelt field":
        release["valueFrom"] = release.pop("valuesFrom", [])
    elif change == "not a duration":
        document["spec"]["interval"] = "10 minutes"
    elif change == "wrong kind":
        document["kind"] = "HelmfileRelase"
    elif change == "unknown drift mode":
        release["driftDetection"] = {"mode": "fix"}
    elif change == "ConfigMap only in environments":
        document["spec"]["environments"]["dev"]["valuesFrom"] = [{"kind": "Secret", "name": "x"}]
    elif change == "long state name":
        document["metadata"]["name"] = "x" * 64
    elif change == "negative retries":
        release["helm"] = {"retries": -1}
    elif change == "no spec":
        del document["spec"]
    return document


@pytest.mark.parametrize(
    "change",
    [
        "misspelt field",
        "not a duration",
        "wrong kind",
        "unknown drift mode",
        "ConfigMap only in environments",
        "long state name",
        "negative retries",
        "no spec",
    ],
)
def test_the_schema_refuses_what_the_api_refuses(change: str) -> None:
    """Each of these would be an error at `kubectl apply` (or a field silently pruned)."""
    schema = SCHEMAS[KINDS["HelmfileState"]]
    assert errors(schema, schema, _broken(change), ""), change
