"""The argv of every helm command the operator runs, built by small pure functions.

Rules these builders keep:

- user-provided strings go after `--` (positionals) or as `--flag=value`, so none can be read as
  a flag;
- values only ever reach helm as a file (`--values=FILE`), never `--set`; repository usernames
  and passwords only in helm's own configuration files (`files.py`), never on argv;
- a chart is always named so that helm looks it up in a repository (`--repo`, an alias, `oci://`),
  and helm runs in an empty directory: no CHART argument can be read as a path on the operator's
  filesystem;
- Helm 3 and Helm 4 differ in `--wait`: the caller passes helm's major version and the flag is
  chosen from it. `--atomic`/`--rollback-on-failure` are never passed: the operator remediates
  (rollback, uninstall) itself.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from helmfile_operator.api.models import (
    DEFAULT_HELM_OPTIONS,
    ChartReference,
    HelmOptions,
    duration_seconds,
    merge_helm_options,
)

# Helm 4 `--wait` strategies: "watcher" (kstatus, the default of a bare --wait), "legacy" (Helm 3's
# poller), "hookOnly" (what omitting --wait means).
WAIT_STRATEGIES = ("watcher", "legacy", "hookOnly")
DEFAULT_WAIT_STRATEGY = "watcher"
# The time limit of commands without a helm timeout of their own (version, history), and
# `repo update`'s --timeout.
QUICK_TIMEOUT_SECONDS = 60.0


def clamp_timeout(seconds: float, maximum: float | None) -> float:
    """`seconds`, at most `maximum` (the operator-wide bound of any helm timeout) when set."""
    return seconds if maximum is None else min(seconds, maximum)


def go_duration(seconds: float) -> str:
    """A Go duration helm accepts: 300 -> "300s", 1.5 -> "1.5s"."""
    if seconds < 0:
        raise ValueError("a duration cannot be negative")
    if float(seconds).is_integer():
        return f"{int(seconds)}s"
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def is_oci(url: str) -> bool:
    return url.startswith("oci://")


def registry_host(url: str) -> str:
    """`oci://ghcr.io:5000/org/charts` -> `ghcr.io:5000` (the key of its registry credentials)."""
    return url.removeprefix("oci://").split("/", 1)[0]


def repo_alias(url: str) -> str:
    """The repository's name in a per-call repositories.yaml (only used with credentials). It
    is on argv, so it derives from the URL alone: a hash of the username could be guessed back."""
    digest = hashlib.sha256(url.encode()).hexdigest()[:16]
    return f"hfo-{digest}"


def chart_ref(chart: ChartReference, *, alias: str | None = None) -> str:
    """The CHART argument: `oci://host/path/name`, `alias/name`, or the bare name (with --repo)."""
    url = chart.repository.url
    if is_oci(url):
        return f"{url.rstrip('/')}/{chart.name}"
    if alias is not None:
        return f"{alias}/{chart.name}"
    return chart.name


def chart_flags(
    chart: ChartReference, *, alias: str | None = None, ca_file: Path | None = None
) -> list[str]:
    """Where the chart comes from: --version, --repo (plain http(s) only), TLS options."""
    flags: list[str] = []
    if chart.version:
        flags.append(f"--version={chart.version}")
    if not is_oci(chart.repository.url) and alias is None:
        flags.append(f"--repo={chart.repository.url}")
    if ca_file is not None:
        flags.append(f"--ca-file={ca_file}")
    if chart.repository.insecure_skip_tls_verify:
        flags.append("--insecure-skip-tls-verify")
    return flags


def scope_flags(namespace: str, impersonate: str | None) -> list[str]:
    flags = [f"--namespace={namespace}"]
    if impersonate:
        flags.append(f"--kube-as-user={impersonate}")
    return flags


def wait_flags(
    helm_major: int, wait: bool, wait_for_jobs: bool = False, strategy: str = DEFAULT_WAIT_STRATEGY
) -> list[str]:
    """Helm 3: `--wait`; Helm 4: `--wait=<strategy>` (a bare `--wait` means "watcher")."""
    if not wait:
        return []
    if strategy not in WAIT_STRATEGIES:
        raise ValueError(f"unknown helm wait strategy {strategy!r}")
    flags = [f"--wait={strategy}"] if helm_major >= 4 else ["--wait"]
    if wait_for_jobs:
        flags.append("--wait-for-jobs")
    return flags


def helm_timeout_seconds(options: HelmOptions) -> float:
    """helm's --timeout for `options` laid over DEFAULT_HELM_OPTIONS (which always sets one)."""
    timeout = merge_helm_options(DEFAULT_HELM_OPTIONS, options).timeout
    assert timeout is not None  # DEFAULT_HELM_OPTIONS.timeout is set and merging keeps it
    return duration_seconds(timeout)


def upgrade_argv(
    *,
    release: str,
    namespace: str,
    chart: ChartReference,
    values_file: Path,
    options: HelmOptions,
    helm_major: int,
    impersonate: str | None = None,
    alias: str | None = None,
    ca_file: Path | None = None,
    wait_strategy: str = DEFAULT_WAIT_STRATEGY,
    max_timeout_seconds: float | None = None,
    skip_crds: bool = False,
    dry_run: bool = False,
) -> list[str]:
    """`helm upgrade --install`; `options` goes over DEFAULT_HELM_OPTIONS; `atomic` is ignored.
    The timeout is at most `max_timeout_seconds`. `skip_crds`: the chart's `crds/` are not
    installed (skipped, or applied by the operator itself). `dry_run`: `--dry-run=server` (the
    API server validates and `lookup` reads the cluster; nothing is written, nothing waited for)."""
    opts = merge_helm_options(DEFAULT_HELM_OPTIONS, options)
    timeout = clamp_timeout(helm_timeout_seconds(opts), max_timeout_seconds)
    argv = ["upgrade", "--install", *scope_flags(namespace, impersonate)]
    argv += chart_flags(chart, alias=alias, ca_file=ca_file)
    argv.append(f"--values={values_file}")
    if opts.create_namespace:
        argv.append("--create-namespace")
    if dry_run:
        argv.append("--dry-run=server")
    else:
        argv += wait_flags(helm_major, bool(opts.wait), bool(opts.wait_for_jobs), wait_strategy)
    argv.append(f"--timeout={go_duration(timeout)}")
    if opts.history_max is not None:
        argv.append(f"--history-max={opts.history_max}")
    if skip_crds:
        argv.append("--skip-crds")
    argv += ["--output=json", "--", release, chart_ref(chart, alias=alias)]
    return argv


def show_crds_argv(
    *, chart: ChartReference, alias: str | None = None, ca_file: Path | None = None
) -> list[str]:
    """`helm show crds CHART`: the files of the chart's `crds/` directory."""
    argv = ["show", "crds", *chart_flags(chart, alias=alias, ca_file=ca_file)]
    return [*argv, "--", chart_ref(chart, alias=alias)]


def helm_test_argv(
    *, release: str, namespace: str, timeout_seconds: float, impersonate: str | None = None
) -> list[str]:
    """`helm test RELEASE`: run the release's `helm.sh/hook: test` hooks and wait for them."""
    argv = ["test", *scope_flags(namespace, impersonate)]
    return [*argv, f"--timeout={go_duration(timeout_seconds)}", "--", release]


def uninstall_argv(
    *,
    release: str,
    namespace: str,
    timeout_seconds: float,
    wait: bool,
    helm_major: int,
    impersonate: str | None = None,
    wait_strategy: str = DEFAULT_WAIT_STRATEGY,
) -> list[str]:
    argv = ["uninstall", *scope_flags(namespace, impersonate)]
    argv += wait_flags(helm_major, wait, strategy=wait_strategy)
    argv += [f"--timeout={go_duration(timeout_seconds)}", "--", release]
    return argv


def rollback_argv(
    *,
    release: str,
    namespace: str,
    revision: int | None,
    timeout_seconds: float,
    wait: bool,
    helm_major: int,
    impersonate: str | None = None,
    wait_for_jobs: bool = False,
    history_max: int | None = None,
    wait_strategy: str = DEFAULT_WAIT_STRATEGY,
) -> list[str]:
    """`helm rollback RELEASE [REVISION]`: no revision means the previous one."""
    if revision is not None and revision < 1:
        raise ValueError("a revision is a positive number")
    argv = ["rollback", *scope_flags(namespace, impersonate)]
    argv += wait_flags(helm_major, wait, wait_for_jobs, wait_strategy)
    argv.append(f"--timeout={go_duration(timeout_seconds)}")
    if history_max is not None:
        argv.append(f"--history-max={history_max}")
    argv += ["--", release]
    if revision is not None:
        argv.append(str(revision))
    return argv


def history_argv(
    *, release: str, namespace: str, max: int, impersonate: str | None = None
) -> list[str]:
    return [
        "history",
        *scope_flags(namespace, impersonate),
        f"--max={max}",
        "--output=json",
        "--",
        release,
    ]


def repo_update_argv(
    *, alias: str, helm_major: int, timeout_seconds: float = QUICK_TIMEOUT_SECONDS
) -> list[str]:
    """`helm repo update ALIAS`: downloads the index of a repository written into the private
    repositories.yaml (credentials and CA are read from that file, never from argv), which a
    CHART of the form `ALIAS/name` needs. Helm 4 fails when the download does and has
    `--timeout`; Helm 3 needs `--fail-on-repo-update-fail`, and the subprocess limit bounds it."""
    argv = ["repo", "update"]
    if helm_major >= 4:
        argv.append(f"--timeout={go_duration(timeout_seconds)}")
    else:
        argv.append("--fail-on-repo-update-fail")
    argv += ["--", alias]
    return argv
