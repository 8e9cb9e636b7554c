"""`HelmClient`: the helm commands the operator runs, and what a failed run means.

Each verb builds its argv (`argv.py`), writes the run's private files (`files.py`), runs helm
through the bounded `Runner` (`runner.py`) and parses what helm printed (`output.py`). A run that
fails becomes a `HelmError` whose message is safe to show (`errors.py`). helm's stdout is parsed,
never logged: with `--output json` it holds the release's values.

The verbs take the `tenant` they act for (the object's namespace): its runs share helm's home
(cache, configuration, data) with no other tenant, and hold at most `max_concurrency_per_tenant`
of the runner's slots.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helmfile_operator.api.models import ChartReference, HelmOptions
from helmfile_operator.helm.argv import (
    DEFAULT_WAIT_STRATEGY,
    QUICK_TIMEOUT_SECONDS,
    WAIT_STRATEGIES,
    clamp_timeout,
    helm_test_argv,
    helm_timeout_seconds,
    history_argv,
    is_oci,
    registry_host,
    repo_alias,
    repo_update_argv,
    rollback_argv,
    show_crds_argv,
    uninstall_argv,
    upgrade_argv,
)
from helmfile_operator.helm.errors import (
    HINTS,
    HelmError,
    HelmErrorKind,
    classify,
    failed_test,
    redact_text,
)
from helmfile_operator.helm.files import (
    ensure_private_dir,
    helm_env,
    private_workdir,
    tenant_home,
    write_kubeconfig,
    write_private_file,
    write_registry_config,
    write_repository_config,
    write_values_file,
)
from helmfile_operator.helm.output import (
    HelmVersion,
    HistoryRecord,
    ReleaseInfo,
    parse_history,
    parse_release,
)
from helmfile_operator.helm.runner import (
    DEFAULT_TERM_GRACE_SECONDS,
    OnFinish,
    Runner,
    RunResult,
    SpawnError,
)

log = logging.getLogger("helmfile_operator.helm")

# The subprocess gets this much longer than helm's own --timeout, so helm reports its timeout.
SUBPROCESS_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class RepositoryCredentials:
    """Username and password of a chart repository or OCI registry. Never on argv, never logged."""

    username: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class _ChartSource:
    env: dict[str, str]
    cwd: Path
    alias: str | None
    ca_file: Path | None


class HelmClient:
    """Runs helm with bounded concurrency; every method raises HelmError on failure.

    `max_concurrency_per_tenant` (default: half of `max_concurrency`, at least 1) bounds the runs
    of one tenant; `max_timeout_seconds` (default: none) bounds every helm `--timeout` and the
    time limit of every run; `tenant_home_dir` (default: `work_dir/helm-homes`, or without
    `work_dir` a private directory in the system temp dir) holds the tenants' helm homes.
    """

    def __init__(
        self,
        binary: str = "helm",
        *,
        kubeconfig: str | None = None,
        base_env: Mapping[str, str] | None = None,
        max_concurrency: int = 8,
        on_command: OnFinish | None = None,
        wait_strategy: str = DEFAULT_WAIT_STRATEGY,
        work_dir: Path | None = None,
        term_grace_seconds: float = DEFAULT_TERM_GRACE_SECONDS,
        subprocess_grace_seconds: float = SUBPROCESS_GRACE_SECONDS,
        quick_timeout_seconds: float = QUICK_TIMEOUT_SECONDS,
        max_concurrency_per_tenant: int | None = None,
        max_timeout_seconds: float | None = None,
        tenant_home_dir: Path | None = None,
    ) -> None:
        if max_timeout_seconds is not None and max_timeout_seconds <= 0:
            raise ValueError("max_timeout_seconds must be positive")
        # `on_command(command, "success" | "error", seconds)` is called after every helm run.
        self.runner = Runner(
            max_concurrency=max_concurrency,
            max_concurrency_per_tenant=max_concurrency_per_tenant,
            term_grace_seconds=term_grace_seconds,
            on_finish=on_command,
            logger=log,
        )
        if wait_strategy not in WAIT_STRATEGIES:
            raise ValueError(f"unknown helm wait strategy {wait_strategy!r}")
        self.binary = binary
        self.kubeconfig = kubeconfig
        self.base_env: dict[str, str] = dict(os.environ if base_env is None else base_env)
        self.wait_strategy = wait_strategy
        self.work_dir = work_dir
        self.subprocess_grace_seconds = subprocess_grace_seconds
        self.quick_timeout_seconds = quick_timeout_seconds
        self.max_timeout_seconds = max_timeout_seconds
        self.tenant_home_dir = tenant_home_dir
        self._version: HelmVersion | None = None

    @property
    def in_flight(self) -> int:
        """helm processes running now."""
        return self.runner.in_flight

    # -- commands --------------------------------------------------------------------------------

    async def version(self) -> HelmVersion:
        """The helm binary's version, detected once."""
        if self._version is None:
            result = await self._run(
                "version",
                ["version", "--template={{.Version}}"],
                limit=self._quick_limit(),
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
        tenant: str | None = None,
        skip_crds: bool = False,
        dry_run: bool = False,
        kubeconfig: str | None = None,
    ) -> ReleaseInfo:
        """`helm upgrade --install` (`dry_run`: `--dry-run=server`); the result carries the
        manifest helm applied (or would apply). The caller resolves `chart.repository.secretRef`
        into `credentials` and `caSecretRef` into `ca_pem`; `redact` lists strings (values read
        from Secrets) that must not appear in an error message. `helm_home`, when given, is used
        instead of the tenant's home; `skip_crds`: do not install the chart's `crds/`;
        `kubeconfig`: the kubeconfig (its text) of the cluster to act on (default: the
        operator's own)."""
        helm = await self.version()
        secrets = [*redact, *([credentials.password] if credentials else [])]
        helm_timeout = self._clamp(helm_timeout_seconds(options))
        with private_workdir(self.work_dir) as workdir:
            values_file = write_values_file(workdir, values)
            cluster = write_kubeconfig(workdir, kubeconfig)
            source = await self._chart_source(
                workdir, chart, credentials, ca_pem, helm.major, tenant, helm_home, cluster
            )
            argv = upgrade_argv(
                release=release,
                namespace=namespace,
                chart=chart,
                values_file=values_file,
                options=options,
                helm_major=helm.major,
                impersonate=impersonate,
                alias=source.alias,
                ca_file=source.ca_file,
                wait_strategy=self.wait_strategy,
                max_timeout_seconds=self.max_timeout_seconds,
                skip_crds=skip_crds,
                dry_run=dry_run,
            )
            result = await self._run(
                "upgrade --dry-run" if dry_run else "upgrade",
                argv,
                limit=helm_timeout + self.subprocess_grace_seconds,
                env=source.env,
                redact=secrets,
                tenant=tenant,
                cwd=source.cwd,
            )
        try:
            return parse_release(result.stdout, with_manifest=True)
        except (ValueError, TypeError):
            raise HelmError(
                HelmErrorKind.UNKNOWN, "upgrade", "helm succeeded but its output was not a release"
            ) from None

    async def show_crds(
        self,
        *,
        chart: ChartReference,
        credentials: RepositoryCredentials | None = None,
        ca_pem: str | None = None,
        tenant: str | None = None,
    ) -> str:
        """`helm show crds`: the chart's `crds/` files as one YAML stream (fetched like upgrade
        fetches the chart, with the same credentials)."""
        helm = await self.version()
        secrets = [credentials.password] if credentials else []
        with private_workdir(self.work_dir) as workdir:
            source = await self._chart_source(
                workdir, chart, credentials, ca_pem, helm.major, tenant, None
            )
            result = await self._run(
                "show crds",
                show_crds_argv(chart=chart, alias=source.alias, ca_file=source.ca_file),
                limit=self._quick_limit() + self.subprocess_grace_seconds,
                env=source.env,
                redact=secrets,
                tenant=tenant,
                cwd=source.cwd,
            )
        return result.stdout

    async def test(
        self,
        *,
        release: str,
        namespace: str,
        timeout_seconds: float,
        impersonate: str | None = None,
        tenant: str | None = None,
        kubeconfig: str | None = None,
    ) -> None:
        """`helm test`; a failed test raises HelmError(TEST_FAILED) naming the test."""
        timeout_seconds = self._clamp(timeout_seconds)
        argv = helm_test_argv(
            release=release,
            namespace=namespace,
            timeout_seconds=timeout_seconds,
            impersonate=impersonate,
        )
        try:
            with self._cluster(kubeconfig) as cluster:
                await self._run(
                    "test",
                    argv,
                    limit=timeout_seconds + self.subprocess_grace_seconds,
                    env=self._env(tenant=tenant, kubeconfig=cluster),
                    tenant=tenant,
                )
        except HelmError as error:
            raise failed_test(error) from None

    async def uninstall(
        self,
        *,
        release: str,
        namespace: str,
        timeout_seconds: float,
        wait: bool = True,
        impersonate: str | None = None,
        ignore_not_found: bool = False,
        tenant: str | None = None,
        kubeconfig: str | None = None,
    ) -> None:
        helm = await self.version()
        timeout_seconds = self._clamp(timeout_seconds)
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
            with self._cluster(kubeconfig) as cluster:
                await self._run(
                    "uninstall",
                    argv,
                    limit=timeout_seconds + self.subprocess_grace_seconds,
                    env=self._env(tenant=tenant, kubeconfig=cluster),
                    tenant=tenant,
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
        tenant: str | None = None,
        kubeconfig: str | None = None,
    ) -> None:
        """Roll back to `revision`, or to the previous revision when None."""
        helm = await self.version()
        timeout_seconds = self._clamp(timeout_seconds)
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
        with self._cluster(kubeconfig) as cluster:
            await self._run(
                "rollback",
                argv,
                limit=timeout_seconds + self.subprocess_grace_seconds,
                env=self._env(tenant=tenant, kubeconfig=cluster),
                tenant=tenant,
            )

    async def history(
        self,
        *,
        release: str,
        namespace: str,
        max: int = 10,
        impersonate: str | None = None,
        tenant: str | None = None,
        kubeconfig: str | None = None,
    ) -> list[HistoryRecord]:
        """The last `max` revisions, oldest first; empty when the release does not exist."""
        argv = history_argv(release=release, namespace=namespace, max=max, impersonate=impersonate)
        try:
            with self._cluster(kubeconfig) as cluster:
                result = await self._run(
                    "history",
                    argv,
                    limit=self._quick_limit(),
                    env=self._env(tenant=tenant, kubeconfig=cluster),
                    tenant=tenant,
                )
        except HelmError as error:
            if error.kind is HelmErrorKind.RELEASE_NOT_FOUND:
                return []
            raise
        try:
            return parse_history(result.stdout)
        except (ValueError, TypeError):
            raise HelmError(
                HelmErrorKind.UNKNOWN, "history", "helm's history output could not be parsed"
            ) from None

    # -- internals -------------------------------------------------------------------------------

    def _clamp(self, seconds: float) -> float:
        return clamp_timeout(seconds, self.max_timeout_seconds)

    def _quick_limit(self) -> float:
        return self._clamp(self.quick_timeout_seconds)

    def _env(
        self,
        helm_home: Path | None = None,
        private_dir: Path | None = None,
        tenant: str | None = None,
        kubeconfig: Path | None = None,
    ) -> dict[str, str]:
        if helm_home is None and tenant is not None:
            helm_home = self._tenant_home(tenant)
        return helm_env(
            self.base_env,
            kubeconfig=str(kubeconfig) if kubeconfig is not None else self.kubeconfig,
            helm_home=helm_home,
            private_dir=private_dir,
            remote=kubeconfig is not None,
        )

    @contextlib.contextmanager
    def _cluster(self, kubeconfig: str | None) -> Iterator[Path | None]:
        """A remote cluster's kubeconfig in a private file for one run (None: ours)."""
        if kubeconfig is None:
            yield None
            return
        with private_workdir(self.work_dir) as workdir:
            yield write_kubeconfig(workdir, kubeconfig)

    def _tenant_home(self, tenant: str) -> Path:
        try:
            return tenant_home(self._tenant_home_dir(), tenant)
        except OSError as error:
            raise HelmError(
                HelmErrorKind.UNKNOWN, "setup", f"helm's home for {tenant!r} is unusable: {error}"
            ) from None

    def _tenant_home_dir(self) -> Path:
        if self.tenant_home_dir is None:
            if self.work_dir is not None:
                self.tenant_home_dir = self.work_dir / "helm-homes"
            else:
                # Stable across restarts (the caches stay useful, nothing is orphaned), unless
                # someone else holds that name in a shared temp dir.
                stable = Path(tempfile.gettempdir()) / f"helmfile-operator-{os.geteuid()}-homes"
                try:
                    self.tenant_home_dir = ensure_private_dir(stable)
                except OSError:
                    self.tenant_home_dir = Path(tempfile.mkdtemp(prefix="helmfile-operator-homes-"))
        return self.tenant_home_dir

    async def _chart_source(
        self,
        workdir: Path,
        chart: ChartReference,
        credentials: RepositoryCredentials | None,
        ca_pem: str | None,
        helm_major: int,
        tenant: str | None,
        helm_home: Path | None,
        kubeconfig: Path | None = None,
    ) -> _ChartSource:
        """The environment, directory and flags a command that fetches `chart` runs with."""
        ca_file = write_private_file(workdir / "ca.crt", ca_pem) if ca_pem else None
        # An empty working directory: no CHART argument can name a local chart.
        cwd = ensure_private_dir(workdir / "cwd")
        env = self._env(helm_home, private_dir=workdir, tenant=tenant, kubeconfig=kubeconfig)
        alias = None
        if credentials is not None:
            alias = await self._configure_repository(
                chart, credentials, ca_file, env, helm_major, cwd=cwd, tenant=tenant
            )
        return _ChartSource(env=env, cwd=cwd, alias=alias, ca_file=ca_file)

    async def _configure_repository(
        self,
        chart: ChartReference,
        credentials: RepositoryCredentials,
        ca_file: Path | None,
        env: Mapping[str, str],
        helm_major: int,
        *,
        cwd: Path,
        tenant: str | None,
    ) -> str | None:
        """Write the credentials into the private configuration of `env`, in helm's formats (no
        login command: nothing of them on argv); the chart alias for http(s).

        OCI: the registry config (helm reads it for every registry request). http(s): a
        repositories.yaml with the repository under an alias, and `helm repo update ALIAS`,
        which downloads its index (read from the cache by `helm upgrade ALIAS/chart`) with the
        file's credentials."""
        repository = chart.repository
        if is_oci(repository.url):
            write_registry_config(
                Path(env["HELM_REGISTRY_CONFIG"]),
                host=registry_host(repository.url),
                username=credentials.username,
                password=credentials.password,
            )
            return None
        alias = repo_alias(repository.url)
        write_repository_config(
            Path(env["HELM_REPOSITORY_CONFIG"]),
            name=alias,
            url=repository.url,
            username=credentials.username,
            password=credentials.password,
            ca_file=ca_file,
            insecure_skip_tls_verify=repository.insecure_skip_tls_verify,
        )
        timeout = self._quick_limit()
        await self._run(
            "repo update",
            repo_update_argv(alias=alias, helm_major=helm_major, timeout_seconds=timeout),
            limit=timeout + self.subprocess_grace_seconds,
            env=env,
            redact=[credentials.password],
            tenant=tenant,
            cwd=cwd,
            errors_on_stdout=True,
        )
        return alias

    async def _run(
        self,
        command: str,
        args: list[str],
        *,
        limit: float,
        env: Mapping[str, str],
        stdin: bytes | None = None,
        redact: Iterable[str] = (),
        tenant: str | None = None,
        cwd: Path | None = None,
        errors_on_stdout: bool = False,
    ) -> RunResult:
        """Run one helm command; HelmError unless it exits 0 within `limit` seconds (queueing for a
        slot does not count) and its output fits the runner's bounds. Cancellation kills helm and
        propagates. `errors_on_stdout`: the command prints the causes of its failure on stdout
        (`repo update`), where no value can be."""
        secrets = list(redact)
        argv = [self.binary, *args]
        try:
            result = await self.runner.run(
                command,
                argv,
                limit=limit,
                env=env,
                stdin=stdin,
                shown=redact_text(shlex.join(argv), secrets),
                tenant=tenant,
                cwd=cwd,
            )
        except SpawnError as error:
            raise HelmError(
                HelmErrorKind.UNKNOWN, command, f"cannot run {self.binary}: {error.reason}"
            ) from None
        if result.ok:
            return result
        if "stderr" in result.exceeded or (result.returncode == 0 and not result.timed_out):
            # Cut output: stdout cannot be parsed, or stderr cannot be classified.
            failure = self._overflow(command, result)
        else:
            stderr = result.stderr
            if errors_on_stdout:
                stderr = _causes_on_stdout(result.stdout) + stderr
            failure = _refused_impersonation(
                classify(command, stderr, result.returncode, result.timed_out, redact=secrets),
                args,
            )
        log.debug("helm %s failed: %s", command, failure.message)
        raise failure

    def _overflow(self, command: str, result: RunResult) -> HelmError:
        bounds = {"stdout": self.runner.max_stdout_bytes, "stderr": self.runner.max_stderr_bytes}
        over = ", ".join(f"{name} over {_size(bounds[name])}" for name in result.exceeded)
        return HelmError(
            HelmErrorKind.UNKNOWN,
            command,
            f"helm's output is larger than the operator reads ({over}); none of it was used "
            f"({HINTS[HelmErrorKind.UNKNOWN]})",
            returncode=result.returncode,
        )


def _size(size: int) -> str:
    return f"{size // 2**20} MiB" if size >= 2**20 and size % 2**20 == 0 else f"{size} bytes"


def _causes_on_stdout(stdout: str) -> str:
    """`helm repo update` prints why a repository failed on stdout, indented under a
    `...Unable to get an update` line, and only a summary on stderr: the causes, as error lines
    that `classify` reads first."""
    causes = [line.strip() for line in stdout.splitlines() if line[:1] == "\t" and line.strip()]
    return "".join(f"Error: {cause}\n" for cause in causes)


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
