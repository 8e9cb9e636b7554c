"""Every example, as far as this machine can check it: the manifests of `examples/*/` pass the API
server with the CRDs installed (a server-side dry run), and each state renders with the operator's
renderer, every chart at a pinned version.

The kind walkthrough's pieces that need helm are checked here too: the operator chart with the
values hack/kind/up.sh installs it with, and the images the example's charts run once up.sh has
staged them (what up.sh pulls into the node).

Not checked: pulling public charts (no network here) and running containers (kwok simulates pods).
"""

from __future__ import annotations

import copy
import json
import re
import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from helmfile_operator.api.models import HelmfileStateSpec
from helmfile_operator.render.state import RenderedState, StateMeta, render_state
from testbed_fixtures import REPO_ROOT, Cluster

STATES = sorted(REPO_ROOT.glob("examples/*/state.yaml"))
UP = REPO_ROOT / "hack" / "kind" / "up.sh"
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
EXACT_VERSION = re.compile(r"\d+\.\d+\.\d+")


def example_id(path: Path) -> str:
    return path.parent.name


def documents(example: Path) -> list[dict[str, Any]]:
    """Every object of the YAML files beside the state (the charts' templates excluded)."""
    return [
        doc
        for path in sorted(example.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def the_state(example: Path) -> dict[str, Any]:
    (state,) = [d for d in documents(example) if d["kind"] == "HelmfileState"]
    return state


def into_namespace(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    """`doc` moved into the test's namespace (a dry run into a missing namespace is refused)."""
    doc = copy.deepcopy(doc)
    if doc["kind"] not in CLUSTER_SCOPED:
        doc["metadata"]["namespace"] = namespace
    for subject in doc.get("subjects", []):
        if subject.get("kind") == "ServiceAccount":
            subject["namespace"] = namespace
    return doc


def dry_run(cluster: Cluster, docs: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    items = {"apiVersion": "v1", "kind": "List", "items": docs}
    return cluster.run(
        "kubectl", "apply", "--dry-run=server", "-f", "-", input=json.dumps(items), check=False
    )


def render(state: dict[str, Any]) -> RenderedState:
    metadata = state["metadata"]
    meta = StateMeta(
        name=metadata["name"],
        namespace=metadata["namespace"],
        labels=metadata.get("labels") or {},
        annotations=metadata.get("annotations") or {},
    )
    return render_state(meta, HelmfileStateSpec.model_validate(state["spec"]))


def sourced(expression: str) -> str:
    """`expression` evaluated by bash with up.sh sourced (its settings and functions, not main;
    $0 must not be up.sh, which is how it tells being run from being sourced)."""
    return subprocess.run(
        ["bash", "-c", f'source "$1" && {expression}', "bash", str(UP)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout


def helm_template(cluster: Cluster, *argv: str) -> list[dict[str, Any]]:
    text = cluster.run("helm", "template", *argv).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def container_images(objects: list[dict[str, Any]]) -> set[str]:
    return {
        container["image"]
        for obj in objects
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet")
        for container in obj["spec"]["template"]["spec"]["containers"]
    }


# --- every example ------------------------------------------------------------------------------


def test_there_are_examples() -> None:
    assert {example_id(p) for p in STATES} >= {"ml-serving-stack", "hello-public-chart"}


@pytest.mark.parametrize("state_path", STATES, ids=example_id)
def test_example_manifests_pass_the_api_server(
    cluster: Cluster, crds: None, namespace: str, state_path: Path
) -> None:
    docs = [into_namespace(doc, namespace) for doc in documents(state_path.parent)]
    result = dry_run(cluster, docs)
    assert result.returncode == 0, result.stderr
    assert "(server dry run)" in result.stdout


def test_the_dry_run_rejects_what_the_crd_forbids(
    cluster: Cluster, crds: None, namespace: str
) -> None:
    """The check above is not vacuous: the same dry run refuses a state the CRD does not allow."""
    state = into_namespace(the_state(REPO_ROOT / "examples" / "hello-public-chart"), namespace)
    state["spec"]["interval"] = "ten minutes"
    result = dry_run(cluster, [state])
    assert result.returncode != 0
    assert "spec.interval" in result.stderr


@pytest.mark.parametrize("state_path", STATES, ids=example_id)
def test_example_state_renders_with_pinned_chart_versions(state_path: Path) -> None:
    state = the_state(state_path.parent)
    rendered = render(state)
    assert len(rendered.releases) == len(state["spec"]["releases"])
    for release in rendered.releases:
        version = release.spec.chart.version
        assert version and EXACT_VERSION.fullmatch(version), (
            f"{example_id(state_path)}: release {release.template_name} must pin an exact chart "
            f"version, not {version!r}"
        )


def test_public_chart_example_uses_a_public_repository() -> None:
    state = the_state(REPO_ROOT / "examples" / "hello-public-chart")
    (release,) = render(state).releases
    assert release.spec.chart.repository.url.startswith(("https://", "oci://"))
    assert not re.search(r"127\.0\.0\.1|localhost|example\.com", release.spec.chart.repository.url)


# --- the kind walkthrough's pieces that need helm -----------------------------------------------


def test_operator_chart_renders_with_the_walkthrough_values(cluster: Cluster) -> None:
    values = sourced('printf "%s\\n" "${CHART_VALUES[@]}"').splitlines()
    objects = helm_template(
        cluster,
        "helmfile-operator",
        str(REPO_ROOT / "charts" / "helmfile-operator"),
        "--namespace=helmfile-system",
        *values,
        "--set-string=podAnnotations.image-id=sha256:" + "0" * 64,
    )
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    assert container_images([deployment]) == {sourced('printf "%s" "$IMAGE"')}
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    # The tenant model: states without serviceAccountName run as their namespace's `default`.
    assert env["HELMFILE_OPERATOR_DEFAULT_SERVICE_ACCOUNT"] == "default"
    assert not [
        o
        for o in objects
        if o["kind"] == "ClusterRoleBinding" and o["roleRef"]["name"] == "cluster-admin"
    ]
    assert "image-id" in deployment["spec"]["template"]["metadata"]["annotations"]


def test_staged_example_charts_run_exactly_the_images_pulled(
    cluster: Cluster, tmp_path: Path
) -> None:
    staged = tmp_path / "charts"
    sourced(f'stage_charts "$EXAMPLE/charts" {shlex.quote(str(staged))}')
    pulled = set(sourced(f"chart_images {shlex.quote(str(staged))}").split())
    state = yaml.safe_load(sourced("rewrite_state"))
    placeholder = sourced('printf "%s" "$PLACEHOLDER_IMAGES"')

    # Every environment: each may switch other releases on (condition) and set other values.
    images: set[str] = set()
    for environment in state["spec"]["environments"]:
        state["spec"]["environment"] = environment
        for release in render(state).releases:
            values = tmp_path / f"{environment}-{release.template_name}.json"
            values.write_text(json.dumps(release.spec.values))
            objects = helm_template(
                cluster,
                release.spec.release_name,
                str(staged / release.spec.chart.name),
                f"--namespace={release.spec.target_namespace}",
                f"--values={values}",
            )
            images |= container_images(objects)
    assert images == pulled
    assert not [image for image in images if image.startswith(placeholder)]
