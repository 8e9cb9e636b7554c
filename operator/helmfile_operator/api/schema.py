"""JSON Schemas (draft 2020-12) of both kinds, whole objects, for editors and CI linters.

Generated from the same pydantic models as the CRDs, but without the structural-schema
conversion: `$defs` stay shared and unknown fields stay errors (`additionalProperties: false`),
so that an editor flags a misspelt field, which the API server would prune silently. The CEL
rules of the CRDs (e.g. `spec.environment` names an entry of `spec.environments`) have no JSON
Schema equivalent: only the API server checks them.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from helmfile_operator.api.crd import (
    METADATA_DESCRIPTION,
    SPEC_DESCRIPTION,
    STATUS_DESCRIPTION,
    describe_defaults,
)
from helmfile_operator.api.models import (
    API_VERSION,
    DNS_LABEL,
    DNS_SUBDOMAIN,
    DNS_SUBDOMAIN_MAX,
    LABEL_VALUE_MAX,
    HelmfileReleaseSpec,
    HelmfileReleaseStatus,
    HelmfileStateSpec,
    HelmfileStateStatus,
)

Schema = dict[str, Any]
DIALECT = "https://json-schema.org/draft/2020-12/schema"

# Keywords whose value is a map of names to schemas, or one schema or a list of schemas.
_SCHEMA_MAPS = ("properties", "$defs", "patternProperties")
_SCHEMA_VALUES = ("items", "additionalProperties", "anyOf", "oneOf", "allOf", "prefixItems", "not")


def _clean(node: Any) -> Any:
    """Without pydantic's generated titles ("Values From": noise in an editor's hover) and the
    CRD-only `x-kubernetes-*` keywords. Only schema positions are cleaned, never a default."""
    if isinstance(node, list):
        return [_clean(item) for item in node]
    if not isinstance(node, dict):
        return node
    result: Schema = {}
    for key, value in node.items():
        if key == "title" or key.startswith("x-kubernetes-"):
            continue
        if key in _SCHEMA_MAPS:
            result[key] = {name: _clean(schema) for name, schema in value.items()}
        elif key in _SCHEMA_VALUES:
            result[key] = _clean(value)
        else:
            result[key] = value
    return result


def _model_defs(model: type[BaseModel], *, defaults: bool) -> dict[str, Schema]:
    """The model and every model it uses, by name, referring to each other as `#/$defs/…`."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs: dict[str, Schema] = raw.pop("$defs", {})
    defs[model.__name__] = raw
    if defaults:
        defs = describe_defaults({"$defs": defs})["$defs"]
    cleaned: dict[str, Schema] = _clean({"$defs": defs})["$defs"]
    return cleaned


def _string_map(description: str) -> Schema:
    return {
        "type": "object",
        "description": description,
        "additionalProperties": {"type": "string"},
    }


def _metadata(name_max: int) -> Schema:
    """What a manifest sets of the metadata; the rest (uid, resourceVersion…) the API server
    writes, so it is allowed but not described."""
    return {
        "type": "object",
        "description": METADATA_DESCRIPTION,
        "properties": {
            "name": {
                "type": "string",
                "description": f"Name of the object (a DNS subdomain, at most {name_max} "
                "characters).",
                "pattern": DNS_SUBDOMAIN,
                "maxLength": name_max,
            },
            "generateName": {
                "type": "string",
                "description": "Prefix of a name the API server generates, when `name` is unset.",
            },
            "namespace": {
                "type": "string",
                "description": "Namespace of the object. Default: that of the kubectl context.",
                "pattern": DNS_LABEL,
                "maxLength": 63,
            },
            "labels": _string_map("Labels of the object."),
            "annotations": _string_map("Annotations of the object."),
        },
    }


def object_schema(
    kind: str, spec: type[BaseModel], status: type[BaseModel], name_max: int
) -> Schema:
    """The JSON Schema of a whole `kind` object: apiVersion, kind, metadata, spec, status."""
    defs = _model_defs(spec, defaults=True)
    for name, schema in _model_defs(status, defaults=False).items():
        assert defs.setdefault(name, schema) == schema, f"two different models named {name}"
    return {
        "$schema": DIALECT,
        "title": kind,
        "description": (spec.__doc__ or kind).strip().splitlines()[0],
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": API_VERSION, "description": f"Always `{API_VERSION}`."},
            "kind": {"const": kind, "description": f"Always `{kind}`."},
            "metadata": _metadata(name_max),
            "spec": {"$ref": f"#/$defs/{spec.__name__}", "description": SPEC_DESCRIPTION},
            "status": {
                "$ref": f"#/$defs/{status.__name__}",
                "description": STATUS_DESCRIPTION,
                "readOnly": True,
            },
        },
        "additionalProperties": False,
        "$defs": dict(sorted(defs.items())),
    }


def json_schemas() -> dict[str, Schema]:
    """File name → schema, as committed in `schemas/`."""
    return {
        # A state's name is the value of a label on each of its HelmfileReleases (see ROOT_RULES).
        "helmfilestate.json": object_schema(
            "HelmfileState", HelmfileStateSpec, HelmfileStateStatus, LABEL_VALUE_MAX
        ),
        "helmfilerelease.json": object_schema(
            "HelmfileRelease", HelmfileReleaseSpec, HelmfileReleaseStatus, DNS_SUBDOMAIN_MAX
        ),
    }


def schema_files() -> dict[str, str]:
    """File name → JSON text."""
    return {
        name: json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
        for name, schema in json_schemas().items()
    }
