"""Hostile states cannot exhaust the operator: each one stalls with a message naming the limit,
while `/healthz` keeps answering, another tenant's state becomes Ready, and the operator's
memory stays bounded."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testbed_fixtures import (
    ChartRepo,
    Cluster,
    OperatorProcess,
    apply,
    condition,
    state_ready_at_generation,
    wait_until,
)

# The operator's peak RSS (VmHWM) while it renders all the states below and serves the good one.
# Measured: about 70 MiB at rest, about 105 MiB at the peak. The hostile states add little: each
# stops before it allocates much (one template may make at most 64 MiB, a state may render at
# most 4 MiB of output).
MAX_OPERATOR_RSS_BYTES = 256 << 20
WAIT_SECONDS = 180
CHART = {"chart": "test/demo-app", "version": "0.1.0"}

# A template well within the step and memory limits that needs minutes of CPU: 250,000
# comparisons of two distinct, equal lists of 10,000 numbers. Only the time limit stops it.
SLOW_VALUES = {"a": list(range(10_000)), "b": list(range(10_000))}
SLOW_TEMPLATE = (
    "{% for i in range(100) %}{% for j in range(2500) %}{% if values.a == values.b %}{% endif %}"
    "{% endfor %}{% endfor %}"
)

# name: (release fields, texts the Stalled message must contain)
HOSTILE: dict[str, tuple[dict[str, Any], list[str]]] = {
    "center": (
        {"valuesTemplate": ["x: {{ 'a'|center(2000000000) }}"]},
        ["spec.releases[0].valuesTemplate[0]", "1000000 characters", "center"],
    ),
    "nindent": (
        {"valuesTemplate": ["x: {{ 'x'|nindent(2000000000) }}"]},
        ["spec.releases[0].valuesTemplate[0]", "1000000 characters", "nindent"],
    ),
    "printf-width": (
        {"valuesTemplate": ["x: {{ '%02000000000d' % 1 }}"]},
        ["spec.releases[0].valuesTemplate[0]", "1000000 characters", "`%`"],
    ),
    "format-width": (
        {"valuesTemplate": ["x: {{ '{:>2000000000}'.format(1) }}"]},
        ["spec.releases[0].valuesTemplate[0]", "1000000 characters", "format"],
    ),
    "join-repeated": (
        {"valuesTemplate": ["x: {{ (['s']*1000000)|join }}"]},
        ["spec.releases[0].valuesTemplate[0]", "100000 items"],
    ),
    "squaring": (
        {
            "valuesTemplate": [
                "{% set ns = namespace(x=9) %}{% for i in range(60) %}"
                "{% set ns.x = ns.x * ns.x %}{% endfor %}x: {{ ns.x }}"
            ]
        },
        ["spec.releases[0].valuesTemplate[0]", "100000 bits"],
    ),
    "nested-loops": (
        {
            "valuesTemplate": [
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}"
            ]
        },
        ["spec.releases[0].valuesTemplate[0]", "1000000 steps"],
    ),
    "set-index": (
        {"set": [{"name": "k0[65536]", "value": 1}]},
        ["spec.releases[0].set[0].name", "10000"],
    ),
    "set-huge-index": (
        {"set": [{"name": "ok", "value": 1}, {"name": "k[99999999]", "value": 1}]},
        ["spec.releases[0].set[1].name", "10000"],
    ),
    "cpu-heavy": (
        {"valuesTemplate": [SLOW_TEMPLATE]},
        ["spec.releases[0].valuesTemplate[0]", "10 seconds", "time limit"],
    ),
}
MANY_RELEASES = 2000
# 2000 releases rendering 1 MB each: the fifth crosses the 4 MiB of one state.
MANY_OUTPUTS_EXPECTED = ["spec.releases[4].valuesTemplate[0]", "4194304 characters"]


def _state(name: str, namespace: str, repo_url: str, releases: list[dict[str, Any]],
           values: dict[str, Any] | None = None) -> dict[str, Any]:  # fmt: skip
    return {
        "apiVersion": "helmfile.dev/v1alpha1",
        "kind": "HelmfileState",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "environments": {"default": {"values": [{"replicas": 1, **(values or {})}]}},
            "repositories": [{"name": "test", "url": repo_url}],
            "helmDefaults": {"timeout": "60s", "retries": 0},
            "releases": releases,
        },
    }


def _status_of(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of a process, in bytes."""
    fields: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) * 1024
    return fields


@pytest.fixture
def hostile_namespace(cluster: Cluster) -> Iterator[str]:
    name = f"t-hostile-{uuid.uuid4().hex[:6]}"
    cluster.run("kubectl", "create", "namespace", name)
    yield name
    cluster.run("kubectl", "delete", "namespace", name, "--wait=false", check=False)


def test_hostile_states_stall_while_the_operator_keeps_serving(
    cluster: Cluster,
    chart_repo: ChartRepo,
    operator: OperatorProcess,
    namespace: str,
    hostile_namespace: str,
) -> None:
    assert operator.process is not None
    pid = operator.process.pid
    before = _status_of(pid)
    started = time.monotonic()

    expected: dict[str, list[str]] = {}
    for name, (fields, texts) in HOSTILE.items():
        values = SLOW_VALUES if name == "cpu-heavy" else None
        release = {"name": "app", **CHART, **fields}
        apply(cluster, _state(name, hostile_namespace, chart_repo.url, [release], values))
        expected[name] = texts
    many = [
        {"name": f"r{i}", **CHART, "valuesTemplate": ["blob: {{ 'x' * 1000000 }}"]}
        for i in range(MANY_RELEASES)
    ]
    apply(cluster, _state("many-outputs", hostile_namespace, chart_repo.url, many))
    expected["many-outputs"] = MANY_OUTPUTS_EXPECTED

    # Another tenant's ordinary state, applied while the hostile ones are being rendered.
    good = {
        "name": "web",
        **CHART,
        "valuesTemplate": ["replicaCount: {{ environment.values.replicas }}"],
    }
    apply(cluster, _state("good", namespace, chart_repo.url, [good]))

    stalled: dict[str, str] = {}
    stalled_at: dict[str, float] = {}
    good_ready_at: float | None = None
    good_rendered_at: float | None = None
    reasons: dict[str, str] = {}
    peak_rss = 0
    unhealthy = 0
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline and not (good_ready_at and len(stalled) == len(expected)):
        if not operator.healthy():  # also asserts that the process is alive
            unhealthy += 1
        peak_rss = max(peak_rss, _status_of(pid)["VmRSS"])
        for item in cluster.kubectl_json("get", "hfs", "-n", hostile_namespace)["items"]:
            found = condition(item, "Stalled")
            seen = (item.get("status") or {}).get("observedGeneration")
            if found and found["status"] == "True" and seen == item["metadata"]["generation"]:
                stalled[item["metadata"]["name"]] = found["message"]
                reasons[item["metadata"]["name"]] = found["reason"]
                stalled_at.setdefault(item["metadata"]["name"], time.monotonic())
        if (
            good_rendered_at is None
            and cluster.kubectl_json("get", "hfr", "-n", namespace)["items"]
        ):
            good_rendered_at = time.monotonic()
        if good_ready_at is None and state_ready_at_generation(cluster, namespace, "good"):
            good_ready_at = time.monotonic()
        time.sleep(0.5)

    assert good_ready_at is not None, "the good state did not become Ready"
    assert sorted(stalled) == sorted(expected), f"stalled so far: {sorted(stalled)}"
    assert set(reasons.values()) == {"RenderLimitExceeded"}, reasons
    # The good state was rendered and applied while the slow rendering (10 s, in a worker thread)
    # was still going on: it did not wait for it.
    assert good_rendered_at is not None
    assert good_rendered_at < stalled_at["cpu-heavy"]
    for name, texts in expected.items():
        for text in texts:
            assert text in stalled[name], f"{name}: {stalled[name]}"
        assert "nothing was changed" in stalled[name]
    # /healthz answered every time it was asked (2 s timeout each).
    assert unhealthy == 0
    # Nothing of a hostile state was applied.
    assert cluster.kubectl_json("get", "hfr", "-n", hostile_namespace)["items"] == []

    after = _status_of(pid)
    print(  # the figures, for whoever reads the test log (-s)
        f"operator RSS: {before['VmRSS'] >> 20} MiB before, peak sampled "
        f"{peak_rss >> 20} MiB, VmHWM {after['VmHWM'] >> 20} MiB; good state rendered after "
        f"{good_rendered_at - started:.1f} s, Ready after {good_ready_at - started:.1f} s; "
        "all hostile states stalled after "
        f"{max(stalled_at.values()) - started:.1f} s"
    )
    assert after["VmHWM"] < MAX_OPERATOR_RSS_BYTES


# A ~500-byte "billion laughs": each level references the previous one ten times.
ALIAS_BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)
)


def test_a_yaml_alias_bomb_in_values_sources_is_refused(
    cluster: Cluster, chart_repo: ChartRepo, operator: OperatorProcess, hostile_namespace: str
) -> None:
    """As a release's `valuesFrom` and as an environment's: a clear condition, bounded memory."""
    pid = operator.process.pid  # type: ignore[union-attr]
    assert len(ALIAS_BOMB) < 600
    cluster.run(
        "kubectl", "create", "configmap", "bomb", "-n", hostile_namespace,
        f"--from-literal=values.yaml={ALIAS_BOMB}",
    )  # fmt: skip
    release = {"name": "app", "chart": "test/demo-app", "version": "0.1.0",
               "valuesFrom": [{"kind": "ConfigMap", "name": "bomb"}]}  # fmt: skip
    apply(cluster, _state("release-bomb", hostile_namespace, chart_repo.url, [release]))
    environment = _state("env-bomb", hostile_namespace, chart_repo.url, [{**release, "name": "b"}])
    del environment["spec"]["releases"][0]["valuesFrom"]
    environment["spec"]["environments"]["default"]["valuesFrom"] = [
        {"kind": "ConfigMap", "name": "bomb"}
    ]
    apply(cluster, environment)

    def release_refused() -> dict[str, Any] | None:
        got = cluster.run("kubectl", "get", "hfr", "release-bomb-app", "-n", hostile_namespace,
                          "-o", "json", check=False)  # fmt: skip
        if got.returncode != 0:
            return None
        ready = condition(json.loads(got.stdout), "Ready")
        return ready if ready and ready["reason"] == "ValuesUnavailable" else None

    def state_stalled() -> dict[str, Any] | None:
        body = cluster.kubectl_json("get", "hfs", "env-bomb", "-n", hostile_namespace)
        stalled = condition(body, "Stalled")
        return stalled if stalled and stalled["status"] == "True" else None

    ready = wait_until(release_refused, timeout=90, message="the release's bomb to be refused")
    stalled = wait_until(state_stalled, timeout=90, message="the environment's bomb to stall")
    for found in (ready, stalled):
        assert "ConfigMap" in found["message"] and "bomb" in found["message"]
        assert "nodes" in found["message"] or "alias" in found["message"], found["message"]
        assert "x, x" not in found["message"]  # never the content
    assert operator.healthy()
    assert _status_of(pid)["VmHWM"] < MAX_OPERATOR_RSS_BYTES
