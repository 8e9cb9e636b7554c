"""High availability and sharding on the real control plane: operators as real processes, with
leader election over a Lease (timings of a few seconds) and shard label selectors.

Each test's states carry a shard key of their own where it can (`helmfile.dev/shard: ha-…`), so
that no other operator on the test bed (the session's shared, unsharded one) ever sees them; the
shard test needs an unlabelled state, and pauses the shared operator for its duration.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml
from test_rbac import (
    CHART,
    STATE,
    TENANT,
    Setup,
    apply_objects,
    bind_tenant,
    demo_state,
    remove_namespace,
    render_rbac,
    token_kubeconfig,
)
from test_rbac import setup as rbac_setup  # noqa: F401 (a fixture: two fresh namespaces)

from testbed_fixtures import (
    ChartRepo,
    Cluster,
    OperatorProcess,
    apply,
    condition,
    helm_history,
    helm_releases,
    state_ready_at_generation,
    wait_until,
)

LEASE_DURATION = 6.0
RENEW_DEADLINE = 4.0
RETRY_PERIOD = 0.5
SHARD_LABEL = "helmfile.dev/shard"
NODE = "kwok-node-0"
# A helm run as the runner logs it (--verbose): `helm upgrade: /…/helm upgrade … -- NAME CHART`.
UPGRADES = 'helmfile_operator_helm_commands_total{command="upgrade"'
HELM_RUN = re.compile(r"helm (\w+): \S*helm \w+ .*? -- ([a-z0-9-]+)")


def operator_process(
    cluster: Cluster,
    home: Path,
    namespace: str,
    *,
    shard: str | None = None,
    elect: bool = True,
    kubeconfig: Path | None = None,
) -> OperatorProcess:
    """`helmfile-operator run --namespace NS` (its own work dir and helm homes), optionally
    electing its leader through a Lease in NS, optionally for one shard."""
    home.mkdir(parents=True, exist_ok=True)
    args = ["--namespace", namespace]
    if shard:
        args += ["--shard", shard]
    if elect:
        args.append("--leader-elect")
    env = {
        "HELMFILE_OPERATOR_WORK_DIR": str(home / "work"),
        "HELMFILE_OPERATOR_LEADER_ELECTION_NAMESPACE": namespace,
        "HELMFILE_OPERATOR_LEASE_DURATION_SECONDS": str(LEASE_DURATION),
        "HELMFILE_OPERATOR_RENEW_DEADLINE_SECONDS": str(RENEW_DEADLINE),
        "HELMFILE_OPERATOR_RETRY_PERIOD_SECONDS": str(RETRY_PERIOD),
        "HELM_CACHE_HOME": str(home / "helm" / "cache"),
        "HELM_CONFIG_HOME": str(home / "helm" / "config"),
        "HELM_DATA_HOME": str(home / "helm" / "data"),
    }
    if kubeconfig is not None:
        env["KUBECONFIG"] = str(kubeconfig)
    return OperatorProcess(cluster, home / "operator.log", args=args, env=env)


def role(process: OperatorProcess) -> str | None:
    """`leader` or `standby`, from /readyz; None when it does not answer."""
    try:
        url = f"http://127.0.0.1:{process.metrics_port}/readyz"
        with urllib.request.urlopen(url, timeout=1) as response:
            return str(response.read().decode()).strip().removeprefix("ok: ")
    except OSError:
        return None


def helm_runs(process: OperatorProcess) -> list[tuple[str, str]]:
    """(command, release) of every helm run the process finished, from its log."""
    return [(m.group(1), m.group(2)) for m in HELM_RUN.finditer(process.log())]


def metric(process: OperatorProcess, name: str) -> float:
    """The sum of a metric's samples (0 when it has none)."""
    total = 0.0
    for line in process.scrape().splitlines():
        if line.startswith(name) and not line.startswith("#"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def lease_holder(cluster: Cluster, namespace: str, name: str) -> str | None:
    result = cluster.run(
        "kubectl", "get", "lease", name, "-n", namespace, "-o", "json", check=False
    )
    if result.returncode != 0:
        return None
    holder: str | None = json.loads(result.stdout)["spec"].get("holderIdentity")
    return holder


def state(
    name: str, namespace: str, repo_url: str, releases: list[dict[str, Any]], shard: str | None
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if shard is not None:
        metadata["labels"] = {SHARD_LABEL: shard}
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": metadata,
        "spec": {
            "repositories": [{"name": "test", "url": repo_url}],
            "helmDefaults": {"wait": True, "timeout": "120s", "retries": 3},
            "releases": releases,
        },
    }


def release(name: str, **values: Any) -> dict[str, Any]:
    return {"name": name, "chart": "test/demo-app", "version": "0.1.0", "values": [values]}


@contextlib.contextmanager
def node_label(cluster: Cluster) -> Iterator[str]:
    """A label no node has yet: pods selecting it stay Pending (helm waits) until `label`."""
    label = f"hfo-ha-{uuid.uuid4().hex[:6]}"
    try:
        yield label
    finally:
        cluster.run("kubectl", "label", "node", NODE, f"{label}-", check=False)


def upgrades_completed(cluster: Cluster, namespace: str, name: str) -> int:
    return sum(
        1 for r in helm_history(cluster, namespace, name) if r["description"] == "Upgrade complete"
    )


def cleaned_up(cluster: Cluster, namespace: str, *processes: OperatorProcess) -> None:
    """Delete the test's objects while its operators still run (they hold finalizers no other
    operator would drop), then stop the operators."""
    for kind in ("hfs", "hfr"):
        cluster.run(
            "kubectl", "delete", kind, "--all", "-n", namespace, "--timeout=120s",
            check=False, timeout=150,
        )  # fmt: skip
    for process in processes:
        with contextlib.suppress(Exception):
            process.stop()


# --- leader election ----------------------------------------------------------------------------


def test_only_the_leader_runs_helm_and_the_standby_finishes_a_rollout_after_sigkill(
    cluster: Cluster, chart_repo: ChartRepo, crds: None, namespace: str, tmp_path: Path
) -> None:
    shard = f"ha-{uuid.uuid4().hex[:6]}"
    lease = f"helmfile-operator-shard-{shard}"
    first = operator_process(cluster, tmp_path / "first", namespace, shard=shard)
    second = operator_process(cluster, tmp_path / "second", namespace, shard=shard)
    with node_label(cluster) as label:
        try:
            first.start()
            wait_until(lambda: role(first) == "leader", timeout=30, message="a leader")
            second.start()
            wait_until(lambda: role(second) == "standby", timeout=30, message="a standby")
            names = ["r0", "r1", "slow"]
            apply(
                cluster,
                state("ha", namespace, chart_repo.url, [release(n) for n in names], shard),
            )
            wait_until(
                lambda: state_ready_at_generation(cluster, namespace, "ha"),
                timeout=180,
                message="the state Ready",
            )
            # Only the leader ran helm; the standby, watches warm, ran none.
            assert {name for _, name in helm_runs(first)} == set(names)
            assert helm_runs(second) == []
            assert metric(first, UPGRADES) >= len(names)
            # The standby's /metrics describes its process only: no object counted twice.
            assert "release_condition" in first.scrape()
            assert "release_condition" not in second.scrape()
            assert metric(first, "helmfile_operator_leader") == 1
            assert metric(second, "helmfile_operator_leader") == 0

            # A rollout: every release changes, `slow` cannot become ready until the node
            # gets the label — the leader is killed while its helm waits for it.
            changed = [release("r0", v=2), release("r1", v=2)]
            changed.append(release("slow", v=2, nodeSelector={label: "yes"}))
            apply(cluster, state("ha", namespace, chart_repo.url, changed, shard))

            def mid_rollout() -> bool:
                listed = helm_releases(cluster, namespace)
                return (
                    listed.get("slow", {}).get("status") == "pending-upgrade"
                    and all(listed[n]["status"] == "deployed" for n in ("r0", "r1"))
                    and all(int(listed[n]["revision"]) == 2 for n in ("r0", "r1"))
                )

            wait_until(mid_rollout, timeout=120, message="r0, r1 upgraded, slow mid-upgrade")
            holder = lease_holder(cluster, namespace, lease)
            first.kill()  # the operator and its helm die: slow stays pending-upgrade
            killed = time.monotonic()
            assert helm_releases(cluster, namespace)["slow"]["status"] == "pending-upgrade"
            cluster.run("kubectl", "label", "node", NODE, f"{label}=yes")

            wait_until(lambda: role(second) == "leader", timeout=30, message="the takeover")
            took_over = time.monotonic() - killed
            wait_until(
                lambda: state_ready_at_generation(cluster, namespace, "ha"),
                timeout=180,
                message="the standby to finish the rollout",
            )
            finished = time.monotonic() - killed
            # Takeover within the lease duration (plus one check of the Lease); then the helm
            # runs the rest needed: roll back the interrupted upgrade, run it again.
            assert took_over <= LEASE_DURATION + 2 * RETRY_PERIOD + 1, took_over
            helm_seconds = metric(second, "helmfile_operator_helm_command_duration_seconds_sum")
            assert finished <= LEASE_DURATION + 2 * RETRY_PERIOD + helm_seconds + 10, (
                finished,
                helm_seconds,
            )
            assert lease_holder(cluster, namespace, lease) not in (None, holder)
            listed = helm_releases(cluster, namespace)
            assert {n: listed[n]["status"] for n in names} == dict.fromkeys(names, "deployed")
            # Nothing upgraded twice: r0 and r1 were done by the first leader and left alone.
            for name in ("r0", "r1"):
                history = helm_history(cluster, namespace, name)
                assert [r["revision"] for r in history] == [1, 2], history
                assert upgrades_completed(cluster, namespace, name) == 1
            assert upgrades_completed(cluster, namespace, "slow") == 1
            assert not [n for n in ("r0", "r1") if n in {r for _, r in helm_runs(second)}]
            assert "slow" in {name for _, name in helm_runs(second)}
        finally:
            cleaned_up(cluster, namespace, first, second)


class CuttableProxy:
    """A TCP proxy to the API server whose connections can all be cut at once (and new ones
    refused): a network partition between one operator and the API server."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()
        self.cut_off = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            with self.lock:
                if self.cut_off:
                    client.close()
                    upstream.close()
                    continue
                self.sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)

    def cut(self) -> None:
        with self.lock:
            self.cut_off = True
            self.listener.close()
            for sock in self.sockets:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()


def proxied_kubeconfig(cluster: Cluster, path: Path) -> tuple[Path, CuttableProxy]:
    config = json.loads(cluster.kubeconfig.read_text())
    server = config["clusters"][0]["cluster"]["server"]
    host, port = server.removeprefix("https://").rsplit(":", 1)
    proxy = CuttableProxy((host, int(port)))
    config["clusters"][0]["cluster"]["server"] = f"https://{host}:{proxy.port}"
    path.write_text(json.dumps(config))
    return path, proxy


def helm_processes_of(pid: int) -> list[int]:
    """helm processes whose session is the operator's helm run's (they lead their own sessions,
    so look for any helm child of `pid` still alive)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def test_a_leader_cut_off_from_the_api_server_stops_before_its_lease_expires(
    cluster: Cluster, chart_repo: ChartRepo, crds: None, namespace: str, tmp_path: Path
) -> None:
    shard = f"ha-{uuid.uuid4().hex[:6]}"
    kubeconfig, proxy = proxied_kubeconfig(cluster, tmp_path / "proxied.kubeconfig")
    first = operator_process(
        cluster, tmp_path / "first", namespace, shard=shard, kubeconfig=kubeconfig
    )
    second = operator_process(cluster, tmp_path / "second", namespace, shard=shard)
    with node_label(cluster) as label:
        try:
            first.start()
            wait_until(lambda: role(first) == "leader", timeout=30, message="a leader")
            second.start()
            wait_until(lambda: role(second) == "standby", timeout=30, message="a standby")
            blocked = release("slow", nodeSelector={label: "yes"})
            apply(cluster, state("cut", namespace, chart_repo.url, [blocked], shard))
            wait_until(
                lambda: (
                    helm_releases(cluster, namespace).get("slow", {}).get("status")
                    == "pending-install"
                ),
                timeout=60,
                message="the leader's helm mid-install",
            )
            assert first.process is not None
            leader_pid = first.process.pid
            assert helm_processes_of(leader_pid), "the leader runs helm now"

            proxy.cut()
            cut = time.monotonic()
            exited_at = took_over_at = None
            while time.monotonic() - cut < LEASE_DURATION + 20:
                now = time.monotonic()
                if exited_at is None and first.process.poll() is not None:
                    exited_at = now
                if took_over_at is None and role(second) == "leader":
                    took_over_at = now
                if exited_at is not None and took_over_at is not None:
                    break
                time.sleep(0.05)
            assert exited_at is not None, "the cut-off leader did not exit"
            assert took_over_at is not None, "the standby did not take over"
            # It stopped (helm killed, process gone) within its renew deadline — before the
            # Lease, last renewed before the cut, could expire; only then the standby took over.
            assert exited_at - cut < LEASE_DURATION, exited_at - cut
            assert exited_at - cut <= RENEW_DEADLINE + 1, exited_at - cut
            assert exited_at < took_over_at
            assert first.process.returncode == 1
            assert helm_processes_of(leader_pid) == []
            # (helm, cut off too, may have failed on its own before the kill)
            assert re.search(r"leadership lost: killed \d+ helm process", first.log())
            first.process = None

            cluster.run("kubectl", "label", "node", NODE, f"{label}=yes")
            wait_until(
                lambda: state_ready_at_generation(cluster, namespace, "cut"),
                timeout=180,
                message="the new leader to install the release",
            )
            assert helm_releases(cluster, namespace)["slow"]["status"] == "deployed"
        finally:
            proxy.cut()
            cleaned_up(cluster, namespace, first, second)


# --- sharding -----------------------------------------------------------------------------------


def test_each_shard_s_helm_runs_happen_only_in_its_own_operator(
    cluster: Cluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    namespace: str,
    tmp_path: Path,
) -> None:
    operator.stop()  # the shared (unsharded, cluster-wide) operator would take the unlabelled one
    processes = {
        shard: operator_process(cluster, tmp_path / (shard or "none"), namespace, shard=shard)
        for shard in ("a", "b", None)
    }
    try:
        for process in processes.values():
            process.start()
        for process in processes.values():
            wait_until(lambda p=process: role(p) == "leader", timeout=30, message="leaders")
        releases = {"a": ["a1", "a2"], "b": ["b1"], None: ["n1"]}
        for shard, names in releases.items():
            name = f"s-{shard or 'none'}"
            apply(
                cluster, state(name, namespace, chart_repo.url, [release(n) for n in names], shard)
            )
        for shard in releases:
            wait_until(
                lambda s=shard: state_ready_at_generation(cluster, namespace, f"s-{s or 'none'}"),
                timeout=180,
                message=f"state of shard {shard}",
            )
        for shard, process in processes.items():
            ran = {name for _, name in helm_runs(process)}
            assert ran == set(releases[shard]), (shard, ran)
            # Its watch never even delivered the others' objects (the API server filters it by
            # the label selector): it has per-object series of its own shard's only.
            seen = set(re.findall(r'release_condition\{[^}]*name="s-[a-z]+-([a-z0-9]+)"',
                                  process.scrape()))  # fmt: skip
            assert seen == set(releases[shard]), (shard, seen)
            info = [
                line
                for line in process.scrape().splitlines()
                if line.startswith("helmfile_operator_build_info{")
            ]
            assert f'shard="{shard or ""}"' in info[0]
        # The state's shard label is on its releases (so their own watch is the shard's too).
        for item in cluster.kubectl_json("get", "hfr", "-n", namespace)["items"]:
            state_name = item["metadata"]["labels"]["helmfile.dev/state"]
            shard_of_state = state_name.removeprefix("s-")
            assert item["metadata"]["labels"].get(SHARD_LABEL) == (
                None if shard_of_state == "none" else shard_of_state
            )
        # Each shard elected its own leader, in a Lease of its own.
        holders = {
            lease: lease_holder(cluster, namespace, lease)
            for lease in (
                "helmfile-operator",
                "helmfile-operator-shard-a",
                "helmfile-operator-shard-b",
            )
        }
        assert all(holders.values()) and len(set(holders.values())) == 3, holders

        # A release of shard a that needs one of shard b: reported, never waited on forever.
        needing = {
            "apiVersion": "helmfile.dev/v1alpha1",
            "kind": "HelmfileRelease",
            "metadata": {"name": "x", "namespace": namespace, "labels": {SHARD_LABEL: "a"}},
            "spec": {
                "releaseName": "x",
                "targetNamespace": namespace,
                "chart": {"repository": {"url": chart_repo.url}, "name": "demo-app"},
                "needs": ["s-b-b1"],
            },
        }
        apply(cluster, needing)

        def stalled() -> dict[str, Any] | None:
            body = cluster.kubectl_json("get", "hfr", "x", "-n", namespace)
            found = condition(body, "Stalled")
            return found if found and found["reason"] == "NeedsInAnotherShard" else None

        report = wait_until(stalled, timeout=60, message="NeedsInAnotherShard")
        assert "s-b-b1 (shard 'b')" in report["message"]
        assert "x" not in helm_releases(cluster, namespace)
    finally:
        cleaned_up(cluster, namespace, *processes.values())
        operator.start()


def test_a_state_relabelled_into_another_shard_moves_with_its_releases(
    cluster: Cluster, chart_repo: ChartRepo, crds: None, namespace: str, tmp_path: Path
) -> None:
    keys = [f"ha-{uuid.uuid4().hex[:6]}", f"ha-{uuid.uuid4().hex[:6]}"]
    first, second = (
        operator_process(cluster, tmp_path / key, namespace, shard=key, elect=False) for key in keys
    )
    try:
        first.start()
        second.start()
        apply(cluster, state("moving", namespace, chart_repo.url, [release("m1")], keys[0]))
        wait_until(
            lambda: state_ready_at_generation(cluster, namespace, "moving"),
            timeout=120,
            message="the state Ready in the first shard",
        )
        assert {name for _, name in helm_runs(first)} == {"m1"}
        assert 'name="moving-m1"' in first.scrape()
        before_move = helm_runs(first)

        apply(cluster, state("moving", namespace, chart_repo.url, [release("m1", v=2)], keys[1]))
        wait_until(
            lambda: state_ready_at_generation(cluster, namespace, "moving"),
            timeout=120,
            message="the state Ready in the second shard",
        )
        child = cluster.kubectl_json("get", "hfr", "moving-m1", "-n", namespace)
        assert child["metadata"]["labels"][SHARD_LABEL] == keys[1]
        wait_until(
            lambda: upgrades_completed(cluster, namespace, "m1") == 1,
            timeout=60,
            message="the upgrade by the second shard",
        )
        # The change ran in the new shard only; the old one's watch reported both objects as
        # deleted (their per-object series are gone) and it ran nothing more.
        assert ("upgrade", "m1") in helm_runs(second)
        wait_until(
            lambda: 'name="moving' not in first.scrape(),
            timeout=30,
            message="the old shard to forget the objects",
        )
        assert helm_runs(first) == before_move
        assert len(helm_history(cluster, namespace, "m1")) == 2
    finally:
        cleaned_up(cluster, namespace, second, first)


# --- the chart's Lease RBAC ---------------------------------------------------------------------


def test_the_chart_s_lease_role_is_what_leader_election_needs(
    cluster: Cluster,
    chart_repo: ChartRepo,
    rbac_setup: Setup,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    """The operator logged in as the chart's ServiceAccount, with the chart's namespaced RBAC:
    without the leader-election Role it never acts (a standby forever, saying why); with it, it
    leads and reconciles. The state carries a shard key of its own: no other operator sees it."""
    setup = rbac_setup
    shard = f"ha-{uuid.uuid4().hex[:6]}"
    ns = setup.namespace
    setup.manifests = render_rbac(cluster, setup, True)
    lease_rbac = [
        doc
        for doc in yaml.safe_load_all(
            cluster.run(
                "helm", "template", setup.release, str(CHART), "--namespace", setup.system,
                "--show-only=templates/leader-election-role.yaml",
            ).stdout
        )
        if doc
    ]  # fmt: skip
    assert sorted(doc["kind"] for doc in lease_rbac) == ["Role", "RoleBinding"]
    assert {doc["metadata"]["namespace"] for doc in lease_rbac} == {setup.system}
    apply_objects(cluster, setup.manifests)
    kubeconfig = token_kubeconfig(cluster, setup, tmp_path / "kubeconfig")
    cluster.run("kubectl", "create", "serviceaccount", TENANT, "-n", ns)
    bind_tenant(cluster, ns)
    restricted = operator_process(
        cluster, tmp_path / "restricted", ns, shard=shard, kubeconfig=kubeconfig
    )
    restricted.env_overrides["HELMFILE_OPERATOR_LEADER_ELECTION_NAMESPACE"] = setup.system
    body = demo_state(setup, chart_repo.url, "one")
    body["metadata"]["labels"] = {SHARD_LABEL: shard}
    try:
        restricted.start()
        apply(cluster, body)
        wait_until(lambda: "(HTTP 403)" in restricted.log(), timeout=30, message="a 403")
        time.sleep(RENEW_DEADLINE)
        assert role(restricted) == "standby"
        assert cluster.kubectl_json("get", "hfr", "-n", ns)["items"] == []  # nothing acted

        setup.manifests += lease_rbac
        apply_objects(cluster, lease_rbac)
        wait_until(lambda: role(restricted) == "leader", timeout=30, message="the leader")
        wait_until(
            lambda: state_ready_at_generation(cluster, ns, STATE),
            timeout=180,
            message="the state Ready with the chart's RBAC",
        )
        cluster.run("kubectl", "delete", "hfs", STATE, "-n", ns, "--timeout=120s", timeout=150)
    finally:
        restricted.stop()
        remove_namespace(cluster, ns)
