"""goyaml against the real helm: every document of the unit tests' table goes through
`helm template -f doc.yaml` with a chart that prints `{{ toJson .Values }}`. No cluster needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helmfile_operator import goyaml

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "hack"))
sys.path.insert(0, str(REPO_ROOT / "tests" / "unit"))

from test_goyaml import CASES, WHERE, Case, Refused  # noqa: E402

import testbed  # noqa: E402

TEMPLATE = "templates/values.yaml"


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """The test bed's helm, a chart printing its values as JSON, and an isolated helm home."""
    home = tmp_path_factory.mktemp("helm-home")
    chart = home / "parity"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: parity\nversion: 0.1.0\n")
    (chart / TEMPLATE).write_text("{{ toJson .Values }}\n")
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(home),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    return testbed.testbin_dir() / "helm", chart, env


def _helm_values(
    helm: tuple[Path, Path, dict[str, str]], text: str, tmp_path: Path
) -> tuple[int, Any]:
    """(exit code, the values helm's template saw, or its stderr)."""
    binary, chart, env = helm
    document = tmp_path / "doc.yaml"
    document.write_text(text, newline="")
    argv = ["template", "parity", str(chart), "-f", str(document), "--show-only", TEMPLATE]
    result = subprocess.run(
        [str(binary), *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if result.returncode != 0:
        return result.returncode, result.stderr
    body = [
        line for line in result.stdout.splitlines() if line and not line.startswith(("---", "#"))
    ]
    return 0, json.loads(body[-1])


def _as_helm_sees(value: Any) -> Any:
    """Helm's values pass through JSON into Go interface{}: every number is a float64."""
    if isinstance(value, dict):
        return {key: _as_helm_sees(child) for key, child in value.items()}
    if isinstance(value, list):
        return [_as_helm_sees(child) for child in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.id)
def test_goyaml_reads_values_as_helm_does(
    case: Case, helm: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    code, seen = _helm_values(helm, case.text, tmp_path)
    expected = case.expected
    if not isinstance(expected, Refused):
        assert code == 0, seen
        assert goyaml.load_values(case.text, WHERE) == expected
        assert _as_helm_sees(seen) == _as_helm_sees(expected)
        return
    with pytest.raises(goyaml.GoYAMLError):
        goyaml.load_values(case.text, WHERE)
    if expected.helm == "refuses":
        assert code != 0, f"helm accepted it: {seen}"
    else:
        # "random": helm keeps one of the colliding keys; "accepts": our bound is stricter.
        assert code == 0, seen
