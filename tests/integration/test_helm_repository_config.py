"""Repository credentials through helm's own configuration files, with the real helm: an HTTPS
chart repository with basic auth and a private CA, its index and archives behind both.

No helm command line carries the username or the password; the index comes from `helm repo
update` reading the private repositories.yaml; helm runs in an empty directory, so a local chart
planted where the operator runs is never installed; the operator installs from such a repository
with `secretRef` and `caSecretRef`.
"""

from __future__ import annotations

import base64
import datetime
import functools
import http.server
import ipaddress
import shutil
import ssl
import threading
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helmfile_operator.api.models import ChartReference, ChartRepository, HelmOptions
from helmfile_operator.helm import HelmClient, HelmError, HelmErrorKind, RepositoryCredentials
from helmfile_operator.helm.argv import repo_alias
from helmfile_operator.helm.runner import RunResult
from testbed_fixtures import (
    ChartRepo,
    Cluster,
    OperatorProcess,
    apply,
    helm_releases,
    wait_for_condition,
)

USER = f"user-{uuid.uuid4().hex[:12]}"
PASSWORD = f"pw-{uuid.uuid4().hex}"


@dataclass
class TlsRepo:
    url: str
    ca_pem: str
    requests: list[tuple[str, bool]] = field(default_factory=list)  # (path, authorized)


def _certificates(directory: Path) -> tuple[str, Path, Path]:
    """A private CA (PEM) and a server certificate and key for 127.0.0.1 that it signed."""
    now = datetime.datetime.now(datetime.UTC)

    def build(
        subject: str, key: ec.EllipticCurvePrivateKey, issuer: x509.Name
    ) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        build("test CA", ca_key, ca_name)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        build("127.0.0.1", key, ca.subject)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = directory / "server.crt", directory / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca.public_bytes(serialization.Encoding.PEM).decode(), cert_file, key_file


@pytest.fixture(scope="module")
def tls_repo(
    cluster: Cluster, chart_repo: ChartRepo, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TlsRepo]:
    """The test charts over HTTPS (a private CA) behind basic auth, index and archives alike."""
    directory = tmp_path_factory.mktemp("tls-repo")
    for archive in chart_repo.directory.glob("*.tgz"):
        shutil.copy(archive, directory)
    ca_pem, cert_file, key_file = _certificates(tmp_path_factory.mktemp("tls"))
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    repo = TlsRepo(url="", ca_pem=ca_pem)

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            authorized = self.headers.get("Authorization") == expected
            repo.requests.append((self.path, authorized))
            if not authorized:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="charts"')
                self.end_headers()
                return
            super().do_GET()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(directory))
    )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert_file, key_file)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    repo.url = f"https://127.0.0.1:{server.server_address[1]}"
    cluster.run("helm", "repo", "index", str(directory), "--url", repo.url)
    threading.Thread(target=server.serve_forever, name="tls-repo", daemon=True).start()
    try:
        yield repo
    finally:
        server.shutdown()
        server.server_close()


class RecordingClient(HelmClient):
    """A HelmClient that keeps the argv of every helm run it starts."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.argvs: list[Sequence[str]] = []
        run = self.runner.run

        async def recording(command: str, argv: Sequence[str], **options: Any) -> RunResult:
            self.argvs.append(list(argv))
            return await run(command, argv, **options)

        self.runner.run = recording  # type: ignore[method-assign]


def _client(cluster: Cluster, work: Path) -> RecordingClient:
    return RecordingClient(
        str(cluster.bin_dir / "helm"), base_env=cluster.env, work_dir=work, max_timeout_seconds=60
    )


def _chart(repo: TlsRepo) -> ChartReference:
    return ChartReference(
        repository=ChartRepository(url=repo.url), name="demo-app", version="0.1.0"
    )


async def test_install_through_the_private_repository_config(
    cluster: Cluster, tls_repo: TlsRepo, namespace: str, tmp_path: Path
) -> None:
    client = _client(cluster, tmp_path / "work")
    (tmp_path / "work").mkdir()
    tls_repo.requests.clear()
    release = await client.upgrade_install(
        release="app",
        namespace=namespace,
        chart=_chart(tls_repo),
        values={},
        options=HelmOptions(timeout="60s"),
        credentials=RepositoryCredentials(USER, PASSWORD),
        ca_pem=tls_repo.ca_pem,
        tenant=namespace,
    )
    assert (release.status, release.chart_version) == ("deployed", "0.1.0")
    # The index (repo update) and the archive (upgrade) were both fetched with the credentials.
    fetched = {path.split("?")[0] for path, authorized in tls_repo.requests if authorized}
    assert "/index.yaml" in fetched
    assert "/demo-app-0.1.0.tgz" in fetched
    assert [argv[1:3] for argv in client.argvs] == [
        ["version", "--template={{.Version}}"],
        ["repo", "update"],
        ["upgrade", "--install"],
    ]
    for argv in client.argvs:
        assert USER not in " ".join(argv)
        assert PASSWORD not in " ".join(argv)
    # Nothing of the run is left but the tenant's helm home.
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["helm-homes"]
    assert [p.name for p in (tmp_path / "work" / "helm-homes").iterdir()] == [namespace]
    await client.uninstall(release="app", namespace=namespace, timeout_seconds=60, tenant=namespace)


async def test_refused_credentials(
    cluster: Cluster, tls_repo: TlsRepo, namespace: str, tmp_path: Path
) -> None:
    wrong = f"wrong-{uuid.uuid4().hex}"
    client = _client(cluster, tmp_path)
    with pytest.raises(HelmError) as caught:
        await client.upgrade_install(
            release="app",
            namespace=namespace,
            chart=_chart(tls_repo),
            values={},
            options=HelmOptions(timeout="30s"),
            credentials=RepositoryCredentials(USER, wrong),
            ca_pem=tls_repo.ca_pem,
            tenant=namespace,
        )
    assert caught.value.kind is HelmErrorKind.REPOSITORY_AUTH_FAILED
    assert caught.value.command == "repo update"
    assert "401" in caught.value.message
    assert wrong not in str(caught.value)
    assert not any(argv[1] == "upgrade" for argv in client.argvs)


async def test_without_the_ca_the_repository_is_not_trusted(
    cluster: Cluster, tls_repo: TlsRepo, namespace: str, tmp_path: Path
) -> None:
    client = _client(cluster, tmp_path)
    with pytest.raises(HelmError) as caught:
        await client.upgrade_install(
            release="app",
            namespace=namespace,
            chart=_chart(tls_repo),
            values={},
            options=HelmOptions(timeout="30s"),
            credentials=RepositoryCredentials(USER, PASSWORD),
            tenant=namespace,
        )
    assert caught.value.kind is HelmErrorKind.REPOSITORY_UNREACHABLE
    assert "x509" in caught.value.message or "certificate" in caught.value.message


async def test_a_chart_planted_in_the_working_directory_is_never_used(
    cluster: Cluster,
    tls_repo: TlsRepo,
    namespace: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # `helm upgrade ALIAS/demo-app` would install ./ALIAS/demo-app if helm ran here.
    planted = tmp_path / "cwd" / repo_alias(tls_repo.url) / "demo-app"
    (planted / "templates").mkdir(parents=True)
    (planted / "Chart.yaml").write_text("apiVersion: v2\nname: demo-app\nversion: 6.6.6\n")
    monkeypatch.chdir(tmp_path / "cwd")
    client = _client(cluster, tmp_path)
    release = await client.upgrade_install(
        release="planted",
        namespace=namespace,
        chart=_chart(tls_repo),
        values={},
        options=HelmOptions(timeout="60s", wait=False),
        credentials=RepositoryCredentials(USER, PASSWORD),
        ca_pem=tls_repo.ca_pem,
        tenant=namespace,
    )
    assert release.chart_version == "0.1.0"


def test_the_operator_installs_from_the_repository(
    cluster: Cluster, tls_repo: TlsRepo, operator: OperatorProcess, namespace: str
) -> None:
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "repo-credentials", "namespace": namespace},
            "stringData": {"username": USER, "password": PASSWORD},
        },
    )
    apply(
        cluster,
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "repo-ca", "namespace": namespace},
            "stringData": {"ca.crt": tls_repo.ca_pem},
        },
    )
    apply(
        cluster,
        {
            "apiVersion": "helmfile.dev/v1alpha1",
            "kind": "HelmfileState",
            "metadata": {"name": "tls", "namespace": namespace},
            "spec": {
                "repositories": [
                    {
                        "name": "tls",
                        "url": tls_repo.url,
                        "secretRef": "repo-credentials",
                        "caSecretRef": "repo-ca",
                    }
                ],
                "helmDefaults": {"timeout": "60s", "retries": 0},
                "releases": [{"name": "app", "chart": "tls/demo-app", "version": "0.1.0"}],
            },
        },
    )
    wait_for_condition(cluster, "hfs/tls", namespace, "Ready")
    assert helm_releases(cluster, namespace)["app"]["status"] == "deployed"
    for text in (
        cluster.run("kubectl", "get", "hfs,hfr", "-n", namespace, "-o", "json").stdout,
        cluster.run("kubectl", "get", "events", "-n", namespace, "-o", "json").stdout,
        operator.log(),
    ):
        assert PASSWORD not in text
        assert USER not in text
