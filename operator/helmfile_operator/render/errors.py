"""Errors of rendering a HelmfileState: each names the spec field at fault and how to fix it.

`str(error)` is `"<field>: <message>"`, ready for a status condition message; `reason` is a
CamelCase word for the condition's `reason`. Messages never contain values (they may come from
ConfigMaps that hold sensitive data): only field paths, names and types.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

__all__ = [
    "ConditionError",
    "CycleError",
    "InvalidChartError",
    "RenderError",
    "RenderLimitExceeded",
    "TemplateRenderError",
    "UnknownEnvironmentError",
    "UnknownNeedError",
    "UnknownRepositoryError",
    "ValuesError",
    "format_names",
]


class RenderError(Exception):
    """A state cannot be rendered. `field` is a path like `spec.releases[1].needs[0]`."""

    reason: ClassVar[str] = "RenderFailed"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, message)
        self.field = field
        self.message = message

    def __str__(self) -> str:
        return f"{self.field}: {self.message}"


class RenderLimitExceeded(RenderError):
    """Rendering would exceed a bound on its time, memory or output (the limits of
    `render.templates` and `render.values`). The message names the limit, its value and what to
    change; like every message here, never the content."""

    reason = "RenderLimitExceeded"


class TemplateRenderError(RenderError):
    """A valuesTemplate entry failed: syntax, undefined variable, forbidden access, bad output."""

    reason = "TemplateError"


class CycleError(RenderError):
    """`needs` form a cycle; `cycle` is the path, first node repeated at the end."""

    reason = "DependencyCycle"

    def __init__(self, field: str, message: str, cycle: tuple[str, ...] = ()) -> None:
        super().__init__(field, message)
        self.cycle = cycle


class UnknownNeedError(RenderError):
    """A `needs` entry names no release of the state (or is ambiguous)."""

    reason = "UnknownNeed"


class UnknownRepositoryError(RenderError):
    """A `<repository>/<chart>` reference names no entry of `spec.repositories`."""

    reason = "UnknownRepository"


class UnknownEnvironmentError(RenderError):
    """`spec.environment` names no entry of `spec.environments`."""

    reason = "UnknownEnvironment"


class ConditionError(RenderError):
    """A release `condition` is missing from the environment values or is not a boolean."""

    reason = "InvalidCondition"


class ValuesError(RenderError):
    """Values cannot be built, e.g. a `set` entry has an invalid path."""

    reason = "InvalidValues"


class InvalidChartError(RenderError):
    """A `chart` is neither `<repository>/<chart>` nor `oci://<registry>/<path>/<chart>`."""

    reason = "InvalidChart"


def format_names(names: Iterable[str], limit: int = 20) -> str:
    """`a, b, c` for a message; `(none)` when empty; long lists are cut after `limit` names."""
    items = list(names)
    if not items:
        return "(none)"
    shown = ", ".join(items[:limit])
    if len(items) > limit:
        shown += f", … ({len(items) - limit} more)"
    return shown
