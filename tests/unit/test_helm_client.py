"""HelmClient against a fake helm executable (and `version()` against the real one, if built).

The fake is a Python script: it appends one JSON line per call (argv, stdin, helm env, the values
file it was given and that file's mode) to a log, then behaves as its configuration says for the
command: print, sleep, ignore SIGTERM, spawn a grandchild, exit with a code.
"""

from __future__ import annotations

import asyncio
import glob
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helmfile_operator.api.models import ChartReference, ChartRepository, HelmOptions
from helmfile_operator.helm import HelmClient, HelmError, HelmErrorKind, RepositoryCredentials

SECRET = "s3cr3t-value-nobody-may-see"
PASSWORD = "repo-p4ssw0rd-nobody-may-see"

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
    "env": {{k: v for k, v in os.environ.items() if k.startswith("HELM_") or k == "KUBECONFIG"}},
    "start": time.time(),
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

    def client(self, **kwargs: Any) -> HelmClient:
        env = {"PATH": os.environ["PATH"], "FAKE_HELM": json.dumps(self.config)}
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
    assert "HELM_REPOSITORY_CONFIG" not in env


async def test_http_credentials_go_through_a_private_repo_config(fake: FakeHelm) -> None:
    fake.on("upgrade", stdout=RELEASE_JSON)
    client = fake.client()
    await upgrade(client, credentials=RepositoryCredentials("alice", PASSWORD), ca_pem="PEM")

    [add] = fake.calls("repo add")
    [up] = fake.calls("upgrade")
    assert add["stdin"] == PASSWORD + "\n"
    assert "--password-stdin" in add["argv"]
    assert "--username=alice" in add["argv"]
    for call in (add, up):
        assert PASSWORD not in json.dumps(call["argv"])
        assert PASSWORD not in json.dumps(call["env"])
    alias = add["argv"][-2]
    assert add["argv"][-1] == "https://charts.example.com"
    assert up["argv"][-1] == f"{alias}/demo-app"
    assert not any(a.startswith("--repo") for a in up["argv"])
    private = Path(up["env"]["HELM_REPOSITORY_CONFIG"]).parent
    assert add["env"]["HELM_REPOSITORY_CONFIG"] == up["env"]["HELM_REPOSITORY_CONFIG"]
    assert private.parent == fake.work
    assert f"--ca-file={private / 'ca.crt'}" in up["argv"]
    assert not private.exists()


async def test_oci_credentials_log_in_to_a_private_registry_config(fake: FakeHelm) -> None:
    fake.on("upgrade", stdout=RELEASE_JSON)
    await upgrade(
        fake.client(), chart=OCI_CHART, credentials=RepositoryCredentials("bob", PASSWORD)
    )
    [login] = fake.calls("registry login")
    [up] = fake.calls("upgrade")
    assert login["argv"][-2:] == ["--", "ghcr.io"]
    assert login["stdin"] == PASSWORD + "\n"
    assert PASSWORD not in json.dumps(login["argv"])
    assert login["env"]["HELM_REGISTRY_CONFIG"] == up["env"]["HELM_REGISTRY_CONFIG"]
    assert up["argv"][-1] == "oci://ghcr.io/org/demo-app"


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
