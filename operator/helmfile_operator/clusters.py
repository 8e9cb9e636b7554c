"""Remote clusters: a tenant's kubeconfig Secret, checked, and the connections built from it.

A release with `spec.kubeConfig` runs helm, reads Helm's storage and checks drift in the cluster
that kubeconfig names; its HelmfileRelease and status stay in the operator's own cluster.

A kubeconfig is tenant data run by the operator, so it is checked before anything uses it:
- one context only (its `current-context`) is kept: the rest of the file is never read again;
- credentials must be inline (`token`, `client-certificate-data`, …): a file path
  (`tokenFile`, `client-key`, `certificate-authority`) would read a file of the operator's pod
  — its own ServiceAccount token — and send it to a server of the tenant's choosing;
- `exec` and `auth-provider` plugins run a command of the tenant's choosing in the operator's
  pod: refused unless the operator is started with `allow_kubeconfig_exec`.

Connections (API client, drift checker) are cached by the digest of the checked kubeconfig:
releases of one cluster share them, and a rotated Secret (a new digest) gets a new connection at
the next pass, without a restart. The API client is configured here, from the checked fields
only (not by the kubernetes client's loader, whose certificate files are shared process-wide by
content); helm gets the reduced kubeconfig in a private file of each run.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import hashlib
import json
import shutil
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from kubernetes import config
from kubernetes.client.configuration import Configuration

from helmfile_operator import goyaml
from helmfile_operator.api.models import KubeConfigReference
from helmfile_operator.helm.files import ensure_private_dir, write_private_file
from helmfile_operator.kube import AccessDenied, Kube, secret_text
from helmfile_operator.metrics import Metrics
from helmfile_operator.reconcile.drift import DriftChecker

DEFAULT_KEYS = ("value", "value.yaml")  # as Flux reads `kubeConfig.secretRef` without a key
MAX_CLUSTERS = 64  # connections kept, least recently used first out
_FILE_FIELDS = {
    "cluster": ("certificate-authority",),
    "user": ("tokenFile", "client-certificate", "client-key"),
}
_PLUGIN_FIELDS = ("exec", "auth-provider")
# client-go honours these and the Python client does not: helm and the operator's own reads would
# act as different identities. `serviceAccountName` is the way to impersonate.
_IMPERSONATION_FIELDS = ("as", "as-uid", "as-groups", "as-user-extra")
_CREDENTIAL_FIELDS = ("token", "username", "password")
MAX_NAME = 253
MAX_SERVER = 2048
# An evicted connection may still serve a pass that took it (a helm run lasts up to the helm
# timeout): its clients and files are closed this much later.
RETIRE_AFTER_SECONDS = 3900.0
KUBECONFIG_LIMITS = goyaml.Limits(max_chars=1024 * 1024, max_nodes=20_000, max_depth=32)


class KubeconfigError(Exception):
    """The kubeconfig cannot be used: `reason` is the condition reason, the message names the
    Secret, the field and the fix (never a credential). `retryable`: it may appear or change by
    itself (a Secret not created yet), else it is the tenant's to fix."""

    def __init__(self, reason: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.retryable = retryable


@dataclass(frozen=True)
class Kubeconfig:
    """A checked kubeconfig reduced to its current context."""

    name: str  # the cluster's name in the context
    server: str
    config: dict[str, Any] = field(repr=False)  # the reduced kubeconfig (holds credentials)
    digest: str = ""  # sha256 of `config`: equal digests share one connection


def parse_kubeconfig(text: str, where: str, *, allow_exec: bool = False) -> Kubeconfig:
    """The current context of the kubeconfig `text` (read as kubectl reads YAML), checked as the
    module docstring says. `where` names its source in messages. Raises KubeconfigError."""
    try:
        document = goyaml.load_values(text, where, KUBECONFIG_LIMITS)
    except ValueError as error:
        raise KubeconfigError("InvalidKubeconfig", f"{error}") from None
    current = document.get("current-context")
    if not isinstance(current, str) or not current:
        raise KubeconfigError(
            "InvalidKubeconfig",
            f"{where} has no current-context; set the context to use "
            "(`kubectl config use-context NAME --kubeconfig FILE`)",
        )
    context = _named(document, "contexts", "context", current, where)
    cluster_name = context.get("cluster")
    user_name = context.get("user")
    if not isinstance(cluster_name, str) or not cluster_name:
        raise KubeconfigError("InvalidKubeconfig", f"{where}: context {current!r} names no cluster")
    if len(cluster_name) > MAX_NAME:
        raise KubeconfigError(
            "InvalidKubeconfig", f"{where}: the cluster's name is longer than {MAX_NAME} characters"
        )
    cluster = _named(document, "clusters", "cluster", cluster_name, where)
    server = _server(cluster.get("server"), cluster_name, where)
    user: dict[str, Any] = {}
    if isinstance(user_name, str) and user_name:
        user = _named(document, "users", "user", user_name, where)
    _refuse_files("cluster", cluster_name, cluster, where)
    _refuse_files("user", str(user_name), user, where)
    _check_user(str(user_name), user, where)
    _check_tls(cluster_name, cluster, user, where)
    plugins = [name for name in _PLUGIN_FIELDS if user.get(name)]
    if plugins and not allow_exec:
        raise KubeconfigError(
            "KubeconfigExecRefused",
            f"{where}: user {user_name!r} uses the `{plugins[0]}` plugin, which would run a "
            "command in the operator's pod; use a token or client certificate (docs/clusters.md "
            "shows a ServiceAccount token), or ask the cluster admin to start the operator with "
            "--allow-kubeconfig-exec",
        )
    reduced: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": current,
        "contexts": [{"name": current, "context": {"cluster": cluster_name, "user": "user"}}],
        "clusters": [{"name": cluster_name, "cluster": cluster}],
        "users": [{"name": "user", "user": user}],
    }
    digest = hashlib.sha256(json.dumps(reduced, sort_keys=True).encode()).hexdigest()
    return Kubeconfig(name=cluster_name, server=server, config=reduced, digest=digest)


class SecretSource(Protocol):
    async def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None: ...


async def read_kubeconfig(
    kube: SecretSource, namespace: str, reference: KubeConfigReference, *, allow_exec: bool
) -> Kubeconfig:
    """The checked kubeconfig of `reference`'s Secret in `namespace`, read through `kube` (the
    tenant's identity in the operator, the user's in the CLI). Raises KubeconfigError."""
    ref = reference.secret_ref
    where = f"spec.kubeConfig: Secret {namespace}/{ref.name}"
    try:
        secret = await kube.get_secret(namespace, ref.name)
    except AccessDenied as error:
        raise KubeconfigError("KubeconfigUnavailable", f"{where}: {error}") from None
    if secret is None:
        raise KubeconfigError(
            "KubeconfigUnavailable",
            f"{where} not found; create it with the workload cluster's kubeconfig "
            "(docs/clusters.md)",
            retryable=True,
        )
    keys = (ref.key,) if ref.key else DEFAULT_KEYS
    try:
        text = next((t for key in keys if (t := secret_text(secret, key)) is not None), None)
    except ValueError as error:
        raise KubeconfigError("InvalidKubeconfig", f"{where}: {error}") from None
    if text is None:
        raise KubeconfigError(
            "KubeconfigUnavailable",
            f"{where} has no key {' or '.join(repr(k) for k in keys)}; put the kubeconfig "
            "there or set spec.kubeConfig.secretRef.key",
            retryable=True,
        )
    return parse_kubeconfig(text, f"{where} key {ref.key or keys[0]!r}", allow_exec=allow_exec)


def _named(
    document: Mapping[str, Any], section: str, item: str, name: str, where: str
) -> dict[str, Any]:
    entries = document.get(section)
    for entry in entries if isinstance(entries, list) else []:
        if isinstance(entry, dict) and entry.get("name") == name:
            body = entry.get(item)
            if isinstance(body, dict):
                return body
            break
    raise KubeconfigError(
        "InvalidKubeconfig", f"{where}: {section} has no entry {name!r} (with a `{item}` map)"
    )


def _server(value: Any, cluster: str, where: str) -> str:
    """The API server URL: http(s), no credentials, query or fragment (it is shown in status)."""
    fix = f"{where}: cluster {cluster!r} needs `server: https://HOST[:PORT][/PATH]`"
    if not isinstance(value, str) or len(value) > MAX_SERVER:
        raise KubeconfigError("InvalidKubeconfig", fix)
    try:
        url = urllib.parse.urlsplit(value)
        url.port  # noqa: B018 (raises ValueError on a bad port)
    except ValueError:
        raise KubeconfigError("InvalidKubeconfig", fix) from None
    if url.scheme not in ("https", "http") or not url.hostname:
        raise KubeconfigError("InvalidKubeconfig", fix)
    if url.username is not None or url.password is not None or url.query or url.fragment:
        raise KubeconfigError(
            "InvalidKubeconfig",
            f"{fix}: no user, password, query or fragment in it (credentials go in `users`)",
        )
    return value


def _check_user(name: str, user: Mapping[str, Any], where: str) -> None:
    for key in _IMPERSONATION_FIELDS:
        if key in user:
            raise KubeconfigError(
                "InvalidKubeconfig",
                f"{where}: user {name!r} sets `{key}`; impersonate with the state's "
                "`serviceAccountName` instead",
            )
    for key in _CREDENTIAL_FIELDS:
        value = user.get(key)
        if value is None:
            continue
        # Sent in a header: a newline (a pasted token) or a non-Latin-1 character cannot be,
        # and the HTTP library's error would quote the whole value.
        if not isinstance(value, str) or not value or not _header_safe(value):
            raise KubeconfigError(
                "InvalidKubeconfig",
                f"{where}: user {name!r} has a `{key}` that is not one line of plain text "
                "(a trailing newline?); store it without line breaks",
            )


def _header_safe(value: str) -> bool:
    return all(32 <= ord(c) < 127 or 160 <= ord(c) <= 255 for c in value)


def _check_tls(name: str, cluster: Mapping[str, Any], user: Mapping[str, Any], where: str) -> None:
    for body, key in (
        (cluster, "certificate-authority-data"),
        (user, "client-certificate-data"),
        (user, "client-key-data"),
    ):
        value = body.get(key)
        if value is None:
            continue
        try:
            base64.b64decode(str(value), validate=True).decode("ascii")
        except (binascii.Error, ValueError):
            raise KubeconfigError(
                "InvalidKubeconfig", f"{where}: `{key}` is not base64 of a PEM text"
            ) from None
    if bool(user.get("client-certificate-data")) != bool(user.get("client-key-data")):
        raise KubeconfigError(
            "InvalidKubeconfig",
            f"{where}: a client certificate needs both `client-certificate-data` and "
            "`client-key-data`",
        )
    proxy = cluster.get("proxy-url")
    if proxy is not None and (
        not isinstance(proxy, str) or urllib.parse.urlsplit(proxy).scheme not in ("http", "https")
    ):
        raise KubeconfigError(
            "InvalidKubeconfig", f"{where}: cluster {name!r}: `proxy-url` must be http(s)://…"
        )


def _refuse_files(kind: str, name: str, body: Mapping[str, Any], where: str) -> None:
    for key in _FILE_FIELDS[kind]:
        if body.get(key):
            inline = "token" if key == "tokenFile" else f"{key}-data"
            raise KubeconfigError(
                "InvalidKubeconfig",
                f"{where}: {kind} {name!r} sets `{key}`, a file path, which would read a file of "
                f"the operator's pod; put the content inline in `{inline}` instead",
            )


@dataclass
class RemoteCluster:
    """One remote cluster, as one kubeconfig reaches it."""

    name: str
    server: str
    digest: str
    kube: Kube  # the operator's connection to it; releases use `kube.impersonating(...)`
    drift: DriftChecker
    kubeconfig: str = field(repr=False)  # the reduced kubeconfig, for helm (written per run)
    directory: Path  # the client's certificate files and discovery cache


class ClusterPool:
    """Connections to remote clusters, keyed by kubeconfig digest, at most `max_clusters`
    (least recently used first out). Files live under `directory` (private, removed on close)."""

    def __init__(
        self,
        directory: Path,
        *,
        allow_exec: bool = False,
        metrics: Metrics | None = None,
        max_clusters: int = MAX_CLUSTERS,
    ) -> None:
        self.directory = directory
        self.allow_exec = allow_exec
        self.metrics = metrics
        self.max_clusters = max_clusters
        self._clusters: collections.OrderedDict[str, RemoteCluster] = collections.OrderedDict()
        self._digest_of: dict[str, str] = {}  # Secret reference → digest it held last
        self._retired: list[tuple[float, RemoteCluster]] = []  # evicted: closed later

    def __len__(self) -> int:
        return len(self._clusters)

    async def read(
        self, kube: SecretSource, namespace: str, reference: KubeConfigReference
    ) -> Kubeconfig:
        return await read_kubeconfig(kube, namespace, reference, allow_exec=self.allow_exec)

    def connect(self, reference: str, kubeconfig: Kubeconfig) -> RemoteCluster:
        """The connection for `kubeconfig`, read from the Secret `reference` names (a new one
        when the Secret changed; the old one goes once no other Secret holds it)."""
        self._close_retired(time.monotonic())
        previous = self._digest_of.get(reference)
        self._digest_of[reference] = kubeconfig.digest
        if previous not in (None, kubeconfig.digest, *self._digest_of.values()):
            self._evict(str(previous))
        cluster = self._clusters.get(kubeconfig.digest)
        if cluster is None:
            cluster = self._clusters[kubeconfig.digest] = self._open(kubeconfig)
            while len(self._clusters) > self.max_clusters:
                self._evict(next(iter(self._clusters)))
        self._clusters.move_to_end(kubeconfig.digest)
        return cluster

    def mark(self, cluster: RemoteCluster, reachable: bool) -> None:
        """Record whether the cluster answered (the `cluster_reachable` metric)."""
        if self.metrics is not None and self._clusters.get(cluster.digest) is cluster:
            self.metrics.cluster_reachable.labels(cluster.name, cluster.server).set(
                1 if reachable else 0
            )

    def close(self) -> None:
        for digest in list(self._clusters):
            self._evict(digest)
        self._close_retired(float("inf"))

    def _open(self, kubeconfig: Kubeconfig) -> RemoteCluster:
        directory = ensure_private_dir(ensure_private_dir(self.directory) / kubeconfig.digest[:32])
        try:
            configuration = (
                _plugin_configuration(kubeconfig, directory)
                if _uses_plugin(kubeconfig)
                else _configuration(kubeconfig, directory)
            )
            configuration.connection_pool_maxsize = 16
            # One retry: an unreachable cluster must not hold a worker for minutes.
            configuration.retries = 1
            kube = Kube.from_configuration(configuration, cluster=kubeconfig.server)
            drift = DriftChecker(configuration, cache_dir=directory)
        except KubeconfigError:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        except Exception as error:
            shutil.rmtree(directory, ignore_errors=True)
            raise KubeconfigError(
                "InvalidKubeconfig",
                f"the kubeconfig of cluster {kubeconfig.name!r} cannot be used "
                f"({type(error).__name__})",
            ) from None
        return RemoteCluster(
            name=kubeconfig.name,
            server=kubeconfig.server,
            digest=kubeconfig.digest,
            kube=kube,
            drift=drift,
            kubeconfig=json.dumps(kubeconfig.config),
            directory=directory,
        )

    def _evict(self, digest: str) -> None:
        cluster = self._clusters.pop(digest, None)
        if cluster is None:
            return
        for reference in [r for r, d in self._digest_of.items() if d == digest]:
            del self._digest_of[reference]
        if self.metrics is not None and not any(
            c.name == cluster.name and c.server == cluster.server for c in self._clusters.values()
        ):
            with contextlib.suppress(KeyError):
                self.metrics.cluster_reachable.remove(cluster.name, cluster.server)
        self._retired.append((time.monotonic() + RETIRE_AFTER_SECONDS, cluster))

    def _close_retired(self, now: float) -> None:
        due = [cluster for when, cluster in self._retired if when <= now]
        self._retired = [(when, c) for when, c in self._retired if when > now]
        for cluster in due:
            with contextlib.suppress(Exception):  # closing never fails a pass
                cluster.kube.close()
                cluster.drift.close()
            if cluster.digest not in self._clusters:  # not opened again meanwhile
                shutil.rmtree(cluster.directory, ignore_errors=True)


def _uses_plugin(kubeconfig: Kubeconfig) -> bool:
    user = kubeconfig.config["users"][0]["user"]
    return any(user.get(name) for name in _PLUGIN_FIELDS)


def _configuration(kubeconfig: Kubeconfig, directory: Path) -> Configuration:
    """The API client's configuration from the checked fields of the reduced kubeconfig."""
    cluster = kubeconfig.config["clusters"][0]["cluster"]
    user = kubeconfig.config["users"][0]["user"]
    configuration = Configuration()
    configuration.host = kubeconfig.server
    configuration.verify_ssl = not cluster.get("insecure-skip-tls-verify", False)
    if cluster.get("certificate-authority-data"):
        configuration.ssl_ca_cert = str(
            _pem_file(directory, "ca.crt", cluster, "certificate-authority-data")
        )
    if cluster.get("tls-server-name"):
        configuration.tls_server_name = str(cluster["tls-server-name"])
    if cluster.get("proxy-url"):
        configuration.proxy = str(cluster["proxy-url"])
    if user.get("client-certificate-data"):
        configuration.cert_file = str(
            _pem_file(directory, "client.crt", user, "client-certificate-data")
        )
        configuration.key_file = str(_pem_file(directory, "client.key", user, "client-key-data"))
    if user.get("token"):
        configuration.api_key = {"authorization": f"Bearer {user['token']}"}
    elif user.get("username") or user.get("password"):
        pair = f"{user.get('username', '')}:{user.get('password', '')}".encode("latin-1")
        configuration.api_key = {"authorization": f"Basic {base64.b64encode(pair).decode()}"}
    return configuration


def _pem_file(directory: Path, name: str, body: Mapping[str, Any], key: str) -> Path:
    path = directory / name
    path.unlink(missing_ok=True)
    return write_private_file(path, base64.b64decode(str(body[key])).decode("ascii"))


def _plugin_configuration(kubeconfig: Kubeconfig, directory: Path) -> Configuration:
    """exec/auth-provider (allowed by the operator): the kubernetes client's loader runs them."""
    configuration = Configuration()
    try:
        config.load_kube_config_from_dict(  # type: ignore[no-untyped-call]
            kubeconfig.config,
            client_configuration=configuration,
            persist_config=False,
            temp_file_path=str(directory),
        )
    except (config.ConfigException, ValueError, TypeError) as error:
        raise KubeconfigError(
            "InvalidKubeconfig",
            f"the kubeconfig of cluster {kubeconfig.name!r}: {type(error).__name__}",
        ) from None
    return configuration
