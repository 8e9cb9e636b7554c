"""Log formats and the per-object metric series (without a cluster)."""

from __future__ import annotations

import datetime
import json
import logging

from helmfile_operator.logs import JsonFormatter, configure_logging, object_fields
from helmfile_operator.metrics import Metrics


def test_json_log_lines_are_json_objects() -> None:
    record = logging.LogRecord(
        "helmfile_operator",
        logging.WARNING,
        __file__,
        1,
        "HelmfileRelease/ns/x: %s",
        ("boom",),
        None,
    )
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "warning"
    assert line["logger"] == "helmfile_operator"
    assert line["message"] == "HelmfileRelease/ns/x: boom"
    # RFC 3339 with its zone, not a local time of unknown offset.
    assert datetime.datetime.fromisoformat(line["time"]).utcoffset() == datetime.timedelta(0)


def test_json_lines_carry_the_object_and_the_reason_as_fields() -> None:
    record = logging.LogRecord(
        "helmfile_operator", logging.WARNING, __file__, 1, "HelmfileRelease/ns/x: failed", (), None
    )
    record.__dict__.update(
        object_fields("HelmfileRelease", "ns", "x", action="upgrade", reason="UpgradeFailed")
    )
    line = json.loads(JsonFormatter().format(record))
    assert {k: line[k] for k in ("kind", "namespace", "name", "action", "reason")} == {
        "kind": "HelmfileRelease",
        "namespace": "ns",
        "name": "x",
        "action": "upgrade",
        "reason": "UpgradeFailed",
    }
    assert line["logger"] == "helmfile_operator"


def test_configure_logging_quietens_client_debug_output() -> None:
    configure_logging("json", verbose=True)
    assert isinstance(logging.getLogger().handlers[0].formatter, JsonFormatter)
    # The Kubernetes client would print request bodies (Secrets included) at debug level.
    assert logging.getLogger("kubernetes").level == logging.WARNING
    configure_logging("text", verbose=False)


metrics = Metrics()


def _series(metric: str, /, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(metric, labels)


def test_release_condition_series_follow_the_object() -> None:
    labels = {"namespace": "ns", "name": "web", "condition": "Ready"}
    metrics.record_release("ns", "web", [{"type": "Ready", "status": "False"}])
    assert _series("helmfile_operator_release_condition", status="False", **labels) == 1
    metrics.record_release("ns", "web", [{"type": "Ready", "status": "True"}])
    assert _series("helmfile_operator_release_condition", status="True", **labels) == 1
    assert _series("helmfile_operator_release_condition", status="False", **labels) is None
    metrics.forget_release("ns", "web")
    assert _series("helmfile_operator_release_condition", status="True", **labels) is None


def test_state_series_are_removed_with_the_state() -> None:
    metrics.record_state("ns", "stack", [{"type": "Ready", "status": "True"}])
    assert _series("helmfile_operator_state_last_success_timestamp_seconds", namespace="ns",
                   name="stack")  # fmt: skip
    metrics.forget_state("ns", "stack")
    assert (
        _series("helmfile_operator_state_last_success_timestamp_seconds", namespace="ns",
                name="stack") is None
    )  # fmt: skip


def test_a_standby_exposes_only_what_describes_its_process() -> None:
    metrics = Metrics()
    metrics.set_build_info("v4.0.0", shard="eu-1")
    metrics.leader.set(0)
    metrics.record_release("ns", "web", [{"type": "Ready", "status": "True"}])
    metrics.queue_depth.set(300)  # a standby queues every object, and works off none
    full = metrics.exposition().decode()
    standby = metrics.exposition(standby=True).decode()
    assert "helmfile_operator_release_condition{" in full
    assert "helmfile_operator_queue_depth 300.0" in full
    assert "release_condition" not in standby and "queue_depth" not in standby
    assert "helmfile_operator_leader 0.0" in standby
    assert 'shard="eu-1"' in standby and 'helm_version="v4.0.0"' in standby
