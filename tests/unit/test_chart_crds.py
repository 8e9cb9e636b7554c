"""The chart ships the CRDs (charts/helmfile-operator/crds/): byte-identical copies of crds/."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
CHART_CRDS = REPO_ROOT / "charts" / "helmfile-operator" / "crds"


def test_chart_crds_are_copies_of_the_generated_crds() -> None:
    generated = {path.name: path.read_bytes() for path in (REPO_ROOT / "crds").glob("*.yaml")}
    shipped = {path.name: path.read_bytes() for path in CHART_CRDS.iterdir()}
    assert generated, "crds/ is empty"
    stale = sorted(
        name
        for name in generated.keys() | shipped.keys()
        if generated.get(name) != shipped.get(name)
    )
    assert not stale, (
        f"charts/helmfile-operator/crds/ differs from crds/ in {stale}: "
        "cp crds/*.yaml charts/helmfile-operator/crds/ (after `make generate`)"
    )
