"""The test bed's OCI registry serves the test charts to raw helm, and only with credentials."""

from __future__ import annotations

import ssl
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from testbed_fixtures import REPO_ROOT, Cluster, OciRegistry

DEMO_APP = yaml.safe_load((REPO_ROOT / "tests" / "charts" / "demo-app" / "Chart.yaml").read_text())


def test_registry_serves_pushed_charts(
    cluster: Cluster, oci_registry: OciRegistry, tmp_path: Path
) -> None:
    ref = f"{oci_registry.url}/demo-app"
    shown = cluster.run(
        "helm", "show", "chart", ref, "--version", DEMO_APP["version"], *oci_registry.helm_args
    )
    chart = yaml.safe_load(shown.stdout)
    assert (chart["name"], chart["version"]) == ("demo-app", DEMO_APP["version"])

    # Same CA, no login: the registry challenges for basic auth and helm (oras) has nothing to give.
    anonymous = cluster.run(
        "helm", "show", "chart", ref, "--version", DEMO_APP["version"],
        "--registry-config", str(tmp_path / "empty.json"), "--ca-file", str(oci_registry.ca_file),
        check=False,
    )  # fmt: skip
    assert anonymous.returncode != 0
    assert "basic credential not found" in anonymous.stderr, anonymous.stderr
    # The refusal is the registry's: the manifest, fetched without credentials, is a 401.
    manifest = f"https://{oci_registry.host}/v2/charts/demo-app/manifests/{DEMO_APP['version']}"
    context = ssl.create_default_context(cadata=oci_registry.ca_pem)
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(manifest, context=context, timeout=10)
    assert refused.value.code == 401
    assert refused.value.headers["WWW-Authenticate"].startswith("Basic ")


def test_registry_keeps_its_charts_across_a_restart(
    cluster: Cluster, private_oci_registry: OciRegistry
) -> None:
    ref = private_oci_registry.push(REPO_ROOT / "tests" / "charts" / "demo-app")
    assert ref == f"{private_oci_registry.url}/demo-app:{DEMO_APP['version']}"
    private_oci_registry.stop()
    down = cluster.run("helm", "show", "chart", ref, *private_oci_registry.helm_args, check=False)
    assert down.returncode != 0

    private_oci_registry.start()
    up = cluster.run("helm", "show", "chart", ref, *private_oci_registry.helm_args)
    assert "name: demo-app" in up.stdout
