"""The command line's parsing and output, without a cluster (tests/integration/test_cli.py runs
the cluster commands against the real control plane)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from helmfile_operator.cli import main
from helmfile_operator.cli.cluster import in_order, parse_ref
from helmfile_operator.cli.cluster_commands import _print_plan
from helmfile_operator.kube import RELEASES, STATES

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = REPO_ROOT / "examples" / "ml-serving-stack" / "state.yaml"


@pytest.mark.parametrize(
    ("text", "plural", "name"),
    [
        ("hfs/shop", STATES, "shop"),
        ("shop", STATES, "shop"),
        ("hfr/shop-web", RELEASES, "shop-web"),
        ("helmfilestate/shop", STATES, "shop"),
        ("HelmfileReleases/x", RELEASES, "x"),
    ],
)
def test_object_references(text: str, plural: str, name: str) -> None:
    ref = parse_ref(text)
    assert (ref.plural, ref.name) == (plural, name)


@pytest.mark.parametrize("text", ["pods/x", "hfs/", "svc/web"])
def test_other_references_are_usage_errors(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", text]) == 2
    assert "use hfs/NAME or hfr/NAME" in capsys.readouterr().err


def test_releases_follow_the_install_order() -> None:
    def child(name: str, release: str) -> dict[str, Any]:
        return {
            "metadata": {"name": name},
            "spec": {"targetNamespace": "ns", "releaseName": release},
        }

    children = [child("s-web", "web"), child("s-extra", "extra"), child("s-db", "db")]
    ordered = in_order(children, [["ns/db"], ["ns/web"]])
    assert [c["metadata"]["name"] for c in ordered] == ["s-db", "s-web", "s-extra"]


def test_render_prints_the_releases_the_operator_would_write(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["render", "-f", str(EXAMPLE), "-e", "prod"]) == 0
    releases = list(yaml.safe_load_all(capsys.readouterr().out))
    names = [r["metadata"]["name"] for r in releases]
    assert "ml-serving-stack-model-server" in names
    server = next(r for r in releases if r["spec"]["releaseName"] == "model-server")
    assert server["kind"] == "HelmfileRelease"
    assert server["spec"]["values"]["replicaCount"] == 3  # prod's replicas
    assert server["metadata"]["labels"]["helmfile.dev/state"] == "ml-serving-stack"
    assert "ownerReferences" not in server["metadata"]


def test_render_json_and_a_namespace_for_states_without_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": "one"},
        "spec": {
            "repositories": [{"name": "r", "url": "https://charts.example.com"}],
            "releases": [{"name": "app", "chart": "r/app", "version": "1.0.0"}],
        },
    }
    path = tmp_path / "state.yaml"
    path.write_text(yaml.safe_dump(state))
    assert main(["render", "-f", str(path), "-n", "team", "-o", "json"]) == 0
    release = json.loads(capsys.readouterr().out)
    assert release["metadata"]["namespace"] == "team"
    assert release["spec"]["targetNamespace"] == "team"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"environment": "nope"}, "RenderFailed: spec.environment: environment 'nope'"),
        ({"interval": "soon"}, "InvalidSpec: spec.interval"),
        (
            {"releases": [{"name": "a", "chart": "ml/redis", "needs": ["ghost"]}]},
            "spec.releases[0].needs[0]",
        ),
    ],
)
def test_render_errors_exit_1_with_the_operator_s_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], change: dict[str, Any], message: str
) -> None:
    state = yaml.safe_load(EXAMPLE.read_text())
    state["spec"].update(change)
    path = tmp_path / "state.yaml"
    path.write_text(yaml.safe_dump(state))
    assert main(["render", "-f", str(path)]) == 1
    assert message in capsys.readouterr().err


def test_render_reads_environment_config_maps_from_files_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    state = {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": "s", "namespace": "ns"},
        "spec": {
            "environments": {
                "default": {"valuesFrom": [{"kind": "ConfigMap", "name": "env", "key": "v.yaml"}]}
            },
            "repositories": [{"name": "r", "url": "https://charts.example.com"}],
            "releases": [
                {
                    "name": "app",
                    "chart": "r/app",
                    "valuesTemplate": ["size: {{ environment.values.size }}"],
                }
            ],
        },
    }
    config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "env", "namespace": "ns"},
        "data": {"v.yaml": "size: 7\n"},
    }
    state_path, cm_path = tmp_path / "s.yaml", tmp_path / "cm.yaml"
    state_path.write_text(yaml.safe_dump(state))
    cm_path.write_text(yaml.safe_dump(config_map))

    assert main(["render", "-f", str(state_path)]) == 1
    assert "--values-from" in capsys.readouterr().err
    assert main(["render", "-f", str(state_path), "--values-from", str(cm_path)]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["spec"]["values"] == {"size": 7}


def test_a_plan_is_shown_with_its_objects_paths_and_diff() -> None:
    console = Console(record=True, width=120, color_system=None)
    plan = {
        "action": "upgrade",
        "phase": "AwaitingApproval",
        "chartVersionFrom": "1.0.0",
        "chartVersionTo": "1.1.0",
        "objects": [
            {
                "kind": "Deployment",
                "name": "web",
                "namespace": "shop",
                "action": "update",
                "paths": ["/spec/replicas"],
            },
            {"kind": "ConfigMap", "name": "old", "namespace": "shop", "action": "delete"},
        ],
        "values": ["/replicaCount"],
    }
    _print_plan(console, "shop-web", plan, "-  replicas: 1\n+  replicas: 3\n")
    text = console.export_text()
    assert "~ shop-web  upgrade 1.0.0 → 1.1.0  [AwaitingApproval]" in text
    assert "update  Deployment shop/web: /spec/replicas" in text
    assert "delete  ConfigMap shop/old" in text
    assert "values: /replicaCount" in text
    assert "+  replicas: 3" in text


def test_plan_needs_a_reference_or_a_file(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan"]) == 2
    assert "give either hfs/NAME" in capsys.readouterr().err


def test_version_and_help() -> None:
    assert main(["--version"]) == 0
    assert main(["--help"]) == 0
    assert main(["status", "--help"]) == 0


def test_a_release_line_says_what_is_not_ready_and_why() -> None:
    from helmfile_operator.cli.cluster_commands import _release_line

    child = {
        "metadata": {"name": "shop-web", "generation": 2},
        "spec": {"chart": {"name": "demo-app", "version": "0.1.0"}},
        "status": {
            "observedGeneration": 2,
            "revision": 3,
            "chartName": "demo-app",
            "chartVersion": "0.1.0",
            "conditions": [
                {
                    "type": "Ready",
                    "status": "False",
                    "reason": "AwaitingApproval",
                    "message": "plan 5d1c: upgrade: 1 to update",
                },
                {"type": "Drifted", "status": "True", "reason": "DriftDetected"},
            ],
            "plan": {"id": "5d1c", "action": "upgrade", "phase": "AwaitingApproval"},
        },
    }
    text = _release_line(child).plain
    first, message = text.splitlines()
    assert first.startswith("shop-web  ⏸ AwaitingApproval  rev 3  demo-app 0.1.0")
    assert "drifted" in first and "plan 5d1c: upgrade" in first
    assert message == "plan 5d1c: upgrade: 1 to update"

    child["metadata"]["generation"] = 3  # a spec the operator has not seen yet
    assert "observing" in _release_line(child).plain

    child["status"]["cluster"] = {"name": "prod-eu", "server": "https://prod.example.com"}
    assert "→ cluster prod-eu" in _release_line(child).plain.splitlines()[0]
