"""CustomResourceDefinitions generated from the pydantic models.

pydantic emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3 schema. The conversion
inlines `$ref`s, turns `Optional[X]` into `X` + `nullable`, keeps `Any`-typed values as
`x-kubernetes-preserve-unknown-fields`, and drops what the API server refuses (`title`,
`examples`, `additionalProperties: false`, `const`).
"""

from __future__ import annotations

import copy
from typing import Any

import yaml
from pydantic import BaseModel

from helmfile_operator.api.models import (
    GROUP,
    LABEL_VALUE_MAX,
    VERSION,
    HelmfileReleaseSpec,
    HelmfileReleaseStatus,
    HelmfileStateSpec,
    HelmfileStateStatus,
)

Schema = dict[str, Any]
_DROPPED_KEYS = {"title", "examples"}


def _structural(node: Any, defs: dict[str, Schema]) -> Any:
    if isinstance(node, list):
        return [_structural(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].rsplit("/", 1)[1]])
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    node = dict(node)
    any_of = node.pop("anyOf", None)
    if any_of is not None:
        non_null = [option for option in any_of if option.get("type") != "null"]
        if len(non_null) == 1:
            node = {**_structural(non_null[0], defs), **node}
            if len(non_null) < len(any_of):
                node["nullable"] = True
        else:  # a genuine union: leave it to the operator to validate
            node["x-kubernetes-preserve-unknown-fields"] = True
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if node.get("additionalProperties") is False:
        del node["additionalProperties"]
    if node.get("additionalProperties") is True:
        del node["additionalProperties"]
        node["x-kubernetes-preserve-unknown-fields"] = True
    result: Schema = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or key == "$defs":
            continue
        if key == "properties":
            result[key] = {name: _structural(prop, defs) for name, prop in value.items()}
        elif key == "x-kubernetes-validations":  # CEL rules (from the models), not schemas
            result[key] = copy.deepcopy(value)
        else:
            result[key] = _structural(value, defs)
    if "enum" in result and "type" not in result:
        result["type"] = "string"
    if not result.get("type") and not result.get("x-kubernetes-preserve-unknown-fields"):
        # `Any`: free-form JSON (e.g. a `set` value); the API server must keep it as it is.
        result["x-kubernetes-preserve-unknown-fields"] = True
    if (
        result.get("type") == "object"
        and "properties" not in result
        and ("additionalProperties" not in result)
    ):
        result["x-kubernetes-preserve-unknown-fields"] = True
    return result


def _scalar_text(value: Any) -> str | None:
    """A default as it is written in YAML, or None for a default not worth stating."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float) or (isinstance(value, str) and value):
        return str(value)
    return None  # empty strings, lists and maps: "empty" needs no sentence


def describe_defaults(node: Any) -> Any:
    """Appends "Default: `x`." to the description of every schema with a scalar default:
    `kubectl explain` shows descriptions but not defaults, and a sentence the generator writes
    cannot disagree with the default the API server applies."""
    if isinstance(node, list):
        return [describe_defaults(item) for item in node]
    if not isinstance(node, dict):
        return node
    result: Schema = {}
    for key, value in node.items():
        if key in ("properties", "$defs"):
            result[key] = {name: describe_defaults(schema) for name, schema in value.items()}
        elif key in ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "prefixItems"):
            result[key] = describe_defaults(value)
        else:
            result[key] = value
    text = _scalar_text(result.get("default"))
    if text is not None and "description" in result and "Default:" not in result["description"]:
        result["description"] = f"{result['description']} Default: `{text}`."
    return result


def openapi_schema(model: type[BaseModel]) -> Schema:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    schema: Schema = _structural(raw, raw.get("$defs", {}))
    return schema


def _rule(rule: str, message: str, field_path: str | None = None) -> Schema:
    """One `x-kubernetes-validations` entry: the API server rejects the object with `message`."""
    entry: Schema = {"rule": rule, "message": message}
    if field_path is not None:
        entry["fieldPath"] = field_path
    entry["reason"] = "FieldValueInvalid"
    return entry


# A CRD may declare only `name` and `generateName` of the metadata, and no description of it (the
# API server publishes ObjectMeta's own). `name` is declared so that a root rule's fieldPath can
# point at it: the error then names `metadata.name` instead of `<nil>`.
_METADATA: Schema = {
    "type": "object",
    "properties": {"name": {"type": "string", "description": "Name of the object."}},
}
# `kubectl explain` shows these for the top-level fields; the models describe everything below.
# The JSON Schemas (schema.py), which may describe `metadata`, use them too.
METADATA_DESCRIPTION = "Standard object metadata: name, namespace, labels, annotations."
SPEC_DESCRIPTION = "What to deploy: the desired state, written by users."
STATUS_DESCRIPTION = "What the operator observed and did; written by the operator only."

# Rules on the whole object, by kind: only there may CEL read `metadata.name`.
ROOT_RULES: dict[str, list[Schema]] = {
    "HelmfileState": [
        # Otherwise every child apply fails with 422 and the state never gets a condition.
        _rule(
            f"self.metadata.name.size() <= {LABEL_VALUE_MAX}",
            f"metadata.name: at most {LABEL_VALUE_MAX} characters, because it is used as the "
            "value of the label helmfile.dev/state on every HelmfileRelease; choose a shorter name",
            ".metadata.name",
        )
    ],
    "HelmfileRelease": [
        # A release waiting for itself to be Ready never installs (nor uninstalls).
        _rule(
            "!has(self.spec.needs) || !(self.metadata.name in self.spec.needs)",
            "spec.needs must not contain the HelmfileRelease's own name (metadata.name): a "
            "release cannot wait for itself; remove that entry",
            ".spec.needs",
        )
    ],
}


def _condition_column(name: str, condition: str, priority: int = 0) -> dict[str, Any]:
    column: dict[str, Any] = {
        "name": name,
        "type": "string",
        "jsonPath": f'.status.conditions[?(@.type=="{condition}")].status',
    }
    if priority:
        column["priority"] = priority
    return column


_STATUS_MESSAGE = {
    "name": "Status",
    "type": "string",
    "jsonPath": '.status.conditions[?(@.type=="Ready")].message',
    "priority": 1,
}
_AGE = {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}


def _crd(
    kind: str,
    plural: str,
    short: str,
    spec: type[BaseModel],
    status: type[BaseModel],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    spec_schema = describe_defaults(openapi_schema(spec))
    spec_schema["description"] = SPEC_DESCRIPTION  # the model's docstring describes the kind
    status_schema = openapi_schema(status)
    status_schema["description"] = STATUS_DESCRIPTION
    if kind == "HelmfileState":
        # Release names are unique within a state: a list-map gives a native, cheap check.
        releases = spec_schema["properties"]["releases"]
        releases["x-kubernetes-list-type"] = "map"
        releases["x-kubernetes-list-map-keys"] = ["name"]
        # A better error at `kubectl apply` time than a Stalled state afterwards.
        spec_schema["x-kubernetes-validations"] = [
            _rule(
                "self.environment == 'default' || "
                "(has(self.environments) && self.environment in self.environments)",
                "spec.environment must name an entry of spec.environments (or be 'default')",
                ".environment",
            )
        ]
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": kind.lower(),
                "shortNames": [short],
                "categories": ["helmfile"],
            },
            "scope": "Namespaced",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (spec.__doc__ or kind).strip().splitlines()[0],
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {
                                    "type": "string",
                                    "description": f"Always `{GROUP}/{VERSION}`.",
                                },
                                "kind": {"type": "string", "description": f"Always `{kind}`."},
                                "metadata": copy.deepcopy(_METADATA),
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                            "x-kubernetes-validations": copy.deepcopy(ROOT_RULES[kind]),
                        }
                    },
                }
            ],
        },
    }


def custom_resource_definitions() -> list[dict[str, Any]]:
    state = _crd(
        "HelmfileState",
        "helmfilestates",
        "hfs",
        HelmfileStateSpec,
        HelmfileStateStatus,
        [
            _condition_column("Ready", "Ready"),
            {"name": "Environment", "type": "string", "jsonPath": ".status.environment"},
            {"name": "Releases", "type": "integer", "jsonPath": ".status.counts.total"},
            {"name": "Ready-Releases", "type": "integer", "jsonPath": ".status.counts.ready"},
            _STATUS_MESSAGE,
            _AGE,
        ],
    )
    release = _crd(
        "HelmfileRelease",
        "helmfilereleases",
        "hfr",
        HelmfileReleaseSpec,
        HelmfileReleaseStatus,
        [
            {"name": "Release", "type": "string", "jsonPath": ".spec.releaseName"},
            {"name": "Target", "type": "string", "jsonPath": ".spec.targetNamespace"},
            {
                "name": "Cluster",
                "type": "string",
                "jsonPath": ".status.cluster.name",
                "priority": 1,  # -o wide: most releases are in the operator's own cluster
            },
            {"name": "Chart", "type": "string", "jsonPath": ".status.chartName"},
            {"name": "Version", "type": "string", "jsonPath": ".status.chartVersion"},
            {"name": "Revision", "type": "integer", "jsonPath": ".status.revision"},
            _condition_column("Ready", "Ready"),
            _condition_column("Drifted", "Drifted"),
            _STATUS_MESSAGE,
            _AGE,
        ],
    )
    return [state, release]


def validation_messages() -> dict[str, list[str]]:
    """Kind → the messages of its CEL rules, root first, each once, as the API server reports
    them."""

    def walk(node: Any) -> list[str]:
        if isinstance(node, list):
            return [message for item in node for message in walk(item)]
        if not isinstance(node, dict):
            return []
        own = [rule["message"] for rule in node.get("x-kubernetes-validations", [])]
        return own + [
            m for k, v in node.items() if k != "x-kubernetes-validations" for m in walk(v)
        ]

    # A rule of a shared type (the helm options' timeout) appears at every place that uses it.
    return {
        crd["spec"]["names"]["kind"]: list(
            dict.fromkeys(walk(crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]))
        )
        for crd in custom_resource_definitions()
    }


def crd_files() -> dict[str, str]:
    """File name → YAML, as committed in `crds/` and the chart."""
    header = "# Generated by `helmfile-operator crds` from the pydantic models. Do not edit.\n"
    return {
        f"{crd['spec']['group']}_{crd['spec']['names']['plural']}.yaml": header
        + yaml.safe_dump(crd, sort_keys=False, width=100)
        for crd in custom_resource_definitions()
    }
