"""HelmClient against a fake helm executable (and `version()` against the real one, if built).

The fake is a Python script: it appends one JSON line per call (argv, stdin, helm env, the values
file it was given and that file's mode, the repository and registry configuration files it finds
and their modes, its working directory) to a log, then behaves as its configuration says for the
command: print, sleep, ignore SIGTERM, spawn a grandchild, exit with a code.
"""

from __future__ import annotations

import asyncio
import base64
import glob
import json
import logging
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helmfile_operator.api.models import ChartReference, ChartRepository, HelmOptions
from helmfile_operator.helm import HelmClient, HelmError, HelmErrorKind, RepositoryCredentials

SECRET = "s3cr3t-value-nobody-may-see"
PASSWORD = "repo-p4ssw0rd-nobody-may-see"
USERNAME = "repo-user-nobody-may-see"

FAKE_HELM = r"""#!{python}
import json, os, signal, subprocess, sys, time

config = json.loads(os.environ["FAKE_HELM"])
args = sys.argv[1:]
command = " ".join(args[:2]) if args[0] in ("repo", "registry") else args[0]
behaviour = config.get("commands", {{}}).get(command, {{}})
if behaviour.get("ignore_term"):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
values_file = next((a.split("=", 1)[1] for a in args if a.startswith("--values=")), None)
record = {{
    "command": command,
    "argv": args,
    "pid": os.getpid(),
    "stdin": sys.stdin.read(),
    "env": {{
        k: v
        for k, v in os.environ.items()
        if k.startswith("HELM_") or k in ("KUBECONFIG", "DOCKER_CONFIG")
    }},
    "cwd": os.getcwd(),
    "cwd_entries": os.listdir("."),
    "files": {{}},
    "start": time.time(),
}}
for key in ("HELM_REPOSITORY_CONFIG", "HELM_REGISTRY_CONFIG"):
    path = os.environ.get(key)
    if path and os.path.exists(path):
        record["files"][key] = {{
            "content": open(path).read(),
            "mode": os.stat(path).st_mode & 0o777,
            "dir_mode": os.stat(os.path.dirname(path)).st_mode & 0o777,
        }}
if values_file:
    record["values"] = open(values_file).read()
    record["values_mode"] = os.stat(values_file).st_mode & 0o777
    record["workdir_mode"] = os.stat(os.path.dirname(values_file)).st_mode & 0o777
if behaviour.get("child"):
    child = subprocess.Popen(["sleep", "60"])
    record["child"] = child.pid
with open(config["log"], "a") as log:
    log.write(json.dumps(record) + "\n")
if command == "version":
    sys.stdout.write(config.get("version", "v4.3.1"))
time.sleep(behaviour.get("sleep", 0))
sys.stdout.write(behaviour.get("stdout", ""))
sys.stderr.write(behaviour.get("stderr", ""))
with open(config["log"], "a") as log:
    log.write(json.dumps({{"command": command, "pid": os.getpid(), "end": time.time()}}) + "\n")
sys.exit(behaviour.get("exit", 0))
"""

RELEASE_JSON = json.dumps(
    {
        "name": "demo",
        "namespace": "apps",
        "version": 4,
        "info": {"status": "deployed", "description": "Upgrade complete"},
        "chart": {"metadata": {"name": "demo-app", "version": "0.1.0", "appVersion": "1.0.0"}},
        "config": {"password": SECRET},
        "manifest": "---\n",
    }
)
HTTP_CHART = ChartReference(
    repository=ChartRepository(url="https://charts.example.com"), name="demo-app", version="0.1.0"
)
OCI_CHART = ChartReference(repository=ChartRepository(url="oci://ghcr.io/org"), name="demo-app")


class FakeHelm:
    def __init__(self, tmp_path: Path) -> None:
        self.path = tmp_path / "helm"
        self.path.write_text(FAKE_HELM.format(python=sys.executable))
        self.path.chmod(0o755)
        self.log = tmp_path / "calls.jsonl"
        self.work = tmp_path / "work"
        self.work.mkdir()
        self.config: dict[str, Any] = {"log": str(self.log), "commands": {}}

    def on(self, command: str, **behaviour: Any) -> None:
        self.config["commands"][command] = behaviour

    def client(self, base_env: dict[str, str] | None = None, **kwargs: Any) -> HelmClient:
        env = {"PATH": os.environ["PATH"], "FAKE_HELM": json.dumps(self.config), **(base_env or {})}
        kwargs.setdefault("term_grace_seconds", 0.5)
        kwargs.setdefault("subprocess_grace_seconds", 0.0)
        return HelmClient(str(self.path), base_env=env, work_dir=self.work, **kwargs)

    def calls(self, command: str | None = None) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        records = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r for r in records if "argv" in r and (command is None or r["command"] == command)]

    def ends(self) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.log.read_text().splitlines()]
        return [r for r in records if "end" in r]


@pytest.fixture
def fake(tmp_path: Path) -> FakeHelm:
    return FakeHelm(tmp_path)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie nobody reaped yet is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


async def until(predicate: Callable[[], bool], within: float = 5.0) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


async def upgrade(client: HelmClient, **kwargs: Any) -> Any:
    kwargs.setdefault("chart", HTTP_CHART)
    kwargs.setdefault("values", {"auth": {"password": SECRET}, "replicas": 2})
    kwargs.setdefault("options", HelmOptions())
    return await client.upgrade_install(release="demo", namespace="apps", **kwargs)


# --- success paths --------------------------------------------------------------------------------


async def test_upgrade_install(fake: FakeHelm, caplog: pytest.LogCaptureFixture) -> None:
    fake.on("upgrade", stdout=RELEASE_JSON)
    seen: list[tuple[str, str, float]] = []
    client = fake.client(kubeconfig="/k/config", on_command=lambda *a: seen.append(a))
    caplog.set_level(logging.DEBUG, logger="helmfile_operator.helm")

    result = await upgrade(client, impersonate="system:serviceaccount:team:deployer")

    assert (result.revision, result.status, result.chart_version) == (4, "deployed", "0.1.0")
    [call] = fake.calls("upgrade")
    argv = call["argv"]
    assert argv[:2] == ["upgrade", "--install"]
    assert "--wait=watcher" in argv
    assert "--kube-as-user=system:serviceaccount:team:deployer" in argv
    assert argv[-3:] == ["--", "demo", "demo-app"]
    assert SECRET not in json.dumps(argv)
    assert json.loads(call["values"]) == {"auth": {"password": SECRET}, "replicas": 2}
    assert call["values_mode"] == 0o600
    assert call["workdir_mode"] == 0o700
    assert call["env"]["KUBECONFIG"] == "/k/config"
    assert call["stdin"] == ""
    assert list(fake.work.iterdir()) == []  # the values file and its directory are gone
    assert [(c, r) for c, r, _ in seen] == [("version", "success"), ("upgrade", "success")]
    assert all(d >= 0 for _, _, d in seen)
    assert client.in_flight == 0
    assert any("upgrade --install" in r.getMessage() for r in caplog.records)
    assert all(SECRET not in r.getMessage() for r in caplog.records)


async def test_helm3_flags(fake: FakeHelm) -> None:
    fake.config["version"] = "v3.16.2+g13654a5"
    fake.on("upgrade", stdout=RELEASE_JSON)
    client = fake.client()
    assert (await client.version()).major == 3
    await upgrade(client, options=HelmOptions(wait=True, wait_for_jobs=True))
    argv = fake.calls("upgrade")[0]["argv"]
    assert "--wait" in argv
    assert "--wait-for-jobs" in argv
    assert not any(a.startswith("--wait=") for a in argv)


async def test_version_is_detected_once(fake: FakeHelm) -> None:
    fake.on("history", stdout="[]")
    client = fake.client()
    for _ in range(3):
        await client.uninstall(release="a", namespace="b", timeout_seconds=5)
    assert len(fake.calls("version")) == 1
    assert (await client.version()).raw == "v4.3.1"


async def test_helm_home_isolates_helm(fake: FakeHelm, tmp_path: Path) -> None:
    fake.on("upgrade", stdout=RELEASE_JSON)
    await upgrade(fake.client(), helm_home=tmp_path / "state-a")
    env = fake.calls("upgrade")[0]["env"]
    assert env["HELM_CACHE_HOME"] == str(tmp_path / "state-a" / "cache")
    assert env["HELM_CONFIG_HOME"] == str(tmp_path / "state-a" / "config")
    assert env["HELM_DATA_HOME"] == str(tmp_path / "state-a" / "data")
    # Repository and registry configuration: the run's own, never a shared file.
    assert Path(env["HELM_REPOSITORY_CONFIG"]).parent.parent == fake.work


async def test_http_credentials_go_through_a_private_repo_config(fake: FakeHelm) -> None:
    fake.on("upgrade", stdout=RELEASE_JSON)
    client = fake.client()
    await upgrade(client, credentials=RepositoryCredentials(USERNAME, PASSWORD), ca_pem="PEM")

    assert [c["command"] for c in fake.calls()] == ["version", "repo update", "upgrade"]
    [update] = fake.calls("repo update")
    [up] = fake.calls("upgrade")
    assert update["stdin"] == up["stdin"] == ""
    alias = update["argv"][-1]
    assert update["argv"] == ["repo", "update", "--timeout=60s", "--", alias]
    assert up["argv"][-1] == f"{alias}/demo-app"
    assert not any(a.startswith("--repo") for a in up["argv"])
    private = Path(up["env"]["HELM_REPOSITORY_CONFIG"]).parent
    assert update["env"] == up["env"]  # the index update wrote the cache the upgrade reads
    assert Path(up["env"]["HELM_REPOSITORY_CACHE"]).parent == private
    assert private.parent == fake.work
    assert f"--ca-file={private / 'ca.crt'}" in up["argv"]
    # helm's repositories.yaml (repo.File), as `helm repo add` would have written it.
    repo_file = update["files"]["HELM_REPOSITORY_CONFIG"]
    assert repo_file["mode"] == 0o600
    assert repo_file["dir_mode"] == 0o700
    document = json.loads(repo_file["content"])
    assert document["apiVersion"] == "v1"
    assert document["generated"].endswith("Z")
    assert document["repositories"] == [
        {
            "name": alias,
            "url": "https://charts.example.com",
            "username": USERNAME,
            "password": PASSWORD,
            "certFile": "",
            "keyFile": "",
            "caFile": str(private / "ca.crt"),
            "insecure_skip_tls_verify": False,
            "pass_credentials_all": False,
        }
    ]
    assert not private.exists()


async def test_helm3_repo_update_fails_when_the_download_does(fake: FakeHelm) -> None:
    fake.config["version"] = "v3.16.2"
    fake.on("upgrade", stdout=RELEASE_JSON)
    await upgrade(fake.client(), credentials=RepositoryCredentials(USERNAME, PASSWORD))
    [update] = fake.calls("repo update")
    assert update["argv"][:3] == ["repo", "update", "--fail-on-repo-update-fail"]


async def test_oci_credentials_go_into_a_private_registry_config(fake: FakeHelm) -> None:
    fake.on("upgrade", stdout=RELEASE_JSON)
    chart = ChartReference(
        repository=ChartRepository(url="oci://registry.local:5000/org"), name="demo-app"
    )
    await upgrade(fake.client(), chart=chart, credentials=RepositoryCredentials(USERNAME, PASSWORD))
    assert [c["command"] for c in fake.calls()] == ["version", "upgrade"]  # no login command
    [up] = fake.calls("upgrade")
    assert up["argv"][-1] == "oci://registry.local:5000/org/demo-app"
    registry = up["files"]["HELM_REGISTRY_CONFIG"]
    assert registry["mode"] == 0o600
    assert registry["dir_mode"] == 0o700
    auth = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    assert json.loads(registry["content"]) == {"auths": {"registry.local:5000": {"auth": auth}}}
    assert Path(up["env"]["HELM_REGISTRY_CONFIG"]).parent.parent.parent == fake.work


async def test_docker_hub_credentials_use_its_historical_key(fake: FakeHelm) -> None:
    fake.on("upgrade", stdout=RELEASE_JSON)
    chart = ChartReference(repository=ChartRepository(url="oci://docker.io/org"), name="demo-app")
    await upgrade(fake.client(), chart=chart, credentials=RepositoryCredentials(USERNAME, PASSWORD))
    registry = json.loads(fake.calls("upgrade")[0]["files"]["HELM_REGISTRY_CONFIG"]["content"])
    assert set(registry["auths"]) == {"https://index.docker.io/v1/", "docker.io"}


@pytest.mark.parametrize("version", ["v4.3.1", "v3.16.2"])
@pytest.mark.parametrize("url", ["https://charts.example.com", "oci://ghcr.io/org"])
async def test_no_command_line_holds_a_username_or_password(
    fake: FakeHelm, caplog: pytest.LogCaptureFixture, version: str, url: str
) -> None:
    fake.config["version"] = version
    fake.on("upgrade", stdout=RELEASE_JSON)
    chart = ChartReference(repository=ChartRepository(url=url), name="demo-app")
    client = fake.client()
    caplog.set_level(logging.DEBUG, logger="helmfile_operator.helm")
    await upgrade(client, chart=chart, credentials=RepositoryCredentials(USERNAME, PASSWORD))
    await client.rollback(
        release="demo", namespace="apps", revision=None, timeout_seconds=5, wait=False
    )
    await client.uninstall(release="demo", namespace="apps", timeout_seconds=5)
    calls = fake.calls()
    assert {c["command"] for c in calls} >= {"upgrade", "rollback", "uninstall"}
    for call in calls:
        for secret in (USERNAME, PASSWORD):
            assert secret not in json.dumps(call["argv"])
            assert secret not in json.dumps(call["env"])
            assert secret not in call["stdin"]
    assert all(USERNAME not in r.getMessage() for r in caplog.records)
    assert all(PASSWORD not in r.getMessage() for r in caplog.records)


async def test_a_refused_index_download_is_classified_from_stdout(fake: FakeHelm) -> None:
    fake.on(
        "repo update",
        exit=1,
        stdout="Hang tight while we grab the latest from your chart repositories...\n"
        '...Unable to get an update from the "hfo-1" chart repository (https://charts.example.com):'
        "\n\tfailed to fetch https://charts.example.com/index.yaml : 401 Unauthorized\n",
        stderr="Error: failed to update the following repositories: [https://charts.example.com]\n",
    )
    with pytest.raises(HelmError) as caught:
        await upgrade(fake.client(), credentials=RepositoryCredentials(USERNAME, PASSWORD))
    assert caught.value.kind is HelmErrorKind.REPOSITORY_AUTH_FAILED
    assert caught.value.command == "repo update"
    assert "401 Unauthorized" in caught.value.message
    assert PASSWORD not in str(caught.value)
    assert fake.calls("upgrade") == []
    assert list(fake.work.iterdir()) == []


async def test_helm_runs_in_an_empty_directory(fake: FakeHelm) -> None:
    # helm reads a CHART that exists as a path relative to its working directory as a local
    # chart; there is none in an empty directory.
    fake.on("upgrade", stdout=RELEASE_JSON)
    for credentials in (None, RepositoryCredentials(USERNAME, PASSWORD)):
        await upgrade(fake.client(), credentials=credentials)
    for call in fake.calls("upgrade") + fake.calls("repo update"):
        assert call["cwd_entries"] == []
        assert Path(call["cwd"]).parent.parent == fake.work
        assert call["cwd"] != os.getcwd()


# --- tenants --------------------------------------------------------------------------------------


async def test_every_tenant_has_a_helm_home_of_its_own(fake: FakeHelm) -> None:
    fake.on("upgrade", stdout=RELEASE_JSON)
    fake.on("history", stdout="[]")
    shared = {
        "HELM_CACHE_HOME": "/shared/cache",
        "HELM_REPOSITORY_CACHE": "/shared/cache/repository",
        "HELM_CONTENT_CACHE": "/shared/cache/content",
        "HELM_REGISTRY_CONFIG": "/shared/registry.json",
        "DOCKER_CONFIG": "/shared/docker",
    }
    client = fake.client(base_env=shared)
    for tenant in ("team-a", "team-b"):
        await upgrade(client, tenant=tenant)
        await client.history(release="demo", namespace="apps", tenant=tenant)
        await client.rollback(
            release="demo",
            namespace="apps",
            revision=1,
            timeout_seconds=5,
            wait=True,
            tenant=tenant,
        )
        await client.uninstall(release="demo", namespace="apps", timeout_seconds=5, tenant=tenant)
    homes = fake.work / "helm-homes"
    assert stat.S_IMODE(homes.stat().st_mode) == 0o700
    for tenant in ("team-a", "team-b"):
        home = homes / tenant
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        calls = [c for c in fake.calls() if c["command"] != "version"]
        mine = [c for c in calls if c["env"]["HELM_CACHE_HOME"] == str(home / "cache")]
        assert {c["command"] for c in mine} == {"upgrade", "history", "rollback", "uninstall"}
        for call in mine:
            assert call["env"]["HELM_CONFIG_HOME"] == str(home / "config")
            assert call["env"]["HELM_DATA_HOME"] == str(home / "data")
            assert call["env"]["DOCKER_CONFIG"] == str(home / "docker")
            assert "HELM_CONTENT_CACHE" not in call["env"]  # derived from the home by helm
            if call["command"] != "upgrade":  # the upgrade's are in its private directory
                assert "HELM_REPOSITORY_CACHE" not in call["env"]
                assert "HELM_REGISTRY_CONFIG" not in call["env"]
    # Without a tenant: the operator's environment, as before.
    await client.history(release="demo", namespace="apps")
    assert fake.calls("history")[-1]["env"]["HELM_CACHE_HOME"] == "/shared/cache"


async def test_a_tenant_string_never_names_a_path(fake: FakeHelm) -> None:
    fake.on("history", stdout="[]")
    client = fake.client()
    await client.history(release="demo", namespace="apps", tenant="../../etc")
    cache = Path(fake.calls("history")[0]["env"]["HELM_CACHE_HOME"])
    assert cache.parent.parent == fake.work / "helm-homes"
    assert cache.parent.name.startswith("_")
    assert not (fake.work.parent / "etc").exists()


async def test_a_planted_tenant_home_is_refused(fake: FakeHelm, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    homes = fake.work / "helm-homes"
    homes.mkdir(mode=0o700)
    (homes / "team-a").symlink_to(elsewhere)
    with pytest.raises(HelmError) as caught:
        await fake.client().history(release="demo", namespace="apps", tenant="team-a")
    assert "team-a" in caught.value.message
    assert fake.calls("history") == []


async def test_tenant_home_dir(fake: FakeHelm, tmp_path: Path) -> None:
    fake.on("history", stdout="[]")
    client = fake.client(tenant_home_dir=tmp_path / "homes")
    await client.history(release="demo", namespace="apps", tenant="team-a")
    env = fake.calls("history")[0]["env"]
    assert env["HELM_CACHE_HOME"] == str(tmp_path / "homes" / "team-a" / "cache")


async def test_tenant_homes_without_a_work_dir(
    fake: FakeHelm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake.on("history", stdout="[]")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    env = {"PATH": os.environ["PATH"], "FAKE_HELM": json.dumps(fake.config)}

    async def home_of(client: HelmClient) -> Path:
        await client.history(release="demo", namespace="apps", tenant="team-a")
        return Path(fake.calls("history")[-1]["env"]["HELM_CACHE_HOME"]).parent

    stable = tmp_path / f"helmfile-operator-{os.geteuid()}-homes"
    assert await home_of(HelmClient(str(fake.path), base_env=env)) == stable / "team-a"
    # The same place after a restart: nothing is left behind.
    assert await home_of(HelmClient(str(fake.path), base_env=env)) == stable / "team-a"
    # Someone else's in its place: a fresh private directory instead.
    stable.rename(tmp_path / "moved")
    stable.symlink_to(tmp_path / "moved")
    home = await home_of(HelmClient(str(fake.path), base_env=env))
    assert home.parent.parent == tmp_path
    assert home.parent.name.startswith("helmfile-operator-homes-")


async def test_a_tenant_at_its_cap_leaves_slots_to_the_others(fake: FakeHelm) -> None:
    fake.on("history", sleep=0.5, stdout="[]")
    client = fake.client(max_concurrency=4, max_concurrency_per_tenant=2)
    slow = [
        asyncio.create_task(client.history(release=f"a{i}", namespace="a", tenant="a"))
        for i in range(6)
    ]
    await until(lambda: client.in_flight == 2 and client.runner.queued == 4)
    assert client.runner.tenant_in_flight("a") == 2
    # Tenant a's waiting runs hold no global slot: b gets one of the two left at once.
    await client.history(release="b", namespace="b", tenant="b")
    await asyncio.gather(*slow)
    ends = {e["pid"]: e["end"] for e in fake.ends()}
    [b] = [c for c in fake.calls("history") if c["argv"][-1] == "b"]
    starts = {c["pid"]: c["start"] for c in fake.calls("history") if c["pid"] != b["pid"]}
    assert b["start"] < min(ends.values())  # it did not wait for any of tenant a's runs
    overlap = max(sum(1 for p in starts if starts[p] <= t < ends[p]) for t in starts.values())
    assert overlap <= 2
    assert (client.in_flight, client.runner.queued, client.runner.tenant_in_flight("a")) == (
        0,
        0,
        0,
    )


def test_per_tenant_concurrency_defaults_to_half() -> None:
    assert HelmClient(max_concurrency=8).runner.max_concurrency_per_tenant == 4
    assert HelmClient(max_concurrency=1).runner.max_concurrency_per_tenant == 1
    assert HelmClient(max_concurrency_per_tenant=3).runner.max_concurrency_per_tenant == 3


# --- the maximum timeout --------------------------------------------------------------------------


async def test_max_timeout_clamps_every_helm_timeout(fake: FakeHelm) -> None:
    fake.on("upgrade", stdout=RELEASE_JSON)
    client = fake.client(max_timeout_seconds=45)
    await upgrade(client, options=HelmOptions(timeout="2h"))
    await client.uninstall(release="demo", namespace="apps", timeout_seconds=3600)
    await client.rollback(
        release="demo", namespace="apps", revision=None, timeout_seconds=600, wait=True
    )
    await upgrade(
        client,
        options=HelmOptions(timeout="10s"),
        credentials=RepositoryCredentials(USERNAME, PASSWORD),
    )
    timeouts = {
        (c["command"], a) for c in fake.calls() for a in c["argv"] if a.startswith("--timeout=")
    }
    assert timeouts == {
        ("upgrade", "--timeout=45s"),
        ("uninstall", "--timeout=45s"),
        ("rollback", "--timeout=45s"),
        ("upgrade", "--timeout=10s"),  # shorter than the bound: kept
        ("repo update", "--timeout=45s"),
    }


async def test_max_timeout_bounds_the_process_too(fake: FakeHelm) -> None:
    fake.on("uninstall", sleep=30)
    client = fake.client(max_timeout_seconds=0.3)
    started = time.monotonic()
    with pytest.raises(HelmError) as caught:
        await client.uninstall(release="demo", namespace="apps", timeout_seconds=3600)
    assert caught.value.kind is HelmErrorKind.TIMEOUT
    assert time.monotonic() - started < 5


def test_max_timeout_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_timeout_seconds"):
        HelmClient(max_timeout_seconds=0)


async def test_history(fake: FakeHelm) -> None:
    fake.on(
        "history",
        stdout=json.dumps(
            [{"revision": 1, "status": "deployed", "chart": "demo-app-0.1.0", "app_version": "1"}]
        ),
    )
    client = fake.client()
    [record] = await client.history(release="demo", namespace="apps", max=3)
    assert (record.revision, record.status, record.chart) == (1, "deployed", "demo-app-0.1.0")
    assert "--max=3" in fake.calls("history")[0]["argv"]


async def test_rollback(fake: FakeHelm) -> None:
    client = fake.client()
    await client.rollback(
        release="demo", namespace="apps", revision=2, timeout_seconds=30, wait=True
    )
    argv = fake.calls("rollback")[0]["argv"]
    assert argv[-3:] == ["--", "demo", "2"]
    assert "--wait=watcher" in argv


# --- failures -------------------------------------------------------------------------------------


async def test_exit_code_and_stderr_become_a_helm_error(fake: FakeHelm) -> None:
    fake.on(
        "upgrade",
        exit=1,
        stderr="Error: UPGRADE FAILED: another operation (install/upgrade/rollback) is in "
        "progress\n",
    )
    seen: list[tuple[str, str, float]] = []
    client = fake.client(on_command=lambda *a: seen.append(a))
    with pytest.raises(HelmError) as caught:
        await upgrade(client)
    assert caught.value.kind is HelmErrorKind.LOCKED
    assert caught.value.retryable
    assert caught.value.command == "upgrade"
    assert caught.value.returncode == 1
    assert "another operation" in caught.value.message
    assert SECRET not in str(caught.value)
    assert seen[-1][:2] == ("upgrade", "error")
    assert list(fake.work.iterdir()) == []


async def test_secrets_are_redacted_from_errors(fake: FakeHelm) -> None:
    fake.on(
        "upgrade",
        exit=1,
        stderr=f"Error: execution error at (demo/templates/a.yaml:1:3): bad value {SECRET}\n",
    )
    with pytest.raises(HelmError) as caught:
        await upgrade(fake.client(), redact=[SECRET])
    assert caught.value.kind is HelmErrorKind.RENDER_FAILED
    assert SECRET not in caught.value.message


async def test_not_found_handling(fake: FakeHelm) -> None:
    for command in ("history", "uninstall"):
        fake.on(command, exit=1, stderr="Error: release: not found\n")
    client = fake.client()
    assert await client.history(release="demo", namespace="apps") == []
    await client.uninstall(
        release="demo", namespace="apps", timeout_seconds=5, ignore_not_found=True
    )
    with pytest.raises(HelmError) as caught:
        await client.uninstall(release="demo", namespace="apps", timeout_seconds=5)
    assert caught.value.kind is HelmErrorKind.RELEASE_NOT_FOUND


async def test_output_over_the_bound_is_a_helm_error(fake: FakeHelm) -> None:
    fake.on("upgrade", stdout=RELEASE_JSON)
    seen: list[tuple[str, str, float]] = []
    client = fake.client(on_command=lambda *a: seen.append(a))
    client.runner.max_stdout_bytes = len(RELEASE_JSON) - 1
    with pytest.raises(HelmError) as caught:
        await upgrade(client)
    assert caught.value.kind is HelmErrorKind.UNKNOWN
    assert caught.value.retryable
    assert "stdout" in caught.value.message
    assert SECRET not in str(caught.value)
    assert seen[-1][:2] == ("upgrade", "error")


async def test_failure_with_cut_stdout_is_still_classified(fake: FakeHelm) -> None:
    fake.on("upgrade", stdout="x" * 100, exit=1, stderr="Error: release: not found\n")
    client = fake.client()
    client.runner.max_stdout_bytes = 10
    with pytest.raises(HelmError) as caught:
        await upgrade(client)
    assert caught.value.kind is HelmErrorKind.RELEASE_NOT_FOUND


async def test_missing_binary(tmp_path: Path) -> None:
    client = HelmClient(str(tmp_path / "no-helm"), base_env={})
    with pytest.raises(HelmError) as caught:
        await client.version()
    assert caught.value.kind is HelmErrorKind.UNKNOWN
    assert client.in_flight == 0


async def test_timeout_kills_helm(fake: FakeHelm) -> None:
    fake.on("uninstall", sleep=30, child=True)
    client = fake.client()
    started = time.monotonic()
    with pytest.raises(HelmError) as caught:
        await client.uninstall(release="demo", namespace="apps", timeout_seconds=0.5)
    assert time.monotonic() - started < 5
    assert caught.value.kind is HelmErrorKind.TIMEOUT
    assert caught.value.retryable
    [call] = fake.calls("uninstall")
    assert not alive(call["pid"])
    await until(lambda: not alive(call["child"]))  # its whole process group went with it
    assert client.in_flight == 0


async def test_timeout_escalates_to_sigkill(fake: FakeHelm) -> None:
    fake.on("uninstall", sleep=30, ignore_term=True)
    client = fake.client(term_grace_seconds=0.3)
    started = time.monotonic()
    with pytest.raises(HelmError) as caught:
        await client.uninstall(release="demo", namespace="apps", timeout_seconds=0.3)
    assert caught.value.kind is HelmErrorKind.TIMEOUT
    assert 0.5 < time.monotonic() - started < 5
    assert not alive(fake.calls("uninstall")[0]["pid"])


async def test_cancellation_kills_helm(fake: FakeHelm) -> None:
    fake.on("upgrade", sleep=30, ignore_term=True)
    client = fake.client(term_grace_seconds=0.3)
    task = asyncio.create_task(upgrade(client))
    await until(lambda: bool(fake.calls("upgrade")))
    assert client.in_flight == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not alive(fake.calls("upgrade")[0]["pid"])
    assert client.in_flight == 0
    assert list(fake.work.iterdir()) == []  # the values file is gone too


async def test_concurrency_is_bounded(fake: FakeHelm) -> None:
    fake.on("history", sleep=0.3, stdout="[]")
    client = fake.client(max_concurrency=2)
    highest = 0
    done = False

    async def watch() -> None:
        nonlocal highest
        while not done:
            highest = max(highest, client.in_flight)
            await asyncio.sleep(0.01)

    watcher = asyncio.create_task(watch())
    await asyncio.gather(*(client.history(release=f"r{i}", namespace="a") for i in range(6)))
    done = True
    await watcher
    assert highest == 2
    assert client.in_flight == 0
    assert client.runner.queued == 0
    # The processes themselves never overlapped by more than two.
    starts = {c["pid"]: c["start"] for c in fake.calls("history")}
    ends = {e["pid"]: e["end"] for e in fake.ends()}
    overlap = max(sum(1 for p in starts if starts[p] <= t < ends[p]) for t in starts.values())
    assert overlap <= 2


# --- the real helm ------------------------------------------------------------------------------

REAL_HELM = sorted(glob.glob(os.path.expanduser("~/.cache/helmfile-operator/testbin/*/helm")))


@pytest.mark.skipif(not REAL_HELM, reason="the test-bed helm is not built (make testbin)")
async def test_real_helm_version(tmp_path: Path) -> None:
    client = HelmClient(REAL_HELM[-1], base_env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    version = await client.version()
    assert version.major in (3, 4)
    assert version.raw.startswith(f"v{version.major}.")
