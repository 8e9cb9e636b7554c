"""Classification of helm's stderr into HelmErrorKind, messages, retry policy.

Samples marked "helm 4.3.1" were captured from the test-bed helm binary; the others are Helm 3
wordings (and Helm 4 ones from its source) of the same failures.
"""

from __future__ import annotations

import pytest

from helmfile_operator.helm.errors import (
    HINTS,
    MESSAGE_MAX,
    REDACTED,
    RETRYABLE_KINDS,
    HelmError,
    HelmErrorKind,
    classify,
    redact_text,
    summarize,
)

K = HelmErrorKind

SAMPLES: list[tuple[str, str, HelmErrorKind]] = [
    # --- charts and versions ---
    (  # helm 4.3.1
        "upgrade",
        'Error: chart "demo-app" version "9.9.9" not found in http://127.0.0.1:18579 repository\n',
        K.VERSION_NOT_FOUND,
    ),
    (  # helm 4.3.1
        "upgrade",
        'Error: chart "nope" not found in http://127.0.0.1:18579 repository\n',
        K.CHART_NOT_FOUND,
    ),
    (  # helm 4.3.1, through a repository alias
        "upgrade",
        'Error: chart "demo-app" matching 9.9.9 not found in priv index. (try \'helm repo '
        "update'): no chart version found for demo-app-9.9.9\n",
        K.VERSION_NOT_FOUND,
    ),
    (  # helm 4.3.1
        "upgrade",
        "Error: chart \"nope\" matching  not found in priv index. (try 'helm repo update'): "
        "no chart name found\n",
        K.CHART_NOT_FOUND,
    ),
    (
        "upgrade",
        "Error: UPGRADE FAILED: could not locate a version matching provided version string 9.9.9",
        K.VERSION_NOT_FOUND,
    ),
    (
        "upgrade",
        "Error: unable to locate any tags in provided repository: oci://ghcr.io/org/nope",
        K.CHART_NOT_FOUND,
    ),
    (
        "upgrade",
        'Error: failed to perform "FetchReference" on source: GET "https://ghcr.io/v2/org/x/'
        'manifests/9.9.9": response status code 404: manifest unknown: manifest unknown',
        K.VERSION_NOT_FOUND,
    ),
    (  # helm 4.3.1
        "upgrade",
        "Error: non-absolute URLs should be in form of repo_name/path_to_chart, got: nope",
        K.CHART_NOT_FOUND,
    ),
    (
        "upgrade",
        "Error: failed to fetch https://charts.example.com/demo-app-0.1.0.tgz : 404 Not Found",
        K.CHART_NOT_FOUND,
    ),
    # --- repositories ---
    (  # helm 4.3.1
        "upgrade",
        'Error: looks like "http://127.0.0.1:1" is not a valid chart repository or cannot be '
        'reached: Get "http://127.0.0.1:1/index.yaml": dial tcp 127.0.0.1:1: connect: '
        "connection refused\n",
        K.REPOSITORY_UNREACHABLE,
    ),
    (  # helm 4.3.1
        "upgrade",
        'Error: looks like "http://127.0.0.1:18579/sub" is not a valid chart repository or cannot '
        "be reached: failed to fetch http://127.0.0.1:18579/sub/index.yaml : 404 File not found",
        K.REPOSITORY_UNREACHABLE,
    ),
    (  # helm 4.3.1
        "upgrade",
        'Error: looks like "http://127.0.0.1:18580" is not a valid chart repository or cannot be '
        "reached: failed to fetch http://127.0.0.1:18580/index.yaml : 401 Unauthorized",
        K.REPOSITORY_AUTH_FAILED,
    ),
    (  # helm 4.3.1
        "upgrade",
        'Error: Get "https://127.0.0.1:1/v2/x/nope/tags/list": dial tcp 127.0.0.1:1: connect: '
        "connection refused",
        K.REPOSITORY_UNREACHABLE,
    ),
    (  # helm 4.3.1
        "registry login",
        'Error: authenticating to "127.0.0.1:1": Get "https://127.0.0.1:1/v2/": dial tcp '
        "127.0.0.1:1: connect: connection refused",
        K.REPOSITORY_UNREACHABLE,
    ),
    (
        "upgrade",
        'Error: Get "https://charts.example.com/index.yaml": tls: failed to verify certificate: '
        "x509: certificate signed by unknown authority",
        K.REPOSITORY_UNREACHABLE,
    ),
    # --- the Kubernetes API ---
    (  # helm 4.3.1
        "history",
        'Error: kubernetes cluster unreachable: Get "https://127.0.0.1:1/version": dial tcp '
        "127.0.0.1:1: connect: connection refused\n",
        K.CONNECTION,
    ),
    (
        "upgrade",
        "Error: Kubernetes cluster unreachable: the server has asked for the client to provide "
        "credentials",
        K.CONNECTION,
    ),
    (
        "upgrade",
        'Error: UPGRADE FAILED: Get "https://10.96.0.1:443/api/v1/namespaces/a/secrets?'
        'labelSelector=name%3Dx": dial tcp 10.96.0.1:443: connect: connection refused',
        K.CONNECTION,
    ),
    (
        "history",
        'Error: query: failed to query with labels: secrets is forbidden: User "system:'
        'serviceaccount:team:deployer" cannot list resource "secrets" in API group "" in the '
        'namespace "apps"',
        K.FORBIDDEN,
    ),
    (
        "upgrade",
        'Error: UPGRADE FAILED: create: failed to create: pods "x" is forbidden: exceeded quota: '
        "compute, requested: cpu=2, used: cpu=9, limited: cpu=10",
        K.UNKNOWN,
    ),
    # --- release state ---
    (
        "upgrade",
        "Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in progress",
        K.LOCKED,
    ),
    ("history", "Error: release: not found", K.RELEASE_NOT_FOUND),
    (
        "uninstall",
        "Error: uninstall: Release not loaded: demo: release: not found",
        K.RELEASE_NOT_FOUND,
    ),
    ("upgrade", 'Error: UPGRADE FAILED: "demo" has no deployed releases', K.RELEASE_NOT_FOUND),
    ("rollback", "Error: release has no 0 version", K.RELEASE_NOT_FOUND),
    # --- conflicts ---
    (
        "upgrade",
        "Error: rendered manifests contain a resource that already exists. Unable to continue "
        'with install: ConfigMap "demo" in namespace "apps" exists and cannot be imported into '
        'the current release: invalid ownership metadata; label validation error: missing key "'
        'app.kubernetes.io/managed-by": must be set to "Helm"',
        K.CONFLICT,
    ),
    (  # helm 4 wording
        "upgrade",
        'Error: INSTALLATION FAILED: unable to continue with install: ConfigMap "demo" in '
        'namespace "apps" exists and cannot be imported into the current release: invalid '
        "ownership metadata; annotation validation error: missing key "
        '"meta.helm.sh/release-name": must be set to "demo"',
        K.CONFLICT,
    ),
    (
        "upgrade",
        'Error: UPGRADE FAILED: cannot patch "demo" with kind Deployment: Deployment.apps "demo" '
        'is invalid: spec.selector: Invalid value: {"matchLabels":{"app":"x"}}: field is '
        "immutable",
        K.CONFLICT,
    ),
    (
        "upgrade",
        'Error: UPGRADE FAILED: Apply failed with 1 conflict: conflict with "kubectl" using '
        "apps/v1: .spec.replicas",
        K.CONFLICT,
    ),
    # --- rendering ---
    (  # helm 4.3.1
        "upgrade",
        "Error: parse error at (parse/templates/a.yaml:2): unclosed action started at "
        "parse/templates/a.yaml:1\n\nUse --debug flag to render out invalid YAML\n",
        K.RENDER_FAILED,
    ),
    (  # helm 4.3.1
        "upgrade",
        "Error: execution error at (req/templates/a.yaml:1:6): value x is required\n\n"
        "Use --debug flag to render out invalid YAML\n",
        K.RENDER_FAILED,
    ),
    (  # helm 4.3.1
        "upgrade",
        "Error: YAML parse error on yaml/templates/a.yaml: error converting YAML to JSON: yaml: "
        "line 6: did not find expected node content\n",
        K.RENDER_FAILED,
    ),
    (  # helm 4.3.1
        "upgrade",
        'Error: nilp/templates/a.yaml:1:13\n  executing "nilp/templates/a.yaml" at '
        "<.Values.x.y.z>:\n    nil pointer evaluating interface {}.y\n",
        K.RENDER_FAILED,
    ),
    (
        "upgrade",
        'Error: UPGRADE FAILED: template: demo/templates/cm.yaml:4:3: executing "demo/templates/'
        'cm.yaml" at <include "nope" .>: error calling include: template: no template "nope"',
        K.RENDER_FAILED,
    ),
    (
        "upgrade",
        "Error: UPGRADE FAILED: unable to build kubernetes objects from new release manifest: "
        'error validating "": error validating data: ValidationError(Deployment.spec): unknown '
        'field "replica" in io.k8s.api.apps.v1.DeploymentSpec',
        K.RENDER_FAILED,
    ),
    (
        "upgrade",
        "Error: INSTALLATION FAILED: chart requires kubeVersion: >=1.40.0-0 which is "
        "incompatible with Kubernetes v1.35.4",
        K.RENDER_FAILED,
    ),
    # --- values ---
    (  # helm 4.3.1
        "upgrade",
        "Error: values don't meet the specifications of the schema(s) in the following chart(s):"
        "\nschema:\n- at '/replicas': got string, want integer\n",
        K.INVALID_VALUES,
    ),
    (  # helm 4.3.1
        "upgrade",
        "Error: failed to parse /tmp/helm-x/values.yaml: cannot unmarshal yaml document: error "
        "converting YAML to JSON: yaml: line 1: did not find expected node content",
        K.INVALID_VALUES,
    ),
    # --- waiting ---
    ("upgrade", "Error: UPGRADE FAILED: context deadline exceeded", K.TIMEOUT),
    ("upgrade", "Error: INSTALLATION FAILED: timed out waiting for the condition", K.TIMEOUT),
    (  # helm 4 watcher
        "upgrade",
        "Error: UPGRADE FAILED: resource Deployment/apps/demo not ready. status: InProgress, "
        "message: Available: 0/1\ncontext deadline exceeded",
        K.TIMEOUT,
    ),
    # --- unknown ---
    (
        "upgrade",
        'Error: UPGRADE FAILED: resource mapping not found for name: "x" namespace: "" from "": '
        'no matches for kind "Widget" in version "example.com/v1"\nensure CRDs are installed first',
        K.UNKNOWN,
    ),
    ("upgrade", "Error: something nobody has seen before", K.UNKNOWN),
    # --- helm 4.3.1 against the test bed's API server ---
    (
        "upgrade",
        "Error: unable to build kubernetes objects from release manifest: resource mapping not "
        'found for name: "w" namespace: "" from "": no matches for kind "Widget" in version '
        '"example.com/v1"\nensure CRDs are installed first\n',
        K.UNKNOWN,
    ),
    (
        "upgrade",
        "Error: server-side apply failed for object apps/unk /v1, Kind=ConfigMap: failed to "
        "create typed patch object (apps/unk; /v1, Kind=ConfigMap): .bogus: field not declared in "
        "schema\n",
        K.RENDER_FAILED,
    ),
    (
        "upgrade",
        "Error: UPGRADE FAILED: server-side apply failed for object apps/demo apps/v1, Kind="
        "Deployment: failed to create typed patch object (apps/demo; apps/v1, Kind=Deployment): "
        ".spec.replicas: expected numeric (int or float), got string\n",
        K.RENDER_FAILED,
    ),
    (
        "upgrade",
        "Error: server-side apply failed for object apps/Bad_Name /v1, Kind=ConfigMap: ConfigMap "
        '"Bad_Name" is invalid: metadata.name: Invalid value: "Bad_Name": a lowercase RFC 1123 '
        "subdomain must consist of lower case alphanumeric characters\n",
        K.RENDER_FAILED,
    ),
    (
        "upgrade",
        'level=WARN msg="upgrade failed" name=imm error="server-side apply failed"\n'
        "Error: UPGRADE FAILED: server-side apply failed for object apps/imm batch/v1, Kind=Job: "
        'Job.batch "imm" is invalid: spec.template: Invalid value: {"labels":{"job-name":"imm"},'
        '"Spec":{' + '"Volumes":null,' * 80 + '"OS":null}}: field is immutable\n',
        K.CONFLICT,
    ),
    (
        "upgrade",
        'Error: unable to continue with install: Job "imm" in namespace "apps" exists and cannot '
        "be imported into the current release: invalid ownership metadata; annotation validation "
        'error: key "meta.helm.sh/release-name" must equal "imm2": current value is "imm"\n',
        K.CONFLICT,
    ),
    ("upgrade", 'Error: create: failed to create: namespaces "nope-ns" not found\n', K.UNKNOWN),
    (
        "upgrade",
        "Error: resource Deployment/apps/slow not ready. status: InProgress, message: Available: "
        "0/1\ncontext deadline exceeded\n",
        K.TIMEOUT,
    ),
    ("rollback", "Error: release has no 99 version\n", K.RELEASE_NOT_FOUND),
]


@pytest.mark.parametrize(("command", "stderr", "kind"), SAMPLES)
def test_classify(command: str, stderr: str, kind: HelmErrorKind) -> None:
    error = classify(command, stderr, 1, False)
    assert error.kind is kind, error.message
    assert error.command == command
    assert error.returncode == 1
    assert "\n" not in error.message
    assert len(error.message) <= MESSAGE_MAX + 60
    assert not error.message.startswith("Error:")


def test_timed_out_wins_over_stderr() -> None:
    error = classify("upgrade", "Error: release: not found", -9, True)
    assert error.kind is HelmErrorKind.TIMEOUT
    assert error.retryable
    assert "did not finish in time" in error.message


def test_killed_by_a_signal_without_output() -> None:
    error = classify("upgrade", "", -9, False)
    assert error.kind is HelmErrorKind.UNKNOWN
    assert "signal 9" in error.message


def test_exit_code_without_output() -> None:
    error = classify("history", "   \n", 2, False)
    assert "exited with code 2" in error.message


@pytest.mark.parametrize(
    ("kind", "retryable"),
    [
        (K.TIMEOUT, True),
        (K.LOCKED, True),
        (K.CONNECTION, True),
        (K.REPOSITORY_UNREACHABLE, True),
        (K.UNKNOWN, True),
        (K.REPOSITORY_AUTH_FAILED, False),
        (K.CHART_NOT_FOUND, False),
        (K.VERSION_NOT_FOUND, False),
        (K.RENDER_FAILED, False),
        (K.FORBIDDEN, False),
        (K.INVALID_VALUES, False),
        (K.CONFLICT, False),
        (K.RELEASE_NOT_FOUND, False),
    ],
)
def test_retryable(kind: HelmErrorKind, retryable: bool) -> None:
    assert HelmError(kind, "upgrade", "x").retryable is retryable
    assert (kind in RETRYABLE_KINDS) is retryable


def test_every_kind_has_a_hint() -> None:
    assert set(HINTS) == set(HelmErrorKind)


def test_hints() -> None:
    version = classify("upgrade", SAMPLES[0][1], 1, False)
    assert "check spec.chart.version" in version.message
    assert "helm search repo" in version.message
    unauthorized = classify("upgrade", next(s for _, s, _ in SAMPLES if "401" in s), 1, False)
    assert "secretRef" in unauthorized.message
    crds = classify("upgrade", next(s for _, s, _ in SAMPLES if "CRDs" in s), 1, False)
    assert "CRDs" in crds.message


def test_message_keeps_only_the_error_lines() -> None:
    stderr = (
        "WARNING: Kubernetes configuration file is group-readable. This is insecure.\n"
        "level=DEBUG msg=preparing upgrade\n"
        'Error: UPGRADE FAILED: "demo" has no deployed releases\n'
        "Use --debug flag to render out invalid YAML\n"
    )
    message = summarize(stderr)
    assert message == 'UPGRADE FAILED: "demo" has no deployed releases'


def test_message_without_error_prefix_uses_the_last_lines() -> None:
    assert summarize("a\nb\nc\nd\n") == "b c d"


def test_message_is_truncated_in_the_middle() -> None:
    error = classify("upgrade", "Error: template: " + "x" * 5000 + " the verdict", 1, False)
    assert len(error.message) < MESSAGE_MAX + 60
    assert "…" in error.message
    assert error.message.startswith("template: xxx")
    assert "the verdict (" in error.message


def test_long_immutable_field_error_keeps_its_verdict() -> None:
    stderr = next(s for _, s, _ in SAMPLES if "field is immutable" in s and "level=WARN" in s)
    error = classify("upgrade", stderr, 1, False)
    assert error.message.startswith("UPGRADE FAILED: server-side apply failed for object apps/imm")
    assert "field is immutable (" in error.message
    assert "level=WARN" not in error.message


def test_missing_namespace_hint() -> None:
    error = classify(
        "upgrade", 'Error: create: failed to create: namespaces "x" not found', 1, False
    )
    assert "createNamespace" in error.message


def test_message_redacts_given_secrets_and_url_credentials() -> None:
    stderr = (
        "Error: execution error at (demo/templates/secret.yaml:3:4): bad password "
        "'hunter2-very-secret' for https://alice:s3cr3t@charts.example.com/index.yaml; "
        "password=topsecret token: abc.def"
    )
    error = classify("upgrade", stderr, 1, False, redact=["hunter2-very-secret", ""])
    assert error.kind is HelmErrorKind.RENDER_FAILED
    for secret in ("hunter2-very-secret", "s3cr3t", "topsecret", "abc.def"):
        assert secret not in error.message
        assert secret not in str(error)
        assert secret not in repr(error)
    assert "https://***@charts.example.com" in error.message
    assert REDACTED in error.message


def test_redact_replaces_longest_first() -> None:
    assert redact_text("abcd abcdef", ["abcd", "abcdef"]) == f"{REDACTED} {REDACTED}"


def test_str_names_command_and_kind() -> None:
    error = classify("rollback", "Error: release: not found", 1, False)
    assert str(error).startswith("helm rollback failed (ReleaseNotFound): release: not found")


def test_refused_impersonation_is_reported_as_forbidden() -> None:
    from helmfile_operator.helm.client import _refused_impersonation

    refused = classify("upgrade", "Error: kubernetes cluster unreachable: unknown", 1, False)
    argv = ["helm", "upgrade", "--kube-as-user=system:serviceaccount:team:deployer", "--", "x", "y"]
    mapped = _refused_impersonation(refused, argv)
    assert mapped.kind is HelmErrorKind.FORBIDDEN
    assert "impersonate system:serviceaccount:team:deployer" in mapped.message
    assert not mapped.retryable
    # Without impersonation it stays a connection error (retryable).
    assert _refused_impersonation(refused, argv[:2]).kind is HelmErrorKind.CONNECTION
