"""Every label value the operator writes is bounded by the CRDs; no release may need itself."""

from __future__ import annotations

from typing import Any

from helmfile_operator.api.crd import custom_resource_definitions
from helmfile_operator.api.models import LABEL_VALUE_MAX
from helmfile_operator.reconcile.context import STATE_LABEL

STATE_NAME_MESSAGE = (
    "metadata.name: at most 63 characters, because it is used as the value of the label "
    "helmfile.dev/state on every HelmfileRelease; choose a shorter name"
)
SELF_NEEDS_MESSAGE = (
    "spec.needs must not contain the HelmfileRelease's own name (metadata.name): a release "
    "cannot wait for itself; remove that entry"
)


def _schema(kind: str) -> dict[str, Any]:
    crd = next(c for c in custom_resource_definitions() if c["spec"]["names"]["kind"] == kind)
    schema: dict[str, Any] = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_state_name_is_bounded_by_a_root_rule() -> None:
    assert _schema("HelmfileState")["x-kubernetes-validations"] == [
        {
            "rule": "self.metadata.name.size() <= 63",
            "message": STATE_NAME_MESSAGE,
            "fieldPath": ".metadata.name",
            "reason": "FieldValueInvalid",
        }
    ]
    assert STATE_LABEL in STATE_NAME_MESSAGE  # the message names the label really written


def test_release_template_name_fits_its_label() -> None:
    """`helmfile.dev/release` carries spec.releases[].name: bounded and label-shaped already."""
    name = _schema("HelmfileState")["properties"]["spec"]["properties"]["releases"]["items"][
        "properties"
    ]["name"]
    assert name["maxLength"] <= LABEL_VALUE_MAX
    assert name["pattern"] == "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"


def test_release_needing_itself_is_rejected_by_a_root_rule() -> None:
    assert _schema("HelmfileRelease")["x-kubernetes-validations"] == [
        {
            "rule": "!has(self.spec.needs) || !(self.metadata.name in self.spec.needs)",
            "message": SELF_NEEDS_MESSAGE,
            "fieldPath": ".spec.needs",
            "reason": "FieldValueInvalid",
        }
    ]
