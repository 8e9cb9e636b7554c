"""The benchmark harness's pure functions (bench/): metric parsing, the resync wait, verdicts."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import contenders
import measure
import report
import run
from contenders import Phase, check_rounds_target
from watch import Seen, resync_handled


def _size(suffix: str, resource: str, verb: str, value: float, scope: str = "namespace") -> str:
    labels = (
        f'component="apiserver",group="",resource="{resource}",scope="{scope}",'
        f'subresource="",verb="{verb}",version="v1"'
    )
    return f"apiserver_response_sizes{suffix}{{{labels}}} {value}"


SIZES = "\n".join(
    [
        "# HELP apiserver_response_sizes [STABLE] Response size distribution in bytes.",
        "# TYPE apiserver_response_sizes histogram",
        _size("_sum", "secrets", "LIST", 3000),
        _size("_count", "secrets", "LIST", 3),
        _size("_sum", "secrets", "GET", 500, "resource"),
        _size("_count", "secrets", "GET", 1, "resource"),
        _size("_sum", "configmaps", "LIST", 99999),
        _size("_count", "configmaps", "LIST", 9),
    ]
)


def _grown(text: str, factor: int) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith("#"):
            out.append(line)
            continue
        name, value = line.rsplit(" ", 1)
        out.append(f"{name} {float(value) * factor}")
    return "\n".join(out)


def test_secret_reads_is_the_delta_of_the_secrets_response_sizes() -> None:
    reads = measure.secret_reads(_grown(SIZES, 3), SIZES)
    assert reads == {"LIST bytes": 6000, "LIST count": 6, "GET bytes": 1000, "GET count": 2}


def test_secret_reads_without_the_metric_are_zero() -> None:
    assert measure.secret_reads("", "") == {
        "LIST bytes": 0.0,
        "LIST count": 0.0,
        "GET bytes": 0.0,
        "GET count": 0.0,
    }


def test_writes_count_every_resource_but_not_dry_runs_or_reads() -> None:
    changed: dict[tuple[str, ...], float] = {
        ("POST", "secrets", "", ""): 2,
        ("PUT", "secrets", "", ""): 1,
        ("PATCH", "helmfilereleases", "status", ""): 4,
        ("APPLY", "configmaps", "", "All"): 7,
        ("GET", "configmaps", "", ""): 5,
        ("DELETE", "leases", "", ""): 1,
    }
    assert measure.writes(changed) == {
        "DELETE leases": 1,
        "PATCH helmfilereleases/status": 4,
        "POST secrets": 2,
        "PUT secrets": 1,
    }


def test_drift_checks_counter() -> None:
    assert measure.drift_checks("# HELP other_total x\nother_total 3\n") is None
    declared = (
        "# HELP helmfile_operator_drift_checks_total Drift checks.\n"
        "# TYPE helmfile_operator_drift_checks_total counter\n"
    )
    assert measure.drift_checks(declared) == {}
    counted = declared + (
        'helmfile_operator_drift_checks_total{result="clean"} 10.0\n'
        'helmfile_operator_drift_checks_total{result="failed"} 1.0\n'
        'helmfile_operator_drift_checks_created{result="clean"} 1.7e9\n'
    )
    assert measure.drift_checks(counted) == {"clean": 10.0, "failed": 1.0}
    assert check_rounds_target(measure.drift_checks(counted), 5) == 16.0
    assert check_rounds_target(None, 5) is None


def _seen(
    namespace: str, handled: str | None = None, requested: str | None = None, name: str = "bench"
) -> Seen:
    return Seen(
        namespace=namespace,
        name=name,
        generation=1,
        observed_generation=1,
        ready=True,
        ready_count=0,
        reconcile_handled=handled,
        drift_checked=None,
        drifted=None,
        reconcile_requested=requested,
    )


def test_resync_waits_for_every_state() -> None:
    releases = [_seen("a", name="r-0000"), _seen("b", name="r-0001")]
    assert not resync_handled([_seen("a", "T")], releases, "T", 2)
    assert not resync_handled([_seen("a", "T"), _seen("b", "old")], releases, "T", 2)
    assert resync_handled([_seen("a", "T"), _seen("b", "T")], releases, "T", 2)


def test_resync_of_an_operator_that_copies_the_request_waits_for_the_releases() -> None:
    states = [_seen("a", "T")]
    copied = [_seen("a", None, "T", "r-0000"), _seen("a", None, None, "r-0001")]
    assert not resync_handled(states, copied, "T", 1)
    partly = [_seen("a", "T", "T", "r-0000"), _seen("a", None, "T", "r-0001")]
    assert not resync_handled(states, partly, "T", 1)
    done = [_seen("a", "T", "T", "r-0000"), _seen("a", "T", "T", "r-0001")]
    assert resync_handled(states, done, "T", 1)


def test_helmfile_apply_is_skipped_above_300_unless_named() -> None:
    assert "helmfile-apply" in run.contenders_for(300, None)
    assert "helmfile-apply" not in run.contenders_for(1000, None)
    assert run.contenders_for(1000, ["helmfile-apply"]) == ["helmfile-apply"]


def test_idle_estimate_formula() -> None:
    drift = Phase(wall=10, cpu=3.0, objects=1000)  # 3 ms per check
    idle = Phase(wall=30, cpu=0.03)  # 0.1 % of a core
    cores, formula = report.idle_estimate(drift, idle)
    assert abs(cores - (0.003 * 1000 / 600 + 0.001)) < 1e-9
    assert "3.0 ms per check * 1000 / 600 s" in formula
    assert formula.endswith("0.60 % of a core")


def _converge(wall: float, cpu: float, plane: float, writes: float, size: int) -> Phase:
    return Phase(
        wall=wall,
        cpu=cpu,
        control_plane_cpu=plane,
        writes={"POST secrets": writes * size},
        objects=size,
        peak_rss_mib=100,
        idle_rss_mib=70,
    )


def _verdicts(results: report.Results) -> dict[str, bool | None]:
    return {t.name: t.held for t in report.scale_targets(results)}


def test_scale_verdicts() -> None:
    n = 1000
    results: report.Results = {
        n: {
            "raw": [{"converge": _converge(100, 100, 20, 3, n)}],
            "operator-1": [
                {
                    "converge": _converge(110, 105, 25, 5.5, n),
                    "resync": Phase(wall=2, cpu=2.0, api={"GET secrets": 900}, objects=n),
                    "drift": Phase(
                        wall=5,
                        cpu=2.5,
                        api={"GET configmaps": 1000, "APPLY configmaps (dry run)": 1000},
                        objects=n,
                        manifest_objects=n,
                    ),
                    "idle": Phase(wall=30, cpu=0.3),
                }
            ],
            "operator-10": [{"converge": _converge(120, 112, 27, 6.5, n)}],
        }
    }
    verdicts = _verdicts(results)

    def find(*words: str) -> bool | None:
        [found] = [
            v
            for name, v in verdicts.items()
            if name.startswith(words[0]) and all(w in name for w in words)
        ]
        return found

    assert find("convergence at N=1000", "1 state") is True
    assert find("convergence at N=1000", "10 states") is False  # 1.2x wall
    assert find("control-plane", "1 state") is True  # 1.25x
    assert find("control-plane", "10 states") is False  # 1.35x
    assert find("API writes", "1 state") is True  # 2.5 beyond the raw floor's 3
    assert find("API writes", "10 states") is False  # 3.5
    assert find("operator peak RSS", "1 state") is True
    assert find("operator idle RSS") is True
    assert find("no-op resync at N=1000") is True  # 2 ms, 0.9 requests
    assert find("no-op resync at N=100:") is None
    assert find("one periodic drift pass") is True  # 2 requests per object, 2.5 ms
    # 2.5 ms * 1000 / 600 + 1 % idle: more than 1 % of a core
    assert find("idle operator", "1 state") is False
    assert find("large chart") is None


def test_large_chart_storage_verdict() -> None:
    def resync(list_bytes: float) -> Phase:
        return Phase(
            wall=1,
            cpu=0.1,
            objects=50,
            secret_reads={"LIST bytes": list_bytes, "LIST count": 50, "GET bytes": 0},
            storage_secret_bytes=130_000,
        )

    def verdict(list_bytes: float) -> bool | None:
        results: report.Results = {50: {"operator-1-large": [{"resync": resync(list_bytes)}]}}
        [target] = [t for t in report.scale_targets(results) if t.name.startswith("large")]
        assert "130000" in target.detail
        return target.held

    assert verdict(50 * 1500) is True
    assert verdict(50 * 130_000) is False


class _CountingOperator:
    """What `_wait_checks` uses of contenders.Operator: scrape(), here a counter that grows by
    3 clean checks per scrape."""

    def __init__(self) -> None:
        self.scrapes = 0

    def scrape(self) -> str:
        self.scrapes += 1
        return (
            "# HELP helmfile_operator_drift_checks_total Drift checks.\n"
            "# TYPE helmfile_operator_drift_checks_total counter\n"
            f'helmfile_operator_drift_checks_total{{result="clean"}} {3.0 * self.scrapes}\n'
        )


def test_a_drift_round_ends_when_the_counter_grew_by_n() -> None:
    operator = _CountingOperator()
    _, counts, scrapes = contenders._wait_checks(
        operator,  # type: ignore[arg-type]
        target=10,
        timeout=5,
        poll=0,
        what="a round",
    )
    assert counts == {"clean": 12.0}
    assert scrapes == 4


def test_no_op_requests_split_the_releases_passes_from_the_states() -> None:
    resync = Phase(
        wall=1,
        cpu=0.1,
        objects=1000,
        api={
            "LIST secrets": 1000,  # one metadata list per release
            "GET helmfilestates": 2,
            "LIST helmfilereleases": 2,
            "PATCH helmfilestates": 1,  # the harness's annotation
            "PATCH helmfilestates/status": 1,
        },
    )
    assert report.release_requests(resync) == 1000
    assert report.state_requests(resync) == 6
