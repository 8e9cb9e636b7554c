"""Committed generated files must match what the models generate today."""

from pathlib import Path

import yaml

from helmfile_operator.api.crd import crd_files
from helmfile_operator.api.docs import api_reference

REPO_ROOT = Path(__file__).resolve().parents[2]
FIX = "regenerate with `make generate`"


def test_crds_directory_matches_the_models() -> None:
    generated = crd_files()
    committed = {path.name: path.read_text() for path in (REPO_ROOT / "crds").glob("*.yaml")}
    assert committed == generated, f"crds/ is stale: {FIX}"


def test_api_reference_matches_the_models() -> None:
    assert (REPO_ROOT / "docs" / "api.md").read_text() == api_reference(), f"docs/api.md: {FIX}"


def test_crds_are_structural() -> None:
    """No construct the API server rejects in a structural schema survives the conversion."""

    def walk(node: object, path: str) -> None:
        if isinstance(node, dict):
            for banned in ("$ref", "anyOf", "allOf", "const", "title", "examples", "$defs"):
                assert banned not in node, f"{banned} at {path}"
            if "properties" in node:
                assert node.get("type") == "object", f"untyped object at {path}"
            for key, value in node.items():
                walk(value, f"{path}/{key}")
        elif isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, f"{path}/{index}")

    for text in crd_files().values():
        crd = yaml.safe_load(text)
        walk(crd["spec"]["versions"][0]["schema"], crd["metadata"]["name"])
