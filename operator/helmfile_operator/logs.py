"""Logging: human-readable lines by default, one JSON object per line with --log-format json.

JSON lines come from python-json-logger (a maintained formatter, already a dependency of kopf):
`time` (RFC 3339, UTC, with its zone), `level`, `logger`, `message`, and — where a line is about
one object — `kind`, `namespace`, `name`, `action`, `reason` as fields of their own, so that a log
pipeline can filter on them without parsing messages. Pass them with `extra=object_fields(...)`.
"""

from __future__ import annotations

import datetime
import logging
import sys
from typing import Any

from pythonjsonlogger.json import JsonFormatter as _JsonFormatter

# The structured fields a line may carry (`extra=`), in the order they are written.
OBJECT_FIELDS = ("kind", "namespace", "name", "action", "reason")


def object_fields(
    kind: str | None = None,
    namespace: str | None = None,
    name: str | None = None,
    *,
    action: str | None = None,
    reason: str | None = None,
) -> dict[str, Any]:
    """`extra=` for a log line about one object (fields left out when unknown)."""
    # `name` is taken by LogRecord (the logger's name): carried as `object_name`, written `name`.
    fields = {"kind": kind, "namespace": namespace, "object_name": name, "action": action}
    fields["reason"] = reason
    return {key: value for key, value in fields.items() if value is not None}


class JsonFormatter(_JsonFormatter):
    def __init__(self) -> None:
        super().__init__(
            "%(asctime)s %(levelname)s %(name)s %(message)s",
            rename_fields={
                "asctime": "time",
                "levelname": "level",
                "name": "logger",
                "exc_info": "exception",
            },
            # kopf's own per-object context, redundant with ours; the rest of LogRecord's
            # attributes are left out by python-json-logger.
            reserved_attrs=[*_RESERVED, "k8s_ref", "k8s_skip", "settings"],
        )

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        moment = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        return moment.isoformat(timespec="milliseconds")

    def process_log_record(self, log_record: dict[str, Any]) -> dict[str, Any]:
        log_record["level"] = str(log_record.get("level", "")).lower()
        if "object_name" in log_record:
            log_record["name"] = log_record.pop("object_name")
        return log_record


_RESERVED = [
    "args", "asctime", "created", "exc_info", "exc_text", "filename", "funcName", "levelname",
    "levelno", "lineno", "module", "msecs", "message", "msg", "name", "pathname", "process",
    "processName", "relativeCreated", "stack_info", "thread", "threadName", "taskName",
]  # fmt: skip


def configure_logging(log_format: str, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # The Kubernetes client's debug output would print request bodies (Secrets included).
    for noisy in ("kubernetes", "urllib3", "asyncio", "aiohttp"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:  # kopf logs every handler call ("Handler 'x' succeeded") at INFO
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
