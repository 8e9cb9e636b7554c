"""Running helm: argv built by small pure functions, one asyncio subprocess per command.

Rules this module keeps:

- never a shell; user-provided strings go after `--` (positionals) or as `--flag=value`, so none
  can be read as a flag;
- values reach helm only through a 0600 file in a private 0700 directory that is removed after the
  command; no `--set`; passwords only through stdin (`--password-stdin`) and private config files;
- helm's stdout is parsed, never logged (with `--output json` it holds the release's values);
- a timed-out or cancelled helm gets SIGTERM (so it can mark the release failed), then SIGKILL,
  and is awaited: no helm outlives its call;
- Helm 3 and Helm 4 are both supported: the major version is detected once and the few differing
  flags (`--wait`) are chosen from it. `--atomic`/`--rollback-on-failure` are never passed: the
  operator remediates (rollback, uninstall) itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helmfile_operator.api.models import (
    DEFAULT_HELM_OPTIONS,
    ChartReference,
    HelmOptions,
    duration_seconds,
    merge_helm_options,
)
from helmfile_operator.helm.errors import HelmError, HelmErrorKind, classify, redact_text

log = logging.getLogger("helmfile_operator.helm")

# Helm 4 `--wait` strategies: "watcher" (kstatus, the default of a bare --wait), "legacy" (Helm 3's
# poller), "hookOnly" (what omitting --wait means).
WAIT_STRATEGIES = ("watcher", "legacy", "hookOnly")
DEFAULT_WAIT_STRATEGY = "watcher"
# The subprocess gets this much longer than helm's own --timeout, so helm reports its timeout.
SUBPROCESS_GRACE_SECONDS = 30.0
# Commands without a helm timeout of their own (version, history, status, repo add, login).
QUICK_TIMEOUT_SECONDS = 60.0
DEFAULT_TERM_GRACE_SECONDS = 10.0
_READER_DRAIN_SECONDS = 5.0

OnCommand = Callable[[str, str, float], None]


# --- results ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class HelmVersion:
    major: int
    minor: int
    patch: int
    raw: str

    @classmethod
    def parse(cls, text: str) -> HelmVersion:
        """`v4.3.1`, `v3.16.2+g13654a5`, `v3.17.0-rc.1` (from `--template` or `--short`)."""
        match = re.search(r"v?(\d+)\.(\d+)\.(\d+)", text)
        if match is None:
            raise ValueError(f"not a helm version: {text.strip()[:80]!r}")
        major, minor, patch = (int(part) for part in match.groups())
        return cls(major, minor, patch, text.strip())


@dataclass(frozen=True)
class RepositoryCredentials:
    """Username and password of a chart repository or OCI registry. Never on argv, never logged."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class ReleaseResult:
    name: str
    namespace: str
    revision: int
    status: str
    chart_name: str
    chart_version: str
    app_version: str
    description: str = ""
    last_deployed: str | None = None


@dataclass(frozen=True)
class HistoryRecord:
    revision: int
    status: str
    chart: str
    app_version: str
    updated: str | None
    description: str


@dataclass(frozen=True)
class CommandResult:
    command: str
    argv: list[str]
    returncode: int
    duration: float
    stdout: str = field(repr=False)
    stderr: str = field(repr=False)


# --- pure pieces: argv, env, files, parsing -------------------------------------------------------


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
    """`oci://ghcr.io/org/charts` -> `ghcr.io` (what `helm registry login` takes)."""
    return url.removeprefix("oci://").split("/", 1)[0]


def repo_alias(url: str, username: str) -> str:
    """A stable, private repository name for `helm repo add` (only used with credentials)."""
    digest = hashlib.sha256(f"{url}\0{username}".encode()).hexdigest()[:16]
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
    merged = merge_helm_options(DEFAULT_HELM_OPTIONS, options)
    return duration_seconds(merged.timeout or "300s")


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
) -> list[str]:
    """`helm upgrade --install`; `options` goes over DEFAULT_HELM_OPTIONS; `atomic` is ignored."""
    opts = merge_helm_options(DEFAULT_HELM_OPTIONS, options)
    argv = ["upgrade", "--install", *scope_flags(namespace, impersonate)]
    argv += chart_flags(chart, alias=alias, ca_file=ca_file)
    argv.append(f"--values={values_file}")
    if opts.create_namespace:
        argv.append("--create-namespace")
    argv += wait_flags(helm_major, bool(opts.wait), bool(opts.wait_for_jobs), wait_strategy)
    argv.append(f"--timeout={go_duration(helm_timeout_seconds(opts))}")
    if opts.history_max is not None:
        argv.append(f"--history-max={opts.history_max}")
    argv += ["--output=json", "--", release, chart_ref(chart, alias=alias)]
    return argv


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
    *, release: str, namespace: str, max: int = 10, impersonate: str | None = None
) -> list[str]:
    return [
        "history",
        *scope_flags(namespace, impersonate),
        f"--max={max}",
        "--output=json",
        "--",
        release,
    ]


def status_argv(*, release: str, namespace: str, impersonate: str | None = None) -> list[str]:
    """`helm get metadata` (Helm >= 3.13): the current revision without values, manifest or the
    live resources `helm status --output json` carries."""
    argv = ["get", "metadata", *scope_flags(namespace, impersonate), "--output=json"]
    return [*argv, "--", release]


def repo_add_argv(
    *,
    alias: str,
    url: str,
    username: str,
    insecure_skip_tls_verify: bool = False,
    ca_file: Path | None = None,
    timeout_seconds: float = QUICK_TIMEOUT_SECONDS,
) -> list[str]:
    """`helm repo add` into a private repositories.yaml; the password comes on stdin."""
    argv = ["repo", "add", "--force-update", f"--username={username}", "--password-stdin"]
    if insecure_skip_tls_verify:
        argv.append("--insecure-skip-tls-verify")
    if ca_file is not None:
        argv.append(f"--ca-file={ca_file}")
    argv += [f"--timeout={go_duration(timeout_seconds)}", "--", alias, url]
    return argv


def registry_login_argv(
    *, host: str, username: str, insecure: bool = False, ca_file: Path | None = None
) -> list[str]:
    """`helm registry login` into a private registry config; the password comes on stdin."""
    argv = ["registry", "login", f"--username={username}", "--password-stdin"]
    if insecure:
        argv.append("--insecure")
    if ca_file is not None:
        argv.append(f"--ca-file={ca_file}")
    argv += ["--", host]
    return argv


def helm_env(
    base_env: Mapping[str, str],
    *,
    kubeconfig: str | None = None,
    helm_home: Path | None = None,
    private_dir: Path | None = None,
) -> dict[str, str]:
    """The environment of one helm run.

    `helm_home` isolates helm's cache/config/data (per state). `private_dir` (the per-call
    directory that also holds the values file) takes the repository and registry configuration,
    so credentials never land in a shared place.
    """
    env = dict(base_env)
    if kubeconfig:
        env["KUBECONFIG"] = kubeconfig
    if helm_home is not None:
        env["HELM_CACHE_HOME"] = str(helm_home / "cache")
        env["HELM_CONFIG_HOME"] = str(helm_home / "config")
        env["HELM_DATA_HOME"] = str(helm_home / "data")
    if private_dir is not None:
        env["HELM_REPOSITORY_CONFIG"] = str(private_dir / "repositories.yaml")
        env["HELM_REPOSITORY_CACHE"] = str(private_dir / "repository-cache")
        env["HELM_REGISTRY_CONFIG"] = str(private_dir / "registry" / "config.json")
    return env


@contextlib.contextmanager
def private_workdir(parent: Path | None = None) -> Iterator[Path]:
    """A 0700 directory for one command's files (values, CA, credentials), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="helm-", dir=parent))
    try:
        path.chmod(0o700)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def write_private_file(path: Path, content: str) -> Path:
    """Create `path` with mode 0600 (failing if it exists) and write `content`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(content)
    return path


def write_values_file(directory: Path, values: Mapping[str, Any]) -> Path:
    """The values as JSON (valid YAML, exact for every JSON type) in a 0600 file."""
    try:
        text = json.dumps(dict(values), ensure_ascii=False, allow_nan=False, indent=1)
    except (TypeError, ValueError) as error:
        # The error names a type or says "out of range"; it never echoes the value itself.
        reason = str(error).split(":")[0]
        raise HelmError(
            HelmErrorKind.INVALID_VALUES,
            "upgrade",
            f"the values cannot be written as JSON ({reason})",
        ) from None
    return write_private_file(directory / "values.yaml", text)


def _json_document(stdout: str) -> Any:
    """helm's JSON output, tolerating stray lines before it."""
    try:
        return json.loads(stdout)
    except ValueError:
        pass
    match = re.search(r"^[\[{]", stdout, re.MULTILINE)
    if match is None:
        raise ValueError("no JSON document in helm's output")
    return json.loads(stdout[match.start() :])


def parse_release(stdout: str) -> ReleaseResult:
    """The release object helm prints with `--output json` (upgrade, status)."""
    release = _json_document(stdout)
    if not isinstance(release, dict):
        raise ValueError("helm's output is not a release object")
    info = release.get("info") or {}
    metadata = (release.get("chart") or {}).get("metadata") or {}
    last_deployed = info.get("last_deployed")
    return ReleaseResult(
        name=str(release.get("name") or ""),
        namespace=str(release.get("namespace") or ""),
        revision=int(release.get("version") or 0),
        status=str(info.get("status") or ""),
        chart_name=str(metadata.get("name") or ""),
        chart_version=str(metadata.get("version") or ""),
        app_version=str(metadata.get("appVersion") or ""),
        description=str(info.get("description") or ""),
        last_deployed=str(last_deployed) if last_deployed else None,
    )


def parse_metadata(stdout: str) -> ReleaseResult:
    """`helm get metadata --output json`."""
    metadata = _json_document(stdout)
    if not isinstance(metadata, dict):
        raise ValueError("helm's output is not a metadata object")
    deployed = metadata.get("deployedAt")
    return ReleaseResult(
        name=str(metadata.get("name") or ""),
        namespace=str(metadata.get("namespace") or ""),
        revision=int(metadata.get("revision") or 0),
        status=str(metadata.get("status") or ""),
        chart_name=str(metadata.get("chart") or ""),
        chart_version=str(metadata.get("version") or ""),
        app_version=str(metadata.get("appVersion") or ""),
        last_deployed=str(deployed) if deployed else None,
    )


def parse_history(stdout: str) -> list[HistoryRecord]:
    """`helm history --output json`: oldest first, as helm prints it."""
    if not stdout.strip():
        return []
    entries = _json_document(stdout)
    if not isinstance(entries, list):
        raise ValueError("helm's history output is not a list")
    return [
        HistoryRecord(
            revision=int(entry.get("revision") or 0),
            status=str(entry.get("status") or ""),
            chart=str(entry.get("chart") or ""),
            app_version=str(entry.get("app_version") or ""),
            updated=str(entry["updated"]) if entry.get("updated") else None,
            description=str(entry.get("description") or ""),
        )
        for entry in entries
        if isinstance(entry, dict)
    ]


# --- the client ---------------------------------------------------------------------------------


class HelmClient:
    """Runs helm with bounded concurrency; every method raises HelmError on failure."""

    def __init__(
        self,
        binary: str = "helm",
        *,
        kubeconfig: str | None = None,
        base_env: Mapping[str, str] | None = None,
        max_concurrency: int = 8,
        on_command: OnCommand | None = None,
        wait_strategy: str = DEFAULT_WAIT_STRATEGY,
        work_dir: Path | None = None,
        term_grace_seconds: float = DEFAULT_TERM_GRACE_SECONDS,
        subprocess_grace_seconds: float = SUBPROCESS_GRACE_SECONDS,
        quick_timeout_seconds: float = QUICK_TIMEOUT_SECONDS,
    ) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        if wait_strategy not in WAIT_STRATEGIES:
            raise ValueError(f"unknown helm wait strategy {wait_strategy!r}")
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.base_env: dict[str, str] = dict(os.environ if base_env is None else base_env)
        self.max_concurrency = max_concurrency
        self.on_command = on_command
        self.wait_strategy = wait_strategy
        self.work_dir = work_dir
        self.term_grace_seconds = term_grace_seconds
        self.subprocess_grace_seconds = subprocess_grace_seconds
        self.quick_timeout_seconds = quick_timeout_seconds
        self._semaphore: asyncio.Semaphore | None = None
        self._semaphore_loop: asyncio.AbstractEventLoop | None = None
        self._in_flight = 0
        self._queued = 0
        self._version: HelmVersion | None = None

    @property
    def in_flight(self) -> int:
        """helm processes running now."""
        return self._in_flight

    @property
    def queued(self) -> int:
        """Commands waiting for a free slot."""
        return self._queued

    # -- commands --------------------------------------------------------------------------------

    async def version(self) -> HelmVersion:
        """The helm binary's version, detected once."""
        if self._version is None:
            result = await self._run(
                "version",
                ["version", "--template={{.Version}}"],
                limit=self.quick_timeout_seconds,
                env=self._env(),
            )
            try:
                self._version = HelmVersion.parse(result.stdout)
            except ValueError as error:
                raise HelmError(HelmErrorKind.UNKNOWN, "version", str(error)) from None
            log.info("helm %s at %s", self._version.raw, self.binary)
        return self._version

    async def upgrade_install(
        self,
        *,
        release: str,
        namespace: str,
        chart: ChartReference,
        values: Mapping[str, Any],
        options: HelmOptions,
        impersonate: str | None = None,
        helm_home: Path | None = None,
        credentials: RepositoryCredentials | None = None,
        ca_pem: str | None = None,
        redact: Iterable[str] = (),
    ) -> ReleaseResult:
        """`helm upgrade --install`. The caller resolves `chart.repository.secretRef` into
        `credentials` and `caSecretRef` into `ca_pem`; `redact` lists strings (values read from
        Secrets) that must not appear in an error message."""
        helm = await self.version()
        secrets = [*redact, *([credentials.password] if credentials else [])]
        helm_timeout = helm_timeout_seconds(options)
        with private_workdir(self.work_dir) as workdir:
            values_file = write_values_file(workdir, values)
            ca_file = write_private_file(workdir / "ca.crt", ca_pem) if ca_pem else None
            env = self._env(helm_home, private_dir=workdir if credentials else None)
            alias = await self._login(chart, credentials, ca_file, env) if credentials else None
            argv = upgrade_argv(
                release=release,
                namespace=namespace,
                chart=chart,
                values_file=values_file,
                options=options,
                helm_major=helm.major,
                impersonate=impersonate,
                alias=alias,
                ca_file=ca_file,
                wait_strategy=self.wait_strategy,
            )
            result = await self._run(
                "upgrade",
                argv,
                limit=helm_timeout + self.subprocess_grace_seconds,
                env=env,
                redact=secrets,
            )
        try:
            return parse_release(result.stdout)
        except (ValueError, TypeError, AttributeError):
            raise HelmError(
                HelmErrorKind.UNKNOWN, "upgrade", "helm succeeded but its output was not a release"
            ) from None

    async def uninstall(
        self,
        *,
        release: str,
        namespace: str,
        timeout_seconds: float,
        wait: bool = True,
        impersonate: str | None = None,
        ignore_not_found: bool = False,
    ) -> None:
        helm = await self.version()
        argv = uninstall_argv(
            release=release,
            namespace=namespace,
            timeout_seconds=timeout_seconds,
            wait=wait,
            helm_major=helm.major,
            impersonate=impersonate,
            wait_strategy=self.wait_strategy,
        )
        try:
            await self._run(
                "uninstall",
                argv,
                limit=timeout_seconds + self.subprocess_grace_seconds,
                env=self._env(),
            )
        except HelmError as error:
            if ignore_not_found and error.kind is HelmErrorKind.RELEASE_NOT_FOUND:
                log.debug("helm uninstall %s/%s: already gone", namespace, release)
                return
            raise

    async def rollback(
        self,
        *,
        release: str,
        namespace: str,
        revision: int | None,
        timeout_seconds: float,
        wait: bool,
        impersonate: str | None = None,
        wait_for_jobs: bool = False,
        history_max: int | None = None,
    ) -> None:
        """Roll back to `revision`, or to the previous revision when None."""
        helm = await self.version()
        argv = rollback_argv(
            release=release,
            namespace=namespace,
            revision=revision,
            timeout_seconds=timeout_seconds,
            wait=wait,
            helm_major=helm.major,
            impersonate=impersonate,
            wait_for_jobs=wait_for_jobs,
            history_max=history_max,
            wait_strategy=self.wait_strategy,
        )
        await self._run(
            "rollback", argv, limit=timeout_seconds + self.subprocess_grace_seconds, env=self._env()
        )

    async def history(
        self,
        *,
        release: str,
        namespace: str,
        max: int = 10,
        impersonate: str | None = None,
    ) -> list[HistoryRecord]:
        """The last `max` revisions, oldest first; empty when the release does not exist."""
        argv = history_argv(release=release, namespace=namespace, max=max, impersonate=impersonate)
        try:
            result = await self._run(
                "history", argv, limit=self.quick_timeout_seconds, env=self._env()
            )
        except HelmError as error:
            if error.kind is HelmErrorKind.RELEASE_NOT_FOUND:
                return []
            raise
        try:
            return parse_history(result.stdout)
        except (ValueError, TypeError, AttributeError):
            raise HelmError(
                HelmErrorKind.UNKNOWN, "history", "helm's history output could not be parsed"
            ) from None

    async def status(
        self, *, release: str, namespace: str, impersonate: str | None = None
    ) -> ReleaseResult | None:
        """The current revision of the release (no description), or None when it does not exist."""
        argv = status_argv(release=release, namespace=namespace, impersonate=impersonate)
        try:
            result = await self._run(
                "status", argv, limit=self.quick_timeout_seconds, env=self._env()
            )
        except HelmError as error:
            if error.kind is HelmErrorKind.RELEASE_NOT_FOUND:
                return None
            raise
        try:
            return parse_metadata(result.stdout)
        except (ValueError, TypeError, AttributeError):
            raise HelmError(
                HelmErrorKind.UNKNOWN, "status", "helm's metadata output could not be parsed"
            ) from None

    # -- internals -------------------------------------------------------------------------------

    def _env(
        self, helm_home: Path | None = None, private_dir: Path | None = None
    ) -> dict[str, str]:
        return helm_env(
            self.base_env, kubeconfig=self.kubeconfig, helm_home=helm_home, private_dir=private_dir
        )

    async def _login(
        self,
        chart: ChartReference,
        credentials: RepositoryCredentials,
        ca_file: Path | None,
        env: Mapping[str, str],
    ) -> str | None:
        """Register the credentials in the private config of `env`; the chart alias for http(s)."""
        repository = chart.repository
        stdin = (credentials.password + "\n").encode()
        if is_oci(repository.url):
            Path(env["HELM_REGISTRY_CONFIG"]).parent.mkdir(mode=0o700, exist_ok=True)
            argv = registry_login_argv(
                host=registry_host(repository.url),
                username=credentials.username,
                insecure=repository.insecure_skip_tls_verify,
                ca_file=ca_file,
            )
            await self._run(
                "registry login",
                argv,
                limit=self.quick_timeout_seconds,
                env=env,
                stdin=stdin,
                redact=[credentials.password],
            )
            return None
        alias = repo_alias(repository.url, credentials.username)
        argv = repo_add_argv(
            alias=alias,
            url=repository.url,
            username=credentials.username,
            insecure_skip_tls_verify=repository.insecure_skip_tls_verify,
            ca_file=ca_file,
            timeout_seconds=self.quick_timeout_seconds,
        )
        await self._run(
            "repo add",
            argv,
            limit=self.quick_timeout_seconds + self.subprocess_grace_seconds,
            env=env,
            stdin=stdin,
            redact=[credentials.password],
        )
        return alias

    def _slots(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._semaphore is None or self._semaphore_loop is not loop:
            self._semaphore = asyncio.Semaphore(self.max_concurrency)
            self._semaphore_loop = loop
        return self._semaphore

    async def _run(
        self,
        command: str,
        argv: list[str],
        *,
        limit: float,
        env: Mapping[str, str],
        stdin: bytes | None = None,
        redact: Iterable[str] = (),
    ) -> CommandResult:
        """Run one helm command; HelmError unless it exits 0 within `limit` seconds (queueing for a
        slot does not count). Cancellation kills helm and propagates."""
        slots = self._slots()
        self._queued += 1
        try:
            await slots.acquire()
        finally:
            self._queued -= 1
        try:
            return await self._execute(command, argv, limit, env, stdin, list(redact))
        finally:
            slots.release()

    async def _execute(
        self,
        command: str,
        argv: list[str],
        limit: float,
        env: Mapping[str, str],
        stdin: bytes | None,
        redact: list[str],
    ) -> CommandResult:
        started = time.monotonic()
        shown = shlex.join([self.binary, *argv])
        try:
            process = await asyncio.create_subprocess_exec(
                self.binary,
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=dict(env),
                start_new_session=True,  # its own process group: killed as a whole
            )
        except OSError as error:
            self._report(command, "error", time.monotonic() - started)
            raise HelmError(
                HelmErrorKind.UNKNOWN, command, f"cannot run {self.binary}: {error.strerror}"
            ) from None

        self._in_flight += 1
        outcome = "error"
        timed_out = False
        if process.stdout is None or process.stderr is None:  # pragma: no cover - PIPE above
            raise RuntimeError("helm's output pipes are missing")
        readers = (
            asyncio.ensure_future(process.stdout.read()),
            asyncio.ensure_future(process.stderr.read()),
        )
        try:
            if stdin is not None:
                await self._feed(process, stdin)
            try:
                await asyncio.wait_for(process.wait(), limit)
            except TimeoutError:
                timed_out = True
                await self._terminate(process)
            stdout, stderr = await self._drain(readers)
            returncode = process.returncode if process.returncode is not None else -1
            if returncode == 0 and not timed_out:
                outcome = "success"
        except BaseException:
            # Cancelled (or broken): helm must not outlive the call. The termination is shielded
            # so that a second cancellation cannot leave it half done.
            for reader in readers:
                reader.cancel()
            kill = asyncio.ensure_future(self._terminate(process))
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(kill)
            raise
        finally:
            self._in_flight -= 1
            duration = time.monotonic() - started
            log.debug(
                "helm %s: %s (%s in %.2fs, exit %s)",
                command,
                redact_text(shown, redact),
                "timed out" if timed_out else outcome,
                duration,
                process.returncode,
            )
            self._report(command, outcome, duration)

        if outcome != "success":
            failure = _refused_impersonation(
                classify(command, stderr, returncode, timed_out, redact=redact), argv
            )
            log.debug("helm %s failed: %s", command, failure.message)
            raise failure
        return CommandResult(command, argv, returncode, duration, stdout, stderr)

    @staticmethod
    async def _feed(process: asyncio.subprocess.Process, data: bytes) -> None:
        if process.stdin is None:  # pragma: no cover - PIPE when there is input
            return
        try:
            process.stdin.write(data)
            await process.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass  # helm exited early; its exit code and stderr tell why
        finally:
            process.stdin.close()

    @staticmethod
    async def _drain(readers: tuple[asyncio.Future[bytes], ...]) -> tuple[str, str]:
        done, pending = await asyncio.wait(readers, timeout=_READER_DRAIN_SECONDS)
        for reader in pending:
            reader.cancel()
        out = [
            r.result().decode("utf-8", "replace")
            if r in done and not r.cancelled() and r.exception() is None
            else ""
            for r in readers
        ]
        return out[0], out[1]

    async def _terminate(self, process: asyncio.subprocess.Process) -> None:
        """SIGTERM (helm marks the release failed instead of leaving it pending), then SIGKILL."""
        if process.returncode is not None:
            return
        self._signal(process, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), self.term_grace_seconds)
            return
        except TimeoutError:
            pass
        self._signal(process, signal.SIGKILL)
        await process.wait()

    @staticmethod
    def _signal(process: asyncio.subprocess.Process, sig: signal.Signals) -> None:
        if process.returncode is not None:
            return  # reaped: its pid (and group id) may belong to someone else now
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(sig)

    def _report(self, command: str, outcome: str, duration: float) -> None:
        if self.on_command is None:
            return
        try:
            self.on_command(command, outcome, duration)
        except Exception:
            log.exception("the on_command hook failed")


def _refused_impersonation(failure: HelmError, argv: Sequence[str]) -> HelmError:
    """A refused impersonation reaches helm as a 403 on /version, which every identity may read
    otherwise; helm reports it as "cluster unreachable: unknown". Say what it is instead."""
    user = next((a.split("=", 1)[1] for a in argv if a.startswith("--kube-as-user=")), None)
    if user is None or failure.kind is not HelmErrorKind.CONNECTION:
        return failure
    if "unknown" not in failure.message.lower():
        return failure
    return HelmError(
        HelmErrorKind.FORBIDDEN,
        failure.command,
        f"forbidden: the operator may not impersonate {user}; grant its ServiceAccount "
        "`impersonate` on serviceaccounts (helm reported: cluster unreachable)",
        returncode=failure.returncode,
    )
