"""A chart repository behind basic auth: credentials from a Secret, never shown anywhere."""

from __future__ import annotations

import base64
import functools
import http.server
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from testbed_fixtures import (
    ChartRepo,
    Cluster,
    OperatorProcess,
    apply,
    condition,
    helm_releases,
    wait_for_condition,
    wait_until,
)

USER = "charts"
PASSWORD = f"pw-{uuid.uuid4().hex}"


class _BasicAuthHandler(http.server.SimpleHTTPRequestHandler):
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def do_GET(self) -> None:
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="charts"')
            self.end_headers()
            return
        super().do_GET()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture(scope="module")
def private_repo(chart_repo: ChartRepo) -> Iterator[str]:
    """The test charts again, behind basic auth (the index's URLs are absolute to the open repo,
    so helm fetches the archives from there; the index itself needs the credentials)."""
    handler = functools.partial(_BasicAuthHandler, directory=str(chart_repo.directory))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _state(namespace: str, url: str) -> dict[str, Any]:
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": "private", "namespace": namespace},
        "spec": {
            "repositories": [{"name": "private", "url": url, "secretRef": "repo-credentials"}],
            "helmDefaults": {"timeout": "30s", "retries": 0},
            "releases": [{"name": "app", "chart": "private/demo-app", "version": "0.1.0"}],
        },
    }


def _credentials(namespace: str, password: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "repo-credentials", "namespace": namespace},
        "stringData": {"username": USER, "password": password},
    }


def test_private_repository_with_credentials_from_a_secret(
    cluster: Cluster, private_repo: str, operator: OperatorProcess, namespace: str
) -> None:
    # Without the Secret: a condition that names the field and the fix.
    apply(cluster, _state(namespace, private_repo))

    def unavailable() -> dict[str, Any] | None:
        got = cluster.run(
            "kubectl", "get", "hfr", "private-app", "-n", namespace, "-o", "json", check=False
        )
        if got.returncode != 0:
            return None  # the state has not created it yet
        ready = condition(json.loads(got.stdout), "Ready")
        return ready if ready and ready["reason"] == "RepositoryAccessUnavailable" else None

    found = wait_until(unavailable, message="the missing credentials to be reported")
    assert "spec.chart.repository.secretRef" in found["message"]
    assert "repo-credentials" in found["message"]

    # A wrong password: helm's failure is reported, the password is not.
    wrong = f"wrong-{uuid.uuid4().hex}"
    apply(cluster, _credentials(namespace, wrong))
    cluster.run(
        "kubectl", "annotate", "--overwrite", "-n", namespace, "hfs/private",
        f"helmfile.dev/reconcile-requested-at={uuid.uuid4().hex}",
    )  # fmt: skip
    wait_until(
        lambda: condition(cluster.kubectl_json("get", "hfr", "private-app", "-n", namespace),
                          "Stalled"),
        message="the refused credentials to stall the release",
    )  # fmt: skip

    # The right one: installed.
    apply(cluster, _credentials(namespace, PASSWORD))
    cluster.run(
        "kubectl", "annotate", "--overwrite", "-n", namespace, "hfs/private",
        f"helmfile.dev/reconcile-requested-at={uuid.uuid4().hex}",
    )  # fmt: skip
    wait_for_condition(cluster, "hfs/private", namespace, "Ready")
    assert helm_releases(cluster, namespace)["app"]["status"] == "deployed"

    for text in (
        cluster.run("kubectl", "get", "hfs,hfr", "-n", namespace, "-o", "json").stdout,
        cluster.run("kubectl", "get", "events", "-n", namespace, "-o", "json").stdout,
        operator.log(),
    ):
        assert PASSWORD not in text
        assert wrong not in text
